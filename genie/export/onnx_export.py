"""``export_onnx``: a finalized quantized model as a standard ONNX file with
QuantizeLinear / DequantizeLinear nodes (QDQ), BatchNorm folded.

The graph is what an integer runtime executes: each weight is an integer initializer with its
per-channel scale and zero point feeding a DequantizeLinear; each activation quantizer is a
QuantizeLinear / DequantizeLinear pair (with a Clip for widths below the container's, see
:mod:`genie.export.qdq`); residual adds, pooling, flatten and the classifier are the FP graph's.
Two exports of the same model give byte-identical files.
"""
from __future__ import annotations

import json
import warnings

from collections import Counter
from dataclasses import dataclass, field
from operator import attrgetter
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch
import torch.fx
from torch import nn

from ..devices import model_device
from ..errors import GenieError, shown
from ..files import check_output_file, write_atomically
from ..quant.bn_fold import bn_factor
from ..quant.layers import QuantLayer
from ..quant.qmodel import QuantizedModel
from ..validate import COUNT, IMAGE_SIZE, check_images, check_int
from .context import ExportContext
from .graph import INPUT_NAME, OUTPUT_NAME, OnnxGraph, require_onnx
from .handlers import FUNCTION_HANDLERS, METHOD_HANDLERS, MODULE_HANDLERS
from .qdq import int_form
from .trace import owner_of, trace_quantized


@dataclass
class ExportReport:
    """What :func:`export_onnx` wrote: ``path``, ``opset``, ``int_form``, the file's size in
    bytes, operator counts, and (``verify=True`` with onnxruntime installed) the largest
    absolute difference between onnxruntime's and genie's outputs on the example."""

    path: Path
    opset: int
    int_form: str
    file_bytes: int
    operators: dict = field(default_factory=dict)
    max_abs_diff: Optional[float] = None


def _check_exportable(qmodel, form) -> None:
    if not isinstance(qmodel, QuantizedModel):
        kind = type(qmodel).__name__
        raise GenieError(
            f"export_onnx takes a quantized model from genie.quant.quantize_model (+ reconstruct) or "
            f"load_quantized; got {kind}, which is not quantized. Quantize it first "
            "(python -m genie run ... --export-onnx does both)"
        )
    soft = [n for n, layer in qmodel.layers() if not layer.weight_quant.is_integer]
    if soft:
        raise GenieError(
            f"{len(soft)} layers (first: {soft[0]}) still have soft or FP weights; run reconstruct() "
            "(iters=0 for round-to-nearest) or qmodel.finalize() before exporting"
        )
    unset = [n for n, q in qmodel.act_quantizers() if q.enabled and not q.initialized]
    if unset:
        raise GenieError(
            f"{len(unset)} activation quantizers (first: {unset[0]}) have no step size yet; run "
            "reconstruct() (iters=0 calibrates only) before exporting"
        )
    bits = [(n, "weight", l.weight_quant.bits) for n, l in qmodel.layers()]
    bits += [(n, "activation", q.bits) for n, q in qmodel.act_quantizers() if q.enabled]
    narrow = [(n, k, b) for n, k, b in bits if b < form.min_bits]
    if narrow:
        n, k, b = narrow[0]
        raise GenieError(
            f"the {form.name!r} ONNX form holds tensors of {form.min_bits} bits or more, but the {k} of {n!r} has "
            f"{b} bits; use int_form='qcdq' (--onnx-int qcdq), which holds 2-8 bits"
        )


# |int8 weight| beyond which an uint8 x int8 product pair can leave int16 (255 * 64 * 2 = 32640)
SATURATION_FREE_WEIGHT = 63


