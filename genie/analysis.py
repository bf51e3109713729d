"""Measures for looking at distilled images: the checkerboard artifact that strided convolutions
leave in images optimised by back-propagation, and why swing convolution removes it.

A convolution with stride ``s`` touches the input pixels unevenly (a 3x3 kernel at stride 2
covers every other row and column twice), so the gradient it sends back to its input carries a
pattern with period ``s``. Images optimised through such layers pick that pattern up: in their
Fourier spectrum it is energy at the *stride frequencies*, the multiples of ``size / s`` cycles
per image along each axis (for ``s = 2``: the Nyquist frequency). Natural images have almost no
energy there. :func:`stride_artifact_energy` measures the fraction of an image's spectral energy
that sits at those frequencies; :func:`gradient_coverage` shows the uneven footprint itself and
how the nine swing windows (GENIE Sec. 3.1.1) flatten it.

Only torch is needed.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .errors import GenieError, shown


def _check_images(images: torch.Tensor) -> torch.Tensor:
    if not torch.is_tensor(images) or images.dim() != 4 or not images.is_floating_point():
        shape = tuple(images.shape) if torch.is_tensor(images) else type(images).__name__
        raise GenieError(f"expected a float tensor of images (N, C, H, W), got {shape}")
    if images.shape[0] == 0:
        raise GenieError("expected at least one image, got N = 0")
    return images.detach().to(torch.float64)


def power_spectrum(images: torch.Tensor) -> torch.Tensor:
    """Per-image power spectrum ``(N, H, W)``: ``|FFT2|^2`` of every channel with its own mean
    removed, summed over channels (unshifted: frequency ``(0, 0)`` at index ``[0, 0]``)."""
    x = _check_images(images)
    x = x - x.mean(dim=(2, 3), keepdim=True)
    return torch.fft.fft2(x).abs().pow(2).sum(dim=1)


def stride_frequency_mask(height: int, width: int, stride: int = 2) -> torch.Tensor:
    """Boolean ``(height, width)`` mask of the stride frequencies of a stride-``stride`` layer:
    the bins ``(i * height / stride, j * width / stride)`` for ``i, j < stride``, except (0, 0)."""
    if isinstance(stride, bool) or not isinstance(stride, int) or stride < 2:
        raise GenieError(f"stride must be an integer >= 2, got {shown(stride)}")
    if height % stride or width % stride:
        raise GenieError(f"image size {height}x{width} is not divisible by the stride {stride}")
    rows = torch.arange(height) % (height // stride) == 0
    cols = torch.arange(width) % (width // stride) == 0
    mask = rows[:, None] & cols[None, :]
    mask[0, 0] = False
    return mask


def stride_artifact_energy(images: torch.Tensor, stride: int = 2) -> torch.Tensor:
    """Checkerboard measure, per image ``(N,)`` float64: the fraction of the image's spectral
    energy (mean removed per channel) at the stride frequencies of a stride-``stride`` layer.

    0 for an image without any such pattern, 1 for a pure checkerboard of period ``stride``;
    white noise gives ``(stride^2 - 1) / (H * W - 1)``; natural CIFAR-10 images about 0.001 at
    stride 2. A constant image (no energy at all) scores 0. Invariant to brightness and contrast.
    """
    power = power_spectrum(images)
    mask = stride_frequency_mask(power.shape[1], power.shape[2], stride).to(power.device)
    total = power.flatten(1).sum(dim=1)
    at_stride = power[:, mask].sum(dim=1)
    return torch.where(total > 0, at_stride / total.clamp_min(torch.finfo(total.dtype).tiny), torch.zeros_like(total))


def gradient_coverage(size: int = 16, kernel_size: int = 3, stride: int = 2, swing: bool = False) -> torch.Tensor:
    """How much gradient each pixel of a ``size x size`` input receives from a convolution with
    an all-ones ``kernel_size`` kernel, stride ``stride`` and "same" padding, when every output
    sends back gradient 1: ``(size, size)`` float64.

    Without swing the map is uneven with period ``stride`` (the checkerboard: for a 3x3 kernel
    at stride 2 rows alternate 1:2). With ``swing=True`` it is the average over the nine swing
    windows (reflection pad by 1, crop at offset ``(dy, dx)`` in {0, 1, 2}^2, see
    :func:`genie.distill.swing_crop`): what the gradient looks like on average when the distiller
    draws a window at random every step. The contrast drops (to 5:4 in the example above), so
    the pattern no longer adds up over iterations in one place. Computed by back-propagation
    through the same crop the distiller uses.
    """
    from .distill.swing import swing_crop

    for name, value in (("size", size), ("kernel_size", kernel_size), ("stride", stride)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise GenieError(f"{name} must be a positive integer, got {shown(value)}")
    if size < 2:
        raise GenieError(f"size must be at least 2 (reflection padding), got {size}")
    if swing:
        offsets = torch.tensor([(dy, dx) for dy in range(3) for dx in range(3)], dtype=torch.int64)
    else:
        offsets = torch.ones(1, 2, dtype=torch.int64)  # window (1, 1): the input itself
    x = torch.zeros(len(offsets), 1, size, size, dtype=torch.float64, requires_grad=True)
    kernel = torch.ones(1, 1, kernel_size, kernel_size, dtype=torch.float64)
    out = F.conv2d(swing_crop(x, offsets), kernel, stride=stride, padding=kernel_size // 2)
    (grad,) = torch.autograd.grad(out.sum(), x)
    return grad.mean(dim=0)[0]
