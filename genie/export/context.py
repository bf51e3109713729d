"""What the ONNX handlers share: the export context, shape values, names and small helpers."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import GenieError
from .qdq import IntForm
from .trace import owner_of


@dataclass
class ExportContext:
    """What handlers share: the graph being built, the integer form, whether weights are
    symmetric, and the BatchNorms folded into the layer before them
    (``{layer name: (factor, shift)}``, ``y * factor + shift`` per channel)."""

    graph: object
    form: IntForm
    symmetric: bool
    modules: dict = field(default_factory=dict)
    folds: dict = field(default_factory=dict)
    quantized: bool = True  # False: a float graph of the dequantized model (a latency baseline)
    # signed activations as uint8 with zero point 2^(bits-1) (the same values): every activation
    # then has one type, which onnxruntime's integer adds (QLinearAdd) need (deploy profile)
    offset_signed: bool = False

    @staticmethod
    def shape(node) -> tuple:
        return node.meta["shape"]


@dataclass(frozen=True)
class Dim:
    """``x.size(axis)`` / ``x.shape[axis]``: only used to build the shapes of view/reshape,
    which the exporter writes from the traced output shape instead."""

    tensor: str
    axis: int


def hint(node) -> str:
    """A readable name for ``node``'s output: its module's name, or the owner module's name and
    the function."""
    if node.op == "call_module":
        return node.target
    owner, _ = owner_of(node)
    return f"{owner}.{node.name}" if owner else node.name


def as_tensor(ctx: ExportContext, value, name: str) -> str:
    """A tensor name for ``value`` (a name already, or a python number made a float constant)."""
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return ctx.graph.constant(np.array(value, dtype=np.float32), f"{name}.const")
    raise GenieError(f"{name}: cannot export an operand of type {type(value).__name__}")


def pair(v) -> tuple:
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


# torch padding mode -> (ONNX Pad mode, first opset that has it)
PAD_MODES = {"reflect": ("reflect", 11), "replicate": ("edge", 11), "circular": ("wrap", 19)}
