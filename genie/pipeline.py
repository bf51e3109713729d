"""The main job: load a model, get calibration data, quantize, reconstruct, evaluate, save.

Used by the command line (``python -m genie run``), the benchmarks and the notebooks.
"""
from __future__ import annotations

import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Union

import torch

from . import __version__
from .data import LabeledImages, cifar10_calibration, cifar10_test, evaluate, image_folder, sample_images
from .devices import device_name, resolve_device
from .digests import tensor_digest
from .distill import DistillConfig
from .errors import GenieError
from .events import Callback
from .files import check_output_folder, folder_lock
from .models import load_model, model_spec
from .quant import QuantConfig, ReconConfig, quantize_model, reconstruct, save_quantized
from .quant.allocation import allocate, budget_weight_bits, check_budget, pareto_front, weight_memory_bytes
from .quant.recon_checkpoints import remove_checkpoints
from .quant.sensitivity import DEFAULT_CANDIDATES, SENSITIVITY_METHODS, SensitivityTable, check_candidates, \
    measure_sensitivity, weights_fingerprint
from .record import RunRecord, write_record
from .validate import COUNT, check_bool, check_int, check_options


DEFAULT_SAMPLES = 1024
# what a run writes into its --out folder (each atomically; the folder is locked while it runs)
RESULT_FILE, QMODEL_FILE, ONNX_FILE, DISTILLED_FILE = "result.json", "qmodel.pt", "model.onnx", "distilled.pt"
SENSITIVITY_FILE = "sensitivity.json"  # the sensitivity table of a mixed-precision run
MIXED = "mixed"  # RunConfig.w_bits: one bit width per layer, allocated under budget_bits
DEFAULT_SENSITIVITY_SAMPLES = 256
CHECKPOINT_DIR = "distill_checkpoints"
RECON_CHECKPOINT_DIR = "recon_checkpoints"  # one file per finished unit, removed after a successful run


@dataclass
class RunConfig:
    """Settings of one quantization run (the command line's ``run`` options)."""

    model: str = "resnet20_cifar10"
    w_bits: Union[int, str] = 4  # or "mixed": per-layer bits allocated under budget_bits
    a_bits: int = 4
    data: str = "real"  # real | synthetic
    samples: Optional[int] = None  # None: 1024, or every image of calib_file
    recon_iters: int = ReconConfig.iters
    quantizer: str = "genie"  # genie | adaround | nearest
    seed: int = 0
    device: Optional[str] = None  # default: cuda when available
    out: Optional[str] = None
    batch_size: int = ReconConfig.batch_size
    setting: str = "brecq"  # brecq | all
    fold_bn: bool = True
    weight_symmetric: bool = False  # signed weights, zero point 0 (TensorRT-style)
    profile: str = "paper"  # paper | deploy (genie.quant.qmodel.PROFILES)
    act_symmetric: bool = False  # every activation signed, zero point 0 (TensorRT-style)
    drop_prob: float = ReconConfig.drop_prob
    qdrop_input: str = ReconConfig.qdrop_input  # qdrop | reference (genie.quant.ReconConfig)
    round_weight: Optional[float] = None  # lambda of Eq. 15; None: the quantizer's default
    guard_ties: bool = ReconConfig.guard_ties  # move activation steps off populated rounding ties
    test_source: str = "auto"  # CIFAR: auto | npz | lossless100 | torchvision
    data_dir: Optional[str] = None  # ImageNet-style root with train/ and val/
    progress: bool = True
    # zero-shot (--data synthetic): GENIE-D settings
    distiller: str = DistillConfig.distiller  # genie | direct | generator
    swing: bool = DistillConfig.swing
    distill_iters: Optional[int] = DistillConfig.iters  # None: the distiller's default (DEFAULT_ITERS)
    distill_batch: int = DistillConfig.batch_size
    calib_file: Optional[str] = None  # a distilled set saved earlier (python -m genie distill)
    cuda_graph: bool = False  # replay training steps as CUDA graphs (GPU only)
    report_every: int = 100  # iterations between loss events (live plots)
    keep_checkpoints: bool = False  # keep out/recon_checkpoints after a successful run
    snapshot_at: tuple = ()  # distillation iterations whose images are sent as events
    export_onnx: bool = False  # also write out/model.onnx (QDQ; genie.export)
    onnx_int: str = "qcdq"  # integer form of the ONNX file: qcdq | int4
    # mixed precision (w_bits="mixed"; genie.quant.sensitivity, genie.quant.allocation)
    budget_bits: Optional[float] = None  # weight memory of the uniform W<budget_bits> model
    w_candidates: tuple = DEFAULT_CANDIDATES  # bit widths a layer may get
    sensitivity: str = "kl"  # kl | fisher
    sensitivity_samples: int = DEFAULT_SENSITIVITY_SAMPLES  # calibration images the sensitivity is measured on
    sensitivity_file: Optional[str] = None  # a table saved earlier (python -m genie sensitivity)

    @property
    def mixed(self) -> bool:
        return self.w_bits == MIXED

    @property
    def num_samples(self) -> int:
        """The calibration images asked for: ``samples``, 1024 when unset."""
        return DEFAULT_SAMPLES if self.samples is None else self.samples

    def distill_config(self) -> DistillConfig:
        return DistillConfig(
            num_images=self.num_samples,
            distiller=self.distiller,
            swing=self.swing,
            iters=self.distill_iters,
            batch_size=self.distill_batch,
            seed=self.seed,
        )


