"""Block-wise reconstruction (GENIE-M, BRECQ/QDrop style).

Units (blocks or single layers) are optimised one after another from the input. For unit k the
student's input is the quantized model's own output of units < k; the target is the FP
teacher's output of unit k. Loss: ``||z - z_q||^2`` summed over channels (features) and averaged
over the batch and spatial positions (as BRECQ, QDrop and the GENIE reference code compute it;
lambda of Eq. 15 is tuned for this scale), plus the rounding regulariser of Eq. 15 (after a
warm-up). Adam: softbits lr 1e-3
(constant), weight step sizes lr 1e-4 and activation step sizes lr 4e-5 (cosine-annealed to 0).

The hot loop does not synchronise with the host: batch indices are drawn up front on the
device, QDrop masks come from a device generator, and losses are written into a device buffer
that is read every ``report_every`` iterations.
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import nn
from torch.nn import functional as F

from ..data import model_device
from ..errors import GenieError
from ..events import Callback, UnitEnd, UnitProgress, UnitStart, emit
from ..finite import NonFiniteError, first_nonfinite, require_finite_losses
from ..graphs import run_steps
from ..optim import DeviceAdam
from .act_quantizer import ActQuantizer
from .bias import snap_biases
from .fake_quant import bernoulli_mask, mask_as
from .layers import QuantLayer
from .qmodel import QuantizedModel, check_calibration_images


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
    min_scale_ratio: float = 0.1  # learned step sizes are kept >= this fraction of their initial value
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
        total += reconstruction_error(unit(x), y).sum(dtype=torch.float64)
    return total.item() / len(q_in)


def reconstruction_error(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image ``||z - z_q||^2`` summed over channels, averaged over spatial positions: ``(N,)``."""
    err = (output - target).pow(2).sum(1)
    return err.flatten(1).mean(1) if err.dim() > 1 else err


