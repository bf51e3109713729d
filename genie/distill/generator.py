"""The GENIE-D generator, stacked for several independent batches.

Layout for image size S (method card; GDFQ's generator with one upsampling block):
``Linear(256 -> 128 (S/4)^2)`` -> (128, S/4, S/4) -> BN(128) -> Upsample x2 -> Conv3x3(128->64)
-> BN(64) -> LeakyReLU(0.2) -> Upsample x2 -> Conv3x3(64->3) -> Tanh -> BN(3, affine=False).
BatchNorm uses the statistics of the current batch (training mode).

``G`` generators (one per distillation batch, each with its own weights) run as one: the linear
layers as a batched matmul, the convolutions as grouped convolutions over channel-stacked
features, and each BatchNorm per (batch, channel). Batch g only ever sees its own weights and
images, so running batches together gives the same result as running them one by one.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import GenieError

LATENT_DIM = 256


def _uniform(shape, bound, generator):
    return (torch.rand(shape, generator=generator) * 2 - 1) * bound


def upsample_conv3x3(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, groups: int) -> torch.Tensor:
    """``conv2d(interpolate(h, scale_factor=2, mode="nearest"), weight, bias, padding=1, groups=groups)``
    without the upsampled tensor: ``h`` ``(n, C_in, H, W)`` -> ``(n, C_out, 2H, 2W)``.

    Output pixel (2i + a, 2j + b) sees only input rows {i-1, i} (a = 0) or {i, i+1} (a = 1), with
    the 3x3 kernel's rows summed to 2 (w0, w1 + w2 or w0 + w1, w2), and likewise for columns. So
    one convolution of ``h`` with four 2x2 kernels per output channel (one per phase (a, b)) gives
    every output pixel: 16 instead of 36 multiply-adds per pixel and channel pair, and no
    upsampled input (CPU: the generator's step ~2x faster). Same values to float rounding.
    """
    n, _, height, width = h.shape
    cout = weight.shape[0] // groups
    w = weight
    rows = torch.stack([torch.stack([w[:, :, 0], w[:, :, 1] + w[:, :, 2]], 2),
                        torch.stack([w[:, :, 0] + w[:, :, 1], w[:, :, 2]], 2)])  # (2 a, C_out, C_in, 2, 3)
    k = torch.stack([torch.stack([rows[..., 0], rows[..., 1] + rows[..., 2]], -1),
                     torch.stack([rows[..., 0] + rows[..., 1], rows[..., 2]], -1)], 1)  # (2 a, 2 b, C_out, C_in, 2, 2)
    # output channels grouped as (group, phase, channel) so each group's convolution stays its own
    k = k.reshape(4, groups, cout, *k.shape[3:]).transpose(0, 1).reshape(groups * 4 * cout, *k.shape[3:])
    b = bias.view(groups, 1, cout).expand(groups, 4, cout).reshape(-1)
    o = F.conv2d(h, k, b, padding=1, groups=groups).view(n, groups, 2, 2, cout, height + 1, width + 1)
    # phase (a, b) at rows a..a+H, columns b..b+W of the (H+1, W+1) output, interleaved
    phases = torch.stack([torch.stack([o[:, :, a, c, :, a:a + height, c:c + width] for c in (0, 1)], -1)
                          for a in (0, 1)], -3)  # (n, G, C_out, H, 2 a, W, 2 b)
    return phases.reshape(n, groups * cout, 2 * height, 2 * width)


def upsample_conv3x3_transposed(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, groups: int) -> torch.Tensor:
    """The same map as :func:`upsample_conv3x3`, as one stride-2 transposed convolution with a 4x4
    kernel: output row 2i sees input rows i-1 (w0) and i (w1 + w2), row 2i + 1 rows i (w0 + w1)
    and i + 1 (w2), so the kernel's taps along each axis are (w2, w1 + w2, w0 + w1, w0) and
    padding 1 crops the two extra rows. The library writes the phases straight into place, so no
    interleaving copy. On this project's CPUs (oneDNN, channels-last) it is ~1.4x faster than the
    phase-wise convolution for the generator's 128 -> 64 layer (forward and backward), and slower
    for the 64 -> 3 layer, where the copy is small."""
    w = weight
    rows = torch.stack([w[:, :, 2], w[:, :, 1] + w[:, :, 2], w[:, :, 0] + w[:, :, 1], w[:, :, 0]], 2)  # (C_out, C_in, 4, 3)
    k = torch.stack([rows[..., 2], rows[..., 1] + rows[..., 2], rows[..., 0] + rows[..., 1], rows[..., 0]], 3)
    # conv_transpose2d wants (C_in, C_out / groups, 4, 4), grouped along C_in
    cout, cin = w.shape[0] // groups, w.shape[1]
    k = k.reshape(groups, cout, cin, 4, 4).transpose(1, 2).reshape(groups * cin, cout, 4, 4)
    return F.conv_transpose2d(h, k, bias, stride=2, padding=1, groups=groups)


class StackedGenerator(nn.Module):
    """``len(generators)`` independent generators; ``generators`` (CPU torch.Generator, one per
    batch) draw each one's initial weights (PyTorch's default Linear/Conv2d initialisation)."""

    def __init__(self, generators: list, image_size: int, latent_dim: int = LATENT_DIM, c1: int = 128, c2: int = 64):
        super().__init__()
        if image_size % 4 != 0 or image_size < 8:
            raise GenieError(f"the generator needs an image size divisible by 4 (and >= 8), got {image_size}")
        g_count = len(generators)
        self.groups, self.image_size, self.latent_dim, self.c1, self.c2 = g_count, image_size, latent_dim, c1, c2
        self.init_size = image_size // 4
        d = c1 * self.init_size**2
        lin_w, lin_b, w1, b1, w2, b2 = [], [], [], [], [], []
        for gen in generators:
            bound = 1 / math.sqrt(latent_dim)
            lin_w.append(_uniform((latent_dim, d), bound, gen))
            lin_b.append(_uniform((d,), bound, gen))
            bound = 1 / math.sqrt(c1 * 9)
            w1.append(_uniform((c2, c1, 3, 3), bound, gen))
            b1.append(_uniform((c2,), bound, gen))
            bound = 1 / math.sqrt(c2 * 9)
            w2.append(_uniform((3, c2, 3, 3), bound, gen))
            b2.append(_uniform((3,), bound, gen))
        self.lin_w = nn.Parameter(torch.stack(lin_w))  # (G, L, D)
        self.lin_b = nn.Parameter(torch.stack(lin_b))  # (G, D)
        self.bn1_w = nn.Parameter(torch.ones(g_count * c1))
        self.bn1_b = nn.Parameter(torch.zeros(g_count * c1))
        self.conv1_w = nn.Parameter(torch.cat(w1))  # (G*c2, c1, 3, 3), grouped conv
        self.conv1_b = nn.Parameter(torch.cat(b1))
        self.bn2_w = nn.Parameter(torch.ones(g_count * c2))
        self.bn2_b = nn.Parameter(torch.zeros(g_count * c2))
        self.conv2_w = nn.Parameter(torch.cat(w2))  # (G*3, c2, 3, 3)
        self.conv2_b = nn.Parameter(torch.cat(b2))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """z: ``(G, n, latent_dim)`` -> images ``(G * n, 3, S, S)`` (batch g = rows g*n..g*n+n-1)."""
        g, n, _ = z.shape
        s0 = self.init_size
        h = torch.baddbmm(self.lin_b[:, None, :], z, self.lin_w)  # (G, n, D)
        # channel-stacked layout (n, G*C, H, W): grouped convolutions and per-channel BN work per batch
        h = h.view(g, n, self.c1, s0, s0).transpose(0, 1).reshape(n, g * self.c1, s0, s0)
        if h.device.type == "cpu":  # oneDNN convolutions are about twice as fast channels-last on CPUs
            h = h.contiguous(memory_format=torch.channels_last)
        h = F.batch_norm(h, None, None, self.bn1_w, self.bn1_b, training=True)
        h = upsample_conv3x3_transposed(h, self.conv1_w, self.conv1_b, g)  # Upsample x2 -> Conv3x3
        if h.device.type == "cpu":
            h = h.contiguous(memory_format=torch.channels_last)
        h = F.batch_norm(h, None, None, self.bn2_w, self.bn2_b, training=True)
        h = F.leaky_relu(h, 0.2)
        h = upsample_conv3x3(h, self.conv2_w, self.conv2_b, g)  # Upsample x2 -> Conv3x3
        h = torch.tanh(h)
        h = F.batch_norm(h, None, None, None, None, training=True)
        s = self.image_size
        if g == 1:
            return h
        return h.reshape(n, g, 3, s, s).transpose(0, 1).reshape(g * n, 3, s, s)