def test_data(spec, cfg: RunConfig) -> LabeledImages:
    """The evaluation set for a zoo model."""
    if spec.dataset == "cifar10":
        return cifar10_test(spec.mean, spec.std, source=cfg.test_source)
    if cfg.data_dir is None:
        raise GenieError(f"{spec.name} is an ImageNet model: pass --data-dir, a folder with train/ and val/ subfolders")
    return image_folder(Path(cfg.data_dir) / "val", spec.image_size, mean=spec.mean, std=spec.std)


def real_calibration(spec, cfg: RunConfig) -> LabeledImages:
    """``cfg.num_samples`` real calibration images (few-shot)."""
    if spec.dataset == "cifar10":
        return cifar10_calibration(cfg.num_samples, spec.mean, spec.std, seed=cfg.seed)
    if cfg.data_dir is None:
        raise GenieError(f"{spec.name} is an ImageNet model: pass --data-dir, a folder with train/ and val/ subfolders")
    folder = image_folder(Path(cfg.data_dir) / "train", spec.image_size, mean=spec.mean, std=spec.std)
    return sample_images(folder, cfg.num_samples, seed=cfg.seed)


# FP32 evaluations made in this process, by what decides them (the weights, the test images and
# labels, the device, the thread count): runs of one model in one process (a sweep in a notebook,
# a test session) evaluate its FP32 original once; on one CPU thread that pass over the CIFAR-10
# test file is ~30 s, as long as 60 reconstruction iterations of every unit.
_FP_EVALUATIONS: dict = {}
_FP_EVALUATIONS_KEPT = 4


def fp_evaluation(model: torch.nn.Module, test, progress: bool = False) -> dict:
    """:func:`genie.data.evaluate` of the FP32 ``model`` on ``test`` with its per-image predictions,
    remembered for the process when ``test`` is a :class:`LabeledImages` (a folder of images is
    evaluated every time)."""
    if not isinstance(test, LabeledImages):
        return evaluate(model, test, progress=progress, desc="FP32 evaluate", keep_predictions=True)
    test_set = tensor_digest([("images", test.images), ("labels", test.labels)])
    key = (weights_fingerprint(model), test_set, str(next(model.parameters()).device), torch.get_num_threads())
    if key not in _FP_EVALUATIONS:
        while len(_FP_EVALUATIONS) >= _FP_EVALUATIONS_KEPT:
            _FP_EVALUATIONS.pop(next(iter(_FP_EVALUATIONS)))
        _FP_EVALUATIONS[key] = evaluate(model, test, progress=progress, desc="FP32 evaluate", keep_predictions=True)
    return dict(_FP_EVALUATIONS[key])


