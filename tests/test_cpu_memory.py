"""genie.cpu_memory: freed CPU memory kept for reuse, so repeated large allocations stop
page-faulting. Each case runs in a fresh interpreter: the setting is per process and sticks."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from genie.cpu_memory import is_glibc

ROOT = Path(__file__).resolve().parents[1]

# a training step in miniature: four 40 MB activations alive at once, filled, freed, 20 times over.
# Blocks above 32 MiB: glibc's own threshold never rises that far, so without the setting each
# one is a fresh mapping every step (smaller ones are reused or not depending on where the
# kernel put the heap: in a distillation step of 8 MB activations, 3,500-8,700 faults a step)
PROBE = r"""
import json, resource, sys, torch
sys.path.insert(0, {root!r})
from genie.cpu_memory import retain_freed_memory
applied = retain_freed_memory() if {apply} else None
again = retain_freed_memory() if {apply} else None
def step():
    held = [torch.empty(10 * 1024 * 1024).fill_(1.0) for _ in range(4)]
    del held
for _ in range(5):  # the heap grows to the working set in the first steps
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    step()
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({{"applied": applied, "again": again, "faults": faults}}))
"""

glibc_only = pytest.mark.skipif(not is_glibc(), reason="the setting is glibc's (mallopt)")


def _probe(apply: bool, env_value=None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "GENIE_RETAIN_CPU_MEMORY"}
    if env_value is not None:
        env["GENIE_RETAIN_CPU_MEMORY"] = env_value
    env["OMP_NUM_THREADS"] = "1"
    out = subprocess.run([sys.executable, "-c", PROBE.format(root=str(ROOT), apply=apply)], env=env,
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


@glibc_only
def test_retained_memory_removes_the_page_faults_of_repeated_large_allocations():
    plain, kept = _probe(apply=False), _probe(apply=True)
    assert kept["applied"] is True and kept["again"] is True
    # without the setting every page of the 160 MB is new every step: 40,960 faults a step
    assert plain["faults"] > 20 * 30000, plain
    # with it the same memory is reused: no new page once the heap holds the working set
    assert kept["faults"] < 20 * 50, kept


@glibc_only
def test_the_environment_switch_turns_it_off():
    off = _probe(apply=True, env_value="0")
    assert off["applied"] is False and off["again"] is False
    assert off["faults"] > 20 * 30000, off


def test_the_cpu_loops_keep_freed_memory(monkeypatch):
    """distill, reconstruct and measure_sensitivity ask for the setting with the device they run on."""
    import torch
    from torch import nn

    import genie.distill.distiller as distiller
    import genie.quant.reconstruction as reconstruction
    import genie.quant.sensitivity as sensitivity
    from genie.distill import distill
    from genie.quant import quantize_model, reconstruct
    from genie.quant.sensitivity import measure_sensitivity

    calls = []
    for module in (distiller, reconstruction, sensitivity):
        monkeypatch.setattr(module, "retain_freed_memory",
                            lambda device, m=module.__name__: calls.append((m, device.type)) or True)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).eval()
    distill(model, 8, num_images=4, batch_size=4, iters=1, progress=False)
    x = torch.randn(8, 3, 8, 8)
    reconstruct(quantize_model(model, x, w_bits=4, a_bits=4), x, iters=1, batch_size=4, progress=False)
    measure_sensitivity(model, x, candidates=(2, 4), method="kl", chunk_size=8)
    assert calls == [("genie.distill.distiller", "cpu"), ("genie.quant.reconstruction", "cpu"),
                     ("genie.quant.sensitivity", "cpu")]


def test_a_gpu_run_leaves_malloc_alone(monkeypatch):
    import genie.cpu_memory as cpu_memory
    import torch

    monkeypatch.setattr(cpu_memory, "_set_thresholds", lambda: pytest.fail("malloc set for a GPU run"))
    assert cpu_memory.retain_freed_memory(torch.device("cuda")) is False


@glibc_only
def test_page_faults_benchmark_runs_and_sees_the_faults():
    """benchmarks/page_faults.py at tiny settings: both arms and glibc's default reported, and the
    arm that maps every block afresh faults more than genie's setting."""
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "page_faults.py"), "--pairs", "1", "--steps", "2",
                           "--images", "8", "--threads", "1"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    lines = {line.split(":")[0]: line for line in done.stdout.splitlines() if ": " in line}
    faults = {k: float(lines[k].split(" ms a step, ")[1].split(" faults")[0])
              for k in ("glibc default (own process)", "genie's setting", "every block > 128 KiB mapped afresh")}
    assert faults["every block > 128 KiB mapped afresh"] > faults["genie's setting"] + 1000, done.stdout
