"""ONNX handlers of genie's quantizers: a quantized Conv2d / Linear (integer weight, int32 bias,
its own input quantizer if any) and an activation quantizer, as QDQ subgraphs."""
from __future__ import annotations

import numpy as np
import torch

from ..errors import GenieError
from ..quant.act_quantizer import ActQuantizer
from ..quant.bias import integer_bias
from ..quant.layers import QuantLayer
from .context import PAD_MODES, pair
from .qdq import dequantized_weight, quantize_activation


def act_quantizer(ctx, node, q: ActQuantizer, x, name=None):
    """``Q -> [Clip] -> DQ`` of an enabled quantizer; a disabled one (the image input, which genie
    leaves in floating point) and the float baseline pass ``x`` through."""
    if not q.enabled or not ctx.quantized:
        return x
    return quantize_activation(ctx.graph, x, float(q.scale.detach().cpu()), q.bits, q.signed, ctx.form,
                               name or node.target, offset=ctx.offset_signed)


def _input_quantizer(ctx, node, layer: QuantLayer):
    """The activation quantizer whose output this layer reads directly, if any."""
    if layer.input_quant is not None:
        return layer.input_quant if layer.input_quant.enabled else None
    src = node.args[0]
    if getattr(src, "op", None) == "call_module":
        q = ctx.modules.get(src.target)
        if isinstance(q, ActQuantizer) and q.enabled:
            return q
    return None


def _bias(ctx, name: str, bias: np.ndarray, quant, weight_scale: np.ndarray) -> str:
    """The bias input: an int32 initializer on the accumulator grid ``s_x * s_w`` through a
    DequantizeLinear when the layer reads a quantized tensor (what an integer runtime adds;
    genie's model holds the same value, see :mod:`genie.quant.bias`), else float."""
    g = ctx.graph
    if quant is not None:
        snapped = integer_bias(torch.from_numpy(bias), quant.scale.detach().cpu(), torch.from_numpy(weight_scale))
        if snapped is not None:
            bias_int, grid = snapped
            from onnx import TensorProto

            q = g.integer_constant(bias_int.to(torch.int64).numpy(), TensorProto.INT32, f"{name}.bias_int")
            s = g.constant(grid.numpy(), f"{name}.bias_scale")
            z = g.integer_constant(np.zeros(len(bias), dtype=np.int64), TensorProto.INT32, f"{name}.bias_zero_point")
            return g.node("DequantizeLinear", [q, s, z], f"{name}.bias", axis=0)
    return g.constant(bias.astype(np.float32), f"{name}.bias")


def quant_layer(ctx, node, layer: QuantLayer, x):
    name = node.target
    g = ctx.graph
    quant = _input_quantizer(ctx, node, layer)
    if layer.input_quant is not None:
        x = act_quantizer(ctx, node, layer.input_quant, x, f"{name}.input_quant")
    fold = ctx.folds.get(name)
    bias = None if layer.bias is None else layer.bias.detach().cpu().numpy().astype(np.float32)
    if fold is not None:
        factor, shift = fold
        bias = ((np.zeros_like(factor) if bias is None else bias) * factor + shift).astype(np.float32)
    if ctx.quantized:
        w, w_scale = dequantized_weight(g, layer.weight_quant, ctx.form, ctx.symmetric, name,
                                        None if fold is None else fold[0])
        b = _bias(ctx, name, bias, quant, w_scale) if bias is not None else None
    else:
        wq = layer.weight_quant
        weight = ((wq.w_int.float() - wq.zero_point) * wq.scale).detach().cpu().numpy()
        if fold is not None:
            weight = weight * fold[0].reshape((-1,) + (1,) * (weight.ndim - 1))
        w = g.constant(weight.astype(np.float32), f"{name}.weight")
        b = g.constant(bias, f"{name}.bias") if bias is not None else None
    if layer.kind == "conv":
        y = _conv(ctx, layer, x, w, b, name)
    elif len(ctx.shape(node.args[0])) == 2:
        y = g.node("Gemm", [x, w] + ([b] if b else []), name, transB=1)
    else:
        wt = g.node("Transpose", [w], f"{name}.weight_t", perm=[1, 0])
        y = g.node("MatMul", [x, wt], f"{name}.matmul")
        y = g.node("Add", [y, b], name) if b else y
    if layer.output_quant is not None:
        y = act_quantizer(ctx, node, layer.output_quant, y, f"{name}.output_quant")
    return y


def _conv(ctx, layer: QuantLayer, x, w, b, name):
    g = ctx.graph
    kernel = list(layer.weight_quant.w_int.shape[2:])
    dilation = list(pair(layer.dilation))
    if isinstance(layer.padding, str):
        if layer.padding == "valid":
            begin = end = [0] * len(kernel)
        else:  # "same" (stride 1): torch puts the odd pixel at the end
            total = [d * (k - 1) for d, k in zip(dilation, kernel)]
            begin = [t // 2 for t in total]
            end = [t - t // 2 for t in total]
    else:
        begin = end = list(pair(layer.padding))
    if layer.padding_mode != "zeros":
        mode, needs = PAD_MODES[layer.padding_mode]
        if g.opset < needs:
            raise GenieError(f"layer {name!r}: padding_mode {layer.padding_mode!r} needs ONNX opset {needs}")
        pads = g.constant(np.array([0, 0] + begin + [0, 0] + end, dtype=np.int64), f"{name}.pads")
        x = g.node("Pad", [x, pads], f"{name}.pad", mode=mode)
        begin = end = [0] * len(kernel)
    inputs = [x, w] + ([b] if b else [])
    return g.node("Conv", inputs, name, kernel_shape=kernel, strides=list(pair(layer.stride)),
                  pads=begin + end, dilations=dilation, group=layer.groups)


QUANT_MODULE_HANDLERS = {
    QuantLayer: quant_layer,
    ActQuantizer: act_quantizer,
}
