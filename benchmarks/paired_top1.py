"""Paired top-1 comparison of finished runs: for each pair of ``python -m genie run`` output
folders (each with ``qmodel.pt`` and ``result.json``), both quantized models are evaluated on
the same CIFAR-10 test file, and the table gives each top-1, how many predictions differ, the
images only one of them gets right, and McNemar's exact p-value (:mod:`genie.compare`). A second
table compares them with the FP32 model they approximate, on the same images: how often each
agrees with its top-1 (with the same paired test), and the distance of their logits from its
(squared error summed over classes, and KL divergence, averaged over images).

    python benchmarks/paired_top1.py RUN_A RUN_B [RUN_C RUN_D ...] [--threads 2]

Used for "is GENIE-M ahead of AdaRound, or is that the test file's noise?" (benchmarks/RESULTS.md).
Writes ``paired_top1.md`` and ``paired_top1.json`` under ``--out`` (default ``benchmarks/_out``).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from genie.assets import use_checkout_assets  # noqa: E402

use_checkout_assets(ROOT)


def outputs(run: Path, test_cache: dict, fp_cache: dict, images: int):
    """The run's quantized model's logits on the first ``images`` test images, the labels, its
    ``result.json`` and the FP32 model's logits on the same images."""
    from genie.data import cifar10_test, predict_logits
    from genie.errors import GenieError
    from genie.models import load_model, model_spec
    from genie.quant import load_quantized

    record = json.loads((run / "result.json").read_text())
    if record.get("test_file") != "cifar10_test.npz":
        raise GenieError(f"{run}: evaluated on {record.get('test_file')!r}; this script compares CIFAR-10 runs "
                         "evaluated on cifar10_test.npz")
    spec = model_spec(record["model"])
    key = (tuple(spec.mean), tuple(spec.std))
    if key not in test_cache:
        test_cache[key] = cifar10_test(spec.mean, spec.std)
    test = test_cache[key]
    x, labels = test.images[:images], test.labels[:images]
    model = load_quantized(run / "qmodel.pt", model=load_model(record["model"], pretrained=False))
    if record["model"] not in fp_cache:
        fp_cache[record["model"]] = predict_logits(load_model(record["model"]), x)
    return predict_logits(model, x), labels, record, fp_cache[record["model"]]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", help="run folders, taken in pairs (A B A B ...)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--images", type=int, default=10000, help="the first N test images (default: all 10000)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "_out"))
    args = p.parse_args(argv)
    if len(args.runs) % 2:
        p.error(f"runs come in pairs; got {len(args.runs)} folders")
    import torch

    from genie.compare import logit_distance, paired_top1
    from genie.files import write_atomically

    torch.set_num_threads(args.threads)
    tests, fps, logits, rows = {}, {}, {}, []
    for run in dict.fromkeys(args.runs):  # a run in several pairs is evaluated once
        logits[run] = outputs(Path(run), tests, fps, args.images)
    for a, b in zip(args.runs[::2], args.runs[1::2]):
        (za, labels, ra, fp), (zb, _, rb, fp_b) = logits[a], logits[b]
        if fp_b is not fp:
            p.error(f"{a} and {b} quantize different models ({ra['model']}, {rb['model']}); pair runs of one model")
        pa, pb = za.argmax(1), zb.argmax(1)
        row = {"a": a, "b": b, "result_a": ra["q_top1"], "result_b": rb["q_top1"], **paired_top1(pa, pb, labels)}
        agree = paired_top1(pa, pb, fp.argmax(1))  # "right" = the FP32 model's class
        dist_a, dist_b = logit_distance(za, fp), logit_distance(zb, fp)
        row["vs_fp32"] = {"agree_a": agree["top1_a"], "agree_b": agree["top1_b"],
                          "only_a_agrees": agree["only_a_right"], "only_b_agrees": agree["only_b_right"],
                          "p_value": agree["p_value"], "logit_mse_a": dist_a["logit_mse"],
                          "logit_mse_b": dist_b["logit_mse"], "kl_a": dist_a["kl"], "kl_b": dist_b["kl"]}
        rows.append(row)
    lines = ["| A | B | top-1 A | top-1 B | predictions differ | only A right | only B right | McNemar p |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {Path(r['a']).name} | {Path(r['b']).name} | {r['top1_a']:.2f} | {r['top1_b']:.2f} | "
                     f"{r['predictions_differ']} | {r['only_a_right']} | {r['only_b_right']} | {r['p_value']:.3f} |")
    lines += ["", "Against the FP32 model's outputs on the same images:", "",
              "| A | B | agrees with FP32 A (%) | B (%) | only A agrees | only B agrees | McNemar p "
              "| logit MSE A | B | KL A | B |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        f = r["vs_fp32"]
        lines.append(f"| {Path(r['a']).name} | {Path(r['b']).name} | {f['agree_a']:.2f} | {f['agree_b']:.2f} | "
                     f"{f['only_a_agrees']} | {f['only_b_agrees']} | {f['p_value']:.3f} | {f['logit_mse_a']:.3f} | "
                     f"{f['logit_mse_b']:.3f} | {f['kl_a']:.4f} | {f['kl_b']:.4f} |")
    for r in rows:
        for side in ("a", "b"):
            if abs(r[f"top1_{side}"] - r[f"result_{side}"]) > 1e-6:  # float order: other threads or device
                lines.append(f"\n{r[side]}: top-1 {r[f'top1_{side}']:.2f} here, {r[f'result_{side}']:.2f} in its "
                             "result.json (rerun with the run's thread count to get its exact predictions)")
    text = "\n".join(lines) + "\n"
    print(text, end="")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_atomically(out / "paired_top1.md", text.encode(), "the comparison table")
    write_atomically(out / "paired_top1.json", json.dumps(rows, indent=1).encode(), "the comparison rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