@dataclass
class RunResult:
    """What a run measured: ``values``, a flat dict (also the saved model's metadata);
    ``record()`` is the content of ``result.json``."""

    values: dict
    recon_report: object = field(repr=False, default=None)
    qmodel: object = field(repr=False, default=None)
    sensitivity: object = field(repr=False, default=None)  # the SensitivityTable of a mixed-precision run

    def record(self, producer: str = "genie run") -> RunRecord:
        """``values`` as a :class:`genie.record.RunRecord`; the keys that are no record field
        (``setting``, ``fold_bn``, top-5, ``units``, ...) go to its ``extra``."""
        return RunRecord.from_values(producer, self.values)

    def table(self) -> str:
        v = self.values
        rows = [
            ("model", v["model"]),
            ("bits (W/A)", _bits_label(v) + (", deploy profile" if v.get("profile") == "deploy" else "")
             + (", symmetric activations" if v.get("act_symmetric") else "")),
            ("weight memory", f"{v['weight_bytes']} bytes packed ({v['weight_bits_avg']:.3f} bits per weight)"),
            ("quantizer", v["quantizer"]),
            ("calibration", f"{v['data']}, {v['samples']} images ({v['calib_source']})"),
            ("reconstruction", f"{v['recon_iters']} iterations/unit, batch {v['batch_size']}"),
            ("device", f"{v['device']} ({v['device_name']})"),
            ("test file", v["test_file"]),
            ("FP32 top-1 / top-5", f"{v['fp_top1']:.2f} / {v['fp_top5']:.2f}"),
            ("quantized top-1 / top-5", f"{v['q_top1']:.2f} / {v['q_top5']:.2f}"),
            ("top-1 drop", f"{v['fp_top1'] - v['q_top1']:.2f}"),
            ("same top-1 as FP32", f"{v['q_agree_fp32']:.2f} % of test images" if "q_agree_fp32" in v else "-"),
            ("reconstruction time", f"{v['recon_seconds']:.1f} s"),
            ("total time", f"{v['total_seconds']:.1f} s"),
        ]
        if v.get("sensitivity") is not None:
            rows.insert(6, ("sensitivity", f"{v['sensitivity']} on {v['sensitivity_samples']} images, "
                                           f"{v['sensitivity_seconds']:.1f} s; predicted loss {v['predicted_loss']:.4g}"))
        if v.get("distill_seconds") is not None:
            rows.insert(5, ("distillation", f"{v['distiller']}, swing {v['swing']}, {v['distill_iters']} iterations, "
                                            f"{v['distill_seconds']:.1f} s, final BNS loss {v['final_bns_loss']:.4g}"))
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k:<{width}}  {val}" for k, val in rows)


def _bits_label(v: dict) -> str:
    if v["w_bits"] is None:  # mixed precision
        counts = {}
        for b in v["w_bits_per_layer"].values():
            counts[b] = counts.get(b, 0) + 1
        layers = ", ".join(f"{n}x W{b}" for b, n in sorted(counts.items()))
        return f"mixed W (budget {v['budget_bits']:g} bits/weight: {layers}) A{v['a_bits']} ({v['setting']})"
    return f"W{v['w_bits']}A{v['a_bits']} ({v['setting']})"


def _distill_info(distilled) -> dict:
    meta = distilled.metadata
    return {
        "distiller": meta["distiller"],
        "swing": meta["swing"],
        "distill_iters": meta["iters"],
        "distill_batch": meta["batch_size"],
        "distill_seconds": meta["seconds"],
        "initial_bns_loss": distilled.initial_loss,
        "final_bns_loss": distilled.final_loss,
    }


def load_calibration_file(cfg: RunConfig, spec):
    """The distilled set of ``cfg.calib_file`` (``--data synthetic``), checked against the run
    before any model is loaded: its model name and image size, and ``--samples``."""
    from .distill import load_distilled

    option = f"--calib-file {cfg.calib_file}"
    if cfg.data != "synthetic":
        raise GenieError(f"{option} is a distilled set, used only with --data synthetic: add --data synthetic, "
                         "or drop --calib-file to calibrate on real images")
    distilled = load_distilled(cfg.calib_file)
    source = distilled.metadata.get("model")
    if source not in (None, cfg.model):
        raise GenieError(f"{option} was distilled from {source}, not {cfg.model}: distil a set from {cfg.model} "
                         f"(python -m genie distill --model {cfg.model}) or pass --model {source}")
    size = tuple(distilled.images.shape[1:])
    if size[1:] != (spec.image_size, spec.image_size):
        raise GenieError(f"{option} holds images of shape {size}, but {cfg.model} takes "
                         f"{spec.image_size}x{spec.image_size} pixels: distil a set from {cfg.model}")
    if cfg.samples is not None and cfg.samples > len(distilled):
        raise GenieError(f"{option} holds {len(distilled)} images, fewer than --samples {cfg.samples}: "
                         f"pass --samples {len(distilled)} or less, or drop --samples to use them all")
    return distilled


