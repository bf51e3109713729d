"""The quantized network as a torch.fx graph, with the shape of every tensor it computes.

Quantized layers and activation quantizers are leaves (the exporter writes them as QDQ
subgraphs); everything else is traced down to torch.nn modules and torch functions, which the
handler tables of :mod:`genie.export.handlers` translate.
"""
from __future__ import annotations

import torch
import torch.fx
from torch import nn

from ..errors import GenieError
from ..quant.act_quantizer import ActQuantizer
from ..quant.layers import QuantLayer


class _QuantTracer(torch.fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, (QuantLayer, ActQuantizer)) or super().is_leaf_module(m, qualname)


def trace_quantized(net: nn.Module, example: torch.Tensor) -> torch.fx.GraphModule:
    """``net`` traced, each node's output shape in ``node.meta["shape"]`` (a tuple, for tensors)
    from one forward pass on ``example``."""
    try:
        graph = _QuantTracer().trace(net)
    except Exception as exc:  # torch.fx raises many kinds of errors on dynamic Python
        raise GenieError(
            f"ONNX export traces the model with torch.fx, which failed on {type(net).__name__}: "
            f"{exc.__class__.__name__}: {exc}. Make its forward free of data-dependent Python "
            "(if/for on tensor values or shapes)"
        ) from None
    gm = torch.fx.GraphModule(net, graph)
    _record_shapes(gm, example)
    return gm


def _record_shapes(gm: torch.fx.GraphModule, example: torch.Tensor) -> None:
    class ShapeRecorder(torch.fx.Interpreter):
        def run_node(self, n):
            out = super().run_node(n)
            if torch.is_tensor(out):
                n.meta["shape"] = tuple(out.shape)
            return out

    with torch.no_grad():
        try:
            ShapeRecorder(gm).run(example)
        except Exception as exc:
            raise GenieError(
                f"the quantized model cannot run on an input of shape {tuple(example.shape)}: "
                f"{exc.__class__.__name__}: {exc}"
            ) from None


def owner_of(node: torch.fx.Node) -> tuple:
    """``(module name, module type name)`` of the module whose forward produced ``node``."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return "", "model"
    path, kind = list(stack.values())[-1]
    kind_name = kind.__name__ if isinstance(kind, type) else str(kind).rsplit(".", 1)[-1].strip("'>")
    return path, kind_name
