"""The distillation teacher with its BatchNorm layers folded into the convolutions before them.

In eval mode a BatchNorm is the per-channel map ``y = a * x + b`` (``a = gamma / sqrt(var +
eps)``, ``b = beta - a * running_mean``), and the BNS loss needs the statistics of its input
``x``. Folding the map into the convolution that produces ``x`` (weights times ``a``, bias ``b``)
removes one elementwise pass over the largest tensors in the forward pass and one in the
backward pass of every distillation step; the statistics of ``x`` follow exactly from those of
the folded output ``y``:

    mean(x) = (mean(y) - b) / a,        std(x) = std(y) / |a|.

A :class:`FoldedBatchNorm` takes the BatchNorm's place: it passes ``y`` through and carries the
BatchNorm's running statistics (the loss's targets) and ``a``, ``b``; :class:`~genie.distill.bns.BNStatsLoss`
hooks it like a BatchNorm. The losses and gradients are those of the unfolded teacher up to float
rounding (tests/test_distill.py).

A BatchNorm is folded only where that rounding stays small. ``y`` holds ``x``'s spread
``|a| * sigma`` next to its offset, so float32 keeps ``std(x)`` and ``mean(x)`` to about
``2^-24 * |b| / (|a| * (|mu| + sigma))`` relative; a layer where that ratio exceeds
:data:`MAX_OFFSET_RATIO` for some channel (a channel with ``gamma`` near 0, for instance), or
whose pair torch.fx cannot confirm (a convolution whose only consumer is the BatchNorm, each run
once), keeps its BatchNorm.
"""
from __future__ import annotations

import warnings

import torch
from torch import nn

from ..quant.bn_fold import _set_submodule, bn_factor, conv_bn_pairing, fold_conv_bn

# largest |b| / (|a| (|running_mean| + sigma)) of a folded channel: float32 then keeps the
# statistics of the BatchNorm's input to about 1000 * 2^-24 = 6e-5 of their scale, at worst
# (the rounding of the mean averages out over the N * H * W values; the std's is second order)
MAX_OFFSET_RATIO = 1000.0


class FoldedBatchNorm(nn.Module):
    """Where a ``BatchNorm2d`` was, after its map ``y = scale * x + shift`` went into the
    convolution before it: ``forward`` returns its input. Buffers ``running_mean``,
    ``running_var`` (the BatchNorm's, ``(C,)``), ``scale`` and ``shift`` (``(C,)``)."""

    def __init__(self, bn: nn.BatchNorm2d, scale: torch.Tensor, shift: torch.Tensor):
        super().__init__()
        self.num_features = bn.num_features
        self.register_buffer("running_mean", bn.running_mean.detach().clone())
        self.register_buffer("running_var", bn.running_var.detach().clone())
        self.register_buffer("scale", scale.detach().clone())
        self.register_buffer("shift", shift.detach().clone())

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return y

    def input_stats(self, std: torch.Tensor, mean: torch.Tensor):
        """``(std, mean)`` of the BatchNorm's input from those of the folded output ``y``
        (``(..., C)`` each)."""
        return std / self.scale.abs(), (mean - self.shift) / self.scale


def _bn_map(bn: nn.BatchNorm2d):
    """``(a, b)`` per channel ``(C,)``: the eval-mode BatchNorm is ``y = a * x + b``, with ``x`` the
    convolution's output (its own bias included)."""
    a = bn_factor(bn)
    beta = bn.bias if bn.affine else torch.zeros_like(a)
    return a, beta - a * bn.running_mean


@torch.no_grad()
def foldable(bn: nn.BatchNorm2d) -> bool:
    """Whether folding ``bn`` keeps its input statistics to float32 rounding (module docstring)."""
    a, shift = _bn_map(bn)
    spread = a.abs() * (bn.running_mean.abs() + torch.sqrt(bn.running_var + bn.eps))
    return bool((a != 0).all() and (shift.abs() <= MAX_OFFSET_RATIO * spread).all())


@torch.no_grad()
def fold_teacher_batchnorm(model: nn.Module) -> list:
    """Fold, in place, every BatchNorm2d of ``model`` (eval statistics) that follows a Conv2d
    and passes :func:`foldable` into that convolution, leaving a :class:`FoldedBatchNorm` in its
    place. Returns the names of the folded BatchNorms (none when torch.fx cannot trace the
    model: pairs guessed from registration order are not trusted here)."""
    with warnings.catch_warnings():  # an untraceable model is distilled unfolded: nothing to warn about
        warnings.simplefilter("ignore")
        pairing = conv_bn_pairing(model)
    if pairing.guessed is not None:
        return []
    folded = []
    for conv_name, bn_name in pairing.pairs:
        conv, bn = model.get_submodule(conv_name), model.get_submodule(bn_name)
        if pairing.calls.get(conv_name, 0) != 1 or pairing.calls.get(bn_name, 0) != 1 or not foldable(bn):
            continue
        replacement = FoldedBatchNorm(bn, *_bn_map(bn))
        fold_conv_bn(conv, bn)
        _set_submodule(model, bn_name, replacement)
        folded.append(bn_name)
    return folded
