"""Command line: ``python -m genie run ...`` (see ``python -m genie run --help``)."""
from __future__ import annotations

import argparse
import sys

from .errors import GenieError


def _add_run_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="resnet20_cifar10", help="zoo model name (python -m genie models lists them)")
    p.add_argument("--w-bits", type=int, default=4, help="weight bits, 2-8 (default 4)")
    p.add_argument("--a-bits", type=int, default=4, help="activation bits, 2-8 (default 4)")
    p.add_argument("--data", default="real", choices=["real"], help="calibration data: real images (few-shot)")
    p.add_argument("--samples", type=int, default=1024, help="number of calibration images (default 1024)")
    p.add_argument("--recon-iters", type=int, default=20000, help="reconstruction iterations per unit (default 20000)")
    p.add_argument("--quantizer", default="genie", choices=["genie", "adaround", "nearest"],
                   help="weight quantizer: genie (joint step size + softbits), adaround (frozen step), nearest")
    p.add_argument("--batch-size", type=int, default=32, help="reconstruction batch size (default 32)")
    p.add_argument("--setting", default="brecq", choices=["brecq", "all"],
                   help="brecq: first/last layer 8-bit (paper Tables 2,3,5); all: every layer at the target bits")
    p.add_argument("--no-fold-bn", dest="fold_bn", action="store_false", help="keep BatchNorm unfolded (reference behaviour)")
    p.add_argument("--drop-prob", type=float, default=0.5, help="QDrop probability (0 disables; default 0.5)")
    p.add_argument("--seed", type=int, default=0, help="seed of every random draw (default 0)")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--test-source", default="auto", choices=["auto", "npz", "lossless100", "torchvision"],
                   help="CIFAR-10 test set: offline npz (JPEG-degraded), the 100 lossless images, or torchvision's")
    p.add_argument("--data-dir", default=None, help="ImageNet models: folder with train/ and val/ subfolders")
    p.add_argument("--out", default=None, help="folder for result.json and qmodel.pt")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m genie", description="GENIE zero-shot / few-shot quantization")
    sub = parser.add_subparsers(dest="command", required=True)
    run_p = sub.add_parser("run", help="quantize a model, evaluate it, write result.json and qmodel.pt")
    _add_run_arguments(run_p)
    sub.add_parser("models", help="list the zoo models")
    return parser


def _run(args: argparse.Namespace) -> int:
    from .pipeline import RunConfig, run

    fields = RunConfig.__dataclass_fields__
    cfg = RunConfig(**{k: v for k, v in vars(args).items() if k in fields})
    result = run(cfg)
    print(result.table())
    if cfg.out:
        print(f"\nwrote {cfg.out}/result.json and {cfg.out}/qmodel.pt")
    return 0


def _models(args: argparse.Namespace) -> int:
    from .models import list_models, model_spec

    for name in list_models():
        spec = model_spec(name)
        extra = f"  ({spec.note})" if spec.note else ""
        print(f"{name:<20} {spec.dataset:<9} {spec.image_size:>4}px{extra}")
    return 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return {"run": _run, "models": _models}[args.command](args)
    except GenieError as exc:
        print(f"genie: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("genie: interrupted", file=sys.stderr)
        return 130
