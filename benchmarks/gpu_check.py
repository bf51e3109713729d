"""The GPU check: one command that measures genie on a GPU in at most about 8 minutes.

    PYTHONPATH=. python benchmarks/gpu_check.py --out $OUT          # on the GPU machine
    python benchmarks/gpu_check.py --tiny --out /tmp/gc             # CPU, seconds: checks the script

Runs with nothing but torch, torchvision and numpy (no venv, no tqdm, no network). The weights
and CIFAR-10 files come from ``$GENIE_ASSETS`` (or ``../shared/assets`` beside the checkout);
on a machine that has neither, copy the asset folder into the checkout under an ignored name
(e.g. ``.gpu-assets/``), carry it there and set ``GENIE_ASSETS=.gpu-assets``.

Stages, each time-boxed from what the earlier ones measured (``--budget-s`` in all):
1. CUDA-graph replay against eager on a short run (distilled images, reconstruction errors);
2. distillation, 1024 images in batches of 128: seconds per iteration from two short runs (the
   slope), with and without CUDA graphs; the paper's 4000 iterations run in full when the
   projection fits the budget, else the projection is reported and labelled as one;
3. reconstruction, ResNet-20 W4A4 on 1024 real images (batch 32): the same at 20000 iterations
   per unit;
4. the whole W4A4 zero-shot pipeline (1024 images, 4000 + 20000 iterations) when it fits;
5. the authors' code at 100 iterations of each stage on the same device, when ``--reference-dir``
   holds it (with ``run_reference.py`` from ``../shared/reference`` copied beside it), and the ratio.
Everything is printed and written to ``OUT/gpu_check.json`` and ``OUT/gpu_check.md``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path
from types import SimpleNamespace

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from genie.assets import use_checkout_assets  # noqa: E402

use_checkout_assets(ROOT)

from bench import check_graph_replay  # noqa: E402
from genie.assets import fetch  # noqa: E402
from genie.data import NPZ_FILES, cifar10_calibration  # noqa: E402
from genie.devices import device_name  # noqa: E402
from genie.distill import distill  # noqa: E402
from genie.files import write_atomically, write_json  # noqa: E402
from genie.models import load_model, model_spec  # noqa: E402
from genie.pipeline import RunConfig, run  # noqa: E402
from genie.quant import quantize_model, reconstruct  # noqa: E402

MODEL = "resnet20_cifar10"
FULL = dict(images=1024, distill_batch=128, distill_iters=4000, recon_iters=20000, probe=(20, 120), reference_iters=100,
            reference_images=1024)
TINY = dict(images=32, distill_batch=16, distill_iters=6, recon_iters=6, probe=(1, 4), reference_iters=2,
            reference_images=128)  # the authors' distillation needs at least one batch of 128


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


class Clock:
    """The budget of the whole check: what is left, and whether a projected run fits in it."""

    def __init__(self, budget_s: float):
        self.deadline = time.perf_counter() + budget_s

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    def fits(self, seconds: float, keep: float = 0.15) -> bool:
        return seconds <= self.left() * (1 - keep)


def slope(time_at, probe: tuple) -> dict:
    """Seconds per iteration as the slope between two iteration counts (what is not an iteration,
    e.g. step-size searches and capturing block inputs, cancels), and that fixed cost."""
    a, b = probe
    ta, tb = time_at(a), time_at(b)
    per_iter = max(tb - ta, 0.0) / (b - a)
    return {"iters": [a, b], "seconds": [round(ta, 3), round(tb, 3)], "s_per_iter": per_iter,
            "fixed_s": max(ta - a * per_iter, 0.0)}


def stage_distill(s: dict, device, graphs: list, clock: Clock) -> dict:
    model = load_model(MODEL).to(device)
    size = model_spec(MODEL).image_size
    out = {}
    for graph in graphs:
        def time_at(iters, graph=graph):
            return _timed(lambda: distill(model, size, num_images=s["images"], batch_size=s["distill_batch"],
                                          iters=iters, progress=False, cuda_graph=graph), device)

        time_at(s["probe"][0])  # warm-up: cuDNN autotune, the allocator
        m = slope(time_at, s["probe"])
        m["projected_s"] = m["fixed_s"] + s["distill_iters"] * m["s_per_iter"]
        out["graph" if graph else "eager"] = m
    best = out["graph" if graphs[-1] else "eager"]
    if clock.fits(best["projected_s"]):
        t = _timed(lambda: distill(model, size, num_images=s["images"], batch_size=s["distill_batch"],
                                   iters=s["distill_iters"], progress=False, cuda_graph=graphs[-1]), device)
        out["full"] = {"measured_s": round(t, 2), "iters": s["distill_iters"]}
    else:
        out["full"] = {"projection_s": round(best["projected_s"], 1), "iters": s["distill_iters"],
                       "note": "projected from the slope, not run (budget)"}
    return out


def stage_recon(s: dict, device, graphs: list, clock: Clock) -> dict:
    spec = model_spec(MODEL)
    model = load_model(MODEL).to(device)
    images = cifar10_calibration(s["images"], spec.mean, spec.std, seed=0).images.to(device)
    out = {}

    def one(iters, graph):
        qm = quantize_model(model, images, w_bits=4, a_bits=4)
        return reconstruct(qm, images, iters=iters, batch_size=32, seed=0, progress=False, cuda_graph=graph)

    for graph in graphs:
        one(s["probe"][0], graph)  # warm-up
        m = slope(lambda iters, graph=graph: _timed(lambda: one(iters, graph), device), s["probe"])
        m["projected_s"] = m["fixed_s"] + s["recon_iters"] * m["s_per_iter"]
        out["graph" if graph else "eager"] = m
    best = out["graph" if graphs[-1] else "eager"]
    if clock.fits(best["projected_s"]):
        t = _timed(lambda: one(s["recon_iters"], graphs[-1]), device)
        out["full"] = {"measured_s": round(t, 2), "iters_per_unit": s["recon_iters"]}
    else:
        out["full"] = {"projection_s": round(best["projected_s"], 1), "iters_per_unit": s["recon_iters"],
                       "note": "projected from the slope, not run (budget)"}
    return out


def stage_pipeline(s: dict, device, graph: bool, tiny: bool, projected: float, clock: Clock) -> dict:
    if not clock.fits(projected):
        return {"projection_s": round(projected, 1), "note": "distillation + reconstruction projections; not run"}
    cfg = RunConfig(model=MODEL, w_bits=4, a_bits=4, data="synthetic", samples=s["images"],
                    distill_batch=s["distill_batch"], distill_iters=s["distill_iters"], recon_iters=s["recon_iters"],
                    device=str(device), cuda_graph=graph, progress=False,
                    test_source="lossless100" if tiny else "auto")
    t0 = time.perf_counter()
    v = run(cfg).values
    return {"measured_s": round(time.perf_counter() - t0, 1), "fp_top1": v["fp_top1"], "q_top1": v["q_top1"],
            "test_file": v["test_file"], "final_bns_loss": v["final_bns_loss"]}


def stage_reference(s: dict, reference_dir: str, genie_s: dict, clock: Clock, out_dir: Path) -> dict:
    """The authors' code at ``reference_iters`` iterations of each stage; genie's time at the same
    count comes from its measured slope and fixed cost."""
    ref = Path(reference_dir or "")
    runner = ref / "run_reference.py"
    if not reference_dir or not (ref / "distill.py").is_file() or not runner.is_file():
        return {"skipped": "no --reference-dir holding the authors' code and run_reference.py"}
    iters = s["reference_iters"]
    # the same weights and test file genie uses, wherever the assets are
    weights, testset = fetch(model_spec(MODEL).checkpoint), fetch(NPZ_FILES["cifar10_test"])
    env = {**os.environ, "OFFICIAL_DIR": str(ref), "SAMPLES": str(s["reference_images"]), "DISTILL_ITER": str(iters),
           "RECON_ITER": str(iters), "BIT_W": "4", "BIT_A": "4", "EVAL_LIMIT": "100",
           "WEIGHTS": str(weights), "TESTSET": str(testset)}
    work = out_dir / "reference"
    out = {"iters": iters}
    for stage, extra in (("distill", []), ("recon", [str(work)])):
        if clock.left() < 30:
            out[stage] = {"skipped": "budget"}
            continue
        t0 = time.perf_counter()
        done = subprocess.run([sys.executable, str(runner), stage, str(work), *extra], env=env, capture_output=True,
                              text=True, timeout=max(30, clock.left()))
        if done.returncode != 0:
            out[stage] = {"failed": done.stderr[-500:]}
            continue
        report = json.loads((work / f"{stage}.json").read_text())
        ref_s = report.get("distill_s") if stage == "distill" else report.get("recon_s")
        out[stage] = {"reference_s": ref_s, "reference_wall_s": round(time.perf_counter() - t0, 1)}
        ours = genie_s.get(stage)
        if ours is None:
            out[stage]["note"] = "not compared: genie's stage failed"
        elif s["reference_images"] == s["images"]:  # genie measured at the same number of images
            genie_at = ours["fixed_s"] + iters * ours["s_per_iter"]
            loop = iters * ours["s_per_iter"]  # genie's iterations alone (the runner times the reference's loops)
            out[stage].update(genie_s=round(genie_at, 2), genie_iterations_only_s=round(loop, 2),
                              speed_ratio=round(ref_s / genie_at, 2) if ref_s else None,
                              speed_ratio_iterations_only=round(ref_s / loop, 2) if ref_s and loop else None)
        else:
            out[stage]["note"] = "not compared: genie ran on another number of images (tiny setting)"
    return out


def guarded(fn) -> dict:
    """``fn()``, or ``{"failed": "..."}`` with the traceback printed: on a GPU lent for minutes,
    one stage's failure must not cost the figures of the others."""
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - recorded and reported, the check goes on
        traceback.print_exc()
        return {"failed": f"{type(exc).__name__}: {exc}"[:500]}