def reconstruction_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``reconstruction_error(output, target).mean()`` as one fused op: the mean squared error
    over all elements times the channel count."""
    return F.mse_loss(output, target) * output.shape[1]


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


class _UnitTrainer:
    """The optimisation of one unit, as a step whose state (iteration counter, schedules, loss
    record, batch indices) lives on the device: eager and CUDA-graph replay run the same code."""

    def __init__(self, unit, fp_in, q_in, fp_out, cfg: ReconConfig, method: str, generator):
        self.unit, self.fp_in, self.q_in, self.fp_out, self.cfg = unit, fp_in, q_in, fp_out, cfg
        device = q_in.device
        self.layers = [m for m in unit.modules() if isinstance(m, QuantLayer) and not m.weight_quant.is_integer]
        self.acts = [m for m in unit.modules() if isinstance(m, ActQuantizer) and m.enabled and m.initialized]
        groups = (
            ([l.weight_quant.softbits for l in self.layers if hasattr(l.weight_quant, "softbits")], cfg.lr_softbits, False),
            ([l.weight_quant.scale for l in self.layers] if method == "genie" else [], cfg.lr_weight_scale, True),
            ([q.scale for q in self.acts], cfg.lr_act_scale, True),
        )
        self.params, self.lr0, self.cosine = [], [], []
        for params, lr, cosine in groups:
            for p in params:
                self.params.append(p)
                self.lr0.append(lr)
                self.cosine.append(cosine)
        # Step sizes stay above a tenth of their initial value: the learning rates are absolute,
        # and a channel of near-zero weights (step ~1e-7) would otherwise be pushed below zero,
        # flipping the sign of its weights.
        self.scales = [p for p, cos in zip(self.params, self.cosine) if cos]
        self.scale_floors = [p.detach() * cfg.min_scale_ratio for p in self.scales]
        self.has_softbits = bool(groups[0][0])
        self.lam = cfg.round_weight if cfg.round_weight is not None else (1.0 if method == "genie" else 0.01)
        self.warm = int(cfg.warmup * cfg.iters)
        self.step_count = torch.zeros((), dtype=torch.int64, device=device)
        self.losses = torch.zeros(cfg.iters, device=device)
        n = len(q_in)
        self.indices = batch_indices(n, cfg.iters, min(cfg.batch_size, n), generator, device)
        self.optimizer = DeviceAdam(self.params) if self.params else None
        for q in self.acts:
            # on CPUs an explicit generator; on CUDA the (seeded, forked) default generator,
            # which CUDA graphs can replay
            q.drop_prob, q.generator = cfg.drop_prob, (generator if device.type == "cpu" else None)
        self.generator = generator if device.type == "cpu" else None
        entry = getattr(unit, "input_quant", None)
        self.entry = entry if entry in self.acts else None

    def _schedules(self):
        t = self.step_count.to(torch.float32)
        cosine = 0.5 * (1.0 + torch.cos(t * (math.pi / self.cfg.iters)))
        lrs = [lr * cosine if cos else lr for lr, cos in zip(self.lr0, self.cosine)]
        progress = ((t - self.warm) / max(1, self.cfg.iters - self.warm)).clamp(0.0, 1.0)
        beta = self.cfg.beta_end + (self.cfg.beta_start - self.cfg.beta_end) * (1.0 - progress)
        gate = (t >= self.warm).to(torch.float32)  # no rounding regulariser during the warm-up
        return lrs, beta, gate

    def step(self) -> None:
        cfg = self.cfg
        idx = self.indices.index_select(0, self.step_count.view(1)).view(-1)
        x = self.q_in[idx]  # advanced indexing keeps the memory format (index_select does not)
        if cfg.drop_prob > 0.0:
            if self.entry is not None:
                self.entry.fp_source = self.fp_in[idx]
            else:
                keep = mask_as(bernoulli_mask(x, cfg.drop_prob, self.generator), x)
                x = torch.lerp(x, self.fp_in[idx], keep)  # weights 0/1: exactly x or the FP input
        rec = reconstruction_loss(self.unit(x), self.fp_out[idx])
        lrs, beta, gate = self._schedules()
        loss = rec
        if self.has_softbits:
            reg = sum(l.weight_quant.round_regularizer(beta) for l in self.layers if hasattr(l.weight_quant, "softbits"))
            loss = loss + (self.lam * gate) * reg
        # a parameter can drop out of the graph (QDrop probability 1 leaves activations FP)
        grads = torch.autograd.grad(loss, self.params, allow_unused=True)
        grads = [torch.zeros_like(p) if g is None else g for p, g in zip(self.params, grads)]
        self.optimizer.step(grads, lrs)
        if self.scales:
            with torch.no_grad():
                torch._foreach_maximum_(self.scales, self.scale_floors)
        self.losses.index_copy_(0, self.step_count.view(1), rec.detach().view(1))
        self.step_count += 1

    def close(self) -> None:
        for q in self.acts:
            q.drop_prob, q.generator, q.fp_source = 0.0, None, None


def _train_unit(unit, fp_in, q_in, fp_out, cfg: ReconConfig, method: str, generator, index, name, callback, bar,
                report_every, cuda_graph: bool):
    trainer = _UnitTrainer(unit, fp_in, q_in, fp_out, cfg, method, generator)
    if trainer.optimizer is None:
        return trainer.losses[:0]
    for p in unit.parameters():
        p.requires_grad_(False)
    for p in trainer.params:
        p.requires_grad_(True)
    _set_hard(unit, False)
    last = [0]

    def after(done: int) -> None:
        if done % report_every and done != cfg.iters:
            return
        require_finite_losses(trainer.losses[last[0] : done], last[0], f"reconstruction of unit {name!r}",
                              "the step sizes or softbits diverged; check the calibration images and the "
                              "learning rates (lr_softbits, lr_weight_scale, lr_act_scale)")
        if callback is not None:
            emit(callback, UnitProgress(index, name, last[0], trainer.losses[last[0] : done].cpu()))
        if bar is not None:
            bar.update(done - last[0])
            bar.set_postfix_str(f"{name} loss {trainer.losses[done - 1].item():.4g}", refresh=False)
        last[0] = done

    try:
        run_steps(trainer.step, cfg.iters, q_in.device, cuda_graph, after)
    finally:
        trainer.close()
        for p in trainer.params:
            p.requires_grad_(False)
    return trainer.losses


def _require_finite_error(error: float, unit: nn.Module, name: str, when: str) -> None:
    """A unit whose reconstruction error is NaN or Inf stops the run, naming the unit and the
    first non-finite tensor it holds (or its input, when it holds none)."""
    if math.isfinite(error):
        return
    culprit = first_nonfinite(list(unit.named_parameters()) + list(unit.named_buffers()))
    raise NonFiniteError(f"unit {name!r}: its quantized output is not finite {when} (error {error}): "
                         + (culprit or "its input from the units before it holds NaN or Inf"))


def _accepts_channels_last(model: nn.Module, sample: torch.Tensor) -> bool:
    """Whether ``model`` runs on a channels-last input. A forward that calls ``x.view(n, -1)``
    on a channels-last activation raises; such a model keeps the default layout (slower on CPUs,
    same result)."""
    try:
        with torch.no_grad():
            model(sample.contiguous(memory_format=torch.channels_last))
    except RuntimeError:
        return False
    return True


def reconstruct(
    qmodel: QuantizedModel,
    images: torch.Tensor,
    config: Optional[ReconConfig] = None,
    callback: Callback = None,
    progress: bool = True,
    report_every: int = 100,
    cuda_graph: bool = False,
    **overrides,
) -> ReconReport:
    """Initialise activation step sizes and reconstruct every unit of ``qmodel`` in place.

    images: calibration images ``(N, C, H, W)`` (real or distilled, normalised), any N >= 1.
    ``config`` or keyword overrides of :class:`ReconConfig` (``iters``, ``batch_size``, ``seed``,
    ``drop_prob``, ...). ``iters=0`` only calibrates step sizes (round-to-nearest weights).
    Events (:class:`UnitStart`, :class:`UnitProgress`, :class:`UnitEnd`) go to ``callback``.
    ``cuda_graph``: on a GPU, replay each unit's training step as a captured CUDA graph.
    """
    from tqdm.auto import tqdm

    cfg = ReconConfig(**{**(config.__dict__ if config else {}), **overrides}).validate()
    teacher = qmodel.teacher
    if teacher is None:
        raise GenieError("this quantized model has no FP teacher (loaded or released); build it with quantize_model")
    check_calibration_images(teacher, images)
    device = model_device(qmodel)
    teacher.to(device).eval()
    qmodel.eval()
    images = images.to(device)
    if device.type == "cpu" and _accepts_channels_last(teacher, images[:1]):
        # oneDNN convolutions run about twice as fast in channels-last layout on CPUs
        images = images.contiguous(memory_format=torch.channels_last)
    chunk = cfg.chunk_size or (256 if device.type == "cpu" else 1024)
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    units = qmodel.units()
    method = qmodel.config.quantizer
    reports, t_start = [], time.perf_counter()
    with contextlib.ExitStack() as stack:
        bar = stack.enter_context(tqdm(total=cfg.iters * len(units), desc="reconstruct", disable=not progress, unit="it"))
        if device.type == "cuda":
            # QDrop masks come from the default CUDA generator (CUDA graphs can replay it),
            # seeded here; its previous state is restored afterwards
            stack.enter_context(torch.random.fork_rng(devices=[device]))
            torch.cuda.manual_seed(cfg.seed)
        for index, (name, unit) in enumerate(units):
            t0 = time.perf_counter()
            fp_in, fp_out = _capture(teacher, teacher.get_submodule(name), images, chunk, with_output=True)
            q_in, _ = _capture(qmodel.net, unit, images, chunk, with_output=False)
            _init_activations(unit, q_in, chunk, qmodel.config.p_norm)
            _set_hard(unit, True)
            init_error = _unit_error(unit, q_in, fp_out, chunk)
            _require_finite_error(init_error, unit, name, "before training")
            kind = getattr(unit, "source_type", None) or f"{unit.kind} layer"
            emit(callback, UnitStart(index, len(units), name, kind, cfg.iters, init_error))
            losses = torch.zeros(0)
            if cfg.iters > 0:
                losses = _train_unit(
                    unit, fp_in, q_in, fp_out, cfg, method, generator, index, name, callback, bar, report_every,
                    cuda_graph,
                ).cpu()
            for m in unit.modules():
                if isinstance(m, QuantLayer):
                    m.finalize()
            snap_biases(unit)  # the int32 bias an integer runtime adds (genie.quant.bias)
            final_error = _unit_error(unit, q_in, fp_out, chunk)
            _require_finite_error(final_error, unit, name, "after training")
            seconds = time.perf_counter() - t0
            reports.append(UnitReport(name, kind, init_error, final_error, seconds, losses))
            emit(callback, UnitEnd(index, name, kind, init_error, final_error, losses, seconds))
            del fp_in, fp_out, q_in
    return ReconReport(reports, time.perf_counter() - t_start)
