"""What the input and loss guards cost (issue 11, bar 3): quantize_model + reconstruct of
ResNet-20 W4A4 on 1024 real images (``cifar10_train_calib5k.npz``, seed 0), 200 iterations per
unit, batch 32, on the CPU, timed for this checkout and a baseline checkout of genie (e.g. a
``git worktree`` of the commit before), interleaved (baseline, this, baseline, this, ...), each
run in a fresh process with the same thread count.

    git worktree add /tmp/genie-base <commit>
    python benchmarks/guard_overhead.py --baseline /tmp/genie-base --repeats 3

Prints a table and writes it under ``--out`` (default ``benchmarks/_out``).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from genie.assets import use_checkout_assets  # noqa: E402

use_checkout_assets(ROOT)  # the timed processes inherit it through os.environ

TIMED = """
import sys, time, torch
torch.set_num_threads({threads})
from genie.data import cifar10_calibration
from genie.models import load_model, model_spec
from genie.quant import quantize_model, reconstruct
spec = model_spec("resnet20_cifar10")
model = load_model("resnet20_cifar10")
images = cifar10_calibration({samples}, spec.mean, spec.std, seed=0).images
t0 = time.perf_counter()
qm = quantize_model(model, images, w_bits=4, a_bits=4)
reconstruct(qm, images, iters={iters}, batch_size=32, seed=0, progress=False)
print(time.perf_counter() - t0)
"""


def timed(tree: Path, args) -> float:
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": str(args.threads)}
    code = TIMED.format(threads=args.threads, samples=args.samples, iters=args.iters)
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=tree, capture_output=True, text=True, check=True)
    return float(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--baseline", required=True, help="a checkout of genie to compare with (e.g. a git worktree)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--samples", type=int, default=1024)
    p.add_argument("--iters", type=int, default=200)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "_out"))
    args = p.parse_args(argv)
    trees = {"baseline": Path(args.baseline).resolve(), "this": ROOT}
    seconds = {name: [] for name in trees}
    for r in range(args.repeats):
        for name, tree in trees.items():
            seconds[name].append(timed(tree, args))
            print(f"repeat {r + 1}: {name} {seconds[name][-1]:.2f} s", flush=True)
    base, this = (statistics.median(seconds[n]) for n in ("baseline", "this"))
    text = (f"ResNet-20 W4A4, {args.samples} images, {args.iters} iterations/unit, {args.threads} threads, "
            f"{args.repeats} interleaved repeats (median)\n\n| checkout | seconds | runs |\n|---|---|---|\n"
            f"| baseline {trees['baseline']} | {base:.2f} | {', '.join(f'{s:.2f}' for s in seconds['baseline'])} |\n"
            f"| this {ROOT} | {this:.2f} | {', '.join(f'{s:.2f}' for s in seconds['this'])} |\n\n"
            f"ratio this / baseline: {this / base:.3f}\n")
    print(text)
    sys.path.insert(0, str(ROOT))
    from genie.files import write_atomically

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_atomically(out / "guard_overhead.md", text.encode(), "the benchmark table")
    write_atomically(out / "guard_overhead.json", json.dumps({"seconds": seconds, "ratio": this / base}).encode(),
                     "the benchmark table")
    return 0


if __name__ == "__main__":
    sys.exit(main())
