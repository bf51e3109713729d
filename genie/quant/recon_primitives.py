"""Primitives of block reconstruction (GENIE-M), apart from the solver that uses them
(:mod:`genie.quant.reconstruction`): capturing a unit's inputs and outputs, the activation
step-size search, the reconstruction error and loss (and the units they are measured in), the
batch schedule, soft/hard rounding and the CPU memory layout of the calibration images."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..devices import is_channels_last
from ..errors import GenieError
from .act_quantizer import ActQuantizer
from .layers import QuantLayer
from .step_size import ACT_SEARCH_SAMPLE, search_act_scale


class _StopForward(Exception):
    pass


def single_input(module: nn.Module, args: tuple) -> torch.Tensor:
    """The one tensor a unit's forward takes (a forward hook's ``args``), or a :class:`GenieError`."""
    if len(args) != 1 or not torch.is_tensor(args[0]):
        raise GenieError(f"unit {type(module).__name__} must take exactly one tensor input")
    return args[0]


@torch.no_grad()
def capture(model: nn.Module, module: nn.Module, images: torch.Tensor, chunk: int, with_output: bool):
    """Inputs (and outputs) of ``module`` when ``model`` runs on ``images``, stopping the forward
    pass there. Returns ``(inputs, outputs or None)``, each ``(N, ...)``."""
    inputs, outputs = [], []

    def grab(mod, args, *out):
        inputs.append(single_input(mod, args).detach())
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
def init_activations(unit: nn.Module, q_in: torch.Tensor, chunk: int, p: float,
                     sample: Optional[int] = ACT_SEARCH_SAMPLE, generator: Optional[torch.Generator] = None) -> None:
    """Step-size search (Eq. 16) for the unit's activation quantizers, one after another in
    forward order (earlier ones already quantizing), over the quantizer's inputs on all
    calibration images (the unit's forward stops at the quantizer). ``sample``/``generator``: see
    :func:`genie.quant.step_size.search_act_scale` (``None``: the exhaustive search)."""
    for q in [m for m in unit.modules() if isinstance(m, ActQuantizer) and m.enabled and not m.initialized]:
        seen, _ = capture(unit, q, q_in, chunk, with_output=False)
        q.initialize(*search_act_scale(seen, q.bits, p, sample=sample, generator=generator,
                                       always_signed=q.always_signed))
        del seen


@torch.no_grad()
def unit_error(unit: nn.Module, q_in: torch.Tensor, fp_out: torch.Tensor, chunk: int,
               keep_output: bool = False) -> tuple:
    """``(error, outputs)``: the unit's reconstruction error on all images (mean over images of
    :func:`reconstruction_error`, in the units :func:`output_units` says, like its loss) and, with
    ``keep_output``, its outputs ``(N, ...)`` (else None)."""
    total = torch.zeros((), dtype=torch.float64, device=q_in.device)
    outputs, weight = None, output_units(unit)
    for start, (x, y) in zip(range(0, len(q_in), chunk), zip(q_in.split(chunk), fp_out.split(chunk))):
        out = unit(x)
        total += reconstruction_error(out, y, weight).sum(dtype=torch.float64)
        if keep_output:
            outputs = store_rows(outputs, out, start, len(q_in))
    return total.item() / len(q_in), outputs


def store_rows(buffer: Optional[torch.Tensor], part: torch.Tensor, start: int, total: int) -> torch.Tensor:
    """Copy ``part`` into rows ``start:`` of ``buffer`` (made on the first call: ``total`` rows,
    ``part``'s dtype, device and memory format), which it returns."""
    if buffer is None:
        channels_last = is_channels_last(part)
        buffer = torch.empty((total, *part.shape[1:]), dtype=part.dtype, device=part.device,
                             memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    buffer[start:start + len(part)].copy_(part)
    return buffer


def reconstruction_error(output: torch.Tensor, target: torch.Tensor,
                         weight: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Per-image ``||z - z_q||^2`` summed over channels, averaged over spatial positions: ``(N,)``.
    ``weight``: multiplies the difference per channel first (:func:`output_units`)."""
    diff = output - target
    if weight is not None:
        diff = diff * weight
    err = diff.pow(2).sum(1)
    return err.flatten(1).mean(1) if err.dim() > 1 else err


def output_units(unit: nn.Module) -> Optional[torch.Tensor]:
    """Per output channel, what turns the unit's output into that of the unit without BatchNorm
    folding (``(1, C, 1, 1)``), or ``None`` when it is the same either way.

    A block's output comes after its BatchNorms, folded or not. A lone convolution's does not: its
    output is the BatchNorm's when folded and the convolution's own when not, which differ by
    gamma/sigma per channel. Its loss is measured in the unfolded convolution's units (divided by
    |gamma/sigma|), so folding changes nothing it learns. It matters: ResNet-20's stem has
    gamma/sigma ~0.3, so its folded loss and gradients are ~10x smaller, and Adam's epsilon then
    damps its steps (its error fell 5.4x in 5000 iterations against 8x unfolded). A channel whose
    gamma is 0 has no weights left to learn folded; it gets weight 0.
    """
    if not isinstance(unit, QuantLayer) or unit.kind != "conv":
        return None
    scale = unit.fold_scale
    if bool((scale == 1).all()):
        return None
    inverse = torch.where(scale > 0, 1.0 / scale.clamp_min(torch.finfo(scale.dtype).tiny), torch.zeros_like(scale))
    return inverse.view(1, -1, 1, 1)


class _ScaledSquaredError(torch.autograd.Function):
    """``scale * ||(output - target) * weight||^2`` keeping the weighted difference for the
    backward pass (``2 * scale * diff * weight``): one subtraction and one norm forward, one
    product backward, where ``mse_loss`` recomputes the difference (about 30 % faster on CPUs).
    ``target`` and ``weight`` (``None``: 1) get no gradient."""

    @staticmethod
    def forward(ctx, output, target, scale: float, weight=None):
        diff = output - target
        if weight is not None:
            diff.mul_(weight)
        ctx.save_for_backward(diff, weight)
        ctx.scale = scale
        return torch.linalg.vector_norm(diff).square() * scale

    @staticmethod
    def backward(ctx, grad):
        diff, weight = ctx.saved_tensors
        d_output = diff * (grad * (2.0 * ctx.scale))
        return (d_output if weight is None else d_output.mul_(weight)), None, None, None


def reconstruction_loss(output: torch.Tensor, target: torch.Tensor,
                        weight: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``reconstruction_error(output, target, weight).mean()``: the mean squared error over all
    elements times the channel count."""
    return _ScaledSquaredError.apply(output, target, output.shape[1] / output.numel(), weight)


def take_rows(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``t[idx]`` (rows of a ``(N, ...)`` tensor), keeping a channels-last layout: selected as
    contiguous rows of the ``(N, H, W, C)`` view, about 4x faster on CPUs than advanced indexing."""
    if is_channels_last(t):
        return t.permute(0, 2, 3, 1).index_select(0, idx).permute(0, 3, 1, 2)
    return t[idx]


def batch_indices(num: int, iters: int, batch: int, generator: torch.Generator, device) -> torch.Tensor:
    """``(iters, batch)`` image indices: consecutive random permutations of ``range(num)``, so
    every image is used equally often and no count has to divide another."""
    perms = -(-iters * batch // num)
    keys = torch.rand(perms, num, generator=generator, device=device)
    return keys.argsort(dim=1).flatten()[: iters * batch].view(iters, batch)


def set_soft_rounding(unit: nn.Module, soft: bool) -> None:
    """Soft rounding h(V) (training) or hard rounding ``V >= 0`` for every weight quantizer with
    softbits below ``unit`` (the others round one way only)."""
    for m in unit.modules():
        if isinstance(m, QuantLayer) and m.weight_quant.has_softbits:
            m.weight_quant.set_soft(soft)


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


def images_on(device: torch.device, images: torch.Tensor, model: nn.Module) -> torch.Tensor:
    """``images`` on ``device``; on CPUs in channels-last layout (oneDNN convolutions run about
    twice as fast) unless ``model`` cannot take it."""
    images = images.to(device)
    if device.type == "cpu" and _accepts_channels_last(model, images[:1]):
        images = images.contiguous(memory_format=torch.channels_last)
    return images
