"""GENIE-D and its baselines behind one interface.

* ``genie``     - generator + trained latent vectors (GLO-style), the paper's GENIE-D;
* ``generator`` - generator fed fixed Gaussian noise, only its weights trained ("GBA");
* ``direct``    - the pixels themselves optimised (ZeroQ-style "DBA");
each with swing convolution on or off. Every batch of ``batch_size`` images is an independent
problem with its own generator, latents and schedules; batches run together on the device
(``concurrent_batches`` at a time), which gives the same result as running them one by one.

The distillers differ only in what they train and how a step's images come out of it: each is
a strategy class in :data:`STRATEGIES` (name -> class); the loop around them is shared.
"""
from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass
from typing import Optional, Sequence

import torch
from torch import nn

from ..cpu_memory import retain_freed_memory
from ..devices import model_device
from ..errors import GenieError, shown
from ..events import BatchDone, Callback, DistillProgress, DistillSnapshot, emit
from ..finite import require_finite_losses, require_finite_model, require_positive_bn_variance
from ..graphs import run_steps
from ..progress import progress_bar
from ..optim import DeviceAdam
from ..seeding import cpu_generator, derive_seed
from ..validate import COUNT, IMAGE_SIZE, NON_NEGATIVE, PROBABILITY, SEED, check_bool, check_float, check_int, \
    check_module, merged_config
from .bns import BNStatsLoss, bn_layers, input_stats_loss
from .checkpoints import Checkpoints, model_fingerprint
from .dataset import DistilledSet
from .folded_teacher import fold_teacher_batchnorm
from .strategies import DEFAULT_ITERS, DISTILLERS, STRATEGIES
from .swing import SwingControl, apply_swing, set_swing

__all__ = ["DEFAULT_ITERS", "DISTILLERS", "STRATEGIES", "DistillConfig", "distill", "model_fingerprint"]


