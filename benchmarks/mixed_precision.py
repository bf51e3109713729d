"""Mixed precision against uniform bits at equal weight memory, and what the sensitivity costs.

    python benchmarks/mixed_precision.py accuracy [--seeds 0 1 2] [--iters 2000] [--samples 1024] [--jobs 2]
    python benchmarks/mixed_precision.py zeroshot [--seeds 0 1 2] [--distill-samples 256] [--distill-iters 500] [--iters 2000]
    python benchmarks/mixed_precision.py timing   [--threads 2] [--repeats 3]
    python benchmarks/mixed_precision.py table    (the accuracy table again from the finished runs)
    python benchmarks/mixed_precision.py export   (the budget-3 model of the first seed in onnxruntime)

``accuracy``: few-shot ResNet-20 (``--samples`` real images of ``cifar10_train_calib5k.npz``
drawn with the seed), A4, ``--iters`` reconstruction iterations per unit, batch 32, top-1 on
the whole ``cifar10_test.npz``: uniform W2 and W3 against mixed precision at
``--budget-bits`` 2.5 and 3 (KL sensitivity on the first 256 calibration images, candidates
2, 3, 4, 8), for each seed. Each run is ``python -m genie run`` in its own process (``--jobs``
at a time, one thread each) into ``OUT/<case>-s<seed>/``; a run whose ``result.json`` exists
is not run again. The table (``mixed_precision.md``) gives top-1, agreement with FP32's top-1,
weight memory and seconds per run, and the means over seeds.

``zeroshot``: the same comparison at budget 2.5 on one GENIE-D set (distilled once, seed 0),
reconstructed with each of ``--seeds`` (into ``OUT/zs-<case>-s<seed>/``).

``timing``: seconds of a full sensitivity table of ResNet-20 on 256 real images at candidates
2, 3, 4, 8 (KL and Fisher), ``--repeats`` times in this process with ``--threads`` threads.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from genie.assets import use_checkout_assets  # noqa: E402
from runs import genie_runs  # noqa: E402  (benchmarks/runs.py)

use_checkout_assets(ROOT)

BASE = ["--model", "resnet20_cifar10", "--a-bits", "4", "--batch-size", "32"]
CASES = {  # name: genie run options
    "W2A4": ["--w-bits", "2"],
    "mixed2.5": ["--w-bits", "mixed", "--budget-bits", "2.5"],
    "W3A4": ["--w-bits", "3"],
    "mixed3": ["--w-bits", "mixed", "--budget-bits", "3"],
}
ZERO_SHOT_CASES = ("W2A4", "mixed2.5")


def accuracy(args, out: Path) -> None:
    todo = []
    for seed in args.seeds:
        for case, options in CASES.items():
            folder = out / f"{case}-s{seed}"
            todo.append((folder, [*BASE, *options, "--data", "real", "--samples", str(args.samples), "--seed", str(seed),
                                  "--recon-iters", str(args.iters)], out / f"{case}-s{seed}.log"))
    genie_runs(todo, args.jobs)


def zeroshot(args, out: Path) -> None:
    calib = out / "distilled.pt"
    if not calib.exists():
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        subprocess.run([sys.executable, "-m", "genie", "distill", "--model", "resnet20_cifar10", "--samples",
                        str(args.distill_samples), "--distill-iters", str(args.distill_iters), "--seed", "0",
                        "--device", "cpu", "--no-progress", "--out", str(calib),
                        # an interrupted distillation resumes at its first unfinished batch
                        "--checkpoint-dir", str(out / "zs-distill-checkpoints")], env=env, check=True)
    # one distilled set (seed 0); --seeds are the reconstruction's seeds (batches, QDrop masks)
    todo = [(out / f"zs-{case}-s{seed}", [*BASE, *CASES[case], "--data", "synthetic", "--calib-file", str(calib),
                                          "--seed", str(seed), "--recon-iters", str(args.iters)],
             out / f"zs-{case}-s{seed}.log")
            for seed in args.seeds for case in ZERO_SHOT_CASES]
    genie_runs(todo, args.jobs)


def _row(folder: Path) -> dict:
    r = json.loads((folder / "result.json").read_text())
    e = r["extra"]
    return {"run": folder.name, "top1": r["q_top1"], "agree": e["q_agree_fp32"], "bytes": e["weight_bytes"],
            "bits": e["weight_bits_avg"], "sens_s": e.get("sensitivity_seconds"), "recon_s": r["recon_seconds"],
            "fp": r["fp_top1"], "samples": r["samples"], "iters": r["recon_iters"], "calib": r["calib_source"]}


def table(out: Path) -> str:
    rows = [_row(f) for f in sorted(out.iterdir()) if (f / "result.json").exists()]
    lines = ["| run | top-1 | same top-1 as FP32 | weight bytes | bits/weight | sensitivity s | reconstruction s |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        sens = f"{r['sens_s']:.1f}" if r["sens_s"] is not None else "-"
        lines.append(f"| {r['run']} | {r['top1']:.2f} | {r['agree']:.2f} | {r['bytes']} | {r['bits']:.3f} | {sens} | "
                     f"{r['recon_s']:.0f} |")
    cases = {}
    for r in rows:
        if "-s" in r["run"]:
            cases.setdefault(r["run"].rsplit("-s", 1)[0], []).append(r)
    if cases:
        lines += ["", "| case | seeds | mean top-1 | sd | mean same top-1 as FP32 | weight bytes |", "|---|---|---|---|---|---|"]
        for case, rs in cases.items():
            tops = [r["top1"] for r in rs]
            sd = statistics.stdev(tops) if len(tops) > 1 else 0.0
            lines.append(f"| {case} | {len(rs)} | {statistics.mean(tops):.2f} | {sd:.2f} | "
                         f"{statistics.mean(r['agree'] for r in rs):.2f} | {rs[0]['bytes']} |")
    if rows:
        # each run draws its images with its own seed: the file and count are shared, the draw is not
        calib = re.sub(r", seed \d+\)", ")", rows[0]["calib"])
        lines += ["", f"FP32 top-1 {rows[0]['fp']:.2f}; calibration: {calib}, drawn with each run's seed; "
                      f"{rows[0]['iters']} iterations per unit"]
    text = "\n".join(lines) + "\n"
    (out / "mixed_precision.md").write_text(text)
    return text


def timing(args) -> str:
    import torch

    from genie.data import cifar10_calibration
    from genie.models import load_model, model_spec
    from genie.quant.sensitivity import measure_sensitivity

    torch.set_num_threads(args.threads)
    spec = model_spec("resnet20_cifar10")
    model = load_model("resnet20_cifar10")
    x = cifar10_calibration(256, spec.mean, spec.std, seed=0).images
    lines = [f"ResNet-20, 256 real images, candidates 2,3,4,8, {args.threads} threads, "
             f"{torch.__version__}, {args.repeats} repeats", "", "| method | seconds (each repeat) | median |",
             "|---|---|---|"]
    for method in ("kl", "fisher"):
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            measure_sensitivity(model, x, (2, 3, 4, 8), method)
            times.append(time.perf_counter() - t0)
        lines.append(f"| {method} | {', '.join(f'{t:.1f}' for t in times)} | {statistics.median(times):.1f} |")
    return "\n".join(lines) + "\n"


def export(args, out: Path) -> str:
    """The ``mixed3-s<seed>`` run's model exported to ONNX (qcdq), onnxruntime's top-1 on the whole
    test file against genie's (its ``result.json``), and each layer's bits in the graph."""
    from genie.data import cifar10_test
    from genie.export import export_onnx
    from genie.export.runtime import evaluate_onnx
    from genie.models import model_spec
    from genie.quant import load_quantized

    run = out / f"mixed3-s{args.seeds[0]}"
    record = json.loads((run / "result.json").read_text())
    qm = load_quantized(run / "qmodel.pt")
    report = export_onnx(qm, run / "model.onnx", (1, 3, 32, 32))
    spec = model_spec(record["model"])
    ours = record["q_top1"]
    theirs = evaluate_onnx(report.path, cifar10_test(spec.mean, spec.std))["top1"]
    import onnx

    props = {p.key: p.value for p in onnx.load(str(report.path)).metadata_props}
    bits = json.loads(props["w_bits_per_layer"])
    counts = {}
    for b in bits.values():
        counts[b] = counts.get(b, 0) + 1
    text = (f"{run.name}: genie top-1 {ours:.2f}, onnxruntime {theirs:.2f} ({theirs - ours:+.2f}) on "
            f"{record['test_file']}; layers by weight bits {dict(sorted(counts.items()))}; {report.file_bytes} bytes")
    (out / "mixed3_onnx.md").write_text(text + "\n")
    return text


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("what", choices=["accuracy", "zeroshot", "timing", "table", "export"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--iters", type=int, default=2000)
    p.add_argument("--samples", type=int, default=1024)
    p.add_argument("--distill-samples", type=int, default=256)
    p.add_argument("--distill-iters", type=int, default=500)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "_out" / "mixed_precision"))
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.what == "timing":
        print(timing(args))
        return 0
    if args.what == "export":
        print(export(args, out))
        return 0
    if args.what == "accuracy":
        accuracy(args, out)
    elif args.what == "zeroshot":
        zeroshot(args, out)
    print(table(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
