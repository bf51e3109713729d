"""A sweep run one notebook at a time against the same sweep with ``--workers`` (a benchmark, not a
test): wall time of each and their ratio, and whether the records agree.

    python benchmarks/sweep_parallel.py               # 4 smoke runs of the quickstart, --workers 2
    python benchmarks/sweep_parallel.py --quick       # 2 tiny runs: checks the script works

Each sweep is ``python -m genie.sweep NOTEBOOK --grid seed=0,1,..`` in its own process, into a
fresh folder under ``--out`` (default ``benchmarks/_out/sweep_parallel``), timed from start to
exit (after a warm-up that imports torch and papermill once): first with one worker (the kernel
uses torch's default threads, every core), then one worker with ``--threads cores / N``,
then with ``--workers N`` (``N`` kernels at once, the cores shared out: ``OMP_NUM_THREADS`` =
cores / N). The quickstart's accuracy check is
switched off (``max_drop=100``): a seed whose smoke run drops further than usual must not stop
the timing. Records agree when every run is ok in both, with the same parameters and the same
result fields, top-1 (``*top1``), times (``*seconds``) and ``device_name`` (it names the thread
count) aside. They are compared between the parallel sweep and a third one, one run at a time
with the parallel runs' thread count (``--threads``): another thread count changes the order of
float sums, and over hundreds of distillation steps the losses drift apart by ~1 %. Prints a
Markdown table, also written to ``OUT/sweep_parallel.md``; run it on a quiet machine.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from genie.assets import use_checkout_assets  # noqa: E402
from genie.sweep_exec import available_cores  # noqa: E402
from runs import markdown_table  # noqa: E402  (benchmarks/runs.py)

use_checkout_assets(ROOT)

QUICK = ["num_images=8", "distill_batch=8", "distill_iters=2", "recon_iters=1"]
IGNORED = ("device_name",)


def timed_sweep(notebook: Path, out: Path, runs: int, sets: list, workers: int, threads: Optional[int] = None) -> float:
    """Wall seconds of one sweep into a fresh ``out`` (its output in ``out.log``); ``threads``:
    the sweep's ``--threads`` (None: not given)."""
    shutil.rmtree(out, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "genie.sweep", str(notebook), "--out", str(out),
           "--grid", "seed=" + ",".join(str(s) for s in range(runs)), "--workers", str(workers)]
    if threads is not None:
        cmd += ["--threads", str(threads)]
    for item in sets:
        cmd += ["--set", item]
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env["PYTHONPATH"] = str(ROOT)
    with open(out.with_suffix(".log"), "w") as log:
        log.write(" ".join(cmd) + "\n")
        log.flush()
        t0 = time.perf_counter()
        subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        return time.perf_counter() - t0


def _differences(a: dict, b: dict, where: str) -> list:
    out = []
    for key in sorted(set(a) | set(b)):
        x, y = a.get(key), b.get(key)
        if key.endswith(("top1", "seconds")) or key in IGNORED:
            continue
        if isinstance(x, dict) and isinstance(y, dict):
            out += _differences(x, y, f"{where}.{key}")
        elif x != y:
            out.append(f"{where}.{key}: {x!r} != {y!r}")
    return out


def compare(one: Path, many: Path) -> list:
    """What differs between the records of the two sweeps (empty: they agree)."""
    a, b = (json.loads((p / "results.json").read_text()) for p in (one, many))
    if [r["run"] for r in a] != [r["run"] for r in b]:
        return [f"runs differ: {[r['run'] for r in a]} vs {[r['run'] for r in b]}"]
    diffs = []
    for x, y in zip(a, b):
        if (x["status"], y["status"]) != ("ok", "ok"):
            diffs.append(f"{x['run']}: status {x['status']} / {y['status']}")
        if x["parameters"] != y["parameters"]:
            diffs.append(f"{x['run']}: parameters differ")
        diffs += _differences(x.get("result") or {}, y.get("result") or {}, x["run"])
    return diffs


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--notebook", default=str(ROOT / "notebooks" / "01_quickstart.ipynb"))
    p.add_argument("--runs", type=int, default=None, help="runs in the sweep (seeds 0..runs-1; default 4, quick 2)")
    p.add_argument("--workers", type=int, default=2, help="runs at once in the parallel sweep (default 2)")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="a parameter for every run")
    p.add_argument("--quick", action="store_true", help="tiny runs: checks that the script works")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "_out" / "sweep_parallel"))
    args = p.parse_args(argv)
    runs = args.runs or (2 if args.quick else 4)
    sets = ["max_drop=100.0", *(QUICK if args.quick else []), *args.set]
    out = Path(args.out)
    # warm the file cache first: the sweep timed first must not pay for reading torch from disk
    subprocess.run([sys.executable, "-c", "import torch, torchvision, papermill, genie.pipeline"], check=True,
                   env={**os.environ, "PYTHONPATH": str(ROOT)})
    cores = available_cores()
    per_run = max(1, cores // args.workers)
    one = timed_sweep(Path(args.notebook), out / "workers1", runs, sets, 1)
    same = timed_sweep(Path(args.notebook), out / f"workers1_threads{per_run}", runs, sets, 1, per_run)
    many = timed_sweep(Path(args.notebook), out / f"workers{args.workers}", runs, sets, args.workers)
    # the same thread count per run, so the same float sums: the records must be equal
    diffs = compare(out / f"workers1_threads{per_run}", out / f"workers{args.workers}")
    rows = [{"sweep": f"{runs} runs, one at a time", "workers": 1, "threads per run": f"{cores} (torch default)",
             "wall s": f"{one:.1f}", "ratio": "1.00"},
            {"sweep": f"{runs} runs, one at a time, --threads {per_run}", "workers": 1, "threads per run": per_run,
             "wall s": f"{same:.1f}", "ratio": f"{one / same:.2f}"},
            {"sweep": f"{runs} runs, --workers {args.workers}", "workers": args.workers,
             "threads per run": per_run, "wall s": f"{many:.1f}", "ratio": f"{one / many:.2f}"}]
    title = (f"{Path(args.notebook).name}{' (quick)' if args.quick else ''} on {cores} cores, "
             f"{' '.join('--set ' + s for s in sets)}")
    text = markdown_table(title, rows) + f"\nrecords of --workers {args.workers} and of one at a time with " \
        f"--threads {per_run} equal (top-1, times and device_name aside): " \
        + ("yes" if not diffs else "no\n" + "\n".join(f"- {d}" for d in diffs)) + "\n"
    print(text)
    (out / "sweep_parallel.md").write_text(text)
    return 0 if not diffs else 1


if __name__ == "__main__":
    sys.exit(main())
