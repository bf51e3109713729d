"""The main job: load a model, get calibration data, quantize, reconstruct, evaluate, save.

Used by the command line (``python -m genie run``), the benchmarks and the notebooks.
"""
from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import torch

from . import __version__
from .data import LabeledImages, cifar10_calibration, cifar10_test, evaluate, image_folder, sample_images
from .errors import GenieError
from .events import Callback
from .models import load_model, model_spec
from .quant import QuantConfig, ReconConfig, quantize_model, reconstruct, save_quantized


@dataclass
class RunConfig:
    """Settings of one quantization run (the command line's ``run`` options)."""

    model: str = "resnet20_cifar10"
    w_bits: int = 4
    a_bits: int = 4
    data: str = "real"  # real | synthetic
    samples: int = 1024
    recon_iters: int = 20000
    quantizer: str = "genie"  # genie | adaround | nearest
    seed: int = 0
    device: Optional[str] = None  # default: cuda when available
    out: Optional[str] = None
    batch_size: int = 32
    setting: str = "brecq"  # brecq | all
    fold_bn: bool = True
    weight_symmetric: bool = False  # signed weights, zero point 0 (TensorRT-style)
    drop_prob: float = 0.5
    test_source: str = "auto"  # CIFAR: auto | npz | lossless100 | torchvision
    data_dir: Optional[str] = None  # ImageNet-style root with train/ and val/
    progress: bool = True
    # zero-shot (--data synthetic): GENIE-D settings
    distiller: str = "genie"  # genie | direct | generator
    swing: bool = True
    distill_iters: Optional[int] = None  # None: the distiller's default (4000; direct: 500)
    distill_batch: int = 128
    calib_file: Optional[str] = None  # a distilled set saved earlier (python -m genie distill)
    cuda_graph: bool = False  # replay training steps as CUDA graphs (GPU only)
    report_every: int = 100  # iterations between loss events (live plots)
    snapshot_at: tuple = ()  # distillation iterations whose images are sent as events
    export_onnx: bool = False  # also write out/model.onnx (QDQ; genie.export)
    onnx_int: str = "qcdq"  # integer form of the ONNX file: qcdq | int4

    def distill_config(self):
        from .distill import DistillConfig

        return DistillConfig(
            num_images=self.samples,
            distiller=self.distiller,
            swing=self.swing,
            iters=self.distill_iters,
            batch_size=self.distill_batch,
            seed=self.seed,
        )

    def resolved_device(self) -> torch.device:
        if self.device is None:
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        try:
            device = torch.device(self.device)
        except RuntimeError:
            raise GenieError(f"unknown device {self.device!r}; use cuda, cuda:N or cpu") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise GenieError("--device cuda was asked for but no CUDA GPU is available; use --device cpu")
        return device


