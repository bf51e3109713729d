"""Devices: which one a model lives on, which one a run uses, its human-readable name, and on a
CPU which instruction sets it has and which its kernels use.

A leaf module (torch only), so the algorithms (``genie.quant``, ``genie.distill``) and the
front ends (CLI, notebooks, benchmarks) share one definition.
"""
from __future__ import annotations

import os
import platform
from typing import Optional, Union

import torch
from torch import nn

from .errors import GenieError


def model_device(model: nn.Module) -> torch.device:
    """The device of a model's first parameter or buffer (CPU for a model without any)."""
    for tensor in list(model.parameters()) + list(model.buffers()):
        return tensor.device
    return torch.device("cpu")


def resolve_device(device: Optional[Union[str, torch.device]] = None) -> torch.device:
    """``device`` as a ``torch.device``; ``None`` means CUDA when available, else the CPU. A
    :class:`GenieError` for an unknown name or a CUDA device on a machine without one."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise GenieError(f"unknown device {device!r}; use cuda, cuda:N or cpu") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise GenieError("--device cuda was asked for but no CUDA GPU is available; use --device cpu")
    return resolved


def device_name(device: torch.device) -> str:
    """Human-readable name of a device (GPU model, or CPU and thread count)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"


CPU_FLAGS = ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8")


def cpu_features() -> dict:
    """``{"cpu": model name, flag: bool}``: the x86 features (:data:`CPU_FLAGS`) that decide
    which kernels torch (ATen, oneDNN) and onnxruntime can run here, from ``/proc/cpuinfo`` (all
    False elsewhere). :func:`cpu_kernels` says which of them this process does run."""
    lines = []
    if os.path.exists("/proc/cpuinfo"):
        try:
            with open("/proc/cpuinfo") as f:
                lines = f.read().splitlines()
        except OSError:
            lines = []
    flags = next((line.split(":", 1)[-1].split() for line in lines if line.startswith("flags")), [])
    model = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "unknown")
    return {"cpu": model, **{n: n in flags for n in CPU_FLAGS}}


def cpu_kernels() -> dict:
    """``{"aten": ..., "onednn_max_isa": ...}``: the instruction set of the CPU kernels this
    process runs, ATen's as chosen (the CPU's best, or ``ATEN_CPU_CAPABILITY`` where set, e.g.
    ``"AVX2"`` on an AVX-512 CPU) and oneDNN's ceiling (``ONEDNN_MAX_CPU_ISA``, ``"native"`` where
    unset: the CPU's best). A speed figure on a CPU is only read with these beside it."""
    return {"aten": torch.backends.cpu.get_cpu_capability(),
            "onednn_max_isa": os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "native"}


def is_channels_last(t: torch.Tensor) -> bool:
    """Whether a 4-d tensor is laid out channels-last (NHWC in memory; genie's CPU layout) and
    not also in the default layout (as tensors with one channel or one pixel are)."""
    return t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)