def _check_calibration_model(cfg: RunConfig, distilled, model) -> None:
    """A set saved through the API names no zoo model: its fingerprint (BN statistics) says
    whether it was distilled from this one."""
    from .distill import model_fingerprint

    if distilled.metadata.get("model") is not None:
        return
    stored = distilled.metadata.get("model_fingerprint")
    if stored is None:
        warnings.warn(f"--calib-file {cfg.calib_file} does not say which model it was distilled from; "
                      f"using it for {cfg.model} unchecked", stacklevel=3)
    elif stored != model_fingerprint(model):
        raise GenieError(f"--calib-file {cfg.calib_file} was distilled from another model than {cfg.model} "
                         f"(its BatchNorm statistics differ): distil a set from {cfg.model}")


def calibration_images(spec, model, cfg: RunConfig, device, callback: Callback, distilled=None) -> tuple:
    """``(images, source description, distillation info)`` for the run's ``data`` setting:
    real images (few-shot), a distilled set (``distilled``, from :func:`load_calibration_file`),
    or a fresh GENIE-D run."""
    if cfg.data == "real":
        calib = real_calibration(spec, cfg)
        return calib.images, calib.source, {}
    if cfg.data != "synthetic":
        raise GenieError(f"unknown --data {cfg.data!r}: use real or synthetic")
    from .distill import distill

    if distilled is not None:
        _check_calibration_model(cfg, distilled, model)
        n = cfg.samples or len(distilled)
        part = f"first {n} of {len(distilled)}" if n < len(distilled) else f"{n}"
        return distilled.images[:n], f"distilled set {cfg.calib_file} ({part} images)", _distill_info(distilled)
    checkpoints = str(Path(cfg.out) / CHECKPOINT_DIR) if cfg.out else None
    distilled = distill(
        model,
        spec.image_size,
        cfg.distill_config(),
        callback=callback,
        progress=cfg.progress,
        checkpoint_dir=checkpoints,
        model_name=cfg.model,
        cuda_graph=cfg.cuda_graph,
        report_every=cfg.report_every,
        snapshot_at=cfg.snapshot_at,
    )
    if cfg.out:
        distilled.save(Path(cfg.out) / DISTILLED_FILE)
    return distilled.images, f"GENIE-D {cfg.distiller} ({len(distilled)} images, seed {cfg.seed})", _distill_info(distilled)


def check_config(cfg: RunConfig, spec) -> ReconConfig:
    """Every setting and the output folder checked before any slow step; returns the
    reconstruction settings."""
    _check_numbers(cfg)
    _check_mixed(cfg)
    QuantConfig(max(cfg.w_candidates) if cfg.mixed else cfg.w_bits, cfg.a_bits, cfg.quantizer, cfg.setting,
                cfg.fold_bn, weight_symmetric=cfg.weight_symmetric, profile=cfg.profile,
                act_symmetric=cfg.act_symmetric).validate()
    if cfg.export_onnx:
        _check_onnx_export(cfg)
    recon_cfg = ReconConfig(iters=cfg.recon_iters, batch_size=cfg.batch_size, drop_prob=cfg.drop_prob,
                            qdrop_input=cfg.qdrop_input, round_weight=cfg.round_weight, seed=cfg.seed,
                            guard_ties=cfg.guard_ties)
    recon_cfg.validate()
    if cfg.data == "synthetic" and not cfg.calib_file:
        cfg.distill_config().validate()
    if spec.dataset != "cifar10" and cfg.data_dir is None:
        raise GenieError(f"{spec.name} is an ImageNet model: pass --data-dir, a folder with train/ and val/ subfolders")
    if cfg.out:
        check_output_folder(cfg.out, "the run's results", "--out ",
                            files=(RESULT_FILE, QMODEL_FILE, ONNX_FILE, DISTILLED_FILE, SENSITIVITY_FILE))
        if (Path(cfg.out) / CHECKPOINT_DIR).is_file():
            raise GenieError(f"--out {cfg.out}: {Path(cfg.out) / CHECKPOINT_DIR} is a file, where genie keeps "
                             "distillation checkpoints; move it away")
    return recon_cfg


