"""Page faults of a CPU distillation step and what they cost (benchmarks, not tests).

    python benchmarks/page_faults.py                 # ~2 min on 2 cores
    python benchmarks/page_faults.py --pairs 1 --steps 2 --images 8   # seconds: checks the script runs

One process, ResNet-20 (CIFAR-10 weights), GENIE-D on ``--images`` images in one batch, ``--threads``
threads. It switches glibc's thresholds itself (``GENIE_RETAIN_CPU_MEMORY=0`` keeps genie from
setting them): ``--pairs`` times, in alternating order, ``--steps`` distillation steps with
:mod:`genie.cpu_memory`'s setting (blocks up to 1 GiB from the heap) and with every block above
128 KiB mapped afresh (glibc's starting threshold, held fixed). A step's milliseconds and minor
page faults are the difference between a run of 2 + ``--steps`` steps and one of 2 (after a
settling step). Prints them, medians per arm, and the median paired difference: the cost of
one fault is that difference over the difference in faults.

glibc's default, self-adjusting threshold cannot be restored in a process once set, so the
faults under the default are counted in a process of their own first, the same way.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FRESH_THRESHOLD = 128 << 10  # glibc's starting M_MMAP_THRESHOLD / M_TRIM_THRESHOLD
SHORT = 2  # steps of the run whose time and faults are subtracted


def _faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _timed(model, args) -> tuple:
    """(ms per step, faults per step): the difference between a run of ``SHORT + args.steps``
    steps and one of ``SHORT``, so that what is not a step (the teacher's copy, set-up) cancels."""
    from genie.distill import distill

    kw = dict(num_images=args.images, batch_size=args.images, progress=False, seed=0)
    distill(model, 32, iters=1, **kw)  # settles the heap (and oneDNN's kernels) for this arm
    seconds, faults = [], []
    for iters in (SHORT, SHORT + args.steps):
        f0, t0 = _faults(), time.perf_counter()
        distill(model, 32, iters=iters, **kw)
        seconds.append(time.perf_counter() - t0)
        faults.append(_faults() - f0)
    return (seconds[1] - seconds[0]) / args.steps * 1000, (faults[1] - faults[0]) / args.steps


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=128)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--pairs", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--default-only", action="store_true", help=argparse.SUPPRESS)  # the child process
    args = p.parse_args(argv)
    os.environ["GENIE_RETAIN_CPU_MEMORY"] = "0"
    sys.path.insert(0, str(ROOT))
    import torch

    from genie.assets import use_checkout_assets
    from genie.cpu_memory import MMAP_THRESHOLD, M_MMAP_THRESHOLD, M_TRIM_THRESHOLD, TRIM_THRESHOLD, _glibc_mallopt
    from genie.devices import cpu_kernels
    from genie.models import load_model

    use_checkout_assets(ROOT)
    torch.set_num_threads(args.threads)
    model = load_model("resnet20_cifar10")
    if args.default_only:
        print(json.dumps(dict(zip(("ms", "faults"), _timed(model, args)))))
        return 0
    mallopt = _glibc_mallopt()
    if mallopt is None:
        raise SystemExit("page_faults.py: needs glibc (mallopt)")
    child = subprocess.run([sys.executable, __file__, "--default-only", *(argv or sys.argv[1:])], check=True,
                           capture_output=True, text=True).stdout
    default = json.loads(child.strip().splitlines()[-1])
    arms = {"kept": (MMAP_THRESHOLD, TRIM_THRESHOLD), "fresh": (FRESH_THRESHOLD, FRESH_THRESHOLD)}
    runs = {name: [] for name in arms}
    for i in range(args.pairs):
        for name in (("kept", "fresh") if i % 2 == 0 else ("fresh", "kept")):
            mmap_threshold, trim_threshold = arms[name]
            mallopt(M_MMAP_THRESHOLD, mmap_threshold)
            mallopt(M_TRIM_THRESHOLD, trim_threshold)
            runs[name].append(_timed(model, args))
    med = {name: (statistics.median(r[0] for r in rs), statistics.median(r[1] for r in rs)) for name, rs in runs.items()}
    diff = statistics.median(f[0] - k[0] for k, f in zip(runs["kept"], runs["fresh"]))
    extra_faults = med["fresh"][1] - med["kept"][1]
    print(f"ResNet-20 distillation, {args.images} images, {args.threads} threads, kernels {cpu_kernels()}")
    print(f"glibc default (own process): {default['ms']:.1f} ms a step, {default['faults']:.0f} faults a step")
    for name, label in (("kept", "genie's setting"), ("fresh", "every block > 128 KiB mapped afresh")):
        print(f"{label}: {med[name][0]:.1f} ms a step, {med[name][1]:.0f} faults a step (median of {args.pairs})")
    print(f"paired difference {diff:.1f} ms a step; {1000 * diff / extra_faults:.2f} us per fault"
          if extra_faults > 0 else f"paired difference {diff:.1f} ms a step")
    return 0


if __name__ == "__main__":
    sys.exit(main())
