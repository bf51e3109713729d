"""Differentiable fake-quantization primitives.

* :func:`round_ste` - rounding with a straight-through gradient.
* :class:`LSQFakeQuant` - activation fake quantization with a learned step size (LSQ gradient)
  and an optional QDrop mask, fused into one autograd function (fewer kernels than the
  composed straight-through formulation, same gradients).
"""
from __future__ import annotations

from typing import Optional

import torch

from ..devices import is_channels_last


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """``round(x)`` forward, identity gradient."""
    return (torch.round(x) - x).detach() + x


def mask_as(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """0/1 ``mask`` (bool, or already 0/1 in a floating dtype) in ``like``'s dtype. Bool goes
    through a uint8 view: converting bool directly is several times slower on CPUs."""
    if mask.dtype == like.dtype:
        return mask
    return mask.view(torch.uint8).to(like.dtype) if mask.dtype == torch.bool else mask.to(like.dtype)


def equal_01(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a == b`` as 0/1 in ``a``'s dtype and layout, to mask gradients by multiplying: the
    values of autograd's ``where(mask, grad, 0)`` (up to the sign of a zero) at a fraction of
    the cost on CPUs. Measured on AVX2: a comparison written as bool is 2-4x slower than as
    floats (4e4 - 5e5 elements), and ``where`` with a scalar ~9x slower than the product."""
    return torch.eq(a, b, out=torch.empty_like(a))


class LSQFakeQuant(torch.autograd.Function):
    """``y = s * clamp(round(x / s), qmin, qmax)``; where ``keep_fp`` is set, ``y = fp_value``
    (QDrop; ``fp_value`` defaults to ``x``). ``keep_fp``: bool, or 0/1 in ``x``'s dtype (what
    :func:`bernoulli_mask` gives with ``dtype=x.dtype``, the faster form on CPUs).

    Gradients (LSQ, Esser et al. 2020, without gradient scaling):
    dy/dx = 1 inside the range or where kept FP, 0 where clipped or replaced by ``fp_value``;
    dy/ds = round(x/s) - x/s inside the range, qmin or qmax where clipped, 0 where replaced.
    ``fp_value`` gets no gradient (it is a constant target-side input).
    """

    @staticmethod
    def forward(ctx, x, scale, qmin: int, qmax: int, keep_fp=None, fp_value=None):
        xs = x / scale
        rounded = torch.round(xs)
        q = rounded.clamp(qmin, qmax)
        # 1 inside the range: one comparison, not q >= qmin, q <= qmax and their conjunction
        inside = equal_01(q, rounded)
        del rounded
        y = q * scale
        ds_local = None
        if ctx.needs_input_grad[1]:
            # (q - x/s) inside the range, q where clipped, 0 where replaced (below); products
            # with 0/1 masks are much cheaper than where/masked_fill on CPUs, and the product
            # x/s * inside is exact, so one fused pass gives q - x/s * inside exactly
            ds_local = q.addcmul_(xs, inside, value=-1.0)
        passes = inside
        if keep_fp is not None:
            keep = mask_as(keep_fp, y)
            # lerp with weights exactly 0 or 1 returns exactly y or the FP value
            y = torch.lerp(y, x if fp_value is None else fp_value, keep)
            # a kept element is x itself (gradient 1) or the constant fp_value (gradient 0)
            passes = torch.maximum(inside, keep) if fp_value is None else torch.gt(inside, keep, out=torch.empty_like(inside))
            if ds_local is not None:
                ds_local.addcmul_(ds_local, keep, value=-1.0)  # ds * (1 - keep) in one pass, exactly
        ctx.save_for_backward(passes, ds_local)
        ctx.scale_shape = scale.shape
        return y

    @staticmethod
    def backward(ctx, grad):
        passes, ds_local = ctx.saved_tensors
        dx = grad * passes if ctx.needs_input_grad[0] else None
        dscale = (grad * ds_local).sum().reshape(ctx.scale_shape) if ds_local is not None else None
        return dx, dscale, None, None, None, None


def lsq_fake_quant(x, scale, qmin: int, qmax: int, keep_fp: Optional[torch.Tensor] = None, fp_value=None):
    """Functional form of :class:`LSQFakeQuant`."""
    if not (torch.is_grad_enabled() and (x.requires_grad or scale.requires_grad)):
        # inference: no masks to keep for a backward pass
        y = torch.round(x / scale).clamp_(qmin, qmax).mul_(scale)
        return y if keep_fp is None else torch.lerp(y, x if fp_value is None else fp_value, mask_as(keep_fp, y))
    return LSQFakeQuant.apply(x, scale, qmin, qmax, keep_fp, fp_value)


def lsq_fake_quant_reference(x, scale, qmin: int, qmax: int, keep_fp: Optional[torch.Tensor] = None, fp_value=None):
    """The same maths composed from :func:`round_ste` (for tests)."""
    y = torch.clamp(round_ste(x / scale), qmin, qmax) * scale
    if keep_fp is None:
        return y
    return torch.where(keep_fp, x if fp_value is None else fp_value.detach(), y)


# row b: the 8 bits of byte b, least significant first, as 0/1 (one table per dtype, made once)
_BYTE_BITS = {torch.uint8: ((torch.arange(256)[:, None] >> torch.arange(8)) & 1).to(torch.uint8)}


def _byte_bits(dtype: torch.dtype) -> torch.Tensor:
    table = _BYTE_BITS.get(dtype)
    if table is None:
        table = _BYTE_BITS[dtype] = _BYTE_BITS[torch.uint8].to(dtype)
    return table


def bernoulli_mask(like: torch.Tensor, p: float, generator: Optional[torch.Generator],
                   dtype: torch.dtype = torch.bool) -> torch.Tensor:
    """Mask shaped (and laid out) like ``like``, each element True (1) with probability ``p``:
    bool, or 0/1 in a floating ``dtype`` (written so directly, ~1.5x faster than bool on CPUs).

    On CUDA: ``rand < p``. On CPUs, where drawing random numbers dominates a QDrop step, random
    64-bit words are cut up: at ``p = 0.5`` (QDrop's default) each element is one bit of a word
    drawn over ``[-2^63, 2^63 - 1)`` (every bit uniform; bytes in memory order, bits least
    significant first, looked up in a table: 3x faster than the bytes below at 5e5 elements);
    at any other ``p`` each element is one byte, 7 per word drawn over ``[0, 2^63)`` (whose top
    byte is not uniform), compared with ``round(256 p)``, so ``p`` is resolved to 1/256 (0 and 1
    exactly; ``p = 1`` draws those words too).
    """
    channels_last = is_channels_last(like)
    shape = (like.shape[0], like.shape[2], like.shape[3], like.shape[1]) if channels_last else like.shape
    if like.device.type != "cpu":
        uniform = torch.rand(shape, generator=generator, device=like.device)
        mask = torch.lt(uniform, p, out=torch.empty(shape, dtype=dtype, device=like.device))
    else:
        n = like.numel()
        threshold = round(p * 256)
        if threshold == 128:  # one fair bit per element
            words = torch.empty(-(-n // 64), dtype=torch.int64).random_(-(2**63), 2**63 - 1, generator=generator)
            table = _byte_bits(torch.uint8 if dtype == torch.bool else dtype)
            bits = table.index_select(0, words.view(torch.uint8).long()).view(-1)[:n]
            mask = (bits.view(torch.bool) if dtype == torch.bool else bits).view(shape)
        else:
            words = torch.empty(-(-n // 7), dtype=torch.int64).random_(generator=generator)
            if threshold >= 256:  # p resolved to 1: no byte reaches 256 (and uint8 cannot hold it)
                mask = torch.ones(shape, dtype=dtype)
            else:
                # compared in place on the strided (words, 7) view: no copy of the bytes, no wider type
                low_bytes = words.view(torch.uint8).view(-1, 8)[:, :7]
                mask = torch.lt(low_bytes, threshold, out=torch.empty(low_bytes.shape, dtype=dtype))
                mask = mask.view(-1)[:n].view(shape)
    return mask.permute(0, 3, 1, 2) if channels_last else mask