# RunConfig fields whose None means "not given" (the command line's default)
_UNSET_ALLOWED = ("samples", "distill_iters", "round_weight", "budget_bits")
_FLAGS = ("fold_bn", "weight_symmetric", "act_symmetric", "guard_ties", "progress", "swing", "cuda_graph",
          "export_onnx")


def _check_numbers(cfg: RunConfig) -> None:
    """Every numeric setting against the range its command-line option takes
    (:data:`genie.validate.OPTION_RANGES`), and the flags; numpy integers become ints."""
    for name, value in check_options(vars(cfg), none_allowed=_UNSET_ALLOWED).items():
        setattr(cfg, name, value)
    cfg.report_every = check_int(cfg.report_every, "report_every", COUNT)
    for flag in _FLAGS:
        check_bool(getattr(cfg, flag), flag)


def _check_mixed(cfg: RunConfig) -> None:
    """The mixed-precision options, checked before any slow step (``w_candidates`` normalised)."""
    if not cfg.mixed:
        if cfg.budget_bits is not None:
            raise GenieError(f"--budget-bits {cfg.budget_bits:g} allocates bits per layer: add --w-bits mixed, or drop it")
        if cfg.sensitivity_file:
            raise GenieError("--sensitivity-file is used with --w-bits mixed: add --w-bits mixed, or drop it")
        return
    if cfg.budget_bits is None:
        raise GenieError("--w-bits mixed needs --budget-bits B: the weight memory of the uniform WB model, e.g. 2.5")
    cfg.w_candidates = tuple(check_candidates(cfg.w_candidates, "--w-candidates"))
    check_budget(cfg.budget_bits)
    if cfg.budget_bits < cfg.w_candidates[0]:
        raise GenieError(f"--budget-bits {cfg.budget_bits:g} is below the narrowest candidate of --w-candidates "
                         f"({cfg.w_candidates[0]} bits): no allocation fits; raise the budget or add a narrower candidate")
    if cfg.sensitivity not in SENSITIVITY_METHODS:
        raise GenieError(f"unknown --sensitivity {cfg.sensitivity!r}; use one of {', '.join(SENSITIVITY_METHODS)}")
    if isinstance(cfg.sensitivity_samples, bool) or not isinstance(cfg.sensitivity_samples, int) \
            or cfg.sensitivity_samples < 1:
        raise GenieError(f"--sensitivity-samples must be a positive integer, got {cfg.sensitivity_samples!r}")
    if cfg.sensitivity_file:
        table = SensitivityTable.load(cfg.sensitivity_file)
        _check_table(cfg, table)


def _check_table(cfg: RunConfig, table: SensitivityTable) -> None:
    option = f"--sensitivity-file {cfg.sensitivity_file}"
    if table.model != cfg.model:
        raise GenieError(f"{option} was measured on {table.model}, not {cfg.model}: measure it on {cfg.model} "
                         f"(python -m genie sensitivity --model {cfg.model})")
    if (table.setting, table.fold_bn, table.weight_symmetric) != (cfg.setting, cfg.fold_bn, cfg.weight_symmetric):
        raise GenieError(f"{option} was measured with setting {table.setting}, fold_bn {table.fold_bn}, weight_symmetric "
                         f"{table.weight_symmetric}; this run uses {cfg.setting}, {cfg.fold_bn}, {cfg.weight_symmetric}: "
                         "measure it with the run's settings")
    if tuple(table.bits) != tuple(cfg.w_candidates):
        raise GenieError(f"{option} holds candidates {','.join(map(str, table.bits))}, this run asks for "
                         f"{','.join(map(str, cfg.w_candidates))}: pass --w-candidates "
                         f"{','.join(map(str, table.bits))} or measure it again")


