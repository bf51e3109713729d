"""Swing convolution (GENIE Sec. 3.1.1): during distillation, every convolution with stride > 1
sees its input reflection-padded by 1 and cropped back to the original size at a random offset
in {0, 1, 2} x {0, 1, 2} (9 windows), which removes the checkerboard pattern that strided
convolutions leave in gradients with respect to the input.

Offsets are drawn per forward pass, per strided layer and per distillation batch from a
counter-based hash of (batch seed, step, layer), computed on the device: the same batch gets the
same offsets whether it is distilled alone or together with others.
"""
from __future__ import annotations

import copy
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..devices import is_channels_last
from ..seeding import mix32

NUM_WINDOWS = 9


class SwingControl:
    """Where the offsets come from: one seed per batch (group of ``group_size`` images in the
    model's input) and a step counter the distiller advances (a device tensor)."""

    def __init__(self, seeds: torch.Tensor, group_size: int):
        self.seeds = seeds.to(torch.int64)
        self.group_size = group_size
        self.step = torch.zeros((), dtype=torch.int64, device=seeds.device)

    def offsets(self, layer_id: int) -> torch.Tensor:
        """``(groups, 2)`` int64 window offsets (dy, dx) in {0, 1, 2}."""
        h = mix32(mix32(self.seeds) ^ (self.step & 0xFFFFFFFF))
        code = mix32(h ^ (layer_id + 1)) % NUM_WINDOWS
        return torch.stack((code // 3, code % 3), dim=1)


def swing_crop(x: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Reflect-pad ``x`` (N, C, H, W) by 1 and crop an (H, W) window per group.

    offsets: ``(G, 2)`` window offsets for G equal groups of consecutive images; offset (1, 1)
    returns ``x`` unchanged.
    """
    n, c, h, w = x.shape
    groups = offsets.shape[0]
    padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
    hp, wp = h + 2, w + 2
    rows = offsets[:, :1] + torch.arange(h, device=x.device)  # (G, H)
    cols = offsets[:, 1:] + torch.arange(w, device=x.device)  # (G, W)
    flat = (rows[:, :, None] * wp + cols[:, None, :]).reshape(groups, 1, h * w)
    per_group = padded.reshape(groups, (n // groups) * c, hp * wp)
    out = torch.gather(per_group, 2, flat.expand(groups, per_group.shape[1], h * w))
    return out.reshape(n, c, h, w)


def _axis_plan(offset: int, size: int):
    """How window ``offset`` of an axis of ``size`` reads the unpadded input: ``(main, edge,
    uncovered)`` with ``main = (dst slice, src slice)`` the block copied as is, ``edge = (dst,
    src)`` the one reflected row (None at offset 1) and ``uncovered`` the input row no output
    reads through ``main`` (None at offset 1). Offset 0 puts row 1 before rows 0..size-2,
    offset 2 row size-2 after rows 1..size-1."""
    if offset == 1:
        return (slice(0, size), slice(0, size)), None, None
    if offset == 0:
        return (slice(1, size), slice(0, size - 1)), (0, 1), size - 1
    return (slice(0, size - 1), slice(1, size)), (size - 1, size - 2), 0


class _ReflectCrop(torch.autograd.Function):
    """Each group's window of ``x`` (N, C, H, W) reflection-padded by 1, written into one tensor
    of ``x``'s shape and layout without the padded tensor: forward one copy of every value, and
    backward one copy back plus the reflected row and column (autograd's graph of slices and
    concatenations makes zero-filled full-size gradients for every slice, and sums them)."""

    @staticmethod
    def forward(ctx, x, offsets: list):
        ctx.offsets = offsets
        out = torch.empty_like(x)
        size = x.shape[0] // len(offsets)
        for g, (dy, dx) in enumerate(offsets):
            src, dst = x[g * size : (g + 1) * size], out[g * size : (g + 1) * size]
            (ry, sy), ey, _ = _axis_plan(dy, x.shape[2])
            (rx, sx), ex, _ = _axis_plan(dx, x.shape[3])
            dst[:, :, ry, rx] = src[:, :, sy, sx]
            if ey is not None:
                dst[:, :, ey[0], rx] = src[:, :, ey[1], sx]
            if ex is not None:
                dst[:, :, ry, ex[0]] = src[:, :, sy, ex[1]]
            if ey is not None and ex is not None:
                dst[:, :, ey[0], ex[0]] = src[:, :, ey[1], ex[1]]
        return out

    @staticmethod
    def backward(ctx, grad_out):
        grad = torch.empty_like(grad_out)
        size = grad_out.shape[0] // len(ctx.offsets)
        for g, (dy, dx) in enumerate(ctx.offsets):
            up, gx = grad_out[g * size : (g + 1) * size], grad[g * size : (g + 1) * size]
            (ry, sy), ey, uy = _axis_plan(dy, gx.shape[2])
            (rx, sx), ex, ux = _axis_plan(dx, gx.shape[3])
            gx[:, :, sy, sx] = up[:, :, ry, rx]
            if uy is not None:
                gx[:, :, uy, :] = 0
            if ux is not None:
                gx[:, :, :, ux] = 0
            if ey is not None:
                gx[:, :, ey[1], sx] += up[:, :, ey[0], rx]
            if ex is not None:
                gx[:, :, sy, ex[1]] += up[:, :, ry, ex[0]]
            if ey is not None and ex is not None:
                gx[:, :, ey[1], ex[1]] += up[:, :, ey[0], ex[0]]
        return grad, None


def swing_crop_host(x: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """:func:`swing_crop` with the offsets read on the host: each group's window copied from
    ``x`` in place (:class:`_ReflectCrop`), with no padded tensor and no gather, in ``x``'s
    memory layout. Same values; the gradient sums the same terms (up to their order). For CPUs,
    where reading ``offsets`` costs nothing: forward and backward several times faster than the
    gather. A CUDA step keeps :func:`swing_crop`, which stays on the device (graph capture)."""
    windows = [tuple(o) for o in offsets.tolist()]
    if all(w == (1, 1) for w in windows):  # every group's window is x itself
        return x
    return _ReflectCrop.apply(x, windows)


class SwingConv2d(nn.Module):
    """A strided ``Conv2d`` whose input swings over the 9 windows while ``enabled``."""

    def __init__(self, conv: nn.Conv2d, layer_id: int):
        super().__init__()
        self.conv = conv
        self.layer_id = layer_id
        self.enabled = True
        self.control: Optional[SwingControl] = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled or self.control is None:
            return self.conv(x)
        crop = (swing_crop_host if x.device.type == "cpu" else swing_crop)(x, self.control.offsets(self.layer_id))
        if is_channels_last(x):
            crop = crop.contiguous(memory_format=torch.channels_last)  # keep the layout the caller chose
        return self.conv(crop)


def apply_swing(model: nn.Module, control: Optional[SwingControl] = None, copy_model: bool = True) -> nn.Module:
    """A copy of ``model`` with every convolution of stride > 1 wrapped in :class:`SwingConv2d`
    (the original is not modified; ``copy_model=False`` wraps ``model`` itself). Returns the
    wrapped model; ``control`` sets where offsets come from."""
    swung = copy.deepcopy(model) if copy_model else model
    layer_id = 0
    for name, module in list(swung.named_modules()):
        if isinstance(module, nn.Conv2d) and max(module.stride) > 1:
            parent_name, _, child = name.rpartition(".")
            parent = swung.get_submodule(parent_name) if parent_name else swung
            wrapped = SwingConv2d(module, layer_id)
            wrapped.control = control
            setattr(parent, child, wrapped)
            layer_id += 1
    return swung


def swing_layers(model: nn.Module) -> list:
    return [m for m in model.modules() if isinstance(m, SwingConv2d)]


def set_swing(model: nn.Module, enabled: bool = True, control: Optional[SwingControl] = None) -> int:
    """Switch the swing of every wrapped layer on or off (and set its control); returns how many."""
    layers = swing_layers(model)
    for layer in layers:
        layer.enabled = enabled
        if control is not None:
            layer.control = control
    return len(layers)
