"""Differentiable fake-quantization primitives.

* :func:`round_ste` - rounding with a straight-through gradient.
* :func:`rectified_sigmoid` - AdaRound's h(V) = clamp(sigmoid(V) * (zeta - gamma) + gamma, 0, 1).
* :class:`LSQFakeQuant` - activation fake quantization with a learned step size (LSQ gradient)
  and an optional QDrop mask, fused into one autograd function (fewer kernels than the
  composed straight-through formulation, same gradients).
"""
from __future__ import annotations

from typing import Optional

import torch

from ..devices import is_channels_last

GAMMA, ZETA = -0.1, 1.1  # stretch of the rectified sigmoid (AdaRound, Louizos et al.)


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """``round(x)`` forward, identity gradient."""
    return (torch.round(x) - x).detach() + x


def rectified_sigmoid(v: torch.Tensor) -> torch.Tensor:
    """h(V) in [0, 1]: the soft rounding offset of AdaRound / GENIE-M."""
    return torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


def inverse_rectified_sigmoid(h: torch.Tensor) -> torch.Tensor:
    """V such that h(V) = h, for h in [0, 1) (used to start softbits at the fractional part)."""
    return -torch.log((ZETA - GAMMA) / (h - GAMMA) - 1.0)


class RoundingRegularizer(torch.autograd.Function):
    """Eq. 15's ``sum(1 - |2 h - 1|^beta)`` of soft offsets ``h`` (any shape; ``beta`` a 0-d
    tensor > 0) -> 0-d. ``|d|^beta`` is ``exp(beta log |d|)`` (CPUs: ~2.5x faster than ``pow``
    with a non-integer exponent) and the backward pass reuses it: ``d/dh = -2 beta |d|^beta / d``,
    0 where ``d = 2 h - 1`` is 0 (where autograd's composed gradient is 0 for beta > 1)."""

    @staticmethod
    def forward(ctx, h, beta):
        d = 2.0 * h - 1.0
        powered = d.abs().log_().mul_(beta).exp_()  # |d| = 0: log -inf, exp 0
        ctx.save_for_backward(d, powered, beta)
        return h.numel() - powered.sum()

    @staticmethod
    def backward(ctx, grad):
        d, powered, beta = ctx.saved_tensors
        slope = (powered / d).nan_to_num_(nan=0.0)  # 0 / 0 only where d = 0
        return slope.mul_(-2.0 * beta * grad), None


def rounding_regularizer(h: torch.Tensor, beta) -> torch.Tensor:
    """``sum(1 - |2 h - 1|^beta)`` (:class:`RoundingRegularizer`); ``beta`` a float or 0-d tensor."""
    return RoundingRegularizer.apply(h, torch.as_tensor(beta, dtype=h.dtype, device=h.device))


def mask_as(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Boolean ``mask`` as 0/1 in ``like``'s dtype. Through a uint8 view: converting bool directly
    is several times slower on CPUs."""
    return mask.view(torch.uint8).to(like.dtype)


class LSQFakeQuant(torch.autograd.Function):
    """``y = s * clamp(round(x / s), qmin, qmax)``; where ``keep_fp`` is True, ``y = fp_value``
    (QDrop; ``fp_value`` defaults to ``x``).

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
        inside = q == rounded  # one comparison instead of q >= qmin, q <= qmax and their conjunction
        del rounded
        y = q * scale
        ds_local = None
        if ctx.needs_input_grad[1]:
            # (q - x/s) inside the range, q where clipped, 0 where replaced (below); products
            # with 0/1 masks are much cheaper than where/masked_fill on CPUs
            ds_local = q.sub_(xs.mul_(mask_as(inside, xs)))
        passes = inside
        if keep_fp is not None:
            keep = mask_as(keep_fp, y)
            # lerp with weights exactly 0 or 1 returns exactly y or the FP value
            y = torch.lerp(y, x if fp_value is None else fp_value, keep)
            # a kept element is x itself (gradient 1) or the constant fp_value (gradient 0)
            passes = inside | keep_fp if fp_value is None else inside & ~keep_fp
            if ds_local is not None:
                ds_local.addcmul_(ds_local, keep, value=-1.0)  # ds * (1 - keep) in one pass, exactly
        ctx.save_for_backward(passes, ds_local)  # the mask stays boolean: a quarter of the memory
        ctx.scale_shape = scale.shape
        return y

    @staticmethod
    def backward(ctx, grad):
        passes, ds_local = ctx.saved_tensors
        dx = grad * mask_as(passes, grad) if ctx.needs_input_grad[0] else None
        dscale = (grad * ds_local).sum().reshape(ctx.scale_shape) if ds_local is not None else None
        return dx, dscale, None, None, None, None


def lsq_fake_quant(x, scale, qmin: int, qmax: int, keep_fp: Optional[torch.Tensor] = None, fp_value=None):
    """Functional form of :class:`LSQFakeQuant`."""
    if not (torch.is_grad_enabled() and (x.requires_grad or scale.requires_grad)):
        # inference: no masks to keep for a backward pass
        y = torch.round(x / scale).clamp_(qmin, qmax).mul_(scale)
        return y if keep_fp is None else torch.where(keep_fp, x if fp_value is None else fp_value, y)
    return LSQFakeQuant.apply(x, scale, qmin, qmax, keep_fp, fp_value)


def lsq_fake_quant_reference(x, scale, qmin: int, qmax: int, keep_fp: Optional[torch.Tensor] = None, fp_value=None):
    """The same maths composed from :func:`round_ste` (for tests)."""
    y = torch.clamp(round_ste(x / scale), qmin, qmax) * scale
    if keep_fp is None:
        return y
    return torch.where(keep_fp, x if fp_value is None else fp_value.detach(), y)


def bernoulli_mask(like: torch.Tensor, p: float, generator: Optional[torch.Generator]) -> torch.Tensor:
    """Boolean mask shaped (and laid out) like ``like``, each element True with probability ``p``.

    On CUDA: ``rand < p``. On CPUs, where drawing one float per element dominates a QDrop step,
    one random 64-bit word drawn over ``[0, 2^63)`` gives 7 uniform bytes (the top byte is not
    uniform), each compared with ``round(256 p)``, so ``p`` is resolved to 1/256 (0, 0.5 and 1
    exactly).
    """
    channels_last = is_channels_last(like)
    shape = (like.shape[0], like.shape[2], like.shape[3], like.shape[1]) if channels_last else like.shape
    if like.device.type != "cpu":
        mask = torch.rand(shape, generator=generator, device=like.device) < p
    else:
        n = like.numel()
        words = torch.empty(-(-n // 7), dtype=torch.int64).random_(generator=generator)  # drawn for every p
        threshold = round(p * 256)
        if threshold >= 256:  # p resolved to 1: no byte reaches 256 (and uint8 cannot hold it)
            mask = torch.ones(shape, dtype=torch.bool)
        else:
            # compared in place on the strided (words, 7) view: no copy of the bytes, no wider type
            mask = (words.view(torch.uint8).view(-1, 8)[:, :7] < threshold).view(-1)[:n].view(shape)
    return mask.permute(0, 3, 1, 2) if channels_last else mask
