"""Reconstruction blocks: a table from FP block types to the parts of their quantized version.

A block is quantized as :class:`QuantBlock`: one input quantizer whose output feeds *both* the
main path and the shortcut (so the residual branch adds the quantized input, as an integer model
would), the main path with an activation quantizer in front of every convolution after the
first, the residual add, and an optional activation after it. The block's output is quantized by
whatever consumes it next.

To support another block type, add an entry ``{MyBlock: my_parts_fn}`` (see :class:`BlockParts`)
through the ``blocks`` argument of :func:`genie.quant.quantize_model`, or register it once with
:func:`register_block` (the model zoo registers its CIFAR block that way, so this package never
imports the zoo).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from .act_quantizer import ActQuantizer

# block types registered by the code that defines them (register_block)
_REGISTERED: dict = {}


@dataclass
class BlockParts:
    """How an FP block computes: ``post(main(x) + shortcut(x))``.

    ``main``: modules applied in order; ``shortcut``: ``None`` for no residual add,
    ``nn.Identity()`` for an identity residual; ``post``: applied after the add (or ``None``).
    """

    main: list
    shortcut: Optional[nn.Module]
    post: Optional[nn.Module] = None


def flatten_sequential(modules) -> list:
    """Expand nested ``nn.Sequential`` containers (e.g. Conv2dNormActivation) into one list."""
    flat = []
    for m in modules:
        if isinstance(m, nn.Sequential):
            flat.extend(flatten_sequential(m.children()))
        else:
            flat.append(m)
    return flat


def _tv_basic(block) -> BlockParts:
    shortcut = block.downsample if block.downsample is not None else nn.Identity()
    return BlockParts([block.conv1, block.bn1, block.relu, block.conv2, block.bn2], shortcut, block.relu)


def _tv_bottleneck(block) -> BlockParts:
    main = [block.conv1, block.bn1, block.relu, block.conv2, block.bn2, block.relu, block.conv3, block.bn3]
    shortcut = block.downsample if block.downsample is not None else nn.Identity()
    return BlockParts(main, shortcut, block.relu)


def _tv_inverted_residual(block) -> BlockParts:
    return BlockParts(flatten_sequential(block.conv.children()), nn.Identity() if block.use_res_connect else None)


def _tv_mnasnet_inverted_residual(block) -> BlockParts:
    return BlockParts(flatten_sequential(block.layers.children()), nn.Identity() if block.apply_residual else None)


def _tv_regnet_bottleneck(block) -> BlockParts:
    shortcut = block.proj if block.proj is not None else nn.Identity()
    return BlockParts(flatten_sequential(block.f.children()), shortcut, block.activation)


def register_block(block_type: type, parts) -> None:
    """Make every later :func:`genie.quant.quantize_model` treat ``block_type`` modules as one
    reconstruction unit; ``parts(block) -> BlockParts`` says how the block computes."""
    _REGISTERED[block_type] = parts


# torchvision's block types: (module, class name, parts function)
_TORCHVISION_BLOCKS = (
    ("torchvision.models.resnet", "BasicBlock", _tv_basic),
    ("torchvision.models.resnet", "Bottleneck", _tv_bottleneck),
    ("torchvision.models.mobilenetv2", "InvertedResidual", _tv_inverted_residual),
    ("torchvision.models.mnasnet", "_InvertedResidual", _tv_mnasnet_inverted_residual),
    ("torchvision.models.regnet", "ResBottleneckBlock", _tv_regnet_bottleneck),
)


def default_block_table() -> dict:
    """``{block type: parts function}`` for torchvision's blocks and every registered block type.

    A model can hold one of torchvision's blocks only once the module defining it is imported,
    so the table takes those types from ``sys.modules``: importing torchvision here would cost
    every other model about 2 s."""
    table = dict(_REGISTERED)
    for module_name, class_name, parts in _TORCHVISION_BLOCKS:
        module = sys.modules.get(module_name)
        if module is not None:
            table[getattr(module, class_name)] = parts
    return table


def is_weight_layer(module: nn.Module) -> bool:
    return isinstance(module, (nn.Conv2d, nn.Linear))


def with_act_quants(modules: list) -> list:
    """``modules`` with an :class:`ActQuantizer` inserted in front of every weight layer after the
    first (the first reads the block's quantized input)."""
    out, seen_layer = [], False
    for m in modules:
        if is_weight_layer(m):
            if seen_layer:
                out.append(ActQuantizer())
            seen_layer = True
        out.append(m)
    return out


class QuantBlock(nn.Module):
    """Quantized residual block: ``post(main(q(x)) + shortcut(q(x)))`` with ``q`` the shared
    input quantizer. ``main`` holds an :class:`ActQuantizer` in front of each weight layer after
    the first. Built by :func:`genie.quant.quantize_model`; ``source_type`` names the FP block."""

    def __init__(self, parts: BlockParts, source_type: str, deploy: bool = False):
        super().__init__()
        self.source_type = source_type
        self.input_quant = ActQuantizer()
        self.main = nn.Sequential(*with_act_quants(parts.main))
        self.shortcut = parts.shortcut
        self.has_residual = parts.shortcut is not None
        self.post = parts.post if parts.post is not None else nn.Identity()
        # the deployment profile (genie.quant.qmodel): both inputs of the residual add quantized
        # (an identity shortcut's already is: the block's input), and the output when what reads
        # it quantizes nothing first; an integer runtime then adds integers (QLinearAdd)
        self.main_quant = ActQuantizer() if deploy and self.has_residual else None
        identity = isinstance(parts.shortcut, nn.Identity)
        self.shortcut_quant = ActQuantizer() if deploy and self.has_residual and not identity else None
        self.output_quant = ActQuantizer() if deploy else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.input_quant(x)
        out = self.main(x)
        if self.has_residual:
            if self.main_quant is not None:
                out = self.main_quant(out)
            residual = self.shortcut(x)
            if self.shortcut_quant is not None:
                residual = self.shortcut_quant(residual)
            out = out + residual
        out = self.post(out)
        return self.output_quant(out) if self.output_quant is not None else out

    def extra_repr(self) -> str:
        return f"from {self.source_type}"
