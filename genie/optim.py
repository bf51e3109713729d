"""Optimiser and schedules that keep all their state on the device.

The hot loops of distillation and reconstruction never wait for the host: learning rates are
tensors (per batch when independent batches are optimised together: broadcast over each
parameter's leading batch dimension), the step count lives on the device, and the plateau
schedule decides per batch from that batch's own loss without pulling it to the host. The same
code can therefore be captured once in a CUDA graph and replayed.
"""
from __future__ import annotations

import torch

_CPU_FUSED_ADAM = torch.torch_version.TorchVersion(torch.__version__) >= (2, 4)  # its CPU kernel came in 2.4


class DeviceAdam:
    """Adam (betas 0.9/0.999, eps 1e-8, bias-corrected) whose learning rate per parameter is a
    tensor broadcastable to it (e.g. ``(G, 1, 1)`` for per-batch rates); identical per element
    to ``torch.optim.Adam`` with the same rate.

    ``fused``: on CPUs, a parameter whose rate is a number or a 0-d tensor is updated by torch's
    fused Adam kernel, one pass over its elements instead of eight element-wise operations (7x
    faster at 4e4 elements on AVX2); the same update up to float rounding. Rates of other shapes,
    and CUDA (whose steps replay as CUDA graphs), take the composed path.
    """

    def __init__(self, params: list, betas=(0.9, 0.999), eps: float = 1e-8, fused: bool = False):
        self.params = list(params)
        self.beta1, self.beta2 = betas
        self.eps = eps
        self.fused = fused
        self.exp_avg = [torch.zeros_like(p) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in self.params]
        first = self.params[0]
        self.steps = torch.zeros((), dtype=first.dtype, device=first.device)  # on the device

    def _fusable(self, param: torch.Tensor, lr) -> bool:
        return (self.fused and _CPU_FUSED_ADAM and param.device.type == "cpu"
                and (not torch.is_tensor(lr) or lr.dim() == 0))

    @torch.no_grad()
    def step(self, grads: list, lrs: list) -> None:
        """One update; ``lrs[i]`` is a tensor (or float) broadcastable to ``params[i]``."""
        self.steps += 1
        composed = []  # indices of the parameters for the element-wise path
        for i, (p, g, lr) in enumerate(zip(self.params, grads, lrs)):
            if not self._fusable(p, lr):
                composed.append(i)
                continue
            if g.stride() != p.stride():
                # torch's CPU kernel walks the gradient with the parameter's strides: a gradient
                # laid out otherwise (a convolution's weight gradient is channels-last when its
                # input is) would silently update each element with another's gradient
                g = torch.empty_like(p).copy_(g)
            torch._fused_adam_([p], [g], [self.exp_avg[i]], [self.exp_avg_sq[i]], [], [self.steps], lr=float(lr),
                               beta1=self.beta1, beta2=self.beta2, weight_decay=0.0, eps=self.eps, amsgrad=False,
                               maximize=False)
        if composed:
            def pick(seq):
                return seq if len(composed) == len(seq) else [seq[i] for i in composed]
            self._composed_step(pick(self.params), pick(grads), pick(lrs), pick(self.exp_avg), pick(self.exp_avg_sq))

    def _composed_step(self, params, grads, lrs, exp_avg, exp_avg_sq) -> None:
        """The update of Adam from element-wise operations (``steps`` already counted)."""
        torch._foreach_lerp_(exp_avg, grads, 1 - self.beta1)
        torch._foreach_mul_(exp_avg_sq, self.beta2)
        torch._foreach_addcmul_(exp_avg_sq, grads, grads, 1 - self.beta2)
        c1 = 1 - torch.pow(self.beta1, self.steps)
        c2 = torch.sqrt(1 - torch.pow(self.beta2, self.steps))
        denom = torch._foreach_sqrt(exp_avg_sq)
        torch._foreach_div_(denom, c2)
        torch._foreach_add_(denom, self.eps)
        for p, m, d, lr in zip(params, exp_avg, denom, lrs):
            p.addcdiv_(m * (lr / c1), d, value=-1.0)


class DevicePlateau:
    """``ReduceLROnPlateau`` (mode min, relative threshold 1e-4, no cooldown) for G independent
    batches at once: ``step(loss)`` with ``loss`` ``(G,)`` on the device updates ``lr`` ``(G,)``."""

    def __init__(self, lr: torch.Tensor, factor: float = 0.1, patience: int = 100, min_lr: float = 1e-4,
                 threshold: float = 1e-4, eps: float = 1e-8):
        self.lr = lr.clone()
        self.best = torch.full_like(self.lr, float("inf"))
        self.bad = torch.zeros_like(self.lr, dtype=torch.int64)
        self.factor, self.patience, self.min_lr, self.threshold, self.eps = factor, patience, min_lr, threshold, eps

    @torch.no_grad()
    def step(self, loss: torch.Tensor) -> None:
        # in-place updates only: a replayed CUDA graph must find its state where it left it
        loss = loss.detach().to(self.best.dtype)
        better = loss < self.best * (1 - self.threshold)
        self.best.copy_(torch.where(better, loss, self.best))
        self.bad.copy_(torch.where(better, torch.zeros_like(self.bad), self.bad + 1))
        reduce = self.bad > self.patience
        new_lr = torch.clamp(self.lr * self.factor, min=self.min_lr)
        self.lr.copy_(torch.where(reduce & (self.lr - new_lr > self.eps), new_lr, self.lr))
        self.bad.masked_fill_(reduce, 0)
