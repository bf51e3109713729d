"""Digests of tensors: which model, which images, which weights a file or a cached result belongs to.

A leaf module (hashlib and torch only). :func:`tensor_bytes` is the one place that turns a tensor's
values into bytes, for any dtype (bfloat16 too, which numpy cannot hold), device and memory
layout; the fingerprints that files store (a distilled set's ``model_fingerprint``, a sensitivity
table's ``weights_fingerprint``) each keep their own byte stream on top of it, so files written
before this module still match.
"""
from __future__ import annotations

import hashlib
from typing import Iterable, Tuple

import torch


def tensor_bytes(t: torch.Tensor) -> bytes:
    """The values of ``t`` in row-major order as raw bytes (native byte order), whatever its
    dtype, device and memory layout: for a numpy-compatible dtype, ``t.numpy().tobytes()`` of a
    contiguous CPU copy."""
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def tensor_digest(named_tensors: Iterable[Tuple[str, torch.Tensor]]) -> str:
    """16 hex digits of the sha256 of ``(name, tensor)`` pairs: names, dtypes, shapes and values."""
    digest = hashlib.sha256()
    for name, t in named_tensors:
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(tensor_bytes(t))
    return digest.hexdigest()[:16]
