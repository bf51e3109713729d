"""AdaRound-style soft rounding (GENIE-M's softbits), as pure functions.

* :func:`rectified_sigmoid` - h(V) = clamp(sigmoid(V) * (zeta - gamma) + gamma, 0, 1), the soft
  rounding offset in [0, 1], and :func:`inverse_rectified_sigmoid`.
* :func:`soft_rounded_weight` - Eq. 11-13's ``W_q = s * (clamp(B + h(V) + z, 0, qmax) - z)``.
* :func:`softbits_regularizer` - Eq. 15's ``sum(1 - |2 h(V) - 1|^beta)``.
* :func:`rounding_regularizer` - the same of given offsets ``h`` (for tests and other callers).

The first three run once per reconstruction step on every layer of a unit. Composed in autograd
they are ~20 small operations and as many graph nodes each way, which on CPUs cost more than
their arithmetic (the weights hold 2e3 - 6e5 elements). Each is therefore one autograd function
whose backward pass performs autograd's operations in the same order, except that gradients are
masked by products with 0/1 tensors instead of ``where``: the values are those of the composed
formulas, bit for bit up to the sign of a zero (tests check this).
"""
from __future__ import annotations

import torch

from .fake_quant import equal_01

GAMMA, ZETA = -0.1, 1.1  # stretch of the rectified sigmoid (AdaRound, Louizos et al.)


def rectified_sigmoid(v: torch.Tensor) -> torch.Tensor:
    """h(V) in [0, 1]: the soft rounding offset of AdaRound / GENIE-M (composed; differentiable)."""
    return torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


def inverse_rectified_sigmoid(h: torch.Tensor) -> torch.Tensor:
    """V such that h(V) = h, for h in [0, 1) (used to start softbits at the fractional part)."""
    return -torch.log((ZETA - GAMMA) / (h - GAMMA) - 1.0)


def _offset_and_mask(softbits: torch.Tensor) -> tuple:
    """``(sigmoid(V), h(V), 1 where h is not clamped else 0)``: what the backward pass of h needs."""
    sig = torch.sigmoid(softbits)
    stretched = sig * (ZETA - GAMMA) + GAMMA
    offset = stretched.clamp(0.0, 1.0)
    return sig, offset, equal_01(offset, stretched)  # inside [0, 1] iff the clamp changed nothing


def _offset_backward(grad: torch.Tensor, sig: torch.Tensor, unclamped: torch.Tensor) -> torch.Tensor:
    """dL/dV from dL/dh: through the clamp (0 where clamped), the stretch and the sigmoid."""
    return torch.ops.aten.sigmoid_backward(grad * unclamped * (ZETA - GAMMA), sig)


def _powered(h: torch.Tensor, beta: torch.Tensor) -> tuple:
    """``(d, |d|^beta)`` with ``d = 2 h - 1``; ``|d|^beta`` is ``exp(beta log |d|)`` (CPUs: ~2.5x
    faster than ``pow`` with a non-integer exponent; ``|d| = 0``: log -inf, exp 0)."""
    d = 2.0 * h - 1.0
    return d, d.abs().log_().mul_(beta).exp_()


def _powered_backward(grad, d, powered, beta) -> torch.Tensor:
    """d/dh of ``sum(1 - |d|^beta)`` times ``grad``: ``-2 beta |d|^beta / d``, 0 where ``d = 0``
    (where autograd's composed gradient is 0 for beta > 1)."""
    slope = (powered / d).nan_to_num_(nan=0.0)  # 0 / 0 only where d = 0
    return slope.mul_(-2.0 * beta * grad)


