"""The optimisation of one reconstruction unit (GENIE-M): its parameter groups and the training
step whose state (iteration counter, schedules, loss record, batch indices) lives on the device,
so eager execution and CUDA-graph replay run the same code."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

from ..optim import DeviceAdam
from .act_quantizer import ActQuantizer
from .fake_quant import bernoulli_mask
from .layers import QuantLayer
from .recon_primitives import batch_indices, output_units, reconstruction_loss, take_rows
from .recon_state import ReconConfig, ReconRun, ReconUnit


@dataclass
class ParamGroup:
    """Tensors trained with one learning rate and schedule.

    ``schedule``: ``"constant"`` or ``"cosine"`` (annealed from ``lr`` to 0 over the iterations).
    ``floor``: if set, every tensor is kept ``>=`` this fraction of its initial value (step sizes).
    ``units``: if set, one tensor ``u`` per parameter ``p``, broadcastable to it: Adam optimises
    ``p / u`` instead of ``p``, i.e. its gradient is multiplied by ``u`` and so is its update.
    """

    name: str
    params: list
    lr: float
    schedule: str = "constant"
    floor: Optional[float] = None
    units: Optional[list] = None


def _unfolded_units(layer: QuantLayer) -> torch.Tensor:
    """Per output channel, broadcastable to the layer's step size: |gamma/sigma| if a BatchNorm
    was folded into the layer, else 1.

    Folding multiplies a channel's weights, hence its step size, by |gamma/sigma|. The paper's
    rate (1e-4) is absolute and Adam moves a parameter by about the rate whatever its gradient's
    size, so a folded channel's step would move, relative to itself, 1/|gamma/sigma| times as
    fast as unfolded: 300x for a near-dead channel (gamma/sigma 0.003), 0.27x in ResNet-20's last
    stage. Optimising the step divided by |gamma/sigma| (the unfolded layer's step) makes Adam's
    moments, and so every update, those of the unfolded run: folding, which deployment needs, no
    longer changes what is learned.
    """
    scale = layer.weight_quant.scale
    return layer.fold_scale.to(scale.dtype).view(scale.shape)


def param_groups(layers: list, acts: list, method: str, cfg: ReconConfig) -> list:
    """The trainable tensors of a unit (``layers``: its QuantLayers not yet integer, ``acts``: its
    enabled, initialised activation quantizers), as :class:`ParamGroup` s in optimiser order:
    softbits (adaround, genie), weight step sizes (genie only), activation step sizes."""
    weight_steps = layers if method == "genie" else []
    return [
        ParamGroup("softbits", [l.weight_quant.softbits for l in layers if l.weight_quant.has_softbits],
                   cfg.lr_softbits, "constant"),
        ParamGroup("weight step sizes", [l.weight_quant.scale for l in weight_steps], cfg.lr_weight_scale,
                   "cosine", cfg.min_scale_ratio, [_unfolded_units(l) for l in weight_steps]),
        ParamGroup("activation step sizes", [q.scale for q in acts], cfg.lr_act_scale, "cosine", cfg.min_scale_ratio),
    ]


class UnitTrainer:
    """The optimisation of one unit, as a step whose state (iteration counter, schedules, loss
    record, batch indices) lives on the device: eager and CUDA-graph replay run the same code."""

    def __init__(self, unit: ReconUnit, run: ReconRun):
        cfg = run.cfg
        self.module, self.fp_in, self.q_in, self.fp_out, self.cfg = unit.module, unit.fp_in, unit.q_in, unit.fp_out, cfg
        device = unit.q_in.device
        layers = [m for m in unit.module.modules() if isinstance(m, QuantLayer) and not m.weight_quant.is_integer]
        self.acts = [m for m in unit.module.modules() if isinstance(m, ActQuantizer) and m.enabled and m.initialized]
        self.groups = param_groups(layers, self.acts, run.method, cfg)
        self.params = [p for g in self.groups for p in g.params]
        # per parameter: its multiplier u (ParamGroup.units, or None) and whether its rate is annealed
        self.units = [u for g in self.groups for u in (g.units or [None] * len(g.params))]
        self.annealed = [g.schedule == "cosine" for g in self.groups for _ in g.params]
        self.base_lrs = [g.lr for g in self.groups for _ in g.params]
        self.rounded = [l.weight_quant for l in layers if l.weight_quant.has_softbits]  # Eq. 15's regulariser
        # Step sizes stay above a fraction of their initial value: the learning rates are absolute,
        # and a channel of near-zero weights (step ~1e-7) would otherwise be pushed below zero,
        # flipping the sign of its weights.
        self.floored = [p for g in self.groups if g.floor is not None for p in g.params]
        self.floors = [p.detach() * g.floor for g in self.groups if g.floor is not None for p in g.params]
        self.starts = [p.detach().clone() for p in self.floored]
        self.lowest = [p.detach().clone() for p in self.floored]  # before the floor: what it had to hold
        self.lam = cfg.rounding_weight(run.method)
        self.warm = int(cfg.warmup * cfg.iters)
        self.step_count = torch.zeros((), dtype=torch.int64, device=device)
        self.losses = torch.zeros(cfg.iters, device=device, dtype=unit.q_in.dtype)
        n = len(unit.q_in)
        self.indices = batch_indices(n, cfg.iters, min(cfg.batch_size, n), run.generator, device)
        self.optimizer = DeviceAdam(self.params, fused=True) if self.params else None
        # on CPUs an explicit generator; on CUDA the (seeded, forked) default generator, which
        # CUDA graphs can replay
        self.generator = run.generator if device.type == "cpu" else None
        for q in self.acts:
            q.drop_prob, q.generator = cfg.drop_prob, self.generator
        # QDrop's scheme: a unit's own input quantizer mixes in the FP input itself, with its mask
        entry = unit.module.input_quant
        self.entry = entry if entry in self.acts and cfg.qdrop_input == "qdrop" else None
        self.out_weight = output_units(unit.module)  # a lone folded conv's loss, in unfolded units
        if self.out_weight is not None:
            self.out_weight = self.out_weight.to(unit.q_in.dtype)

    def _schedules(self):
        """Learning rates (one per parameter), beta of Eq. 15 and the warm-up gate, on the device."""
        t = self.step_count.to(torch.float32)
        cosine = 0.5 * (1.0 + torch.cos(t * (math.pi / self.cfg.iters)))
        lrs = [lr * cosine if annealed else lr for lr, annealed in zip(self.base_lrs, self.annealed)]
        progress = ((t - self.warm) / max(1, self.cfg.iters - self.warm)).clamp(0.0, 1.0)
        beta = self.cfg.beta_end + (self.cfg.beta_start - self.cfg.beta_end) * (1.0 - progress)
        gate = (t >= self.warm).to(torch.float32)  # no rounding regulariser during the warm-up
        return lrs, beta, gate

    def step(self) -> None:
        cfg = self.cfg
        lrs, beta, gate = self._schedules()
        for q in self.rounded:
            q.rounding_beta = beta  # the soft forward pass computes Eq. 15's regulariser too
        idx = self.indices.index_select(0, self.step_count.view(1)).view(-1)
        x = take_rows(self.q_in, idx)
        if cfg.drop_prob > 0.0:
            if self.entry is not None:
                self.entry.fp_source = take_rows(self.fp_in, idx)
            else:
                # no input quantizer, or the reference's scheme: mix here; an input quantizer then
                # drops again with its own mask
                keep = bernoulli_mask(x, cfg.drop_prob, self.generator, dtype=x.dtype)
                x = torch.lerp(x, take_rows(self.fp_in, idx), keep)  # weights 0/1: exactly x or the FP input
        rec = reconstruction_loss(self.module(x), take_rows(self.fp_out, idx), self.out_weight)
        loss = rec
        if self.rounded:
            reg = sum(q.take_regularizer(beta) for q in self.rounded)
            loss = loss + (self.lam * gate) * reg
        # a parameter can drop out of the graph (QDrop probability 1 leaves activations FP)
        grads = torch.autograd.grad(loss, self.params, allow_unused=True)
        grads = [torch.zeros_like(p) if g is None else g for p, g in zip(self.params, grads)]
        # Adam on p / u: the gradient w.r.t. p / u is grad * u, and a step d(p / u) moves p by u * d
        grads = [g if u is None else g * u for g, u in zip(grads, self.units)]
        lrs = [lr if u is None else lr * u for lr, u in zip(lrs, self.units)]
        self.optimizer.step(grads, lrs)
        if self.floored:
            with torch.no_grad():
                torch._foreach_minimum_(self.lowest, self.floored)
                torch._foreach_maximum_(self.floored, self.floors)
        self.losses.index_copy_(0, self.step_count.view(1), rec.detach().view(1))
        self.step_count += 1

    @torch.no_grad()
    def floor_record(self) -> tuple:
        """``(held, lowest)``: how many step sizes (elements) the floor (``min_scale_ratio`` of
        their start) held up at some iteration, and the smallest ratio of a step size to its
        start that any update asked for (1.0 when there are none)."""
        held = sum(int((low < f).sum()) for low, f in zip(self.lowest, self.floors))
        ratios = [(low / s.abs().clamp_min(torch.finfo(s.dtype).tiny)).min() for low, s in zip(self.lowest, self.starts)]
        return held, min([1.0] + [float(r) for r in ratios])

    def close(self) -> None:
        for q in self.acts:
            q.drop_prob, q.generator, q.fp_source = 0.0, None, None
        for q in self.rounded:
            q.rounding_beta = None
