"""Benchmarks (not tests) of the ONNX export: accuracy parity with genie, the cost of symmetric
weights, and onnxruntime latency. CPU; every table is printed and written as JSON and Markdown
under ``--out`` (default ``benchmarks/_out``).

    python benchmarks/onnx_export.py parity      # W8A8/W4A4/W2A4 few-shot ResNet-20: genie vs onnxruntime top-1
    python benchmarks/onnx_export.py symmetric   # W4A4/W8A8 asymmetric vs --weight-symmetric top-1
    python benchmarks/onnx_export.py latency     # onnxruntime ms/image, FP32 graph vs W8A8 QDQ
    python benchmarks/onnx_export.py all --quick # tiny settings: checks the script runs

Few-shot setting: 256 real images of ``cifar10_train_calib5k.npz`` (seed 0), 300 reconstruction
iterations per unit, batch 32; top-1 on all of ``cifar10_test.npz``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from genie.assets import use_checkout_assets  # noqa: E402
from runs import markdown_table  # noqa: E402  (benchmarks/runs.py)

use_checkout_assets(ROOT)

from genie.data import cifar10_calibration, cifar10_test  # noqa: E402
from genie.export import export_onnx  # noqa: E402
from genie.export.runtime import evaluate_onnx, integer_parity, latency_ms, operator_counts  # noqa: E402
from genie.files import write_atomically  # noqa: E402
from genie.models import load_model, model_spec  # noqa: E402
from genie.pipeline import RunConfig, run  # noqa: E402
from genie.quant import quantize_model, reconstruct  # noqa: E402


def _run(args, out: Path, w_bits: int, a_bits: int, symmetric: bool = False) -> dict:
    cfg = RunConfig(model="resnet20_cifar10", w_bits=w_bits, a_bits=a_bits, data="real", samples=args.samples,
                    recon_iters=args.iters, seed=args.seed, device="cpu", out=str(out), progress=False,
                    weight_symmetric=symmetric, export_onnx=True, test_source=args.test_source)
    t0 = time.perf_counter()
    result = run(cfg)
    return {"result": result, "seconds": time.perf_counter() - t0}


def parity(args) -> list:
    spec = model_spec("resnet20_cifar10")
    test = cifar10_test(spec.mean, spec.std, source=args.test_source)
    rows = []
    for w_bits, a_bits in ((8, 8), (4, 4), (2, 4)):
        out = Path(args.out) / f"parity_w{w_bits}a{a_bits}"
        r = _run(args, out, w_bits, a_bits)
        v, qmodel = r["result"].values, r["result"].qmodel
        onnx_eval = evaluate_onnx(out / "model.onnx", test)
        with torch.no_grad():
            ours = torch.cat([qmodel(test.images[i:i + 500]).argmax(1) for i in range(0, len(test), 500)]).numpy()
        per_tensor = integer_parity(qmodel, out / "model.onnx", test.images[:256])
        rows.append({
            "bits": f"W{w_bits}A{a_bits}", "genie_top1": v["q_top1"], "onnx_top1": onnx_eval["top1"],
            "top1_diff": round(onnx_eval["top1"] - v["q_top1"], 4),
            "same_prediction_pct": float((ours == onnx_eval["predictions"]).mean() * 100),
            "max_step_diff": max(d for d, _ in per_tensor.values()),
            "max_frac_differing": max(f for _, f in per_tensor.values()),
            "fp_top1": v["fp_top1"], "seconds": round(r["seconds"], 1),
        })
        print(rows[-1], flush=True)
    return rows


def symmetric(args) -> list:
    rows = []
    for w_bits, a_bits in ((4, 4), (8, 8)):
        for sym in (False, True):
            out = Path(args.out) / f"symmetric_w{w_bits}a{a_bits}_{'sym' if sym else 'asym'}"
            r = _run(args, out, w_bits, a_bits, sym)
            v = r["result"].values
            rows.append({"bits": f"W{w_bits}A{a_bits}", "weights": "symmetric" if sym else "asymmetric",
                         "top1": v["q_top1"], "fp_top1": v["fp_top1"], "seconds": round(r["seconds"], 1)})
            print(rows[-1], flush=True)
    return rows


def latency(args) -> list:
    spec = model_spec("resnet20_cifar10")
    model = load_model("resnet20_cifar10")
    calib = cifar10_calibration(256, spec.mean, spec.std, seed=args.seed).images
    qmodel = quantize_model(model, calib, w_bits=8, a_bits=8, quantizer="nearest")
    reconstruct(qmodel, calib, iters=0, progress=False)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fp_path, q_path = out / "latency_fp32.onnx", out / "latency_w8a8.onnx"
    export_onnx(qmodel, fp_path, calib, quantized=False)
    export_onnx(qmodel, q_path, calib)
    kernels = {k: v for k, v in operator_counts(q_path, optimized=True).items()
               if k in ("QLinearConv", "ConvInteger", "QGemm", "MatMulInteger")}
    rows = []
    for threads in args.threads:
        for batch in args.batches:
            x = calib[:batch]
            fp = latency_ms(fp_path, x, threads=threads, repeats=args.repeats)
            q = latency_ms(q_path, x, threads=threads, repeats=args.repeats)
            rows.append({"threads": threads, "batch": batch, "fp32_ms_per_image": round(fp["per_image_ms"], 4),
                         "w8a8_ms_per_image": round(q["per_image_ms"], 4),
                         "speedup": round(fp["per_image_ms"] / q["per_image_ms"], 2), "integer_kernels": kernels})
            print(rows[-1], flush=True)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["parity", "symmetric", "latency", "all"])
    p.add_argument("--samples", type=int, default=256)
    p.add_argument("--iters", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--test-source", default="auto")
    p.add_argument("--quick", action="store_true", help="tiny settings (a check that the script runs)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "_out" / "onnx_export"))
    args = p.parse_args(argv)
    if args.quick:
        args.samples, args.iters, args.test_source, args.repeats = 16, 2, "lossless100", 3
        args.threads, args.batches = [1], [1]
    tables = {}
    for name, fn in (("parity", parity), ("symmetric", symmetric), ("latency", latency)):
        if args.what in (name, "all"):
            tables[name] = fn(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    header = f"torch {torch.__version__}, {torch.get_num_threads()} torch threads, commit-independent settings: " \
             f"{args.samples} images, {args.iters} iterations, seed {args.seed}\n\n"
    text = header + "\n".join(markdown_table(k, v) for k, v in tables.items())
    write_atomically(out / f"{args.what}.md", text.encode(), "the benchmark table")
    write_atomically(out / f"{args.what}.json", json.dumps(tables, indent=2, default=str).encode(), "the benchmark table")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
