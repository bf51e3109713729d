"""Keeping freed CPU memory inside the process during a run, so that a training loop's tensors
come back from the heap instead of from the kernel as fresh pages.

glibc's ``malloc`` serves a block above ``M_MMAP_THRESHOLD`` (128 KiB, raised by itself only up
to the largest block freed, at most 32 MiB) with new ``mmap`` pages and gives them back on
``free``, and it hands the heap's free top back to the kernel once it exceeds
``M_TRIM_THRESHOLD``. An eager step allocates and frees the same large activations every
iteration, so part of them come back as fresh pages, a page fault per 4 KiB, the kernel zeroing
each: 2,400-9,600 faults per ResNet-20 distillation step of 128 images, at 1.5-2 us each 1-7 % of
the step on a 2-core VM (AMD EPYC Zen 4, AVX-512 and AVX2 kernels alike; ~100 faults a step
with the settings below; benchmarks/RESULTS.md, "Page faults in the step"). PyTorch's CPU tuning
guide gives the same advice as a preloaded allocator (jemalloc, tcmalloc); this needs no preload.

:func:`retain_freed_memory` raises both thresholds once per process: the process then keeps up
to :data:`TRIM_THRESHOLD` bytes of freed memory for reuse (its resident size stays near its peak
after a run). It is a no-op off glibc (macOS, Windows, musl) and with ``GENIE_RETAIN_CPU_MEMORY=0``
in the environment. ``distill``, ``reconstruct`` and ``measure_sensitivity`` call it with their device.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
from typing import Optional

import torch

# mallopt parameters (glibc's malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

# blocks below this come from the heap, so they are reused after free (an activation of a batch
# of 128 ImageNet images at 64 x 112 x 112 is 411 MB; larger blocks still get their own mapping)
MMAP_THRESHOLD = 1 << 30
# older glibc versions refuse a threshold above 32 MiB (half their largest heap)
MMAP_THRESHOLD_FALLBACK = 32 << 20
# free memory at the top of the heap above this goes back to the kernel
TRIM_THRESHOLD = 1 << 30
ENV_SWITCH = "GENIE_RETAIN_CPU_MEMORY"


def is_glibc() -> bool:
    """Whether this process's C library is glibc (the one whose thresholds are set here)."""
    try:
        return (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc")
    except (AttributeError, ValueError, OSError):  # no confstr (Windows) or no such name (musl, macOS)
        return False


def _glibc_mallopt():
    """glibc's ``mallopt`` as a ctypes function, or None where the C library is not glibc."""
    if not is_glibc():
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return None
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt


def retain_freed_memory(device: Optional[torch.device] = None) -> bool:
    """Make glibc keep freed blocks up to :data:`MMAP_THRESHOLD` and up to :data:`TRIM_THRESHOLD`
    of free heap top for reuse (module docstring), when the run is on ``device`` and that is a
    CPU (None: a CPU). Once per process; returns whether the settings are in force (False for a
    GPU, off glibc, or when ``GENIE_RETAIN_CPU_MEMORY=0``)."""
    if device is not None and device.type != "cpu":  # a GPU run's tensors are not malloc's
        return False
    return _set_thresholds()


@functools.lru_cache(maxsize=None)
def _set_thresholds() -> bool:
    if os.environ.get(ENV_SWITCH, "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    mallopt = _glibc_mallopt()
    if mallopt is None:
        return False
    threshold_set = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 or \
        mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_FALLBACK) == 1
    return threshold_set and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
