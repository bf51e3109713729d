"""Benchmarks (not tests): speed and accuracy of genie at the paper's full setting.

    python benchmarks/bench.py all                  # everything below, full setting, GPU if present
    python benchmarks/bench.py quantize             # few-shot W4A4/W2A4 ResNet-20, genie vs adaround
    python benchmarks/bench.py distill              # GENIE-D throughput, 1024 images
    python benchmarks/bench.py pipeline             # zero-shot W4A4/W2A4, full setting
    python benchmarks/bench.py ablation             # the paper's Table 2 (M1..M5) at W2A4
    python benchmarks/bench.py all --quick          # tiny settings: checks the script runs (CPU)

Full setting: 1024 calibration images, 4000 distillation iterations per batch of 128,
20000 reconstruction iterations per unit, batch 32. Every table names its device, and results
are written as JSON and Markdown under ``--out`` (default ``benchmarks/_out``). ``--cuda-graph``
(default on a GPU) replays training steps as CUDA graphs; the script first checks on a short run
that graph replay gives the same result as eager execution and says so in the output.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from genie.assets import use_checkout_assets  # noqa: E402

use_checkout_assets(ROOT)

from genie.distill import distill  # noqa: E402
from genie.files import write_atomically, write_json  # noqa: E402
from genie.methods import TABLE2  # noqa: E402
from genie.models import load_model, model_spec  # noqa: E402
from genie.pipeline import RunConfig, device_name, run  # noqa: E402
from genie.quant import quantize_model, reconstruct  # noqa: E402
from genie.record import RunRecord  # noqa: E402

ABLATION = [(name, m["distiller"], m["swing"], m["quantizer"]) for name, m in TABLE2.items()]  # Table 2 rows


def settings(args) -> dict:
    if args.quick:
        return dict(samples=16, recon_iters=2, distill_iters=2, distill_batch=8, test_source="lossless100")
    return dict(samples=1024, recon_iters=20000, distill_iters=4000, distill_batch=128, test_source="auto")


def base_config(args, **kw) -> RunConfig:
    s = settings(args)
    return RunConfig(model=args.model, samples=s["samples"], recon_iters=s["recon_iters"],
                     distill_iters=s["distill_iters"], distill_batch=s["distill_batch"], test_source=s["test_source"],
                     seed=args.seed, device=args.device, cuda_graph=args.cuda_graph, progress=not args.no_progress, **kw)


def within_noise(graph_diff: float, eager_diff: float, tolerance: float, factor: float = 3.0) -> bool:
    """Whether graph replay's distance from an eager run (``graph_diff``) is within
    ``tolerance`` or within ``factor`` times the distance between two eager runs of the same
    seed (``eager_diff``): on a GPU, atomics in some kernels (e.g. a convolution's weight
    gradient) make two eager runs differ, and Adam grows such differences over iterations, so a
    fixed tolerance alone could reject graphs that replay the same computation."""
    return graph_diff <= max(tolerance, factor * eager_diff)


def _max_rel_diff(a: list, b: list) -> float:
    return max(abs(x - y) / max(abs(x), 1e-12) for x, y in zip(a, b))


def check_graph_replay(args) -> dict:
    """Short eager vs CUDA-graph runs from the same seed: reconstruction errors and distilled
    images must agree (to float tolerance, or to the spread of two eager runs) before graph
    timings are worth reporting."""
    device = torch.device(args.device)
    if device.type != "cuda" or not args.cuda_graph:
        return {"checked": False, "reason": "no CUDA device or --no-cuda-graph"}
    spec = model_spec(args.model)
    model = load_model(args.model).to(device)
    out = {"checked": True}
    # eager, eager again (the run-to-run spread), graph
    sets = [distill(model, spec.image_size, num_images=256, iters=50, seed=1, progress=False, cuda_graph=g)
            for g in (False, False, True)]
    out["distill_max_abs_diff"] = float((sets[0].images - sets[2].images).abs().max())
    out["distill_max_abs_diff_eager_twice"] = float((sets[0].images - sets[1].images).abs().max())
    out["distill_loss_eager_eager_graph"] = [s.final_loss for s in sets]
    errors = []
    for graph in (False, False, True):
        qm = quantize_model(model, sets[0].images.to(device), w_bits=4, a_bits=4)
        qm.unit_names = qm.unit_names[:3]
        rep = reconstruct(qm, sets[0].images.to(device), iters=200, seed=1, progress=False, cuda_graph=graph)
        errors.append([u.final_error for u in rep.units])
    out["recon_final_errors_eager"], out["recon_final_errors_eager_again"], out["recon_final_errors_graph"] = errors
    out["recon_max_rel_diff"] = _max_rel_diff(errors[0], errors[2])
    out["recon_max_rel_diff_eager_twice"] = _max_rel_diff(errors[0], errors[1])
    # QDrop masks differ in order between eager and replay only if the RNG offsets do; the errors
    # of a 200-iteration run must still agree closely
    out["agree"] = (within_noise(out["distill_max_abs_diff"], out["distill_max_abs_diff_eager_twice"], 1e-2)
                    and within_noise(out["recon_max_rel_diff"], out["recon_max_rel_diff_eager_twice"], 0.05))
    return out


def bench_quantize(args, rows, records):
    for bits in (4, 2):
        for quantizer in ("genie", "adaround"):
            r = run(base_config(args, data="real", w_bits=bits, a_bits=4, quantizer=quantizer)).record("bench")
            r.extra["bench"] = "few-shot"
            records.append(r.to_dict())
            rows.append({"bench": "few-shot", "model": r.model, "bits": f"W{bits}A4", "quantizer": quantizer,
                         "data": f"real x{r.samples}", "recon_iters": r.recon_iters, "fp_top1": r.fp_top1,
                         "q_top1": r.q_top1, "recon_s": round(r.recon_seconds, 1),
                         "total_s": round(r.total_seconds, 1), "test_file": r.test_file, "device": r.device_name})
            print(rows[-1], flush=True)


def bench_distill(args, rows, records):
    spec = model_spec(args.model)
    device = torch.device(args.device)
    model = load_model(args.model).to(device)
    s = settings(args)
    iters = 3 if args.quick else 400
    n = 16 if args.quick else 1024
    distill(model, spec.image_size, num_images=n, iters=3, batch_size=s["distill_batch"], progress=False,
            cuda_graph=args.cuda_graph)  # warm-up (cuDNN autotune, allocator)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    ds = distill(model, spec.image_size, num_images=n, iters=iters, batch_size=s["distill_batch"],
                 progress=False, cuda_graph=args.cuda_graph)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    meta = ds.metadata
    records.append(RunRecord(
        producer="bench", model=args.model, data="synthetic", samples=n, distiller=meta["distiller"],
        swing=meta["swing"], distill_iters=iters, initial_bns_loss=ds.initial_loss, final_bns_loss=ds.final_loss,
        seed=meta["seed"], device=str(device), device_name=device_name(device), distill_seconds=seconds,
        extra={"bench": "distill throughput", "iters_per_s": iters / seconds, "cuda_graph": bool(args.cuda_graph)},
    ).to_dict())
    rows.append({"bench": "distill throughput", "model": args.model, "images": n, "iters_measured": iters,
                 "iters_per_s": round(iters / seconds, 2), "s_per_iter_ms": round(1000 * seconds / iters, 2),
                 "final_bns_loss": round(ds.final_loss, 4), "device": device_name(device),
                 "cuda_graph": bool(args.cuda_graph)})
    print(rows[-1], flush=True)


def bench_pipeline(args, rows, records, label, configs):
    for row, distiller, swing, quantizer, bits in configs:
        r = run(base_config(args, data="synthetic", w_bits=bits, a_bits=4, quantizer=quantizer,
                            distiller=distiller, swing=swing)).record("bench")
        r.extra.update(bench=label, row=row)
        records.append(r.to_dict())
        rows.append({"bench": label, "row": row, "model": r.model, "bits": f"W{bits}A4", "distiller": distiller, "swing": swing,
                     "quantizer": quantizer, "distill_iters": r.distill_iters, "recon_iters": r.recon_iters,
                     "fp_top1": r.fp_top1, "q_top1": r.q_top1, "distill_s": round(r.distill_seconds, 1),
                     "recon_s": round(r.recon_seconds, 1), "total_s": round(r.total_seconds, 1),
                     "test_file": r.test_file, "device": r.device_name})
        print(rows[-1], flush=True)


def to_markdown(rows) -> str:
    if not rows:
        return ""
    lines = []
    for bench in dict.fromkeys(r["bench"] for r in rows):
        group = [r for r in rows if r["bench"] == bench]
        keys = list(group[0])
        lines += [f"### {bench}", "", "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
        lines += ["| " + " | ".join(str(r.get(k, "")) for k in keys) + " |" for r in group]
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["all", "quantize", "distill", "pipeline", "ablation"])
    p.add_argument("--model", default="resnet20_cifar10")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="tiny settings, to check the script itself")
    p.add_argument("--cuda-graph", dest="cuda_graph", action="store_true", default=None)
    p.add_argument("--no-cuda-graph", dest="cuda_graph", action="store_false")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "_out"))
    args = p.parse_args(argv)
    if args.cuda_graph is None:
        args.cuda_graph = args.device.startswith("cuda")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows, records, t0 = [], [], time.perf_counter()  # rows: the Markdown tables; records: genie.record, one per run
    meta = {"device": device_name(torch.device(args.device)), "torch": str(torch.__version__),
            "setting": "quick" if args.quick else "full", "cuda_graph": args.cuda_graph,
            "command": "python benchmarks/bench.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    if args.cuda_graph:
        meta["graph_check"] = check_graph_replay(args)
        print("graph check:", meta["graph_check"], flush=True)
    if args.what in ("all", "distill"):
        bench_distill(args, rows, records)
    if args.what in ("all", "quantize"):
        bench_quantize(args, rows, records)
    if args.what in ("all", "pipeline"):
        bench_pipeline(args, rows, records, "zero-shot",
                       [("GENIE", "genie", True, "genie", 4), ("GENIE", "genie", True, "genie", 2)])
    if args.what in ("all", "ablation"):
        bench_pipeline(args, rows, records, "ablation (Table 2)", [(m, d, s, q, 2) for m, d, s, q in ABLATION])
    meta["seconds"] = round(time.perf_counter() - t0, 1)
    name = f"{args.what}{'-quick' if args.quick else ''}"
    write_json(out / f"{name}.json", {"meta": meta, "rows": rows, "records": records}, "the benchmark table")
    md = f"## {name} on {meta['device']} (torch {meta['torch']}, cuda_graph={args.cuda_graph})\n\n"
    md += f"Command: `{meta['command']}`; {meta['seconds']} s in all.\n\n" + to_markdown(rows)
    write_atomically(out / f"{name}.md", md.encode(), "the benchmark table")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
