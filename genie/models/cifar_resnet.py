"""CIFAR ResNets of He et al. (2016, Sec. 4.2): 6n+2 layers, widths 16/32/64.

Option-A shortcuts: when the shape changes, the identity is subsampled with stride 2 and
zero-padded in channels, so shortcuts have no parameters. Parameter names follow the published
checkpoints (``conv1, bn1, layer{1,2,3}.{i}.{conv1,bn1,conv2,bn2}, linear``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..quant.blocks import BlockParts, register_block


class ZeroPadShortcut(nn.Module):
    """Option-A shortcut: spatial subsampling by ``stride`` and zero channel padding."""

    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.stride = stride
        self.pad = planes - in_planes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        front = self.pad // 2
        return F.pad(x, (0, 0, 0, 0, front, self.pad - front))


class CifarBasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with a ReLU between, a residual add and a final ReLU."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        if stride != 1 or in_planes != planes:
            self.shortcut: nn.Module = ZeroPadShortcut(in_planes, planes, stride)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


def _cifar_basic_parts(block: CifarBasicBlock) -> BlockParts:
    """The block as GENIE-M reconstructs it: ``relu(main(x) + shortcut(x))``."""
    return BlockParts([block.conv1, block.bn1, block.relu, block.conv2, block.bn2], block.shortcut, block.relu)


register_block(CifarBasicBlock, _cifar_basic_parts)


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 inputs; ``depth`` in {20, 32, 44, 56, 110, ...}."""

    def __init__(self, depth: int = 20, num_classes: int = 10):
        super().__init__()
        if (depth - 2) % 6 != 0 or depth < 8:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 (20, 32, 44, 56, ...), got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        in_planes = 16
        stages = []
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            blocks = []
            for i in range(n):
                blocks.append(CifarBasicBlock(in_planes, planes, stride if i == 0 else 1))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.linear(torch.flatten(self.pool(out), 1))