def _warn_of_saturation(qmodel) -> None:
    """Symmetric weights become int8; onnxruntime multiplies them with uint8 activations in
    integer kernels that, on x86 CPUs without VNNI (AVX2's vpmaddubsw), add products in pairs in
    16 bits with saturation, so weights beyond +-63 can give other sums there."""
    wide = [n for n, layer in qmodel.layers()
            if layer.weight_quant.bits == 8
            and int((layer.weight_quant.w_int.to(torch.int16) - 128).abs().max()) > SATURATION_FREE_WEIGHT]
    if wide:
        warnings.warn(
            f"{len(wide)} layers (first: {wide[0]}) have 8-bit symmetric weights beyond +-{SATURATION_FREE_WEIGHT}: "
            "onnxruntime's uint8 x int8 kernels saturate their 16-bit pair sums on x86 CPUs without VNNI "
            "(avx512_vnni / avx_vnni), giving other results there; quantize with w_bits=7 (--w-bits 7) for such "
            "CPUs, or with asymmetric weights", stacklevel=3)


def _example(example, qmodel) -> torch.Tensor:
    """One input image ``(1, C, H, W)`` on the model's device: the first of ``example`` (a
    floating-point batch) or zeros of its shape (four positive integers, numpy ones too)."""
    device = model_device(qmodel)
    if torch.is_tensor(example):
        return check_images(example, "example")[:1].to(device)
    if isinstance(example, (tuple, list)) and len(example) == 4:
        sizes = [check_int(v, f"example[{i}] (the input shape N, C, H, W)", COUNT) for i, v in enumerate(example)]
        side = max(sizes[2:])
        if side > IMAGE_SIZE.high:
            raise GenieError(f"example's image side must be {IMAGE_SIZE.describe()}, got {side}")
        return torch.zeros([1] + sizes[1:], device=device)
    raise GenieError(f"example must be an input tensor (N, C, H, W) or its shape, got {shown(example)}")


def _bn_folds(gm: torch.fx.GraphModule) -> tuple:
    """BatchNorms left unfolded in the quantized model that directly follow a quantized
    convolution: ``({layer name: (factor, shift)}, {bn node: conv node})``."""
    modules = dict(gm.named_modules())
    folds, aliases = {}, {}
    for node in gm.graph.nodes:
        bn = modules.get(node.target) if node.op == "call_module" else None
        if not isinstance(bn, nn.BatchNorm2d) or not node.args:
            continue
        src = node.args[0]
        layer = modules.get(src.target) if isinstance(src, torch.fx.Node) and src.op == "call_module" else None
        if not isinstance(layer, QuantLayer) or layer.kind != "conv" or len(src.users) != 1 or src.target in folds:
            continue
        factor = bn_factor(bn).detach().cpu().float()
        beta = bn.bias.detach().cpu().float() if bn.affine else torch.zeros_like(factor)
        shift = beta - bn.running_mean.detach().cpu().float() * factor
        folds[src.target] = (factor.numpy(), shift.numpy())
        aliases[node] = src
    return folds, aliases


def _unsupported(node, module=None) -> GenieError:
    owner, owner_type = owner_of(node)
    if module is not None:
        what, where = f"module type {type(module).__module__}.{type(module).__name__}", f"module {node.target!r}"
    else:
        target = node.target
        name = target if isinstance(target, str) else f"{getattr(target, '__module__', None) or 'builtins'}." \
                                                        f"{getattr(target, '__name__', repr(target))}"
        what = f"tensor method .{name}()" if node.op == "call_method" else f"operator {name}"
        where = f"module {owner!r} ({owner_type})" if owner else "the model's own forward"
    return GenieError(
        f"the ONNX exporter does not handle {what} in {where}; supported modules: "
        f"{', '.join(sorted(t.__name__ for t in MODULE_HANDLERS))}"
    )


