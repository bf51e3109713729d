"""ONNX handlers of float operators: activations, pooling, shapes, slicing, padding, arithmetic.
Each takes ``(ctx, node, [module,] *args, **kwargs)`` with tensor arguments as ONNX names."""
from __future__ import annotations

import operator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import GenieError
from .context import PAD_MODES, Dim, as_tensor, hint, pair


# --- activations and pass-through modules ---------------------------------------------------


def _input(args):
    """The tensor a handler acts on: after the module for a module call, else the first argument."""
    return args[1] if isinstance(args[0], nn.Module) else args[0]


def _identity(ctx, node, *args, **kwargs):
    return _input(args)  # also F.dropout: evaluation mode


def _unary(op, **attrs):
    def handler(ctx, node, *args, **kwargs):
        x = _input(args)
        return ctx.graph.node(op, [x], hint(node), **attrs)

    return handler


def _clip(ctx, node, x, lo, hi):
    g = ctx.graph
    lo_n = g.constant(np.array(lo, dtype=np.float32), f"{hint(node)}.min")
    hi_n = g.constant(np.array(hi, dtype=np.float32), f"{hint(node)}.max")
    return g.node("Clip", [x, lo_n, hi_n], hint(node))


def _relu6_module(ctx, node, m, x):
    return _clip(ctx, node, x, 0.0, 6.0)


def _hardtanh_module(ctx, node, m, x):
    return _clip(ctx, node, x, m.min_val, m.max_val)


def _relu6_fn(ctx, node, x, inplace=False):
    return _clip(ctx, node, x, 0.0, 6.0)


def _leaky_relu_module(ctx, node, m, x):
    return ctx.graph.node("LeakyRelu", [x], hint(node), alpha=float(m.negative_slope))


def _elu_module(ctx, node, m, x):
    return ctx.graph.node("Elu", [x], hint(node), alpha=float(m.alpha))


def _silu(ctx, node, *args, **kwargs):
    x = _input(args)
    s = ctx.graph.node("Sigmoid", [x], f"{hint(node)}.sigmoid")
    return ctx.graph.node("Mul", [x, s], hint(node))


def _hardsigmoid(ctx, node, *args, **kwargs):
    x = _input(args)
    return ctx.graph.node("HardSigmoid", [x], hint(node), alpha=1.0 / 6.0, beta=0.5)


def _hardswish(ctx, node, *args, **kwargs):
    x = _input(args)
    if ctx.graph.opset >= 14:
        return ctx.graph.node("HardSwish", [x], hint(node))
    s = ctx.graph.node("HardSigmoid", [x], f"{hint(node)}.hardsigmoid", alpha=1.0 / 6.0, beta=0.5)
    return ctx.graph.node("Mul", [x, s], hint(node))


def _batchnorm_module(ctx, node, bn: nn.BatchNorm2d, x):
    # a BatchNorm that does not directly follow a quantized convolution stays a float op
    g, name = ctx.graph, hint(node)
    c = bn.num_features
    weight = bn.weight.detach().cpu().numpy() if bn.affine else np.ones(c, np.float32)
    bias = bn.bias.detach().cpu().numpy() if bn.affine else np.zeros(c, np.float32)
    inputs = [x] + [g.constant(a, f"{name}.{k}") for k, a in (
        ("scale", weight), ("bias", bias), ("mean", bn.running_mean.detach().cpu().numpy()),
        ("var", bn.running_var.detach().cpu().numpy()))]
    return g.node("BatchNormalization", inputs, name, epsilon=float(bn.eps))


# --- pooling ----------------------------------------------------------------------------------


def _pool(ctx, node, op, x, kernel, stride, padding, dilation=1, ceil_mode=False, **extra):
    kernel = list(pair(kernel))
    stride = list(pair(stride if stride not in (None, ()) else kernel))
    pad = list(pair(padding))
    attrs = dict(kernel_shape=kernel, strides=stride, pads=pad + pad, ceil_mode=int(bool(ceil_mode)), **extra)
    if op == "MaxPool" and pair(dilation) != (1, 1):
        attrs["dilations"] = list(pair(dilation))
    return ctx.graph.node(op, [x], hint(node), **attrs)


def _max_pool_module(ctx, node, m: nn.MaxPool2d, x):
    if m.return_indices:
        raise GenieError(f"{hint(node)}: MaxPool2d with return_indices=True cannot be exported")
    return _pool(ctx, node, "MaxPool", x, m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode)


def _max_pool_fn(ctx, node, x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
                 return_indices=False):
    return _pool(ctx, node, "MaxPool", x, kernel_size, stride, padding, dilation, ceil_mode)