def _beta_like(beta, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(beta, dtype=like.dtype, device=like.device)


class SoftRoundedWeight(torch.autograd.Function):
    """``W_q = s * (clamp(B + h(V) + z, 0, qmax) - z)`` (Eq. 11-13) from softbits ``V`` and base
    integers ``B`` (the weight's shape), step size ``s`` and zero point ``z`` (broadcastable, e.g.
    ``(C_out, 1, 1, 1)``). Gradients: dW_q/ds = the clamped integer minus ``z`` (summed to ``s``'s
    shape), dW_q/dV = ``s * h'(V)`` where neither clamp is active, else 0; ``B`` and ``z`` get
    none.

    With ``beta`` (a 0-d tensor) it also returns Eq. 15's regulariser of the same ``h(V)``
    (:class:`SoftbitsRegularizer`) as a second output, so a training step computes ``h`` once.
    """

    @staticmethod
    def forward(ctx, softbits, scale, base, zero_point, qmax: int, beta=None):
        sig, offset, unclamped = _offset_and_mask(softbits)
        level = base + offset + zero_point
        w_int = level.clamp(0, qmax)
        centred = w_int - zero_point
        saved = [sig, unclamped, equal_01(w_int, level), centred, scale]
        weight = centred * scale
        if beta is None:
            ctx.save_for_backward(*saved)
            return weight
        d, powered = _powered(offset, beta)
        ctx.save_for_backward(*saved, d, powered, beta)
        return weight, offset.numel() - powered.sum()

    @staticmethod
    def backward(ctx, grad, grad_regularizer=None):
        sig, unclamped, in_range, centred, scale, *powered = ctx.saved_tensors
        d_softbits = d_scale = None
        if ctx.needs_input_grad[0]:
            d_softbits = _offset_backward(grad * scale * in_range, sig, unclamped)
            if grad_regularizer is not None:
                # its own chain, then the sum: what autograd computes for two uses of h(V)
                d_softbits = d_softbits + _offset_backward(_powered_backward(grad_regularizer, *powered), sig, unclamped)
        if ctx.needs_input_grad[1]:
            d_scale = (grad * centred).sum_to_size(scale.shape)
        return d_softbits, d_scale, None, None, None, None


def soft_rounded_weight(softbits, scale, base, zero_point, qmax: int, beta=None):
    """:class:`SoftRoundedWeight`: the soft-rounded fake-quantized weight (the weight's shape),
    or with ``beta`` (float or 0-d tensor) the pair ``(weight, Eq. 15's regulariser)``."""
    if beta is None:
        return SoftRoundedWeight.apply(softbits, scale, base, zero_point, qmax)
    return SoftRoundedWeight.apply(softbits, scale, base, zero_point, qmax, _beta_like(beta, softbits))


class RoundingRegularizer(torch.autograd.Function):
    """Eq. 15's ``sum(1 - |2 h - 1|^beta)`` of soft offsets ``h`` (any shape; ``beta`` a 0-d
    tensor > 0) -> 0-d."""

    @staticmethod
    def forward(ctx, h, beta):
        d, powered = _powered(h, beta)
        ctx.save_for_backward(d, powered, beta)
        return h.numel() - powered.sum()

    @staticmethod
    def backward(ctx, grad):
        return _powered_backward(grad, *ctx.saved_tensors), None


class SoftbitsRegularizer(torch.autograd.Function):
    """:class:`RoundingRegularizer` of ``h(V)``, from the softbits ``V`` -> 0-d."""

    @staticmethod
    def forward(ctx, softbits, beta):
        sig, offset, unclamped = _offset_and_mask(softbits)
        d, powered = _powered(offset, beta)
        ctx.save_for_backward(sig, unclamped, d, powered, beta)
        return offset.numel() - powered.sum()

    @staticmethod
    def backward(ctx, grad):
        sig, unclamped, d, powered, beta = ctx.saved_tensors
        return _offset_backward(_powered_backward(grad, d, powered, beta), sig, unclamped), None


def rounding_regularizer(h: torch.Tensor, beta) -> torch.Tensor:
    """``sum(1 - |2 h - 1|^beta)`` (:class:`RoundingRegularizer`); ``beta`` a float or 0-d tensor."""
    return RoundingRegularizer.apply(h, _beta_like(beta, h))


def softbits_regularizer(softbits: torch.Tensor, beta) -> torch.Tensor:
    """``sum(1 - |2 h(V) - 1|^beta)`` (:class:`SoftbitsRegularizer`); ``beta`` a float or 0-d tensor."""
    return SoftbitsRegularizer.apply(softbits, _beta_like(beta, softbits))