def _translate(gm: torch.fx.GraphModule, ctx: ExportContext, aliases: dict) -> list:
    """Walk the traced graph in order, emitting ONNX nodes; returns the output tensor names."""
    env: dict = {}
    outputs: list = []
    lookup = lambda n: env[n]  # noqa: E731
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            if env:
                raise GenieError("ONNX export handles models with one input tensor")
            env[node] = INPUT_NAME
            continue
        if node.op == "output":
            result = node.args[0]
            items = result if isinstance(result, (tuple, list)) else [result]
            outputs = [(env[r], r) for r in items]
            continue
        if node in aliases:
            env[node] = env[aliases[node]]
            continue
        args = torch.fx.node.map_arg(node.args, lookup)
        kwargs = torch.fx.node.map_arg(node.kwargs, lookup)
        if node.op == "call_module":
            module = gm.get_submodule(node.target)
            handler = MODULE_HANDLERS.get(type(module))
            if handler is None:
                raise _unsupported(node, module)
            env[node] = handler(ctx, node, module, *args, **kwargs)
        elif node.op == "call_function":
            handler = FUNCTION_HANDLERS.get(node.target)
            if handler is None:
                raise _unsupported(node)
            env[node] = handler(ctx, node, *args, **kwargs)
        elif node.op == "call_method":
            handler = METHOD_HANDLERS.get(node.target)
            if handler is None:
                raise _unsupported(node)
            env[node] = handler(ctx, node, *args, **kwargs)
        else:  # get_attr: a tensor held by the model outside any layer
            env[node] = ctx.graph.constant(attrgetter(node.target)(gm).detach().cpu().numpy(), node.target)
    return outputs


def check_output_path(path: Union[str, Path]) -> Path:
    """``path`` as a Path, or a :class:`GenieError` when the ONNX model cannot be written there
    (checked before any work is done; the folder must exist)."""
    return check_output_file(path, "the ONNX model", create_parents=False)


def build_onnx(qmodel: QuantizedModel, example, int_form_name: str = "qcdq", dynamic_batch: bool = True,
               quantized: bool = True):
    """The ONNX ``ModelProto`` of ``qmodel`` (see :func:`export_onnx`), not written anywhere.
    ``quantized=False``: the same graph in floating point, weights dequantized and no
    activation quantizers (a baseline for latency and size, not a deployable model)."""
    from .. import __version__

    onnx = require_onnx()
    form = int_form(int_form_name)
    _check_exportable(qmodel, form)
    x = _example(example, qmodel)
    was_training = qmodel.training
    qmodel.eval()
    try:
        gm = trace_quantized(qmodel.net, x)
    finally:
        qmodel.train(was_training)
    folds, aliases = _bn_folds(gm)
    graph = OnnxGraph(form.opset)
    ctx = ExportContext(graph, form, qmodel.config.weight_symmetric, dict(gm.named_modules()), folds,
                        quantized, offset_signed=qmodel.config.profile == "deploy" and not qmodel.config.act_symmetric)
    outputs = _translate(gm, ctx, aliases)
    if not all(isinstance(name, str) for name, _ in outputs):
        raise GenieError("ONNX export handles models whose outputs are tensors")
    if ctx.offset_signed:
        drop_relus_before_quantizers(graph)
    batch = "N" if dynamic_batch else 1
    out_names = [OUTPUT_NAME if len(outputs) == 1 else f"{OUTPUT_NAME}_{i}" for i in range(len(outputs))]
    for (name, _), new in zip(outputs, out_names):
        _rename(graph, name, new)
    cfg = qmodel.config
    metadata = {
        "genie_version": __version__,
        "arch": qmodel.arch or "",
        "w_bits": "mixed" if cfg.mixed else cfg.w_bits,
        # each layer's weight bits (qcdq keeps n-bit integers in 8-bit containers), as JSON
        "w_bits_per_layer": json.dumps(qmodel.weight_bits()),
        "a_bits": cfg.a_bits,
        "setting": cfg.setting,
        "quantizer": cfg.quantizer,
        "weight_symmetric": ctx.symmetric,
        "act_symmetric": cfg.act_symmetric,
        "profile": cfg.profile,
        "int_form": form.name if quantized else "float",
    }
    model = graph.model(
        INPUT_NAME, [batch] + list(x.shape[1:]), out_names,
        [[batch] + list(node.meta["shape"][1:]) for _, node in outputs],
        qmodel.arch or type(qmodel.net).__name__, metadata, __version__,
    )
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:  # a bug in the exporter, not the user's input
        raise RuntimeError(f"genie wrote an invalid ONNX graph (please report): {exc}") from exc
    return model


