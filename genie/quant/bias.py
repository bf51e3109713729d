"""Integer biases: what an integer runtime adds to a layer's accumulator.

A runtime executing ``QLinearConv`` / ``ConvInteger`` (onnxruntime, TFLite, TensorRT) sums
``x_int * (w_int - z)`` in int32 and adds the bias *as an int32 on the grid*
``s_x * s_w[c]`` (input step times the channel's weight step). A float bias is rounded to that
grid first. :func:`snap_biases` makes genie's fake-quant model do the same once a unit is
finalized, so the exported model and genie agree to float rounding instead of differing by
the bias rounding (up to half an accumulator step per output, which flips up to a few tenths of
a percent of low-bit activations).

Only layers whose input is quantized directly by an activation quantizer have such a grid
(not the first layer, which reads the FP image).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .act_quantizer import ActQuantizer
from .blocks import QuantBlock
from .layers import QuantLayer

INT32_MAX = 2**31 - 1


def _chain_pairs(modules, first_input: Optional[ActQuantizer]) -> list:
    """``(layer, quantizer)`` for each QuantLayer in ``modules`` directly after a quantizer."""
    pairs, prev = [], first_input
    for m in modules:
        if isinstance(m, QuantLayer) and prev is not None:
            pairs.append((m, prev))
        prev = m if isinstance(m, ActQuantizer) else None
    return pairs


def input_quantizers(module: nn.Module) -> list:
    """``[(QuantLayer, ActQuantizer)]``: every quantized layer below ``module`` whose input is
    the output of an enabled activation quantizer, with that quantizer."""
    pairs = []
    for m in module.modules():
        if isinstance(m, QuantBlock):
            block_in = m.input_quant if m.input_quant.enabled else None
            pairs += _chain_pairs(m.main, block_in)
            shortcut = m.shortcut
            pairs += _chain_pairs(shortcut if isinstance(shortcut, nn.Sequential) else [shortcut], block_in)
        elif isinstance(m, QuantLayer) and m.input_quant is not None and m.input_quant.enabled:
            pairs.append((m, m.input_quant))
    return [(layer, q) for layer, q in pairs if q.enabled]


@torch.no_grad()
def integer_bias(bias: torch.Tensor, act_scale: torch.Tensor, weight_scale: torch.Tensor) -> Optional[tuple]:
    """``(bias_int, grid)``: the bias rounded to the accumulator grid ``act_scale * weight_scale``
    (float32, per output channel), ``bias_int`` as float integers; ``None`` when a channel would
    not fit an int32 (a near-zero weight step)."""
    grid = act_scale.detach().float().reshape(()) * weight_scale.detach().float().reshape(-1)
    ratio = bias.detach().float().reshape(-1) / grid
    if not torch.isfinite(ratio).all() or bool(ratio.abs().max() >= INT32_MAX):
        return None
    return torch.round(ratio), grid


@torch.no_grad()
def snap_biases(module: nn.Module) -> int:
    """Round the bias of every finalized layer below ``module`` that reads a quantized input to
    its int32 grid (see the module docstring); returns how many layers were changed."""
    done = 0
    for layer, quant in input_quantizers(module):
        if layer.bias is None or not layer.weight_quant.is_integer or not quant.initialized:
            continue
        snapped = integer_bias(layer.bias, quant.scale, layer.weight_quant.scale)
        if snapped is not None:
            bias_int, grid = snapped
            layer.bias.copy_((bias_int * grid).to(layer.bias.dtype))
            done += 1
    return done
