"""Optimiser and schedules for distillation that keep all state on the device.

Several independent batches are optimised together, so learning rates are per batch
(tensors broadcast over each parameter's leading batch dimension), and the plateau schedule of
the latents decides per batch from that batch's own loss, without pulling the loss to the host.
"""
from __future__ import annotations

import torch


class DeviceAdam:
    """Adam (betas 0.9/0.999, eps 1e-8, bias-corrected) whose learning rate per parameter is a
    tensor broadcastable to it (e.g. ``(G, 1, 1)`` for per-batch rates); identical per element
    to ``torch.optim.Adam`` with the same rate."""

    def __init__(self, params: list, betas=(0.9, 0.999), eps: float = 1e-8):
        self.params = list(params)
        self.beta1, self.beta2 = betas
        self.eps = eps
        self.exp_avg = [torch.zeros_like(p) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in self.params]
        self.steps = 0

    @torch.no_grad()
    def step(self, grads: list, lrs: list) -> None:
        self.steps += 1
        torch._foreach_lerp_(self.exp_avg, grads, 1 - self.beta1)
        torch._foreach_mul_(self.exp_avg_sq, self.beta2)
        torch._foreach_addcmul_(self.exp_avg_sq, grads, grads, 1 - self.beta2)
        c1 = 1 - self.beta1**self.steps
        c2 = 1 - self.beta2**self.steps
        denom = torch._foreach_sqrt(self.exp_avg_sq)
        torch._foreach_div_(denom, c2**0.5)
        torch._foreach_add_(denom, self.eps)
        for p, m, d, lr in zip(self.params, self.exp_avg, denom, lrs):
            p.addcdiv_(m * (lr / c1), d, value=-1.0)

    def state(self) -> dict:
        return {"exp_avg": self.exp_avg, "exp_avg_sq": self.exp_avg_sq, "steps": self.steps}


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
        loss = loss.detach().to(self.best.dtype)
        better = loss < self.best * (1 - self.threshold)
        self.best = torch.where(better, loss, self.best)
        self.bad = torch.where(better, torch.zeros_like(self.bad), self.bad + 1)
        reduce = self.bad > self.patience
        new_lr = torch.clamp(self.lr * self.factor, min=self.min_lr)
        self.lr = torch.where(reduce & (self.lr - new_lr > self.eps), new_lr, self.lr)
        self.bad = torch.where(reduce, torch.zeros_like(self.bad), self.bad)