def drop_relus_before_quantizers(graph: OnnxGraph) -> int:
    """Remove every ``Relu`` whose readers are all ``QuantizeLinear`` nodes to an unsigned type
    with zero point 0; returns how many. Such a quantizer clamps negative values to 0 itself, so
    the graph computes the same integers. An integer runtime then finds the operator before the
    Relu feeding a quantizer: onnxruntime fuses ``DQ, DQ -> Add -> Q`` into ``QLinearAdd`` only
    then (it drops such a Relu too, but after choosing its fusions)."""
    from onnx import TensorProto, numpy_helper

    inits = {t.name: t for t in graph.initializers}

    def unsigned_zero(name: str) -> bool:
        t = inits.get(name)
        return (t is not None and t.data_type in (TensorProto.UINT8, TensorProto.UINT4)
                and not numpy_helper.to_array(t).any())

    readers: dict = {}
    for n in graph.nodes:
        for name in n.input:
            readers.setdefault(name, []).append(n)
    kept, dropped = [], 0
    for n in graph.nodes:
        users = readers.get(n.output[0], []) if n.op_type == "Relu" else []
        if users and all(u.op_type == "QuantizeLinear" and u.input[0] == n.output[0] and unsigned_zero(u.input[2])
                         for u in users):
            for u in users:
                u.input[0] = n.input[0]
            dropped += 1
        else:
            kept.append(n)
    graph.nodes[:] = kept
    return dropped


def _rename(graph: OnnxGraph, old: str, new: str) -> None:
    for node in graph.nodes:
        for i, name in enumerate(node.output):
            if name == old:
                node.output[i] = new
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new


def export_onnx(
    qmodel: QuantizedModel,
    path: Union[str, Path],
    example: Union[torch.Tensor, Sequence[int]],
    int_form: str = "qcdq",
    dynamic_batch: bool = True,
    verify: bool = True,
    quantized: bool = True,
) -> ExportReport:
    """Write ``qmodel`` as an ONNX QDQ model to ``path``; returns an :class:`ExportReport`.

    example: an input batch ``(N, C, H, W)`` in the model's normalised space, or its shape; only
    its shape is recorded. int_form: ``"qcdq"`` (opset 13, int8 containers and Clip, 2-8 bits)
    or ``"int4"`` (opset 21, native INT4/UINT4 for 4-bit tensors, 4-8 bits); see
    :mod:`genie.export.qdq`. dynamic_batch: the batch dimension is symbolic (``"N"``).
    verify: when onnxruntime is installed, run the file on ``example`` and report the largest
    difference from genie's output (``report.max_abs_diff``). quantized: ``False`` writes the
    float baseline of :func:`build_onnx` instead.
    """
    path = check_output_path(path)
    model = build_onnx(qmodel, example, int_form, dynamic_batch, quantized)
    if quantized and qmodel.config.weight_symmetric:
        _warn_of_saturation(qmodel)
    data = model.SerializeToString(deterministic=True)
    write_atomically(path, data, "the ONNX model")
    report = ExportReport(path, model.opset_import[0].version, int_form, len(data),
                          dict(sorted(Counter(n.op_type for n in model.graph.node).items())))
    if verify and quantized and torch.is_tensor(example):
        report.max_abs_diff = _verify(qmodel, data, example)
    return report


def _verify(qmodel: QuantizedModel, data: bytes, example: torch.Tensor) -> Optional[float]:
    """Largest |logit difference| between onnxruntime and genie on up to 8 example images;
    ``None`` without onnxruntime (the export itself needs only onnx)."""
    import importlib.util

    if importlib.util.find_spec("onnxruntime") is None:
        return None
    from .runtime import onnx_session

    x = example[:8].detach().float().cpu()
    with torch.no_grad():
        ours = qmodel(x.to(model_device(qmodel))).float().cpu().numpy()
    theirs = onnx_session(data).run(None, {INPUT_NAME: x.numpy()})[0]
    return float(np.abs(theirs - ours).max())