def save(result: dict, out: Path) -> str:
    """Write ``gpu_check.json`` and ``gpu_check.md`` as they stand (after every stage, so a run cut
    short by the device's time limit still leaves what it measured). Returns the Markdown."""
    write_json(out / "gpu_check.json", result, "the GPU check")
    text = markdown(result)
    write_atomically(out / "gpu_check.md", text.encode(), "the GPU check")
    return text


def markdown(result: dict) -> str:
    lines = [f"## GPU check on {result['device_name']} (torch {result['torch']}, {result['setting']} setting)", "",
             f"Command: `{result['command']}`; " + (f"{result['seconds']} s in all." if "seconds" in result
                                                    else "still running when this was written (partial)."), "",
             "| stage | measure | value |", "|---|---|---|"]
    for stage in ("graph_check", "distill", "recon", "pipeline", "reference"):
        for key, value in (result.get(stage) or {}).items():
            cell = json.dumps(value, default=str).replace("|", "\\|")  # an error message may hold a pipe
            lines.append(f"| {stage} | {key} | {cell} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", action="store_true", help="CPU-sized settings: checks the script runs (a test does)")
    p.add_argument("--device", default=None, help="default: cuda when available (cpu with --tiny)")
    p.add_argument("--budget-s", type=float, default=None, help="seconds for the whole check (default 420; tiny 120)")
    p.add_argument("--reference-dir", default=None, help="the authors' code with run_reference.py beside it")
    p.add_argument("--out", default=os.environ.get("OUT") or str(ROOT / "benchmarks" / "_out"))
    args = p.parse_args(argv)
    s = TINY if args.tiny else FULL
    device = torch.device(args.device or ("cpu" if args.tiny or not torch.cuda.is_available() else "cuda"))
    clock = Clock(args.budget_s or (120 if args.tiny else 420))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    graphs = [False, True] if device.type == "cuda" else [False]
    result = {"device_name": device_name(device), "torch": str(torch.__version__), "setting": "tiny" if args.tiny
              else "full", "command": "python benchmarks/gpu_check.py " + " ".join(argv if argv is not None
                                                                                   else sys.argv[1:])}
    if device.type == "cuda":
        result["graph_check"] = guarded(lambda: check_graph_replay(
            SimpleNamespace(model=MODEL, device=str(device), cuda_graph=True)))
        if not result["graph_check"].get("agree"):
            graphs = [False]  # timings of graphs that disagree with eager are not worth reporting
        print("graph check:", result["graph_check"], flush=True)
        save(result, out)
    result["distill"] = guarded(lambda: stage_distill(s, device, graphs, clock))
    print("distill:", result["distill"], flush=True)
    save(result, out)
    result["recon"] = guarded(lambda: stage_recon(s, device, graphs, clock))
    print("recon:", result["recon"], flush=True)
    save(result, out)
    key = "graph" if graphs[-1] else "eager"
    genie_s = {stage: result[stage][key] for stage in ("distill", "recon") if key in result[stage]}
    if len(genie_s) == 2:
        projected = genie_s["distill"]["projected_s"] + genie_s["recon"]["projected_s"]
        result["pipeline"] = guarded(lambda: stage_pipeline(s, device, graphs[-1], args.tiny, projected, clock))
    else:
        result["pipeline"] = {"skipped": "distillation or reconstruction failed: nothing to project from"}
    print("pipeline:", result["pipeline"], flush=True)
    save(result, out)
    result["reference"] = guarded(lambda: stage_reference(s, args.reference_dir, genie_s, clock, out))
    print("reference:", result["reference"], flush=True)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    print(save(result, out))
    failed = [stage for stage, value in result.items() if isinstance(value, dict) and "failed" in value]
    if failed:
        print(f"failed stages: {', '.join(failed)} (the others were measured; see above)", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