@dataclass
class DistillConfig:
    """Distillation settings (defaults: method card / paper appendix A; ``direct``: ZeroQ)."""

    num_images: int = 1024
    distiller: str = "genie"
    swing: bool = True
    iters: Optional[int] = None  # None: the distiller's default, DEFAULT_ITERS[distiller]
    batch_size: int = 128
    seed: int = 0
    lr_latent: float = 0.1
    lr_generator: float = 0.01
    lr_pixels: float = 0.5
    generator_decay: float = 0.95  # ExponentialLR factor, applied every 100 iterations
    plateau_patience: int = 100
    plateau_min_lr: float = 1e-4
    input_term: bool = True  # push each image's channel mean/std towards 0/1
    concurrent_batches: Optional[int] = None  # None: all at once on CUDA, one at a time on CPU

    @property
    def total_iters(self) -> int:
        return DEFAULT_ITERS[self.distiller] if self.iters is None else self.iters

    @property
    def num_batches(self) -> int:
        return -(-self.num_images // self.batch_size)

    def batch_sizes(self) -> list:
        full, rest = divmod(self.num_images, self.batch_size)
        return [self.batch_size] * full + ([rest] if rest else [])

    def validate(self) -> "DistillConfig":
        """Every setting checked against its range (:mod:`genie.validate`; the seed against what
        torch's generators take); numpy numbers become Python ones. Returns ``self``."""
        if self.distiller not in DISTILLERS:
            raise GenieError(f"unknown distiller {shown(self.distiller)}; use one of {', '.join(DISTILLERS)}")
        self.num_images = check_int(self.num_images, "num_images", COUNT)
        self.batch_size = check_int(self.batch_size, "batch_size", COUNT)
        self.concurrent_batches = check_int(self.concurrent_batches, "concurrent_batches", COUNT,
                                            or_none=" or None (automatic)")
        self.iters = check_int(self.iters, "distillation iterations (iters)", COUNT,
                               or_none=" or None (the distiller's default)")
        self.seed = check_int(self.seed, "seed", SEED)
        for name in ("lr_latent", "lr_generator", "lr_pixels", "plateau_min_lr"):
            setattr(self, name, check_float(getattr(self, name), name, NON_NEGATIVE))
        self.generator_decay = check_float(self.generator_decay, "generator_decay", PROBABILITY)
        self.plateau_patience = check_int(self.plateau_patience, "plateau_patience", COUNT)
        self.swing = check_bool(self.swing, "swing")
        self.input_term = check_bool(self.input_term, "input_term")
        if min(self.batch_sizes()) < 2:
            raise GenieError("every distillation batch needs at least 2 images (BatchNorm statistics); "
                             f"{self.num_images} images in batches of {self.batch_size} leaves one of 1")
        return self


def teacher_layout(work: nn.Module, device: torch.device) -> nn.Module:
    """``work`` (the frozen copy the step runs) with its convolution weights in the layout of the
    step's images: channels-last on CPUs. A convolution whose input and weight layouts differ
    makes oneDNN reorder the weight in every forward and backward pass: 4-8 % of a ResNet-20
    distillation step at 128 images (2 threads), for the same values."""
    if device.type != "cpu":
        return work
    return work.to(memory_format=torch.channels_last)


def _chunks(batches: list, sizes: list, per_chunk: int) -> list:
    """Group batch indices into chunks of equal-sized batches, at most ``per_chunk`` each."""
    chunks, current = [], []
    for b in batches:
        if current and (len(current) == per_chunk or sizes[current[0]] != sizes[b]):
            chunks.append(current)
            current = []
        current.append(b)
    if current:
        chunks.append(current)
    return chunks


@dataclass
class _DistillRun:
    """What the distillation of every chunk of batches shares."""

    work: nn.Module  # the swing-wrapped, frozen copy of the model
    cfg: DistillConfig
    image_size: int
    device: torch.device
    callback: Callback
    bar: object  # a tqdm bar (or None): advanced by images x iterations
    report_every: int  # iterations between DistillProgress events (and finiteness checks)
    snapshot_at: Sequence[int]  # iterations whose images are sent as DistillSnapshot
    cuda_graph: bool  # replay the step as a CUDA graph (GPU only)


def _distill_chunk(run: _DistillRun, batch_ids: list, n: int):
    """Run ``cfg.total_iters`` iterations for the batches ``batch_ids`` (``n`` images each).
    Works in the dtype of the model's parameters (float32, or float64 for exactness tests).
    Returns the last step's images ``(G * n, 3, S, S)``, the losses ``(iters, G)`` and the last
    per-layer BNS losses ``(G, layers)``."""
    cfg, work, device = run.cfg, run.work, run.device
    dtype = next(work.parameters()).dtype
    g_count = len(batch_ids)
    seeds = [derive_seed(cfg.seed, b) for b in batch_ids]
    gens = [cpu_generator(s) for s in seeds]
    control = SwingControl(torch.tensor(seeds, dtype=torch.int64, device=device), n)
    set_swing(work, enabled=cfg.swing, control=control)
    stats = BNStatsLoss(work, n)
    iters = cfg.total_iters
    try:
        strategy = STRATEGIES[cfg.distiller](cfg, gens, n, run.image_size, device, dtype)
        params = strategy.params
        opt = DeviceAdam(params)
        losses = torch.zeros(iters, g_count, device=device, dtype=dtype)
        state = {}

        def step() -> None:
            # everything below stays on the device (counter, schedules, loss record), so one
            # step can be captured in a CUDA graph and replayed
            images = strategy.images()
            # oneDNN's convolution backward is several times faster in channels-last layout on CPUs
            work(images.contiguous(memory_format=torch.channels_last) if device.type == "cpu" else images)
            per_layer = stats.per_layer()
            loss = per_layer.sum(1)
            if cfg.input_term:
                loss = loss + input_stats_loss(images, n)
            grads = torch.autograd.grad(loss.sum(), params)
            opt.step(list(grads), strategy.learning_rates(control.step))
            strategy.after_step(loss)
            losses.index_copy_(0, control.step.view(1), loss.detach().view(1, -1))
            control.step += 1
            # the images this step was computed on (pixels trained in place are copied)
            state["images"] = images.detach().clone() if strategy.images_are_params else images.detach()
            state["per_layer"] = per_layer.detach()

        last = [0]
        snapshots = set(run.snapshot_at)

        def after(done: int) -> None:
            if done - 1 in snapshots:
                emit(run.callback, DistillSnapshot(done - 1, list(batch_ids), state["images"].to("cpu", copy=True)))
            if done % run.report_every == 0 or done == iters:
                require_finite_losses(losses[last[0] : done], last[0], f"distillation of batches {list(batch_ids)}",
                                      "check the model's BatchNorm statistics, or lower lr_latent / lr_generator")
                if run.callback is not None:
                    emit(run.callback, DistillProgress(last[0], list(batch_ids),
                                                       losses[last[0] : done].to("cpu", copy=True),
                                                       state["per_layer"].to("cpu", copy=True)))
                if run.bar is not None:
                    run.bar.update((done - last[0]) * g_count)
                last[0] = done

        run_steps(step, iters, device, run.cuda_graph, after)
        images, per_layer = state["images"], state["per_layer"]
        return images.detach(), losses.detach(), per_layer.detach()
    finally:
        stats.remove()


def distill(
    model: nn.Module,
    image_size: int,
    config: Optional[DistillConfig] = None,
    callback: Callback = None,
    progress: bool = True,
    report_every: int = 100,
    snapshot_at: Sequence[int] = (),
    checkpoint_dir: Optional[str] = None,
    batches: Optional[Sequence[int]] = None,
    model_name: Optional[str] = None,
    cuda_graph: bool = False,
    **overrides,
) -> DistilledSet:
    """Distil ``config.num_images`` synthetic images from ``model``'s BatchNorm statistics.

    image_size: side of the (square) input in pixels. Runs on the model's device; the model is
    not modified (swing wraps a copy). ``config`` or keyword overrides of :class:`DistillConfig`.
    ``snapshot_at``: iterations whose images are sent to ``callback`` (:class:`DistillSnapshot`);
    losses arrive every ``report_every`` iterations (:class:`DistillProgress`), each finished
    batch as :class:`BatchDone`. ``checkpoint_dir``: finished batches are saved there, and a
    rerun skips them. ``batches``: run only these batch indices (used to shard across processes).
    ``cuda_graph``: on a GPU, replay the distillation step as a captured CUDA graph.
    """
    check_module(model, "model", "pass the FP network to distil from, e.g. genie.models.load_model(name)")
    cfg = merged_config(DistillConfig, config, overrides, "distill").validate()
    image_size = check_int(image_size, "image_size", IMAGE_SIZE)
    report_every = check_int(report_every, "report_every", COUNT)
    cuda_graph = check_bool(cuda_graph, "cuda_graph")
    if STRATEGIES[cfg.distiller].uses_generator and image_size % 4 != 0:
        raise GenieError(f"the generator needs an image size divisible by 4, got {image_size}")
    if not any(isinstance(m, nn.BatchNorm2d) for m in model.modules()):
        raise GenieError(
            f"{type(model).__name__} has no BatchNorm2d layer: GENIE-D distils data from BatchNorm "
            "statistics; use real calibration images (--data real) for this model"
        )
    require_finite_model(model, f"{type(model).__name__} (its weights or BatchNorm statistics)")
    require_positive_bn_variance(model, type(model).__name__)
    device = model_device(model)
    retain_freed_memory(device)  # on a CPU: the step's tensors reused from the heap, not faulted in anew
    # the step's teacher: a copy, BatchNorm folded into the convolutions where the statistics
    # survive it (one elementwise pass less each way per layer), swing-wrapped, in the CPU layout
    work = copy.deepcopy(model).eval()
    fold_teacher_batchnorm(work)
    work = teacher_layout(apply_swing(work, copy_model=False), device)
    for p in work.parameters():
        p.requires_grad_(False)
    sizes = cfg.batch_sizes()
    wanted = list(range(cfg.num_batches)) if batches is None else sorted(set(batches))
    fingerprint = {k: v for k, v in asdict(cfg).items() if k != "concurrent_batches"}
    fingerprint.update(model=model_fingerprint(model), image_size=image_size)
    checkpoints = Checkpoints(checkpoint_dir, fingerprint)
    done = {}
    for b in wanted:
        record = checkpoints.load(b)
        if record is not None:
            done[b] = record
    todo = [b for b in wanted if b not in done]
    per_chunk = cfg.concurrent_batches or (len(todo) if device.type == "cuda" else 1)
    bar = progress_bar(cfg.total_iters * len(todo), "distill", show=progress)
    t_start = time.perf_counter()
    layer_names = [n for n, _ in bn_layers(work)]
    run = _DistillRun(work, cfg, image_size, device, callback, bar, report_every, snapshot_at, cuda_graph)
    try:
        for chunk in _chunks(todo, sizes, max(1, per_chunk)):
            t0 = time.perf_counter()
            images, losses, per_layer = _distill_chunk(run, chunk, sizes[chunk[0]])
            seconds = time.perf_counter() - t0
            n = sizes[chunk[0]]
            images = images.cpu()
            for i, b in enumerate(chunk):
                record = {
                    "images": images[i * n : (i + 1) * n].clone(),
                    "losses": losses[:, i].cpu(),
                    "per_layer": per_layer[i].cpu(),
                    "seconds": seconds,
                }
                checkpoints.save(b, record)
                done[b] = record
                emit(callback, BatchDone(b, float(record["losses"][-1]), seconds, record["per_layer"]))
    finally:
        bar.close()
    ordered = [done[b] for b in wanted]
    metadata = {
        "model": model_name,
        "model_fingerprint": fingerprint["model"],
        "distiller": cfg.distiller,
        "swing": cfg.swing,
        "iters": cfg.total_iters,
        "batch_size": cfg.batch_size,
        "num_images": cfg.num_images,
        "seed": cfg.seed,
        "image_size": image_size,
        "batches": wanted,
        "final_loss": [float(r["losses"][-1]) for r in ordered],
        "seconds": time.perf_counter() - t_start,
        "device": str(device),
    }
    return DistilledSet(
        torch.cat([r["images"] for r in ordered]),
        metadata,
        torch.stack([r["losses"] for r in ordered], dim=1),
        torch.stack([r["per_layer"] for r in ordered]),
        layer_names,
    )
