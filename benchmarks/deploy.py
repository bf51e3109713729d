"""The deployment profile, measured (benchmarks, not tests): onnxruntime latency of the FP32 graph,
the paper-profile W8A8 graph and the deploy-profile W8A8 graph, and the profile's accuracy cost.

    python benchmarks/deploy.py latency  [--models resnet20_cifar10 resnet18 mobilenet_v2] [--threads 1 2] [--batches 1 64]
    python benchmarks/deploy.py profile  [--models resnet18]   # where the time goes: onnxruntime's profiler
    python benchmarks/deploy.py accuracy [--seeds 0 1 2] [--jobs 2]
    python benchmarks/deploy.py all --quick   # tiny settings: checks the script runs

``latency``: per model, four ONNX files (:data:`genie.export.latency.LATENCY_FILES`): ``fp32`` (the dequantized float graph),
``paper`` (W8A8, paper profile), ``deploy`` (W8A8, deploy profile) and ``deploy_sym`` (the same
with symmetric int8 weights, zero point 0), each timed
in onnxruntime (CPU execution provider, one session per file and thread count) as the median of
repeated calls after warm-up, per image. ResNet-20 (32 px) is calibrated on 256 real CIFAR-10
images; torchvision's ResNet-18 and MobileNetV2 (224 px) have random weights (latency does not
depend on them) calibrated on 16 random normal images. The table also gives the integer and
float kernels onnxruntime runs (its optimised graph) and whether this CPU has VNNI. The files,
the networks and the timing come from :mod:`genie.export.latency` (notebook 7 uses them too).

``accuracy``: few-shot ResNet-20, 256 real images of ``cifar10_train_calib5k.npz`` drawn with the
seed, 300 reconstruction iterations per unit, batch 32, top-1 on all of ``cifar10_test.npz``:
W8A8 and W4A4 in both profiles, for each seed (``python -m genie run`` in its own process,
``--jobs`` at a time, one thread each; a run whose result.json exists is not run again).
Tables go to ``--out`` (default ``benchmarks/_out/deploy``) as Markdown and JSON.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from genie.assets import use_checkout_assets  # noqa: E402
from runs import genie_runs, markdown_table  # noqa: E402  (benchmarks/runs.py)

use_checkout_assets(ROOT)

# the files, the model and images per network, the CPU's features and the timing live in the
# package (genie.export.latency), shared with notebook 7
from genie.export.latency import cpu_features, split_kernels  # noqa: E402


def _model_and_images(name: str, quick: bool):
    from genie.export.latency import latency_model

    return latency_model(name, quick)


def _files(name: str, model, images, size: int, out: Path) -> dict:
    """The ONNX files of :data:`genie.export.latency.LATENCY_FILES` for ``model`` (W8A8, round to nearest, step sizes searched
    on ``images``)."""
    from genie.export.latency import build_latency_files

    return build_latency_files(name, model, images, size, out)


def latency(args, out: Path) -> list:
    from genie.export.latency import measure_latency
    from genie.export.runtime import operator_counts

    rows = []
    for name in args.models:
        model, images, size = _model_and_images(name, args.quick)
        files = _files(name, model, images, size, out)
        kernels = {k: operator_counts(p, optimized=True, work_dir=str(out)) for k, p in files.items()}
        for row in measure_latency(name, files, size, args.threads, args.batches, args.calls, args.seconds):
            rows.append(row)
            print(row, flush=True)
        for k, counts in kernels.items():
            ints, floats = split_kernels(counts)
            print(f"{name} {k}: integer {ints} float {floats}", flush=True)
            rows_k = {"model": name, "file": k, "integer_kernels": ints, "float_kernels": floats}
            (out / f"{name}_{k}_kernels.json").write_text(json.dumps(rows_k, indent=2) + "\n")
    return rows


def op_profile(args, out: Path) -> list:
    """onnxruntime's profiler on each file of :data:`genie.export.latency.LATENCY_FILES`, batch 1, one thread: milliseconds per
    call spent in each operator type (the optimised graph's kernels), mean over the calls."""
    import torch

    from genie.export.graph import INPUT_NAME
    from genie.export.runtime import require_onnxruntime

    ort = require_onnxruntime()
    rows = []
    for name in args.models:
        model, images, size = _model_and_images(name, args.quick)
        files = _files(name, model, images, size, out)
        x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1)).numpy()
        for key, path in files.items():
            opts = ort.SessionOptions()
            opts.intra_op_num_threads, opts.inter_op_num_threads, opts.log_severity_level = 1, 1, 3
            opts.enable_profiling = True
            opts.profile_file_prefix = str(out / f"profile_{name}_{key}")
            session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
            for _ in range(3):
                session.run(None, {INPUT_NAME: x})
            calls = max(3, args.calls)
            for _ in range(calls):
                session.run(None, {INPUT_NAME: x})
            trace = json.loads(Path(session.end_profiling()).read_text())
            per_op: dict = {}
            for event in trace:
                if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time"):
                    op = event.get("args", {}).get("op_name", "?")
                    per_op[op] = per_op.get(op, 0.0) + event["dur"] / 1e3
            total_calls = calls + 3
            top = sorted(per_op.items(), key=lambda kv: -kv[1])
            row = {"model": name, "file": key, "ms_per_call": round(sum(per_op.values()) / total_calls, 2),
                   "by_op_ms": {op: round(ms / total_calls, 2) for op, ms in top[:8]}}
            rows.append(row)
            print(row, flush=True)
    return rows


