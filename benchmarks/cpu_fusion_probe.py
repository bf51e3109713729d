"""What fused kernels and other CPU tricks buy `make demo`'s stages (issue 10, bar 3): the
measurements behind the "What fused kernels would buy" paragraph of RESULTS.md.

    python benchmarks/cpu_fusion_probe.py --part eval       # FP32 evaluation of 10000 images, 4 ways
    python benchmarks/cpu_fusion_probe.py --part teacher    # distillation teacher alone, eager vs compiled
    python benchmarks/cpu_fusion_probe.py --part distill    # real distillation, teacher compiled
    python benchmarks/cpu_fusion_probe.py --part distill-eager   # ... and eager, to compare

Run each part in its own process on a quiet machine (the compiled parts compile once per
process; inductor's on-disk cache makes a second process's first call shorter). ResNet-20,
``--threads`` threads (2 by default), channels-last as genie runs on CPUs.
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import genie.distill.distiller as distiller  # noqa: E402
import genie.distill.swing as swing  # noqa: E402
from genie.distill.bns import BNStatsLoss  # noqa: E402
from genie.models import load_model  # noqa: E402

MODEL = "resnet20_cifar10"


def _per_call_ms(fn, calls: int = 10, rounds: int = 3) -> list:
    """Milliseconds per call of ``fn``, one figure per round of ``calls`` calls."""
    out = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        out.append(round((time.perf_counter() - t0) / calls * 1e3, 1))
    return out


def probe_eval() -> None:
    """FP32 top-1 on the 10000 test images: genie's evaluate, BatchNorm folded by torch.fx,
    TorchScript-frozen, channels-last weights."""
    from torch.fx.experimental.optimization import fuse

    from genie.data import cifar10_test, evaluate
    from genie.models.zoo import CIFAR_MEAN, CIFAR_STD

    model = load_model(MODEL).eval()
    data = cifar10_test(CIFAR_MEAN, CIFAR_STD)
    sample = data.images[:100].contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        t0 = time.perf_counter()
        frozen = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(model, sample)))
        print(f"TorchScript freeze: {time.perf_counter() - t0:.2f} s")
    variants = {
        "as loaded (the loop below)": model,
        "BatchNorm folded (torch.fx fuse)": fuse(copy.deepcopy(model)),
        "TorchScript frozen": frozen,
        "channels-last weights": copy.deepcopy(model).to(memory_format=torch.channels_last),
    }

    @torch.no_grad()
    def top1(m) -> float:  # evaluate()'s batches and layout, for models it cannot take
        right = 0
        for i in range(0, len(data.images), 100):
            x = data.images[i : i + 100].contiguous(memory_format=torch.channels_last)
            right += int((m(x).argmax(1) == data.labels[i : i + 100]).sum())
        return 100.0 * right / len(data.images)

    evaluate(model, data, progress=False)  # warm-up
    t0 = time.perf_counter()
    result = evaluate(model, data, progress=False)["top1"]
    print(f"evaluate (genie): {time.perf_counter() - t0:.2f} s, top-1 {result:.2f}")
    for name, m in variants.items():
        top1(m)  # warm-up
        t0 = time.perf_counter()
        result = top1(m)
        print(f"{name}: {time.perf_counter() - t0:.2f} s, top-1 {result:.2f}")


def probe_teacher() -> None:
    """The distillation teacher alone (no swing, a fixed input of 128 images): forward with the
    BatchNorm-statistics hooks, the loss and the gradient to the input."""
    work = distiller.teacher_layout(load_model(MODEL).eval(), torch.device("cpu"))
    for p in work.parameters():
        p.requires_grad_(False)
    stats = BNStatsLoss(work, 128)
    images = torch.randn(128, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    images = images.contiguous(memory_format=torch.channels_last)

    def step(x):
        work(x)
        loss = stats.per_layer().sum()
        return torch.autograd.grad(loss, x)[0]

    compiled = torch.compile(step)
    t0 = time.perf_counter()
    g_compiled = compiled(images.clone().requires_grad_(True))
    print(f"first compiled call: {time.perf_counter() - t0:.1f} s")
    g_eager = step(images.clone().requires_grad_(True))
    print(f"gradient difference, relative: {float((g_eager - g_compiled).norm() / g_eager.norm()):.2e}")
    print("eager ms per step:", _per_call_ms(lambda: step(images.clone().requires_grad_(True))))
    print("compiled ms per step:", _per_call_ms(lambda: compiled(images.clone().requires_grad_(True))))


def probe_distill(compiled: bool) -> None:
    """The real distillation (128 images, batch 128) with its teacher compiled or eager. Compiled,
    swing windows come from the device-side gather (a compiled graph cannot read offsets on the
    host); the generator and Adam stay eager."""
    if compiled:
        plain_layout = distiller.teacher_layout
        distiller.teacher_layout = lambda work, device: torch.compile(plain_layout(work, device))
        swing.swing_crop_host = swing.swing_crop
    model = load_model(MODEL)
    for iters in (10, 40, 100):
        t0 = time.perf_counter()
        result = distiller.distill(model, 32, num_images=128, batch_size=128, iters=iters, progress=False)
        print(f"{'compiled' if compiled else 'eager'} teacher, {iters} iterations: "
              f"{time.perf_counter() - t0:.2f} s, final loss {float(result.losses[-1].sum()):.4f}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--part", choices=["eval", "teacher", "distill", "distill-eager"], required=True)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    if args.part == "eval":
        probe_eval()
    elif args.part == "teacher":
        probe_teacher()
    else:
        probe_distill(compiled=args.part == "distill")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
