"""onnxruntime latency of one network in its deployment forms: the FP32 graph, the W8A8 graph of
the paper profile and the W8A8 graph of the deploy profile (:data:`LATENCY_FILES`), built and
timed the same way by ``benchmarks/deploy.py`` and notebook 7; which integer and float kernels
onnxruntime runs for each; and whether this CPU has the VNNI instructions behind fast int8
kernels.

Needs ``onnx`` and ``onnxruntime`` (``pip install 'genie-zsq[export]'``) to build and time the
files; importing this module does not import either.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from ..devices import cpu_features

# kernels of onnxruntime's optimised graph: integer ones (a fused QDQ group) and float ones
INTEGER_KERNELS = ("QLinearConv", "ConvInteger", "QGemm", "QLinearMatMul", "MatMulInteger", "QLinearAdd",
                   "NhwcMaxPool", "QLinearGlobalAveragePool", "QLinearAveragePool")
FLOAT_KERNELS = ("Conv", "FusedConv", "Gemm", "MatMul", "Add", "Transpose")

# the files built per network: {key: quantize_model options, or None for the float graph}
# (W8A8, round to nearest, activation step sizes searched on the calibration images)
LATENCY_FILES = {
    "fp32": None,
    "paper": dict(profile="paper"),
    "deploy": dict(profile="deploy"),
    "deploy_sym": dict(profile="deploy", weight_symmetric=True),
}
FILE_LABELS = {"fp32": "FP32", "paper": "W8A8 paper", "deploy": "W8A8 deploy",
               "deploy_sym": "W8A8 deploy, symmetric weights"}
VNNI_FLAGS = ("avx512_vnni", "avx_vnni")  # either gives onnxruntime's fast uint8 x int8 dot products


def has_vnni(features: Optional[dict] = None) -> bool:
    """Whether the CPU (``features`` from :func:`cpu_features`, read when None) has VNNI: without
    it onnxruntime's int8 convolutions on x86 are no faster than its FP32 ones."""
    features = cpu_features() if features is None else features
    return any(features.get(n, False) for n in VNNI_FLAGS)


def split_kernels(counts: dict) -> Tuple[dict, dict]:
    """``(integer, float)``: the entries of ``{op_type: count}`` (an optimised graph's
    :func:`~genie.export.runtime.operator_counts`) in :data:`INTEGER_KERNELS` and in
    :data:`FLOAT_KERNELS`."""
    return ({op: n for op, n in counts.items() if op in INTEGER_KERNELS},
            {op: n for op, n in counts.items() if op in FLOAT_KERNELS})


def latency_model(name: str, quick: bool = False, samples: Optional[int] = None,
                  seed: int = 0) -> Tuple[nn.Module, torch.Tensor, int]:
    """``(model, calibration images, image side in pixels)`` for timing zoo network ``name``.

    A CIFAR-10 zoo model (e.g. ``resnet20_cifar10``) comes with its weights and ``samples`` real
    training images (default 256; ``quick``: 16) at 32 px. Any other network (an ImageNet zoo
    entry such as ``resnet18`` or ``mobilenet_v2``, or a torchvision model name) gets random
    weights (torch seed 0: latency does not depend on the weights' values) and ``samples``
    random normal images (default 16; ``quick``: 4) at 224 px (``quick``: 64 px)."""
    from ..errors import GenieError
    from ..models import load_model, model_spec

    try:
        spec = model_spec(name)
    except GenieError:
        spec = None
    if spec is not None and spec.dataset == "cifar10":
        from ..data import cifar10_calibration

        count = samples or (16 if quick else 256)
        return load_model(name), cifar10_calibration(count, spec.mean, spec.std, seed=seed).images, spec.image_size
    torch.manual_seed(seed)
    if spec is not None:
        model = load_model(name, pretrained=False)
    else:
        import torchvision

        model = torchvision.models.get_model(name, weights=None).eval()
    size = 64 if quick else 224
    count = samples or (4 if quick else 16)
    return model, torch.randn(count, 3, size, size, generator=torch.Generator().manual_seed(seed)), size


def build_latency_files(name: str, model: nn.Module, images: torch.Tensor, size: int, out: Union[str, Path],
                        keys: Optional[Sequence[str]] = None) -> dict:
    """``{key: path}``: the ONNX files of :data:`LATENCY_FILES` (``keys``: a subset, in that
    order) for ``model``, written to ``out/<name>_<key>.onnx``: W8A8, round to nearest, step
    sizes searched on ``images``; input ``(N, 3, size, size)`` with a symbolic batch."""
    from ..quant import quantize_model, reconstruct
    from .onnx_export import export_onnx

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = {}
    for key in keys or LATENCY_FILES:
        options = LATENCY_FILES[key]
        qm = quantize_model(model, images, w_bits=8, a_bits=8, quantizer="nearest", **(options or {}))
        reconstruct(qm, images, iters=0, progress=False)
        files[key] = export_onnx(qm, out / f"{name}_{key}.onnx", (1, 3, size, size),
                                 quantized=options is not None).path
    return files


def median_ms(path: Union[str, Path, bytes], x: torch.Tensor, threads: int = 1, min_calls: int = 20,
              min_seconds: float = 3.0, warmup: int = 3) -> float:
    """Median milliseconds per call of onnxruntime (CPU, ``threads`` intra-op threads) on ``x``:
    ``warmup`` calls, then at least ``min_calls`` calls and ``min_seconds`` seconds."""
    import numpy as np

    from .graph import INPUT_NAME
    from .runtime import onnx_session

    session = onnx_session(path, threads)
    feed = {INPUT_NAME: x.detach().float().cpu().numpy()}
    for _ in range(warmup):
        session.run(None, feed)
    times, start = [], time.perf_counter()
    while len(times) < min_calls or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        session.run(None, feed)
        times.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(times))


def measure_latency(name: str, files: dict, size: int, threads: Iterable[int] = (1,), batches: Iterable[int] = (1,),
                    min_calls: int = 20, min_seconds: float = 3.0) -> Iterator[dict]:
    """One row per thread count and batch size (in that order): ``{"model", "px", "threads",
    "batch", "<key>_ms_per_image" for each file, "<key>_speedup" (FP32 time over the file's) for
    each quantized file when ``"fp32"`` is among them}``; each file timed by :func:`median_ms` on
    random normal images (seed 1), one session per file and thread count."""
    for n_threads in threads:
        for batch in batches:
            x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))
            ms = {k: median_ms(p, x, n_threads, min_calls, min_seconds) / batch for k, p in files.items()}
            row = {"model": name, "px": size, "threads": n_threads, "batch": batch}
            row.update({f"{k}_ms_per_image": round(v, 3) for k, v in ms.items()})
            if "fp32" in ms:
                row.update({f"{k}_speedup": round(ms["fp32"] / v, 2) for k, v in ms.items() if k != "fp32"})
            yield row
