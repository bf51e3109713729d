"""Paired top-1 comparison of finished runs: for each pair of ``python -m genie run`` output
folders (each with ``qmodel.pt`` and ``result.json``), both quantized models are evaluated on
the same CIFAR-10 test file, and the table gives each top-1, how many predictions differ, the
images only one of them gets right, and McNemar's exact p-value (:mod:`genie.compare`).

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


def predictions(run: Path, test_cache: dict, images: int):
    from genie.data import cifar10_test, predict_classes
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
    return predict_classes(model, x), labels, record


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

    from genie.compare import paired_top1
    from genie.files import write_atomically

    torch.set_num_threads(args.threads)
    tests, predicted, rows = {}, {}, []
    for run in dict.fromkeys(args.runs):  # a run in several pairs is evaluated once
        predicted[run] = predictions(Path(run), tests, args.images)
    for a, b in zip(args.runs[::2], args.runs[1::2]):
        (pa, labels, ra), (pb, _, rb) = predicted[a], predicted[b]
        row = {"a": a, "b": b, "result_a": ra["q_top1"], "result_b": rb["q_top1"], **paired_top1(pa, pb, labels)}
        rows.append(row)
    lines = ["| A | B | top-1 A | top-1 B | predictions differ | only A right | only B right | McNemar p |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {Path(r['a']).name} | {Path(r['b']).name} | {r['top1_a']:.2f} | {r['top1_b']:.2f} | "
                     f"{r['predictions_differ']} | {r['only_a_right']} | {r['only_b_right']} | {r['p_value']:.3f} |")
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
