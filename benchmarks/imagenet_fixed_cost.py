"""What reconstruction costs before its first iteration at ImageNet scale: ``quantize_model`` +
``reconstruct(iters=0)`` of torchvision ``mobilenet_v2`` (random weights: no download) on random
224-px images, with the time of each part and the peak memory.

    python benchmarks/imagenet_fixed_cost.py --images 256 --threads 2
"""
from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import genie.quant.reconstruction as recon  # noqa: E402
from genie.quant import quantize_model  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v2(weights=None).eval()
    images = torch.randn(args.images, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    parts = {}

    def timed(name, fn):
        def wrapper(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                parts[name] = parts.get(name, 0.0) + time.perf_counter() - t0
        return wrapper

    for name, label in (("_capture_unit", "captures"), ("init_activations", "activation step sizes"),
                        ("_checked_error", "errors"), ("guard_ties", "tie guard")):
        setattr(recon, name, timed(label, getattr(recon, name)))
    t0 = time.perf_counter()
    qmodel = quantize_model(model, images, w_bits=4, a_bits=4)
    t_quant = time.perf_counter() - t0
    report = recon.reconstruct(qmodel, images, iters=0, progress=False)
    total = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"mobilenet_v2, {args.images} images of 224 px, {args.threads} threads: quantize_model {t_quant:.1f} s, "
          f"quantize_model + reconstruct(iters=0) {total:.1f} s over {len(report.units)} units "
          f"({', '.join(f'{k} {v:.1f} s' for k, v in parts.items())}); peak RSS {peak:.2f} GiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
