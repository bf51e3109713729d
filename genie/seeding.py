"""Deterministic seed derivation. Every random draw in genie comes from a generator seeded
from the caller's seed, so the same seed gives the same result on the same device.

``mix32`` is a small integer hash (Wang/Mueller style: xor-shift and multiply by a constant below
2^27, so every product fits in int64) used both on Python ints and on int64 tensors, where it
gives device-side random numbers that do not depend on how work is batched.
"""
from __future__ import annotations

import torch

MASK32 = 0xFFFFFFFF
_MUL = 0x45D9F3B


def mix32(x):
    """Hash of a non-negative int (or int64 tensor) below 2^32 to another below 2^32."""
    x = x & MASK32
    x = ((x ^ (x >> 16)) * _MUL) & MASK32
    x = ((x ^ (x >> 16)) * _MUL) & MASK32
    return x ^ (x >> 16)


def derive_seed(seed: int, *keys: int) -> int:
    """A 32-bit seed for sub-task ``keys`` (e.g. a batch index) of a run seeded with ``seed``."""
    h = mix32(seed & MASK32) ^ mix32((seed >> 32) & MASK32)
    for k in keys:
        h = mix32(h ^ mix32(k + 0x9E3779B9))
    return int(h)


def cpu_generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))