def mixed_precision_bits(cfg: RunConfig, model, images: torch.Tensor) -> tuple:
    """``(allocation, table, info)`` of a mixed-precision run: the sensitivity table (measured on
    the first ``cfg.sensitivity_samples`` calibration images, or read from
    ``cfg.sensitivity_file``) and the exact allocation under ``cfg.budget_bits``."""
    t0 = time.perf_counter()
    if cfg.sensitivity_file:
        table = SensitivityTable.load(cfg.sensitivity_file)
        table.check_model(model, cfg.model)
    else:
        table = measure_sensitivity(model, images[: cfg.sensitivity_samples], cfg.w_candidates, cfg.sensitivity,
                                    cfg.setting, cfg.fold_bn, cfg.weight_symmetric, seed=cfg.seed,
                                    model_name=cfg.model)
    front = pareto_front(table)
    allocation = allocate(table, cfg.budget_bits, front)
    info = {
        "budget_bits": cfg.budget_bits,
        "budget_weight_bytes": int(budget_weight_bits(table, cfg.budget_bits) // 8),
        "w_candidates": list(table.bits),
        "sensitivity": table.method,
        "sensitivity_samples": table.images,
        "sensitivity_file": cfg.sensitivity_file,
        "sensitivity_seconds": time.perf_counter() - t0,
        "predicted_loss": allocation.predicted,
        "pareto_points": len(front),
    }
    return allocation, table, info


def run(cfg: RunConfig, callback: Callback = None, report: Optional[Callable[["RunResult"], None]] = None) -> RunResult:
    """Run the whole job described by ``cfg``; writes ``result.json`` and ``qmodel.pt`` (and
    ``model.onnx``, ``distilled.pt``) into ``cfg.out`` when it is set.

    Every setting, the output folder and a ``calib_file`` are checked before the model is
    loaded. ``report(result)`` is called once the accuracies are known and before any result
    file is written (the command line prints the table there). While the run works, ``cfg.out``
    is locked: a second run into the same folder stops at once with a :class:`GenieError`.
    """
    t_start = time.perf_counter()
    device = resolve_device(cfg.device)
    spec = model_spec(cfg.model)
    recon_cfg = check_config(cfg, spec)
    preloaded = load_calibration_file(cfg, spec) if cfg.calib_file else None
    with folder_lock(cfg.out) if cfg.out else nullcontext():
        result = _quantize_and_evaluate(cfg, spec, recon_cfg, device, callback, preloaded, t_start)
        if report is not None:
            report(result)
        if cfg.out:
            write_outputs(result, cfg, spec)
            if not cfg.keep_checkpoints:  # only now: a run that dies writing its outputs resumes
                remove_checkpoints(Path(cfg.out) / RECON_CHECKPOINT_DIR)
    return result


def _quantize_and_evaluate(cfg: RunConfig, spec, recon_cfg: ReconConfig, device, callback, preloaded,
                           t_start: float) -> RunResult:
    model = load_model(cfg.model).to(device)
    test = test_data(spec, cfg)
    images, calib_source, distill_info = calibration_images(spec, model, cfg, device, callback, preloaded)
    images = images.to(device)
    fp = fp_evaluation(model, test, progress=cfg.progress)
    mixed_info, table = {}, None
    w_bits = cfg.w_bits
    if cfg.mixed:
        allocation, table, mixed_info = mixed_precision_bits(cfg, model, images)
        w_bits = allocation.bits
    t_recon = time.perf_counter()
    qmodel = quantize_model(
        model,
        images,
        w_bits=w_bits,
        a_bits=cfg.a_bits,
        quantizer=cfg.quantizer,
        setting=cfg.setting,
        fold_bn=cfg.fold_bn,
        weight_symmetric=cfg.weight_symmetric,
        profile=cfg.profile,
        act_symmetric=cfg.act_symmetric,
    )
    qmodel.arch = cfg.model
    # with an output folder each finished unit is saved: a rerun of an interrupted run goes on from there
    report = reconstruct(qmodel, images, recon_cfg, callback=callback, progress=cfg.progress,
                         report_every=cfg.report_every, cuda_graph=cfg.cuda_graph,
                         checkpoint_dir=Path(cfg.out) / RECON_CHECKPOINT_DIR if cfg.out else None,
                         keep_checkpoints=True)
    recon_seconds = time.perf_counter() - t_recon
    qmodel.release_teacher()
    q = evaluate(qmodel, test, progress=cfg.progress, desc="quantized evaluate", agree_with=fp["predictions"])
    layer_bits = qmodel.weight_bits()
    sizes = [(layer.weight_quant.w_int.numel(), layer.weight_quant.bits) for _, layer in qmodel.layers()]
    values = {
        "model": cfg.model,
        "w_bits": None if cfg.mixed else cfg.w_bits,
        "a_bits": cfg.a_bits,
        "setting": cfg.setting,
        "fold_bn": cfg.fold_bn,
        "weight_symmetric": cfg.weight_symmetric,
        "act_symmetric": cfg.act_symmetric,
        "profile": cfg.profile,
        "data": cfg.data,
        "samples": len(images),  # used, which a calibration file decides when --samples is not given
        "calib_source": calib_source,
        "recon_iters": cfg.recon_iters,
        "batch_size": cfg.batch_size,
        "drop_prob": cfg.drop_prob,
        "qdrop_input": cfg.qdrop_input,
        "guard_ties": cfg.guard_ties,
        "round_weight": recon_cfg.rounding_weight(cfg.quantizer),
        "quantizer": cfg.quantizer,
        "seed": cfg.seed,
        "device": str(device),
        "device_name": device_name(device),
        "test_file": test.source if isinstance(test, LabeledImages) else str(Path(cfg.data_dir) / "val"),
        "test_images": fp["n"],
        "fp_top1": fp["top1"],
        "fp_top5": fp["top5"],
        "q_top1": q["top1"],
        "q_top5": q["top5"],
        "q_agree_fp32": q["agree"],  # % of test images where the quantized top-1 is FP32's
        # every run, uniform or mixed, so that any two compare at equal memory
        "weight_bytes": weight_memory_bytes(sizes),  # packed integer weights of the quantized layers
        "weight_bits_avg": sum(n * b for n, b in sizes) / sum(n for n, _ in sizes),
        "w_bits_per_layer": layer_bits,
        **mixed_info,
        "recon_seconds": recon_seconds,
        "cuda_graph": cfg.cuda_graph,
        "units": [
            {"name": u.name, "kind": u.kind, "init_error": u.init_error, "final_error": u.final_error, "seconds": u.seconds,
             "steps_at_floor": u.steps_at_floor, "lowest_step_ratio": u.lowest_step_ratio,
             "tie_moves": [vars(m) for m in u.tie_moves]}
            for u in report.units
        ],
        **distill_info,
        "torch_version": str(torch.__version__),
        "genie_version": __version__,
    }
    values["total_seconds"] = time.perf_counter() - t_start
    return RunResult(values, report, qmodel, table)


def write_outputs(result: RunResult, cfg: RunConfig, spec) -> None:
    """``qmodel.pt``, ``result.json`` and (``export_onnx``) ``model.onnx`` into ``cfg.out``,
    each atomically: a failed write names its file and keeps the previous one."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    values = result.values
    save_quantized(result.qmodel, out / QMODEL_FILE, metadata={k: v for k, v in values.items() if k != "units"})
    if result.sensitivity is not None:
        result.sensitivity.save(out / SENSITIVITY_FILE)
    write_record(out / RESULT_FILE, result.record())
    if cfg.export_onnx:
        from .export import export_onnx

        # the example fixes only the input shape: the file equals `genie export` of qmodel.pt
        export_onnx(result.qmodel, out / ONNX_FILE, (1, 3, spec.image_size, spec.image_size), int_form=cfg.onnx_int)


def _check_onnx_export(cfg: RunConfig) -> None:
    """Everything ``--export-onnx`` needs, checked before any slow step."""
    from .export.graph import require_onnx
    from .export.qdq import int_form

    if not cfg.out:
        raise GenieError("--export-onnx writes OUT/model.onnx: give --out DIR")
    require_onnx()
    form = int_form(cfg.onnx_int)
    w_bits = min(cfg.w_candidates) if cfg.mixed else cfg.w_bits
    if min(w_bits, cfg.a_bits) < form.min_bits:
        what = f"candidates {','.join(map(str, cfg.w_candidates))}" if cfg.mixed else f"W{cfg.w_bits}A{cfg.a_bits}"
        raise GenieError(f"--onnx-int {form.name} holds tensors of {form.min_bits} bits or more; {what} "
                         "needs --onnx-int qcdq")