def accuracy(args, out: Path) -> list:
    todo = []
    for seed in args.seeds:
        for bits in (8, 4):
            for profile in ("paper", "deploy"):
                folder = out / f"w{bits}a{bits}-{profile}-s{seed}"
                options = ["--model", "resnet20_cifar10", "--data", "real", "--batch-size", "32",
                           "--w-bits", str(bits), "--a-bits", str(bits), "--profile", profile, "--seed", str(seed),
                           "--samples", str(args.samples), "--recon-iters", str(args.iters),
                           "--test-source", "lossless100" if args.quick else "auto"]
                todo.append((folder, options, out / f"{folder.name}.log"))
    genie_runs(todo, args.jobs)
    cells = {}
    for folder, _, _ in todo:
        r = json.loads((folder / "result.json").read_text())
        key = folder.name.rsplit("-s", 1)[0]
        cells.setdefault(key, []).append((r["q_top1"], r["extra"]["q_agree_fp32"]))
    rows = []
    for bits in (8, 4):
        paper, deploy = cells[f"w{bits}a{bits}-paper"], cells[f"w{bits}a{bits}-deploy"]
        rows.append({"bits": f"W{bits}A{bits}", "seeds": len(paper),
                     "paper_top1": [t for t, _ in paper], "deploy_top1": [t for t, _ in deploy],
                     "paper_mean": round(statistics.mean(t for t, _ in paper), 3),
                     "deploy_mean": round(statistics.mean(t for t, _ in deploy), 3),
                     "cost": round(statistics.mean(t for t, _ in paper) - statistics.mean(t for t, _ in deploy), 3),
                     "paper_agree_fp32": round(statistics.mean(a for _, a in paper), 3),
                     "deploy_agree_fp32": round(statistics.mean(a for _, a in deploy), 3)})
        print(rows[-1], flush=True)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["latency", "profile", "accuracy", "all"])
    p.add_argument("--models", nargs="+", default=["resnet20_cifar10", "resnet18", "mobilenet_v2"])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    p.add_argument("--calls", type=int, default=20, help="at least this many timed calls per measurement")
    p.add_argument("--seconds", type=float, default=3.0, help="and at least this many seconds")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--samples", type=int, default=256)
    p.add_argument("--iters", type=int, default=300)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="tiny settings (a check that the script runs)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "_out" / "deploy"))
    args = p.parse_args(argv)
    if args.quick:
        args.models, args.threads, args.batches, args.calls, args.seconds = ["resnet20_cifar10"], [1], [1], 2, 0.0
        args.seeds, args.samples, args.iters = [0], 16, 1
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tables = {"cpu": [cpu_features()]}
    print(tables["cpu"][0], flush=True)
    for name, fn in (("latency", latency), ("profile", op_profile), ("accuracy", accuracy)):
        if args.what in (name, "all"):
            tables[name] = fn(args, out)
    (out / "deploy.json").write_text(json.dumps(tables, indent=2) + "\n")
    text = "\n".join(markdown_table(name, rows) for name, rows in tables.items())
    (out / "deploy.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
