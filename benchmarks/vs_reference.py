"""genie against the authors' code, side by side on this machine: seconds per iteration and ratios.

    python benchmarks/vs_reference.py --reference-dir .reference          # the table (about 15 min, 2 CPU cores)
    python benchmarks/vs_reference.py --tiny --out /tmp/vs                # seconds: checks the script (a test does)

``--reference-dir`` (or ``$OFFICIAL_DIR``) is an unpacked copy of github:SamsungLabs/Genie, which
``../shared/reference/run_reference.py`` runs (see its docstring; never commit it). Without it the
reference columns say "skipped" and genie is measured alone.

Every measurement is a fresh process with the same thread count (``--threads``, default 2) on the
current device (CUDA when present). For each stage, at two iteration counts ``a < b``, the
reference and genie run alternately (reference, genie, reference, genie), ``--repeats`` times; the
fastest time of each (tool, count) is kept and the seconds per iteration is the slope
``(t_b - t_a) / (b - a)``, so what is not an iteration (model set-up, searches, captures)
cancels; genie's fixed reconstruction cost is the intercept ``t_a - a * slope``.

Stages:
* ``distill128`` / ``distill256``: GENIE-D on ResNet-20, 128 / 256 images in batches of 128 (a
  distillation iteration: one step of every batch);
* ``recon``: GENIE-M, ResNet-20 W4A4 on 1024 real CIFAR-10 training images (seed 0), batch 32 in
  both (the reference's batch is N / 32); an iteration: one step of every unit;
* ``scaling`` (genie alone): distillation per iteration at 128/256/512/1024 images and
  reconstruction per iteration of each unit of ResNet-20 (1024 images) and ResNet-56 (256 images).

Writes ``OUT/vs_reference.json`` and ``OUT/vs_reference.md`` (default ``benchmarks/_out``).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNNER = ROOT.parent / "shared" / "reference" / "run_reference.py"

FULL = dict(distill=((128, 128), (256, 128)), distill_iters=(10, 40), recon_images=1024, recon_batch=32,
            recon_iters=(40, 200), scaling_images=(128, 256, 512, 1024), scaling_iters=(5, 15),
            r56_images=256, r56_iters=(20, 80))
TINY = dict(distill=((16, 8),), distill_iters=(1, 3), recon_images=32, recon_batch=8, recon_iters=(1, 3),
            scaling_images=(8, 16), scaling_iters=(1, 2), r56_images=8, r56_iters=(1, 2))


# ---------------------------------------------------------------- workers (one process each)
def _worker(argv: list) -> None:
    """``--worker distill N BATCH ITERS`` or ``--worker recon MODEL N BATCH ITERS IMAGES_FILE``:
    prints one JSON line with the seconds of the stage (set-up excluded)."""
    import torch

    sys.path.insert(0, str(ROOT))
    from genie.assets import use_checkout_assets

    use_checkout_assets(ROOT)
    from genie.devices import resolve_device
    from genie.distill import distill
    from genie.models import load_model, model_spec
    from genie.quant import quantize_model, reconstruct

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
    device = resolve_device(None)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    if argv[0] == "distill":
        n, batch, iters = map(int, argv[1:4])
        model = load_model("resnet20_cifar10").to(device)
        size = model_spec("resnet20_cifar10").image_size
        sync()
        t0 = time.perf_counter()
        distill(model, size, num_images=n, batch_size=batch, iters=iters, progress=False, seed=0)
        sync()
        print(json.dumps({"seconds": time.perf_counter() - t0}))
    else:
        name, n, batch, iters, images_file = argv[1], int(argv[2]), int(argv[3]), int(argv[4]), argv[5]
        model = load_model(name).to(device)
        images = torch.load(images_file)[:n].to(device)
        sync()
        t0 = time.perf_counter()
        qm = quantize_model(model, images, w_bits=4, a_bits=4)
        sync()
        t1 = time.perf_counter()
        report = reconstruct(qm, images, iters=iters, batch_size=batch, seed=0, progress=False)
        sync()
        print(json.dumps({"seconds": time.perf_counter() - t1, "quantize_s": t1 - t0,
                          "units": [[u.name, u.seconds] for u in report.units]}))


# ---------------------------------------------------------------- the driver
class Bench:
    def __init__(self, args):
        self.args = args
        self.s = TINY if args.tiny else FULL
        self.env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
                    "PYTHONUNBUFFERED": "1"}
        ref = args.reference_dir or os.environ.get("OFFICIAL_DIR", "")
        self.reference = None
        if ref and (Path(ref) / "distill.py").is_file() and RUNNER.is_file():
            self.reference = Path(ref).resolve()
        self.reference_skip = None if self.reference else (
            "skipped: no --reference-dir / OFFICIAL_DIR holding the authors' code"
            + ("" if RUNNER.is_file() else f" (and no {RUNNER})"))
        self.work = Path(args.out) / "vs_reference_work"
        self.work.mkdir(parents=True, exist_ok=True)

    def _run(self, cmd: list, env: dict) -> str:
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"vs_reference: {' '.join(cmd[:4])} failed:\n{done.stderr[-2000:]}")
        return done.stdout

    def genie(self, *argv) -> dict:
        out = self._run([sys.executable, __file__, "--worker", *map(str, argv)], self.env)
        return json.loads(out.strip().splitlines()[-1])

    def ref(self, stage: str, n: int, iters: int, calib_dir: Path = None) -> dict:
        from genie.assets import fetch
        from genie.data import NPZ_FILES
        from genie.models import model_spec

        out = self.work / f"ref_{stage}_{n}_{iters}"
        env = {**self.env, "OFFICIAL_DIR": str(self.reference), "SAMPLES": str(n), "DISTILL_ITER": str(iters),
               "RECON_ITER": str(iters), "BIT_W": "4", "BIT_A": "4", "EVAL_LIMIT": "100", "SEED": "0",
               "WEIGHTS": str(fetch(model_spec("resnet20_cifar10").checkpoint)),
               "TESTSET": str(fetch(NPZ_FILES["cifar10_test"]))}
        self._run([sys.executable, str(RUNNER), stage, str(out)] + ([str(calib_dir)] if calib_dir else []), env)
        report = json.loads((out / f"{stage}.json").read_text())
        return {"seconds": report["distill_s"] if stage == "distill" else report["recon_s"]}

    def side_by_side(self, iters: tuple, run_ref, run_genie) -> dict:
        """Interleaved runs at both counts, ``--repeats`` times; fastest of each kept."""
        times = {"reference": {a: [] for a in iters}, "genie": {a: [] for a in iters}}
        extra = {}
        for _ in range(self.args.repeats):
            for a in iters:
                if self.reference:
                    times["reference"][a].append(run_ref(a)["seconds"])
                g = run_genie(a)
                times["genie"][a].append(g["seconds"])
                extra.setdefault(a, []).append(g)
        result = {"iters": list(iters)}
        for tool, by_count in times.items():
            if not by_count[iters[0]]:
                result[tool] = self.reference_skip
                continue
            ta, tb = (min(by_count[a]) for a in iters)
            per = max(tb - ta, 0.0) / (iters[1] - iters[0])
            result[tool] = {"seconds": {str(a): [round(t, 3) for t in by_count[a]] for a in iters},
                            "s_per_iter": per, "fixed_s": max(ta - iters[0] * per, 0.0)}
        if isinstance(result["reference"], dict) and result["genie"]["s_per_iter"] > 0:
            result["ratio"] = result["reference"]["s_per_iter"] / result["genie"]["s_per_iter"]
        return result, extra

    def distill_stage(self, n: int, batch: int) -> dict:
        res, _ = self.side_by_side(self.s["distill_iters"], lambda a: self.ref("distill", n, a),
                                   lambda a: self.genie("distill", n, batch, a))
        res.update(images=n, batch=batch)
        return res

    def calibration_file(self, n: int) -> Path:
        """The first ``n`` of the 1024 real images genie calibrates on (seed 0), saved where the
        reference runner reads them (``DIR/distilled.pt``)."""
        import torch

        from genie.data import cifar10_calibration
        from genie.models import model_spec

        spec = model_spec("resnet20_cifar10")
        folder = self.work / f"calib{n}"
        folder.mkdir(exist_ok=True)
        path = folder / "distilled.pt"
        if not path.is_file():
            torch.save(cifar10_calibration(n, spec.mean, spec.std, seed=0).images.contiguous(), path)
        return folder

    def recon_stage(self) -> tuple:
        n, batch = self.s["recon_images"], self.s["recon_batch"]
        calib = self.calibration_file(n)
        res, extra = self.side_by_side(
            self.s["recon_iters"], lambda a: self.ref("recon", n, a, calib),
            lambda a: self.genie("recon", "resnet20_cifar10", n, batch, a, calib / "distilled.pt"))
        res.update(images=n, batch=batch, quantize_model_s=min(g["quantize_s"] for g in extra[self.s["recon_iters"][0]]))
        return res, extra

    def unit_slopes(self, extra: dict, iters: tuple) -> list:
        a, b = iters
        fastest = {k: min(runs, key=lambda g: g["seconds"]) for k, runs in extra.items()}
        return [[name, (tb - ta) / (b - a)] for (name, ta), (_, tb) in zip(fastest[a]["units"], fastest[b]["units"])]

    def scaling_stage(self, recon_extra: dict) -> dict:
        a, b = self.s["scaling_iters"]
        distill = []
        for n in self.s["scaling_images"]:
            batch = min(128, n) if not self.args.tiny else 8
            ta, tb = (self.genie("distill", n, batch, k)["seconds"] for k in (a, b))
            distill.append({"images": n, "batch": batch, "s_per_iter": (tb - ta) / (b - a)})
        r56_n = self.s["r56_images"]
        calib = self.calibration_file(max(r56_n, self.s["recon_images"]))
        r56 = {k: [self.genie("recon", "resnet56_cifar10", r56_n, self.s["recon_batch"], k, calib / "distilled.pt")]
               for k in self.s["r56_iters"]}
        return {"distill": distill,
                "recon_resnet20": {"images": self.s["recon_images"],
                                   "units": self.unit_slopes(recon_extra, self.s["recon_iters"])},
                "recon_resnet56": {"images": r56_n, "units": self.unit_slopes(r56, self.s["r56_iters"])}}


def _fmt(x, digits=4):
    return f"{x:.{digits}g}" if isinstance(x, (int, float)) else str(x)


def markdown(result: dict) -> str:
    lines = [f"## genie vs the authors' code on {result['device']}, {result['threads']} threads each, torch {result['torch']}",
             "", f"Command: `{result['command']}`; commit {result['commit']}; {result['seconds']:.0f} s in all.", "",
             f"CPU: {result['cpu']['cpu']} ({', '.join(f for f, has in result['cpu'].items() if has is True) or 'no AVX2'}); "
             f"kernels of every run (genie's and the reference's): ATen {result['kernels']['aten']}, oneDNN up to "
             f"{result['kernels']['onednn_max_isa']}.", "",
             "| stage | reference s/iter | genie s/iter | ratio (reference / genie) | genie fixed s |",
             "|---|---|---|---|---|"]
    for key in ("distill128", "distill256", "distill16", "recon"):
        st = result.get(key)
        if not st:
            continue
        ref = st["reference"]
        lines.append(f"| {key} | {_fmt(ref['s_per_iter']) if isinstance(ref, dict) else ref} | "
                     f"{_fmt(st['genie']['s_per_iter'])} | {_fmt(st.get('ratio', '-'), 3)} | "
                     f"{_fmt(st['genie']['fixed_s'], 3)} |")
    if "recon" in result:
        lines += ["", f"Reconstruction: genie's fixed cost (everything that is not an iteration) "
                      f"{result['recon']['genie']['fixed_s']:.2f} s at {result['recon']['images']} images, "
                      f"plus quantize_model {result['recon']['quantize_model_s']:.2f} s."]
    sc = result.get("scaling")
    if sc:
        lines += ["", "Scaling (genie alone): distillation, seconds per iteration", "",
                  "| images | s/iter | s/iter per 128 images |", "|---|---|---|"]
        for row in sc["distill"]:
            lines.append(f"| {row['images']} | {_fmt(row['s_per_iter'])} | {_fmt(row['s_per_iter'] * 128 / row['images'])} |")
        for key in ("recon_resnet20", "recon_resnet56"):
            units = sc[key]["units"]
            lines += ["", f"Reconstruction per iteration, {key[6:]} ({sc[key]['images']} images): "
                          f"{sum(s for _, s in units) * 1000:.1f} ms for all {len(units)} units", "",
                      "| unit | ms/iter |", "|---|---|"]
            lines += [f"| {name} | {s * 1000:.2f} |" for name, s in units]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        _worker(argv[1:])
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reference-dir", default=None, help="unpacked github:SamsungLabs/Genie (or $OFFICIAL_DIR)")
    p.add_argument("--threads", type=int, default=2, help="threads of every run (default 2)")
    p.add_argument("--repeats", type=int, default=2, help="interleaved repeats; the fastest is kept (default 2)")
    p.add_argument("--stages", default="distill,recon,scaling", help="comma-separated: distill, recon, scaling")
    p.add_argument("--tiny", action="store_true", help="seconds-long settings: checks the script runs")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "_out"))
    args = p.parse_args(argv)
    if args.threads < 1 or args.repeats < 1:
        p.error("--threads and --repeats must be at least 1")
    stages = set(args.stages.split(","))
    unknown = stages - {"distill", "recon", "scaling"}
    if unknown:
        p.error(f"unknown stage(s) {', '.join(sorted(unknown))}: use distill, recon, scaling")
    sys.path.insert(0, str(ROOT))
    from genie.assets import use_checkout_assets

    use_checkout_assets(ROOT)
    import torch

    from genie.devices import cpu_features, cpu_kernels, device_name, resolve_device
    from genie.files import write_atomically, write_json

    bench = Bench(args)
    if bench.reference_skip:
        print(f"vs_reference: reference {bench.reference_skip}", flush=True)
    t0 = time.perf_counter()
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip() or "unknown"
    # the kernels every run of this process's children uses (they inherit the environment):
    # ATEN_CPU_CAPABILITY / ONEDNN_MAX_CPU_ISA can hold an AVX-512 CPU to AVX2
    result = {"device": device_name(resolve_device(None)), "cpu": cpu_features(), "kernels": cpu_kernels(),
              "threads": args.threads, "torch": torch.__version__,
              "commit": commit, "command": "python benchmarks/vs_reference.py " + " ".join(argv),
              "setting": "tiny" if args.tiny else "full"}
    recon_extra = {}
    if "distill" in stages:
        for n, batch in bench.s["distill"]:
            result[f"distill{n}"] = bench.distill_stage(n, batch)
            print(f"distill {n}: {json.dumps(result[f'distill{n}'])}", flush=True)
    if "recon" in stages or "scaling" in stages:
        result["recon"], recon_extra = bench.recon_stage()
        print(f"recon: {json.dumps(result['recon'])}", flush=True)
    if "scaling" in stages:
        result["scaling"] = bench.scaling_stage(recon_extra)
    result["seconds"] = time.perf_counter() - t0
    out = Path(args.out)
    write_json(out / "vs_reference.json", result)
    text = markdown(result)
    write_atomically(out / "vs_reference.md", text.encode())
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