def _avg_pool(ctx, node, x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
              divisor_override=None):
    if divisor_override is not None:
        raise GenieError(f"{hint(node)}: avg_pool2d with divisor_override cannot be exported")
    return _pool(ctx, node, "AveragePool", x, kernel_size, stride, padding, ceil_mode=ceil_mode,
                 count_include_pad=int(bool(count_include_pad)))


def _avg_pool_module(ctx, node, m: nn.AvgPool2d, x):
    return _avg_pool(ctx, node, x, m.kernel_size, m.stride, m.padding, m.ceil_mode, m.count_include_pad,
                     m.divisor_override)


def _adaptive_pool(ctx, node, x, output_size, op):
    in_h, in_w = ctx.shape(node.args[0])[2:]
    out_h, out_w = pair(output_size)
    out_h, out_w = out_h or in_h, out_w or in_w
    if (out_h, out_w) == (1, 1):
        return ctx.graph.node("Global" + op, [x], hint(node))
    if in_h % out_h or in_w % out_w:
        raise GenieError(
            f"{hint(node)}: adaptive pooling from {in_h}x{in_w} to {out_h}x{out_w} is not a fixed window; "
            "ONNX export handles output sizes that divide the input size"
        )
    k = [in_h // out_h, in_w // out_w]
    return ctx.graph.node(op, [x], hint(node), kernel_shape=k, strides=k)


def _adaptive_avg_module(ctx, node, m, x):
    return _adaptive_pool(ctx, node, x, m.output_size, "AveragePool")


def _adaptive_max_module(ctx, node, m, x):
    if m.return_indices:
        raise GenieError(f"{hint(node)}: AdaptiveMaxPool2d with return_indices=True cannot be exported")
    return _adaptive_pool(ctx, node, x, m.output_size, "MaxPool")


def _adaptive_avg_fn(ctx, node, x, output_size):
    return _adaptive_pool(ctx, node, x, output_size, "AveragePool")


# --- shapes ------------------------------------------------------------------------------------


def _reshape_like_traced(ctx, node, x, *unused, **unused_kw):
    """view / reshape / flatten to the traced output shape, the batch dimension kept symbolic."""
    g = ctx.graph
    src, out = ctx.shape(node.args[0]), ctx.shape(node)
    if len(out) == 2 and int(np.prod(src[1:])) == out[1] and src[0] == out[0]:
        return g.node("Flatten", [x], hint(node), axis=1)
    if src[0] != out[0]:
        raise GenieError(
            f"{hint(node)}: a reshape from {tuple(src)} to {tuple(out)} mixes the batch dimension into "
            "others; ONNX export needs the batch dimension kept"
        )
    shape = g.constant(np.array([0] + list(out[1:]), dtype=np.int64), f"{hint(node)}.shape")
    return g.node("Reshape", [x, shape], hint(node))


def _flatten_module(ctx, node, m, x):
    return _reshape_like_traced(ctx, node, x)


def _mean(ctx, node, x, dim=None, keepdim=False, dtype=None):
    g = ctx.graph
    rank = len(ctx.shape(node.args[0]))
    axes = list(range(rank)) if dim is None else [int(d) % rank for d in (dim if isinstance(dim, (tuple, list)) else [dim])]
    if axes == [2, 3] and rank == 4 and keepdim:
        return g.node("GlobalAveragePool", [x], hint(node))
    if g.opset >= 18:
        a = g.constant(np.array(axes, dtype=np.int64), f"{hint(node)}.axes")
        return g.node("ReduceMean", [x, a], hint(node), keepdims=int(bool(keepdim)))
    return g.node("ReduceMean", [x], hint(node), axes=axes, keepdims=int(bool(keepdim)))


def _size(ctx, node, x, dim=None):
    if dim is None:
        return tuple(Dim(x, i) for i in range(len(ctx.shape(node.args[0]))))
    return Dim(x, int(dim))


def _getattr(ctx, node, x, attr):
    if attr == "shape" and isinstance(x, str):
        return tuple(Dim(x, i) for i in range(len(ctx.shape(node.args[0]))))
    raise GenieError(f"{hint(node)}: cannot export attribute {attr!r} of a tensor")


def _getitem(ctx, node, x, index):
    if not isinstance(x, str):
        return x[index]  # a python tuple (e.g. a shape)
    g = ctx.graph
    shape = ctx.shape(node.args[0])
    index = index if isinstance(index, tuple) else (index,)
    if any(i is Ellipsis or i is None or not isinstance(i, slice) for i in index):
        raise GenieError(
            f"{hint(node)}: tensor indexing other than slices (x[:, :, a:b:c]) cannot be exported"
        )
    starts, ends, axes, steps = [], [], [], []
    for axis, s in enumerate(index):
        if s == slice(None):
            continue
        step = 1 if s.step is None else int(s.step)
        if step <= 0:
            raise GenieError(f"{hint(node)}: slices with a step <= 0 cannot be exported")
        starts.append(0 if s.start is None else int(s.start))
        ends.append(shape[axis] if s.stop is None else int(s.stop))
        axes.append(axis)
        steps.append(step)
    if not axes:
        return x
    arrays = [np.array(v, dtype=np.int64) for v in (starts, ends, axes, steps)]
    names = [g.constant(a, f"{hint(node)}.{k}") for a, k in zip(arrays, ("starts", "ends", "axes", "steps"))]
    return g.node("Slice", [x] + names, hint(node))


def _pad(ctx, node, x, pad, mode="constant", value=None):
    g = ctx.graph
    rank = len(ctx.shape(node.args[0]))
    begin, end = [0] * rank, [0] * rank
    for i in range(len(pad) // 2):
        axis = rank - 1 - i
        begin[axis], end[axis] = int(pad[2 * i]), int(pad[2 * i + 1])
    pads = g.constant(np.array(begin + end, dtype=np.int64), f"{hint(node)}.pads")
    if mode == "constant":
        fill = g.constant(np.array(0.0 if value is None else value, dtype=np.float32), f"{hint(node)}.value")
        return g.node("Pad", [x, pads, fill], hint(node), mode="constant")
    if mode not in PAD_MODES or g.opset < PAD_MODES[mode][1]:
        raise GenieError(f"{hint(node)}: F.pad mode {mode!r} cannot be exported at opset {g.opset}")
    return g.node("Pad", [x, pads], hint(node), mode=PAD_MODES[mode][0])


# --- arithmetic ----------------------------------------------------------------------------------


def _binary(op):
    def handler(ctx, node, a, b, *rest, alpha=1, **kwargs):
        if alpha != 1:
            raise GenieError(f"{hint(node)}: add/sub with alpha != 1 cannot be exported")
        return ctx.graph.node(op, [as_tensor(ctx, a, hint(node)), as_tensor(ctx, b, hint(node))], hint(node))

    return handler


def _cat(ctx, node, tensors, dim=0):
    rank = len(ctx.shape(node))
    return ctx.graph.node("Concat", list(tensors), hint(node), axis=int(dim) % rank)


FLOAT_MODULE_HANDLERS = {
    nn.Identity: _identity,
    nn.Dropout: _identity,
    nn.Dropout2d: _identity,
    nn.ReLU: _unary("Relu"),
    nn.ReLU6: _relu6_module,
    nn.Hardtanh: _hardtanh_module,
    nn.LeakyReLU: _leaky_relu_module,
    nn.ELU: _elu_module,
    nn.Sigmoid: _unary("Sigmoid"),
    nn.Tanh: _unary("Tanh"),
    nn.SiLU: _silu,
    nn.Hardsigmoid: _hardsigmoid,
    nn.Hardswish: _hardswish,
    nn.BatchNorm2d: _batchnorm_module,
    nn.MaxPool2d: _max_pool_module,
    nn.AvgPool2d: _avg_pool_module,
    nn.AdaptiveAvgPool2d: _adaptive_avg_module,
    nn.AdaptiveMaxPool2d: _adaptive_max_module,
    nn.Flatten: _flatten_module,
}

FLOAT_FUNCTION_HANDLERS = {
    operator.add: _binary("Add"),
    torch.add: _binary("Add"),
    operator.iadd: _binary("Add"),
    operator.sub: _binary("Sub"),
    torch.sub: _binary("Sub"),
    operator.mul: _binary("Mul"),
    torch.mul: _binary("Mul"),
    operator.truediv: _binary("Div"),
    torch.flatten: _reshape_like_traced,
    torch.reshape: _reshape_like_traced,
    torch.cat: _cat,
    torch.relu: _unary("Relu"),
    F.relu: _unary("Relu"),
    F.relu6: _relu6_fn,
    torch.sigmoid: _unary("Sigmoid"),
    F.sigmoid: _unary("Sigmoid"),
    torch.tanh: _unary("Tanh"),
    F.silu: _silu,
    F.hardswish: _hardswish,
    F.hardsigmoid: _hardsigmoid,
    F.adaptive_avg_pool2d: _adaptive_avg_fn,
    F.avg_pool2d: _avg_pool,
    F.max_pool2d: _max_pool_fn,
    F.pad: _pad,
    F.dropout: _identity,
    torch.mean: _mean,
    operator.getitem: _getitem,
    getattr: _getattr,
}

FLOAT_METHOD_HANDLERS = {
    "add": _binary("Add"),
    "sub": _binary("Sub"),
    "mul": _binary("Mul"),
    "div": _binary("Div"),
    "relu": _unary("Relu"),
    "sigmoid": _unary("Sigmoid"),
    "flatten": _reshape_like_traced,
    "view": _reshape_like_traced,
    "reshape": _reshape_like_traced,
    "mean": _mean,
    "size": _size,
    "contiguous": _identity,
}
