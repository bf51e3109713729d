"""Rendering the tutorial notebooks with their figures (``make render``).

A reader who opens a notebook on a code-hosting site should see its figures without running
anything. ``python -m genie.render`` executes all eight notebooks (1-8) headless with papermill at
the CPU *showcase* setting below (larger than the CI smoke setting, minutes per notebook), then
writes each back in place with its outputs, minus what papermill adds (the injected-parameters
cell, timing metadata), plus one note saying how the outputs were made. The parameters cell keeps
the smoke defaults, so ``pytest --nbval-lax notebooks`` still runs the smoke setting and compares
only the ``# NBVAL_CHECK_OUTPUT`` cells (the showcase keeps what those print: the test file and
the run plan of notebook 6 are the smoke ones). Notebook 7 (deploy) times onnxruntime on the
rendering machine: its latency figures are that CPU's.

    python -m genie.render                       # notebooks 1-8
    python -m genie.render notebooks/04_genie_m.ipynb
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from .errors import GenieError, exit_status
from .files import write_atomically

ROOT = Path(__file__).resolve().parents[1]
NOTE_TAG = "rendered-setting"

# CPU showcase setting per notebook: smoke mode (CPU, the 100 lossless test images) with enough
# images and iterations for the figures to show the method
SHOWCASE = {
    "01_quickstart.ipynb": dict(num_images=64, distill_batch=64, distill_iters=300, recon_iters=300),
    "02_swing_convolution.ipynb": dict(num_images=64, distill_iters=300),
    "03_distillers.ipynb": dict(num_images=64, distill_batch=64, distill_iters=200, recon_iters=200),
    "04_genie_m.ipynb": dict(num_images=256, recon_iters=300),
    "05_few_shot_vs_zero_shot.ipynb": dict(sizes=[16, 64], distill_batch=64, distill_iters=200, recon_iters=200),
    "06_ablation.ipynb": dict(num_images=64, distill_batch=64, direct_iters=200, genie_iters=200, recon_iters=200),
    "07_deploy.ipynb": dict(num_images=256, recon_iters=100, latency_models=["resnet20_cifar10", "resnet18"]),
    "08_mixed_precision.ipynb": dict(num_images=256, sensitivity_images=256, recon_iters=200),
}


def _note(params: dict, seconds: float) -> str:
    settings = ", ".join(f"`{k}={v!r}`" for k, v in params.items())
    return (f"*The outputs below were rendered by `make render` on a CPU ({os.cpu_count()} cores, {seconds:.0f} s) "
            f"at the showcase setting: smoke mode with {settings}. Run the notebook to make your own.*")


def clean_rendered(nb, params: dict, seconds: float):
    """``nb`` (an executed notebook) without papermill's injected cell and metadata, with the
    rendering note after the parameters cell (replacing an earlier one)."""
    import nbformat

    cells = [c for c in nb.cells if not {"injected-parameters", NOTE_TAG} & set(c.metadata.get("tags", []))]
    for cell in cells:
        for key in ("papermill", "execution"):
            cell.metadata.pop(key, None)
    index = next(i for i, c in enumerate(cells) if "parameters" in c.metadata.get("tags", []))
    note = nbformat.v4.new_markdown_cell(_note(params, seconds), metadata={"tags": [NOTE_TAG]})
    cells.insert(index + 1, note)
    nb.cells = cells
    nb.metadata.pop("papermill", None)
    return nb


def render(notebook: Path, params: dict, timeout: float = 1800) -> int:
    """Execute ``notebook`` with ``params`` (plus ``out_dir`` in a temporary folder) and write it
    back in place with its outputs; returns its size in bytes."""
    import nbformat
    import papermill as pm

    with tempfile.TemporaryDirectory(prefix="genie-render-") as tmp:
        executed = Path(tmp) / notebook.name
        t0 = time.perf_counter()
        pm.execute_notebook(str(notebook), str(executed), parameters={**params, "out_dir": str(Path(tmp) / "out")},
                            cwd=tmp, progress_bar=False, execution_timeout=timeout)
        nb = clean_rendered(nbformat.read(executed, as_version=4), params, time.perf_counter() - t0)
    data = nbformat.writes(nb).encode() + b"\n"
    write_atomically(notebook, data, "the rendered notebook")
    return len(data)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m genie.render", description=__doc__.split("\n\n")[0])
    p.add_argument("notebooks", nargs="*", help="notebooks to render (default: notebooks 1-8)")
    args = p.parse_args(argv)

    def command() -> int:
        paths = [Path(n) for n in args.notebooks] or [ROOT / "notebooks" / name for name in SHOWCASE]
        os.environ["GENIE_LIVE"] = "0"  # the kernels inherit it: static figures
        total = 0
        for path in paths:
            if path.name not in SHOWCASE:
                raise GenieError(f"{path} has no showcase setting; known: {', '.join(SHOWCASE)}")
            t0 = time.perf_counter()
            size = render(path, SHOWCASE[path.name])
            total += size
            print(f"rendered {path} in {time.perf_counter() - t0:.0f} s: {size / 1e6:.2f} MB", flush=True)
        print(f"{len(paths)} notebooks, {total / 1e6:.2f} MB with outputs")
        return 0

    return exit_status("genie render", command)


if __name__ == "__main__":
    sys.exit(main())
