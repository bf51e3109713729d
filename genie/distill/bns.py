"""The BatchNorm-statistics loss of GENIE-D (Eq. 7) and the input-image term.

For every ``BatchNorm2d`` layer, with mu/sigma the mean and (unbiased) standard deviation of its
*input* over (N, H, W):
``||mu - running_mean||^2 / C + ||sigma - sqrt(running_var + 1e-6)||^2 / C``, summed over layers.
The input term pushes each generated image's per-channel mean/std towards 0/1:
``(||mean||^2 + ||std - 1||^2) / n`` over the n images of a batch.

Images of several independent batches can share one forward pass: the statistics and losses
are computed per group of ``group_size`` consecutive images.
"""
from __future__ import annotations

import torch
from torch import nn

from ..devices import is_channels_last
from ..errors import GenieError
from .folded_teacher import FoldedBatchNorm

BN_EPS = 1e-6


class GroupStdMean(torch.autograd.Function):
    """``torch.std_mean(x, dim=(1, 3, 4))`` (unbiased) of ``x`` ``(G, n, C, H, W)`` -> ``(G, C)`` each,
    with a backward pass of one fused multiply-add over ``x``:
    dx = dstd * (x - mean) / ((N - 1) * std) + dmean / N, with N = n * H * W
    (autograd's composed backward makes about six passes over the largest tensors of the step)."""

    @staticmethod
    def forward(ctx, x):
        g, n, c, h, w = x.shape
        flat = x.flatten(0, 1)
        if is_channels_last(flat):
            # channels-last (the CPU layout): a (G, n*H*W, C) view, and two passes (mean, then the
            # centred squares) reduce it 3-25x faster than std_mean's single-pass Welford
            rows = flat.permute(0, 2, 3, 1).reshape(g, n * h * w, c)
            mean = rows.mean(1)
            std = (rows - mean[:, None]).square_().sum(1).div_(n * h * w - 1).sqrt_()
        else:
            std, mean = torch.std_mean(x, dim=(1, 3, 4))
        ctx.save_for_backward(x, std, mean)
        return std, mean

    @staticmethod
    def backward(ctx, grad_std, grad_mean):
        x, std, mean = ctx.saved_tensors
        count = x.shape[1] * x.shape[3] * x.shape[4]
        grad_std = torch.zeros_like(std) if grad_std is None else grad_std
        grad_mean = torch.zeros_like(mean) if grad_mean is None else grad_mean
        scale = grad_std / ((count - 1) * std)
        shift = grad_mean / count - mean * scale
        g, c = scale.shape
        return torch.addcmul(shift.view(g, 1, c, 1, 1), x, scale.view(g, 1, c, 1, 1))


def bn_layers(model: nn.Module) -> list:
    """``[(name, module)]`` of the layers the BNS loss reads: every ``BatchNorm2d``, and every
    :class:`~genie.distill.folded_teacher.FoldedBatchNorm` of a folded teacher, in module order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.BatchNorm2d, FoldedBatchNorm))]


class BNStatsLoss:
    """Forward pre-hooks on every BatchNorm2d of ``model`` (or what stands for one in a folded
    teacher) that compute the per-group BNS loss of the last forward pass.
    ``per_layer()`` -> ``(groups, layers)``; ``total()`` -> ``(groups,)``."""

    def __init__(self, model: nn.Module, group_size: int):
        self.layers = bn_layers(model)
        if not self.layers:
            raise GenieError(
                f"{type(model).__name__} has no BatchNorm2d layer: GENIE-D distils data from BatchNorm "
                "statistics; use real calibration images (--data real) for this model"
            )
        self.group_size = group_size
        self._losses: list = [None] * len(self.layers)
        self._handles = [m.register_forward_pre_hook(self._hook(i)) for i, (_, m) in enumerate(self.layers)]

    @property
    def names(self) -> list:
        return [n for n, _ in self.layers]

    def _hook(self, index: int):
        bn = self.layers[index][1]

        def hook(module, args):
            x = args[0]
            n, c = x.shape[:2]
            grouped = x.unflatten(0, (n // self.group_size, self.group_size))  # (G, n, C, H, W), a view
            std, mean = GroupStdMean.apply(grouped)  # (G, C) each, unbiased std
            if isinstance(bn, FoldedBatchNorm):  # x is the folded output a * input + b
                std, mean = bn.input_stats(std, mean)
            target_std = torch.sqrt(bn.running_var + BN_EPS)
            self._losses[index] = ((mean - bn.running_mean).pow(2).sum(1) + (std - target_std).pow(2).sum(1)) / c

        return hook

    def per_layer(self) -> torch.Tensor:
        if any(l is None for l in self._losses):
            raise RuntimeError("run a forward pass first (some BatchNorm layers did not run)")
        return torch.stack(self._losses, dim=1)

    def total(self) -> torch.Tensor:
        return self.per_layer().sum(dim=1)

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


def input_stats_loss(images: torch.Tensor, group_size: int) -> torch.Tensor:
    """``(groups,)``: per batch, ``(sum ||mean_i||^2 + ||std_i - 1||^2) / n`` over its images,
    with per-image per-channel statistics over (H, W)."""
    std, mean = torch.std_mean(images.flatten(2), dim=2)  # (N, 3)
    per_image = mean.pow(2).sum(1) + (std - 1).pow(2).sum(1)
    return per_image.view(-1, group_size).sum(1) / group_size


@torch.no_grad()
def bns_loss(model: nn.Module, images: torch.Tensor, per_layer: bool = False, with_input_term: bool = True):
    """BNS loss of ``images`` (one batch) under ``model`` in eval mode: a float, or with
    ``per_layer=True`` a dict ``{layer name: loss}`` (plus ``"input"``)."""
    stats = BNStatsLoss(model, len(images))
    was_training = model.training
    try:
        model.eval()
        model(images)
        layers = stats.per_layer()[0]
    finally:
        stats.remove()
        model.train(was_training)
    extra = input_stats_loss(images, len(images))[0] if with_input_term else torch.zeros(())
    if per_layer:
        out = {name: float(v) for name, v in zip(stats.names, layers)}
        if with_input_term:
            out["input"] = float(extra)
        return out
    return float(layers.sum() + extra)
