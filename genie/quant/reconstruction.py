"""Block-wise reconstruction (GENIE-M, BRECQ/QDrop style).

Units (blocks or single layers) are optimised one after another from the input. For unit k the
student's input is the quantized model's own output of units < k; the target is the FP
teacher's output of unit k. Loss: ``||z - z_q||^2`` summed over channels (features) and averaged
over the batch and spatial positions (as BRECQ, QDrop and the GENIE reference code compute it;
lambda of Eq. 15 is tuned for this scale), plus the rounding regulariser of Eq. 15 (after a
warm-up); a lone convolution with a BatchNorm folded into it measures ``z`` in the unfolded
convolution's units (:func:`genie.quant.recon_primitives.output_units`). Adam over three
parameter groups (:func:`param_groups`): softbits at a constant rate, weight step sizes (genie
only; in the units of the unfolded layer, so BatchNorm folding does not change them) and
activation step sizes cosine-annealed to 0; the rates and every other default are
:class:`ReconConfig`'s. QDrop at a unit's input follows ``ReconConfig.qdrop_input``.

Per unit, :func:`reconstruct` captures its inputs and target, initialises its activation step
sizes, trains (:func:`_train_unit`), hard-rounds its weights to integers, snaps its biases to
the integer grid, moves its activation step sizes off rounding ties that many calibration values
sit on (:mod:`genie.quant.rounding_ties`) and reports the errors before and after.

The hot loop does not synchronise with the host: batch indices are drawn up front on the
device, QDrop masks come from a device generator, and losses are written into a device buffer
that is read every ``report_every`` iterations.
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field, fields
from typing import Optional

import torch
from torch import nn

from ..cpu_memory import retain_freed_memory
from ..devices import model_device
from ..errors import GenieError
from ..events import Callback, UnitEnd, UnitProgress, UnitRestored, UnitStart, emit
from ..finite import NonFiniteError, first_nonfinite, require_finite_losses
from ..graphs import run_steps
from ..progress import progress_bar
from .bias import snap_biases
from .capture import TeacherActivations, chained_units, student_input
from .layers import QuantLayer
from .qmodel import QuantizedModel, check_calibration_images
from ..validate import COUNT, check_int, merged_config
from .recon_checkpoints import ReconCheckpoints, recon_fingerprint
from .rounding_ties import TieMove, guard_ties
from .recon_primitives import (
    batch_indices,
    images_on,
    init_activations,
    reconstruction_error,
    reconstruction_loss,
    set_soft_rounding,
    unit_error,
)
from .recon_state import QDROP_INPUTS, ReconConfig, ReconRun, ReconUnit
from .unit_trainer import ParamGroup, UnitTrainer, param_groups

__all__ = [  # with the primitives and the unit trainer it builds on
    "QDROP_INPUTS",
    "ParamGroup",
    "ReconConfig",
    "ReconReport",
    "UnitReport",
    "batch_indices",
    "param_groups",
    "reconstruct",
    "reconstruction_error",
    "reconstruction_loss",
    "set_soft_rounding",
]


@dataclass
class UnitReport:
    name: str
    kind: str
    init_error: float
    final_error: float
    seconds: float
    losses: torch.Tensor = field(repr=False)
    steps_at_floor: int = 0  # learned step sizes (elements) the min_scale_ratio floor held at some iteration
    lowest_step_ratio: float = 1.0  # the smallest step size / its start any update asked for (floor aside)
    tie_moves: list = field(default_factory=list)  # activation steps moved off rounding ties (TieMove)


@dataclass
class ReconReport:
    units: list
    seconds: float

    def table(self) -> str:
        rows = [f"{'unit':<24} {'kind':<18} {'init err':>10} {'final err':>10} {'s':>7}"]
        for u in self.units:
            rows.append(f"{u.name:<24} {u.kind:<18} {u.init_error:>10.4g} {u.final_error:>10.4g} {u.seconds:>7.1f}")
        return "\n".join(rows)


def _capture_unit(run: ReconRun, index: int, name: str, module: nn.Module, previous_output) -> ReconUnit:
    """The unit's FP input and output (teacher) and its input in the quantized model (units
    before it already quantized) on all calibration images. ``previous_output``: the unit before's
    quantized output on all images, or None."""
    fp_in, fp_out = run.fp.take(index)
    q_in = student_input(run.student, module, run.images, run.chunk, previous_output, run.chained[index])
    return ReconUnit(index, name, module, fp_in, q_in, fp_out)


class _Progress:
    """After each step: every ``report_every`` iterations (and at the end) check the new losses
    are finite, send them as :class:`UnitProgress` and advance the bar."""

    def __init__(self, unit: ReconUnit, run: ReconRun, losses: torch.Tensor):
        self.unit, self.run, self.losses, self.last = unit, run, losses, 0

    def __call__(self, done: int) -> None:
        run, name, last = self.run, self.unit.name, self.last
        if done % run.report_every and done != run.cfg.iters:
            return
        require_finite_losses(self.losses[last:done], last, f"reconstruction of unit {name!r}",
                              "the step sizes or softbits diverged; check the calibration images and the "
                              "learning rates (lr_softbits, lr_weight_scale, lr_act_scale)")
        if run.callback is not None:
            emit(run.callback, UnitProgress(self.unit.index, name, last, self.losses[last:done].cpu()))
        if run.bar is not None:
            run.bar.update(done - last)
            run.bar.set_postfix_str(f"{name} loss {self.losses[done - 1].item():.4g}", refresh=False)
        self.last = done


def _train_unit(unit: ReconUnit, run: ReconRun) -> tuple:
    """Learn the unit's softbits and step sizes (``run.cfg.iters`` steps, soft rounding); returns
    the reconstruction loss per iteration on the CPU (empty for ``iters=0`` or nothing to learn)
    and :meth:`UnitTrainer.floor_record`."""
    if run.cfg.iters == 0:
        return torch.zeros(0), (0, 1.0)
    trainer = UnitTrainer(unit, run)
    try:
        if trainer.optimizer is None:
            return trainer.losses[:0].cpu(), (0, 1.0)
        for p in unit.module.parameters():
            p.requires_grad_(False)
        for p in trainer.params:
            p.requires_grad_(True)
        set_soft_rounding(unit.module, True)
        try:
            report = _Progress(unit, run, trainer.losses)
            run_steps(trainer.step, run.cfg.iters, unit.q_in.device, run.cuda_graph, report)
        finally:
            for p in trainer.params:
                p.requires_grad_(False)
        return trainer.losses.cpu(), trainer.floor_record()
    finally:
        trainer.close()


@torch.no_grad()
def _finalize_unit(module: nn.Module) -> None:
    """Hard-round every weight of the unit and keep integers, scales and zero points only."""
    for m in module.modules():
        if isinstance(m, QuantLayer):
            m.finalize()


def _checked_error(unit: ReconUnit, chunk: int, when: str, keep_output: bool = False) -> tuple:
    """``(error, outputs)``: :func:`genie.quant.recon_primitives.unit_error` of the unit. NaN or Inf
    stops the run, naming the unit and the first non-finite tensor it holds (or its input, when
    it holds none)."""
    error, outputs = unit_error(unit.module, unit.q_in, unit.fp_out, chunk, keep_output)
    if math.isfinite(error):
        return error, outputs
    module = unit.module
    culprit = first_nonfinite(list(module.named_parameters()) + list(module.named_buffers()))
    raise NonFiniteError(f"unit {unit.name!r}: its quantized output is not finite {when} (error {error}): "
                         + (culprit or "its input from the units before it holds NaN or Inf"))


def _resolve_teacher(qmodel: QuantizedModel, teacher: Optional[nn.Module]) -> nn.Module:
    """``teacher``, or the one ``qmodel`` keeps; checked to hold a module for every unit."""
    teacher = qmodel.teacher if teacher is None else teacher
    if teacher is None:
        raise GenieError("this quantized model has no FP teacher (loaded or released): build it with quantize_model, "
                         "or pass teacher=prepare_fp_model(model, fold_bn)")
    names = {n for n, _ in teacher.named_modules()}
    missing = [n for n in qmodel.unit_names if n not in names]
    if missing:
        raise GenieError(f"the teacher has no module {missing[0]!r} (a unit of the quantized model): pass the FP model "
                         "the quantized model was built from, prepared with prepare_fp_model(model, fold_bn)")
    return teacher


def reconstruct(
    qmodel: QuantizedModel,
    images: torch.Tensor,
    config: Optional[ReconConfig] = None,
    teacher: Optional[nn.Module] = None,
    callback: Callback = None,
    progress: bool = True,
    report_every: int = 100,
    cuda_graph: bool = False,
    checkpoint_dir=None,
    keep_checkpoints: bool = False,
    **overrides,
) -> ReconReport:
    """Initialise activation step sizes and reconstruct every unit of ``qmodel`` in place.

    images: calibration images ``(N, C, H, W)`` (real or distilled, normalised), any N >= 1.
    ``config`` or keyword overrides of :class:`ReconConfig` (``iters``, ``batch_size``, ``seed``,
    ``drop_prob``, ...). ``iters=0`` only calibrates step sizes (round-to-nearest weights).
    ``teacher``: the FP model whose unit outputs are the targets: the model ``qmodel`` was built
    from, with the same BatchNorm folding (``genie.quant.prepare_fp_model(model, fold_bn)``);
    default ``qmodel.teacher`` (kept by :func:`genie.quant.quantize_model`).
    Events (:class:`UnitStart`, :class:`UnitProgress`, :class:`UnitEnd`) go to ``callback``.
    ``cuda_graph``: on a GPU, replay each unit's training step as a captured CUDA graph.
    ``checkpoint_dir``: each finished unit is saved there (:mod:`genie.quant.recon_checkpoints`);
    a call with the same model, images and settings continues at the first unsaved unit and ends
    with the same model as an uninterrupted call. The files are deleted when reconstruction ends,
    unless ``keep_checkpoints``.
    """
    cfg = merged_config(ReconConfig, config, overrides, "reconstruct").validate()
    report_every = check_int(report_every, "report_every", COUNT)
    teacher = _resolve_teacher(qmodel, teacher)
    check_calibration_images(teacher, images)
    device = model_device(qmodel)
    retain_freed_memory(device)  # on a CPU: the step's tensors reused from the heap, not faulted in anew
    teacher.to(device).eval()
    qmodel.eval()
    images = images_on(device, images, teacher)
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    units = qmodel.units()
    reports, t_start = [], time.perf_counter()
    with contextlib.ExitStack() as stack:
        bar = stack.enter_context(progress_bar(cfg.iters * len(units), "reconstruct", show=progress))
        if device.type == "cuda":
            # QDrop masks come from the default CUDA generator (CUDA graphs can replay it),
            # seeded here; its previous state is restored afterwards
            stack.enter_context(torch.random.fork_rng(devices=[device]))
            torch.cuda.manual_seed(cfg.seed)
        chunk = cfg.chunk_size or (256 if device.type == "cpu" else 1024)
        names = [n for n, _ in units]
        chained = [t and s for t, s in zip(chained_units(teacher, names, images[:1]),
                                          chained_units(qmodel.net, names, images[:1]))]
        fp = TeacherActivations(teacher, names, images, chunk, cfg.capture_mb << 20, chained)
        search_generator = torch.Generator(device=device).manual_seed(cfg.seed)
        run = ReconRun(teacher, qmodel.net, images, cfg, qmodel.config.quantizer, qmodel.config.p_norm, generator,
                       search_generator, chunk, fp, chained, callback, bar, report_every, cuda_graph)
        checkpoints = None
        if checkpoint_dir is not None:
            fingerprint = recon_fingerprint(teacher, qmodel.net, images, cfg, qmodel.config.to_dict(), names, device)
            checkpoints = ReconCheckpoints(checkpoint_dir, fingerprint)
            reports = _restore_units(checkpoints, run, units)
            _announce_resume(reports, run, units)
        previous_output = None
        for index, (name, module) in enumerate(units):
            if index < len(reports):  # restored from a checkpoint
                continue
            t0 = time.perf_counter()
            # 1. the unit's FP input and target (teacher) and its input in the quantized model
            unit = _capture_unit(run, index, name, module, previous_output)
            previous_output = None
            # 2. step sizes of its activation quantizers (Eq. 16); error with hard-rounded weights
            init_activations(module, unit.q_in, run.chunk, run.p_norm, cfg.act_search_sample, search_generator)
            set_soft_rounding(module, False)
            init_error, _ = _checked_error(unit, run.chunk, "before training")
            emit(callback, UnitStart(index, len(units), name, unit.kind, cfg.iters, init_error))
            # 3. learn softbits and step sizes against the teacher's output
            losses, (at_floor, lowest) = _train_unit(unit, run)
            # 4. hard-round: integer weights only; 5. the int32 bias an integer runtime adds
            _finalize_unit(module)
            snap_biases(module)
            # 6. no step that rounds many values at a tie, which float arithmetic would decide
            ties = guard_ties(module, unit.q_in) if cfg.guard_ties else []
            # 7. report (the outputs are the next unit's input when it reads this unit's output)
            keep = index + 1 < len(units) and chained[index + 1]
            final_error, previous_output = _checked_error(unit, run.chunk, "after training", keep_output=keep)
            seconds = time.perf_counter() - t0
            reports.append(UnitReport(name, unit.kind, init_error, final_error, seconds, losses, at_floor, lowest, ties))
            emit(callback, UnitEnd(index, name, unit.kind, init_error, final_error, losses, seconds))
            if checkpoints is not None:
                checkpoints.save(index, module, _report_record(reports[-1]), _rng_states(run))
            del unit  # its captured tensors, before the next unit's are made
    if checkpoints is not None and not keep_checkpoints:
        checkpoints.remove()
    return ReconReport(reports, time.perf_counter() - t_start)


def _report_record(report: UnitReport) -> dict:
    return {**{f.name: getattr(report, f.name) for f in fields(UnitReport)},
            "tie_moves": [vars(m) for m in report.tie_moves]}


def _rng_states(run: ReconRun) -> dict:
    """The generators' states between two units (the CUDA default generator draws QDrop masks on GPUs)."""
    device = run.images.device
    return {"batches": run.generator.get_state(), "search": run.search_generator.get_state(),
            "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def _restore_units(checkpoints: ReconCheckpoints, run: ReconRun, units: list) -> list:
    """Bring back the units an interrupted run finished (their state, reports and the generators'
    states after the last of them); returns their :class:`UnitReport` s."""
    reports = []
    for blob in checkpoints.finished()[:len(units)]:
        name, module = units[blob["index"]]
        _finalize_unit(module)  # the integer structure, overwritten next by the saved values
        module.load_state_dict(blob["state"])
        record = dict(blob["report"])
        record["tie_moves"] = [TieMove(**m) for m in record["tie_moves"]]
        reports.append(UnitReport(**record))
        rng = blob["rng"]
    if reports:
        device = run.images.device
        run.generator.set_state(rng["batches"])
        run.search_generator.set_state(rng["search"])
        if rng["cuda"] is not None:
            torch.cuda.set_rng_state(rng["cuda"], device)
    return reports


def _announce_resume(reports: list, run: ReconRun, units: list) -> None:
    """Restored units: one :class:`UnitRestored` each (monitors draw them), and the bar moved on."""
    for index, r in enumerate(reports):
        emit(run.callback, UnitRestored(index, r.name, r.kind, r.init_error, r.final_error, r.losses, r.seconds,
                                        total=len(units)))
    if reports and run.bar is not None:
        run.bar.update(run.cfg.iters * len(reports))
        run.bar.set_postfix_str(f"resumed at unit {len(reports) + 1}/{len(units)} from checkpoints", refresh=False)
