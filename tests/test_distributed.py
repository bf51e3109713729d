"""Distillation sharded over 2 processes (torchrun, gloo on CPU) equals a single-process run."""
import os
import subprocess
import sys

import torch

from genie.distill import load_distilled


def _cli(args, tmp_path, launcher):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = launcher + ["-m", "genie", "distill", "--model", "resnet20_cifar10", "--samples", "24",
                      "--distill-batch", "8", "--distill-iters", "4", "--seed", "7", "--device", "cpu",
                      "--no-progress"] + args
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def test_two_gloo_ranks_equal_one_process(tmp_path):
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    _cli(["--out", str(tmp_path / "two.pt")], tmp_path, torchrun)
    _cli(["--out", str(tmp_path / "one.pt")], tmp_path, [sys.executable])
    two, one = load_distilled(tmp_path / "two.pt"), load_distilled(tmp_path / "one.pt")
    assert two.metadata["world_size"] == 2 and two.metadata["batches"] == [0, 1, 2]
    assert two.images.shape == (24, 3, 32, 32)
    assert torch.allclose(two.images, one.images, atol=1e-5)
    assert torch.allclose(two.losses, one.losses, rtol=1e-5)
