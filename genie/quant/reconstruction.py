"""Block-wise reconstruction (GENIE-M, BRECQ/QDrop style).

Units (blocks or single layers) are optimised one after another from the input. For unit k the
student's input is the quantized model's own output of units < k; the target is the FP
teacher's output of unit k. Loss: ``||z - z_q||^2`` summed over features, averaged over the
batch, plus the rounding regulariser of Eq. 15 (after a warm-up). Adam: softbits lr 1e-3
(constant), weight step sizes lr 1e-4 and activation step sizes lr 4e-5 (cosine-annealed to 0).

The hot loop does not synchronise with the host: batch indices are drawn up front on the
device, QDrop masks come from a device generator, and losses are written into a device buffer
that is read every ``report_every`` iterations.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import nn

from ..data import model_device
from ..errors import GenieError
from ..events import Callback, UnitEnd, UnitProgress, UnitStart, emit
from .act_quantizer import ActQuantizer
from .fake_quant import bernoulli_mask
from .layers import QuantLayer
from .qmodel import QuantizedModel


@dataclass
class ReconConfig:
    """Reconstruction hyper-parameters (defaults: method card / paper appendix A)."""

    iters: int = 20000
    batch_size: int = 32
    drop_prob: float = 0.5  # QDrop: probability an activation element stays FP (0 disables)
    lr_softbits: float = 1e-3
    lr_weight_scale: float = 1e-4
    lr_act_scale: float = 4e-5
    round_weight: Optional[float] = None  # lambda of Eq. 15: 1.0 for genie, 0.01 for adaround
    beta_start: float = 20.0
    beta_end: float = 2.0
    warmup: float = 0.2  # fraction of iterations without the rounding regulariser
    seed: int = 0
    chunk_size: Optional[int] = None  # images per forward when caching unit inputs

    def validate(self) -> "ReconConfig":
        if not isinstance(self.iters, int) or self.iters < 0:
            raise GenieError(f"reconstruction iterations must be an integer >= 0, got {self.iters!r}")
        if not isinstance(self.batch_size, int) or self.batch_size <= 0:
            raise GenieError(f"batch_size must be a positive integer, got {self.batch_size!r}")
        if not 0.0 <= self.drop_prob <= 1.0:
            raise GenieError(f"drop_prob must be in [0, 1], got {self.drop_prob}")
        if not 0.0 <= self.warmup < 1.0:
            raise GenieError(f"warmup must be in [0, 1), got {self.warmup}")
        return self


@dataclass
class UnitReport:
    name: str
    kind: str
    init_error: float
    final_error: float
    seconds: float
    losses: torch.Tensor = field(repr=False)


@dataclass
class ReconReport:
    units: list
    seconds: float

    def table(self) -> str:
        rows = [f"{'unit':<24} {'kind':<18} {'init err':>10} {'final err':>10} {'s':>7}"]
        for u in self.units:
            rows.append(f"{u.name:<24} {u.kind:<18} {u.init_error:>10.4g} {u.final_error:>10.4g} {u.seconds:>7.1f}")
        return "\n".join(rows)


class _StopForward(Exception):
    pass


@torch.no_grad()
def _capture(model: nn.Module, module: nn.Module, images: torch.Tensor, chunk: int, with_output: bool):
    """Inputs (and outputs) of ``module`` when ``model`` runs on ``images``, stopping the forward
    pass there. Returns ``(inputs, outputs or None)``, each ``(N, ...)``."""
    inputs, outputs = [], []

    def grab(mod, args, *out):
        if len(args) != 1 or not torch.is_tensor(args[0]):
            raise GenieError(f"unit {type(mod).__name__} must take exactly one tensor input")
        inputs.append(args[0].detach())
        if out:
            outputs.append(out[0].detach())
        raise _StopForward

    handle = module.register_forward_hook(grab) if with_output else module.register_forward_pre_hook(grab)
    try:
        for part in images.split(chunk):
            try:
                model(part)
            except _StopForward:
                pass
    finally:
        handle.remove()
    return torch.cat(inputs), (torch.cat(outputs) if with_output else None)


@torch.no_grad()
def _init_activations(unit: nn.Module, q_in: torch.Tensor, chunk: int, p: float) -> None:
    """Step-size search for the unit's activation quantizers, one after another in forward order
    (earlier ones already quantizing), over all calibration images."""
    for q in [m for m in unit.modules() if isinstance(m, ActQuantizer) and m.enabled and not m.initialized]:
        q.begin_observe(p)
        for part in q_in.split(chunk):
            unit(part)
        q.next_observe_pass()
        for part in q_in.split(chunk):
            unit(part)
        q.end_observe()


@torch.no_grad()
def _unit_error(unit: nn.Module, q_in: torch.Tensor, fp_out: torch.Tensor, chunk: int) -> float:
    total = torch.zeros((), dtype=torch.float64, device=q_in.device)
    for x, y in zip(q_in.split(chunk), fp_out.split(chunk)):
        total += (unit(x) - y).pow(2).flatten(1).sum(1).sum(dtype=torch.float64)
    return total.item() / len(q_in)


def batch_indices(num: int, iters: int, batch: int, generator: torch.Generator, device) -> torch.Tensor:
    """``(iters, batch)`` image indices: consecutive random permutations of ``range(num)``, so
    every image is used equally often and no count has to divide another."""
    perms = -(-iters * batch // num)
    keys = torch.rand(perms, num, generator=generator, device=device)
    return keys.argsort(dim=1).flatten()[: iters * batch].view(iters, batch)


def _set_hard(unit: nn.Module, hard: bool) -> None:
    for m in unit.modules():
        if isinstance(m, QuantLayer):
            m.weight_quant.soft = not hard


def _train_unit(unit, fp_in, q_in, fp_out, cfg: ReconConfig, method: str, generator, index, name, callback, bar, report_every):
    layers = [m for m in unit.modules() if isinstance(m, QuantLayer) and not m.weight_quant.is_integer]
    acts = [m for m in unit.modules() if isinstance(m, ActQuantizer) and m.enabled and m.initialized]
    softbits = [l.weight_quant.softbits for l in layers if hasattr(l.weight_quant, "softbits")]
    w_scales = [l.weight_quant.scale for l in layers if method == "genie"]
    a_scales = [q.scale for q in acts]
    groups, schedules = [], []
    constant = lambda t: 1.0  # noqa: E731
    cosine = lambda t: 0.5 * (1.0 + math.cos(math.pi * t / cfg.iters))  # noqa: E731
    for params, lr, schedule in ((softbits, cfg.lr_softbits, constant), (w_scales, cfg.lr_weight_scale, cosine), (a_scales, cfg.lr_act_scale, cosine)):
        if params:
            groups.append({"params": params, "lr": lr})
            schedules.append(schedule)
    losses = torch.zeros(cfg.iters, device=q_in.device)
    if not groups:
        return losses[:0]
    for p in unit.parameters():
        p.requires_grad_(False)
    for group in groups:
        for p in group["params"]:
            p.requires_grad_(True)
    opt = torch.optim.Adam(groups)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedules)
    lam = cfg.round_weight if cfg.round_weight is not None else (1.0 if method == "genie" else 0.01)
    warm = int(cfg.warmup * cfg.iters)
    n = len(q_in)
    idx_all = batch_indices(n, cfg.iters, min(cfg.batch_size, n), generator, q_in.device)
    for q in acts:
        q.drop_prob, q.generator = cfg.drop_prob, generator
    # QDrop input mixing: where the unit's input quantizer drops quantization, it passes on the
    # FP model's input instead of the student's own; without one, the inputs are mixed here
    entry = getattr(unit, "input_quant", None)
    entry = entry if entry in acts else None
    _set_hard(unit, False)
    last_report = 0
    try:
        for it in range(cfg.iters):
            idx = idx_all[it]
            x = q_in[idx]  # advanced indexing keeps the memory format (index_select does not)
            if cfg.drop_prob > 0.0:
                if entry is not None:
                    entry.fp_source = fp_in[idx]
                else:
                    x = torch.where(bernoulli_mask(x, cfg.drop_prob, generator), fp_in[idx], x)
            target = fp_out[idx]
            rec = (unit(x) - target).pow(2).flatten(1).sum(1).mean()
            loss = rec
            if softbits and it >= warm:
                progress = (it - warm) / max(1, cfg.iters - warm)
                beta = cfg.beta_end + (cfg.beta_start - cfg.beta_end) * (1.0 - progress)
                loss = loss + lam * sum(l.weight_quant.round_regularizer(beta) for l in layers)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses[it] = rec.detach()
            if (it + 1) % report_every == 0 or it + 1 == cfg.iters:
                if callback is not None:
                    emit(callback, UnitProgress(index, name, last_report, losses[last_report : it + 1].cpu()))
                if bar is not None:
                    bar.update(it + 1 - last_report)
                    bar.set_postfix_str(f"{name} loss {losses[it].item():.4g}", refresh=False)
                last_report = it + 1
    finally:
        for q in acts:
            q.drop_prob, q.generator, q.fp_source = 0.0, None, None
        for group in groups:
            for p in group["params"]:
                p.requires_grad_(False)
    return losses


def reconstruct(
    qmodel: QuantizedModel,
    images: torch.Tensor,
    config: Optional[ReconConfig] = None,
    callback: Callback = None,
    progress: bool = True,
    report_every: int = 100,
    **overrides,
) -> ReconReport:
    """Initialise activation step sizes and reconstruct every unit of ``qmodel`` in place.

    images: calibration images ``(N, C, H, W)`` (real or distilled, normalised), any N >= 1.
    ``config`` or keyword overrides of :class:`ReconConfig` (``iters``, ``batch_size``, ``seed``,
    ``drop_prob``, ...). ``iters=0`` only calibrates step sizes (round-to-nearest weights).
    Events (:class:`UnitStart`, :class:`UnitProgress`, :class:`UnitEnd`) go to ``callback``.
    """
    from tqdm.auto import tqdm

    cfg = ReconConfig(**{**(config.__dict__ if config else {}), **overrides}).validate()
    teacher = qmodel.teacher
    if teacher is None:
        raise GenieError("this quantized model has no FP teacher (loaded or released); build it with quantize_model")
    if not torch.is_tensor(images) or images.dim() != 4 or not images.is_floating_point() or len(images) == 0:
        shape = tuple(images.shape) if torch.is_tensor(images) else type(images).__name__
        raise GenieError(f"calibration images must be a non-empty float tensor (N, C, H, W), got {shape}")
    device = model_device(qmodel)
    teacher.to(device).eval()
    qmodel.eval()
    images = images.to(device)
    if device.type == "cpu":
        # oneDNN convolutions run about twice as fast in channels-last layout on CPUs
        images = images.contiguous(memory_format=torch.channels_last)
    chunk = cfg.chunk_size or (256 if device.type == "cpu" else 1024)
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    units = qmodel.units()
    method = qmodel.config.quantizer
    bar = tqdm(total=cfg.iters * len(units), desc="reconstruct", disable=not progress, unit="it")
    reports, t_start = [], time.perf_counter()
    try:
        for index, (name, unit) in enumerate(units):
            t0 = time.perf_counter()
            fp_in, fp_out = _capture(teacher, teacher.get_submodule(name), images, chunk, with_output=True)
            q_in, _ = _capture(qmodel.net, unit, images, chunk, with_output=False)
            _init_activations(unit, q_in, chunk, qmodel.config.p_norm)
            _set_hard(unit, True)
            init_error = _unit_error(unit, q_in, fp_out, chunk)
            kind = getattr(unit, "source_type", None) or f"{unit.kind} layer"
            emit(callback, UnitStart(index, len(units), name, kind, cfg.iters, init_error))
            losses = torch.zeros(0)
            if cfg.iters > 0:
                losses = _train_unit(
                    unit, fp_in, q_in, fp_out, cfg, method, generator, index, name, callback, bar, report_every
                ).cpu()
            for m in unit.modules():
                if isinstance(m, QuantLayer):
                    m.finalize()
            final_error = _unit_error(unit, q_in, fp_out, chunk)
            seconds = time.perf_counter() - t0
            reports.append(UnitReport(name, kind, init_error, final_error, seconds, losses))
            emit(callback, UnitEnd(index, name, kind, init_error, final_error, losses, seconds))
            del fp_in, fp_out, q_in
    finally:
        bar.close()
    return ReconReport(reports, time.perf_counter() - t_start)