def device_name(device: torch.device) -> str:
    """Human-readable name of the device a run used (GPU model, or CPU and thread count)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"


def test_data(spec, cfg: RunConfig) -> LabeledImages:
    """The evaluation set for a zoo model."""
    if spec.dataset == "cifar10":
        return cifar10_test(spec.mean, spec.std, source=cfg.test_source)
    if cfg.data_dir is None:
        raise GenieError(f"{spec.name} is an ImageNet model: pass --data-dir, a folder with train/ and val/ subfolders")
    return image_folder(Path(cfg.data_dir) / "val", spec.image_size, mean=spec.mean, std=spec.std)


def real_calibration(spec, cfg: RunConfig) -> LabeledImages:
    """``cfg.samples`` real calibration images (few-shot)."""
    if spec.dataset == "cifar10":
        return cifar10_calibration(cfg.samples, spec.mean, spec.std, seed=cfg.seed)
    if cfg.data_dir is None:
        raise GenieError(f"{spec.name} is an ImageNet model: pass --data-dir, a folder with train/ and val/ subfolders")
    folder = image_folder(Path(cfg.data_dir) / "train", spec.image_size, mean=spec.mean, std=spec.std)
    return sample_images(folder, cfg.samples, seed=cfg.seed)


@dataclass
class RunResult:
    """What a run measured; ``to_json()`` is the content of ``result.json``."""

    values: dict
    recon_report: object = field(repr=False, default=None)
    qmodel: object = field(repr=False, default=None)

    def to_json(self) -> str:
        return json.dumps(self.values, indent=2)

    def table(self) -> str:
        v = self.values
        rows = [
            ("model", v["model"]),
            ("bits (W/A)", f"W{v['w_bits']}A{v['a_bits']} ({v['setting']})"),
            ("quantizer", v["quantizer"]),
            ("calibration", f"{v['data']}, {v['samples']} images ({v['calib_source']})"),
            ("reconstruction", f"{v['recon_iters']} iterations/unit, batch {v['batch_size']}"),
            ("device", f"{v['device']} ({v['device_name']})"),
            ("test file", v["test_file"]),
            ("FP32 top-1 / top-5", f"{v['fp_top1']:.2f} / {v['fp_top5']:.2f}"),
            ("quantized top-1 / top-5", f"{v['q_top1']:.2f} / {v['q_top5']:.2f}"),
            ("top-1 drop", f"{v['fp_top1'] - v['q_top1']:.2f}"),
            ("reconstruction time", f"{v['recon_seconds']:.1f} s"),
            ("total time", f"{v['total_seconds']:.1f} s"),
        ]
        if v.get("distill_seconds") is not None:
            rows.insert(5, ("distillation", f"{v['distiller']}, swing {v['swing']}, {v['distill_iters']} iterations, "
                                            f"{v['distill_seconds']:.1f} s, final BNS loss {v['final_bns_loss']:.4g}"))
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k:<{width}}  {val}" for k, val in rows)


def _distill_info(distilled) -> dict:
    meta = distilled.metadata
    return {
        "distiller": meta["distiller"],
        "swing": meta["swing"],
        "distill_iters": meta["iters"],
        "distill_batch": meta["batch_size"],
        "distill_seconds": meta["seconds"],
        "initial_bns_loss": float(distilled.losses[0].mean()),
        "final_bns_loss": distilled.final_loss,
    }


def calibration_images(spec, model, cfg: RunConfig, device, callback: Callback) -> tuple:
    """``(images, source description, distillation info)`` for the run's ``data`` setting:
    real images (few-shot), a distilled set from ``calib_file``, or a fresh GENIE-D run."""
    if cfg.data == "real":
        calib = real_calibration(spec, cfg)
        return calib.images, calib.source, {}
    if cfg.data != "synthetic":
        raise GenieError(f"unknown --data {cfg.data!r}: use real or synthetic")
    from .distill import distill, load_distilled

    if cfg.calib_file:
        distilled = load_distilled(cfg.calib_file)
        if distilled.metadata.get("model") not in (None, cfg.model):
            raise GenieError(f"{cfg.calib_file} was distilled from {distilled.metadata['model']}, not {cfg.model}")
        return distilled.images, f"distilled set {cfg.calib_file}", _distill_info(distilled)
    checkpoints = str(Path(cfg.out) / "distill_checkpoints") if cfg.out else None
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
        distilled.save(Path(cfg.out) / "distilled.pt")
    return distilled.images, f"GENIE-D {cfg.distiller} ({len(distilled)} images, seed {cfg.seed})", _distill_info(distilled)


def run(cfg: RunConfig, callback: Callback = None) -> RunResult:
    """Run the whole job described by ``cfg``; writes ``result.json`` and ``qmodel.pt`` into
    ``cfg.out`` when it is set."""
    t_start = time.perf_counter()
    device = cfg.resolved_device()
    spec = model_spec(cfg.model)
    # check every setting before any slow step
    if cfg.samples <= 0:
        raise GenieError(f"--samples must be positive, got {cfg.samples}")
    QuantConfig(cfg.w_bits, cfg.a_bits, cfg.quantizer, cfg.setting, cfg.fold_bn,
                weight_symmetric=cfg.weight_symmetric).validate()
    if cfg.export_onnx:
        _check_onnx_export(cfg)
    recon_cfg = ReconConfig(iters=cfg.recon_iters, batch_size=cfg.batch_size, drop_prob=cfg.drop_prob, seed=cfg.seed)
    recon_cfg.validate()
    if cfg.data == "synthetic" and not cfg.calib_file:
        cfg.distill_config().validate()
    if spec.dataset != "cifar10" and cfg.data_dir is None:
        raise GenieError(f"{spec.name} is an ImageNet model: pass --data-dir, a folder with train/ and val/ subfolders")
    model = load_model(cfg.model).to(device)
    test = test_data(spec, cfg)
    images, calib_source, distill_info = calibration_images(spec, model, cfg, device, callback)
    images = images.to(device)
    fp = evaluate(model, test, progress=cfg.progress, desc="FP32 evaluate")
    t_recon = time.perf_counter()
    qmodel = quantize_model(
        model,
        images,
        w_bits=cfg.w_bits,
        a_bits=cfg.a_bits,
        quantizer=cfg.quantizer,
        setting=cfg.setting,
        fold_bn=cfg.fold_bn,
        weight_symmetric=cfg.weight_symmetric,
    )
    qmodel.arch = cfg.model
    report = reconstruct(qmodel, images, recon_cfg, callback=callback, progress=cfg.progress,
                         report_every=cfg.report_every, cuda_graph=cfg.cuda_graph)
    recon_seconds = time.perf_counter() - t_recon
    qmodel.release_teacher()
    q = evaluate(qmodel, test, progress=cfg.progress, desc="quantized evaluate")
    values = {
        "model": cfg.model,
        "w_bits": cfg.w_bits,
        "a_bits": cfg.a_bits,
        "setting": cfg.setting,
        "fold_bn": cfg.fold_bn,
        "weight_symmetric": cfg.weight_symmetric,
        "data": cfg.data,
        "samples": cfg.samples,
        "calib_source": calib_source,
        "recon_iters": cfg.recon_iters,
        "batch_size": cfg.batch_size,
        "drop_prob": cfg.drop_prob,
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
        "recon_seconds": recon_seconds,
        "cuda_graph": cfg.cuda_graph,
        "units": [
            {"name": u.name, "kind": u.kind, "init_error": u.init_error, "final_error": u.final_error, "seconds": u.seconds}
            for u in report.units
        ],
        **distill_info,
        "torch_version": str(torch.__version__),
        "genie_version": __version__,
    }
    values["total_seconds"] = time.perf_counter() - t_start
    result = RunResult(values, report, qmodel)
    if cfg.out:
        out = Path(cfg.out)
        out.mkdir(parents=True, exist_ok=True)
        save_quantized(qmodel, out / "qmodel.pt", metadata={k: v for k, v in values.items() if k != "units"})
        (out / "result.json").write_text(result.to_json() + os.linesep)
        if cfg.export_onnx:
            from .export import export_onnx

            # the example fixes only the input shape: the file equals `genie export` of qmodel.pt
            export_onnx(qmodel, out / "model.onnx", (1, 3, spec.image_size, spec.image_size),
                        int_form=cfg.onnx_int)
    return result


def _check_onnx_export(cfg: RunConfig) -> None:
    """Everything ``--export-onnx`` needs, checked before any slow step."""
    from .export.graph import require_onnx
    from .export.qdq import int_form

    if not cfg.out:
        raise GenieError("--export-onnx writes OUT/model.onnx: give --out DIR")
    require_onnx()
    form = int_form(cfg.onnx_int)
    narrowest = min(cfg.w_bits, cfg.a_bits)
    if narrowest < form.min_bits:
        raise GenieError(
            f"--onnx-int {form.name} holds tensors of {form.min_bits} bits or more; W{cfg.w_bits}A{cfg.a_bits} "
            "needs --onnx-int qcdq"
        )
