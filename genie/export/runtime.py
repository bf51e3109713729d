"""Running exported models in onnxruntime (CPU): sessions, accuracy, latency, operator counts,
and the integer activations of a QDQ graph next to genie's own (the parity check)."""
from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch

from ..devices import model_device
from ..errors import GenieError
from .graph import INPUT_NAME, require_onnx


def require_onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise GenieError(
            "running ONNX models needs onnxruntime: pip install 'genie-zsq[export]' (or pip install onnxruntime)"
        ) from None
    return onnxruntime


def onnx_session(model: Union[str, Path, bytes], threads: Optional[int] = None, optimized_path: Optional[str] = None,
                 optimization: str = "all"):
    """An onnxruntime CPU session for a file or serialized model. ``threads``: intra-op threads
    (default: torch's thread count, so a comparison with torch is like for like).
    ``optimized_path``: also write the graph onnxruntime optimised (to see which kernels run)."""
    ort = require_onnxruntime()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or torch.get_num_threads()
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3  # errors only: no notice that an optimised graph is machine-specific
    opts.graph_optimization_level = {
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    }[optimization]
    if optimized_path:
        opts.optimized_model_filepath = str(optimized_path)
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, sess_options=opts, providers=["CPUExecutionProvider"])


def run_onnx(session, images: torch.Tensor, batch_size: int = 500) -> np.ndarray:
    """The model's output for ``images`` ``(N, C, H, W)``, in batches: ``(N, classes)`` float32."""
    outs = []
    for start in range(0, len(images), batch_size):
        x = images[start:start + batch_size].detach().float().cpu().numpy()
        outs.append(session.run(None, {INPUT_NAME: x})[0])
    return np.concatenate(outs)


def evaluate_onnx(model: Union[str, Path, bytes], data, batch_size: int = 500, threads: Optional[int] = None) -> dict:
    """Top-1 / top-5 (%) of an ONNX classifier on ``data`` (:class:`genie.data.LabeledImages`),
    in the shape of :func:`genie.data.evaluate`'s result, plus ``predictions``."""
    logits = run_onnx(onnx_session(model, threads), data.images, batch_size)
    labels = data.labels.cpu().numpy()
    top5 = np.argsort(-logits, axis=1, kind="stable")[:, :5]
    return {
        "top1": float((top5[:, 0] == labels).mean() * 100.0),
        "top5": float((top5 == labels[:, None]).any(axis=1).mean() * 100.0),
        "n": int(len(labels)),
        "predictions": top5[:, 0],
    }


def operator_counts(model: Union[str, Path, bytes], optimized: bool = False, work_dir: Optional[str] = None) -> dict:
    """``{op_type: count}`` of the graph as written, or (``optimized=True``) after onnxruntime's
    graph optimisations: there QDQ groups it can run with integer kernels appear as
    QLinearConv, QGemm, ConvInteger, ..."""
    if optimized:
        import tempfile

        with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
            out = Path(tmp) / "optimized.onnx"
            onnx_session(model, threads=1, optimized_path=str(out))
            proto = _load_proto(out)
    else:
        proto = _load_proto(model)
    return dict(sorted(Counter(n.op_type for n in proto.graph.node).items()))


def latency_ms(model: Union[str, Path, bytes], example: torch.Tensor, threads: int = 1, warmup: int = 5,
               repeats: int = 30) -> dict:
    """Per-batch latency of onnxruntime on ``example`` in milliseconds: median and minimum of
    ``repeats`` runs after ``warmup``, and per image."""
    session = onnx_session(model, threads)
    x = example.detach().float().cpu().numpy()
    for _ in range(warmup):
        session.run(None, {INPUT_NAME: x})
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        session.run(None, {INPUT_NAME: x})
        times.append((time.perf_counter() - t0) * 1e3)
    median = float(np.median(times))
    return {"median_ms": median, "min_ms": float(np.min(times)), "per_image_ms": median / len(x),
            "batch": int(len(x)), "threads": threads}


def _load_proto(model: Union[str, Path, bytes]):
    """The ``ModelProto`` of a file or of serialized bytes."""
    onnx = require_onnx()
    return onnx.load_from_string(model) if isinstance(model, bytes) else onnx.load(str(model))


def _integer_types(proto) -> dict:
    """``{"<quantizer>.int" tensor: (ONNX element type, zero point)}`` of a QDQ graph written by
    genie (the zero point is 0, or ``2^(bits-1)`` for a signed tensor written unsigned)."""
    from onnx import numpy_helper

    inits = {i.name: i for i in proto.graph.initializer}
    types = {}
    for n in proto.graph.node:
        if n.op_type == "QuantizeLinear":
            zp = inits[n.input[2]]
            types[n.output[0]] = (zp.data_type, int(numpy_helper.to_array(zp).reshape(-1)[0]))
        elif n.op_type == "Clip" and n.input[0] in types:
            types[n.output[0]] = types[n.input[0]]
    return {k: v for k, v in types.items() if k.endswith(".int")}


def onnx_activation_integers(model: Union[str, Path, bytes], images: torch.Tensor, upstream: Optional[dict] = None,
                             with_output: bool = False, optimization: str = "all") -> dict:
    """``{quantizer name: integer array}``: every activation quantizer's integer tensor
    (``"<name>.int"`` in the graph) computed by onnxruntime on ``images``.

    ``upstream``: ``{quantizer name: integer array}`` to feed in place of onnxruntime's own
    integers, so that each quantizer's integers are computed from the same quantized inputs as
    genie's (a per-tensor check that does not accumulate earlier rounding differences).
    ``with_output``: also the graph's output under the key ``None`` (with ``upstream``: computed
    from genie's integers of the last quantized tensor). ``optimization``: onnxruntime's graph
    optimisation level (:func:`onnx_session`; ``"none"`` runs the nodes as written).
    """
    onnx = require_onnx()
    from onnx import TensorProto, numpy_helper

    proto = _load_proto(model)
    inits = {i.name: i for i in proto.graph.initializer}
    dequantize_of = {n.input[0]: n for n in proto.graph.node if n.op_type == "DequantizeLinear"}
    numpy_type = {TensorProto.INT8: np.int8, TensorProto.UINT8: np.uint8}
    feeds = {INPUT_NAME: images.detach().float().cpu().numpy()}
    read = {}  # {quantizer: (tensor read back, its element type, step size or None for integers)}
    for tensor, (elem, zero) in _integer_types(proto).items():
        quantizer = tensor[: -len(".int")]
        if elem in numpy_type:
            target, scale = tensor, None
        else:
            # numpy has no 4-bit type: the dequantized float tensor (zero point 0: s * q) stands in
            node = dequantize_of[tensor]
            target, elem = node.output[0], TensorProto.FLOAT
            scale = float(numpy_helper.to_array(inits[node.input[1]]).reshape(-1)[0])  # per tensor
        if upstream is not None:
            # the tensor becomes an input fed with genie's integers; the node that computed it
            # writes "<tensor>.onnx" instead, which is read back
            for n in proto.graph.node:
                for i, o in enumerate(n.output):
                    if o == target:
                        n.output[i] = f"{target}.onnx"
            proto.graph.input.append(onnx.helper.make_tensor_value_info(target, elem, None))
            ints = upstream[quantizer]
            feeds[target] = ((ints + zero).astype(numpy_type[elem]) if scale is None
                             else (ints * scale).astype(np.float32))
            target = f"{target}.onnx"
        read[quantizer] = (target, elem, scale, zero)
    for target, elem, _, _ in read.values():
        proto.graph.output.append(onnx.helper.make_tensor_value_info(target, elem, None))
    session = onnx_session(proto.SerializeToString(), optimization=optimization)
    names = [target for target, _, _, _ in read.values()] + ([proto.graph.output[0].name] if with_output else [])
    values = session.run(names, feeds)
    # genie's integers: minus the zero point, or (4-bit types) the dequantized value over the step
    found = {q: (np.asarray(v).astype(np.int64) - zero if scale is None
                 else np.rint(np.asarray(v) / scale).astype(np.int64))
             for (q, (_, _, scale, zero)), v in zip(read.items(), values)}
    if with_output:
        found[None] = np.asarray(values[-1])
    return found


def genie_activation_integers(qmodel, images: torch.Tensor) -> dict:
    """``{quantizer name: integer array}``: what genie's fake-quant model rounds each enabled
    activation to (``clamp(round(x / s), qmin, qmax)``) on ``images``."""
    found, hooks = {}, []

    def capture(name, q):
        def hook(module, args):
            qmin, qmax = q.qrange
            found[name] = torch.round(args[0] / q.scale).clamp(qmin, qmax).to(torch.int64).cpu().numpy()

        return hook

    for name, q in qmodel.act_quantizers():
        if q.enabled and q.initialized:
            hooks.append(q.register_forward_pre_hook(capture(name, q)))
    try:
        with torch.no_grad():
            qmodel.eval()(images.to(model_device(qmodel)))
    finally:
        for h in hooks:
            h.remove()
    return found


def integer_parity(qmodel, model: Union[str, Path, bytes], images: torch.Tensor, per_tensor: bool = True) -> dict:
    """``{quantizer name: (largest |difference| in steps, fraction of elements that differ)}``
    between onnxruntime's and genie's integer activations on ``images``.

    ``per_tensor=True``: each tensor is computed by onnxruntime from genie's integers of the
    tensors before it, so a difference means the exported subgraph computes something else (a
    1-step difference is float rounding at a tie). ``False``: onnxruntime runs the whole graph
    alone; then a rare 1-step difference early on (float sums in another order) is amplified
    by the low-bit layers after it, and later tensors differ by more.
    """
    ours = genie_activation_integers(qmodel, images)
    theirs = onnx_activation_integers(model, images, upstream=ours if per_tensor else None)
    missing = sorted(set(ours) ^ set(theirs))
    if missing:
        raise GenieError(f"activation quantizers not matched between genie and the ONNX graph: {missing[:5]}")
    return {k: (int(np.abs(ours[k] - theirs[k]).max()), float((ours[k] != theirs[k]).mean())) for k in ours}


def output_parity(qmodel, model: Union[str, Path, bytes], images: torch.Tensor, optimization: str = "all") -> tuple:
    """``(difference, bound)``: the largest |difference| between onnxruntime's and genie's
    outputs on ``images`` when onnxruntime's last layer reads genie's integers of its input,
    and what float32 arithmetic allows there, per output element.

    Both compute ``sum_i w_i x_i + b`` in float32 from the same integers, in different orders; a
    sum of ``n`` products rounded in any order is within ``gamma_n * sum_i |w_i x_i|`` of the exact
    value (``gamma_n = n u / (1 - n u)``, ``u = 2^-24``; Higham, Accuracy and Stability of
    Numerical Algorithms, Sec. 3.1), so the two differ by at most twice that, plus the rounding
    of the dequantized inputs and weights (one ``u`` each) and of the bias. The model's output
    must be its last quantized layer's (a classifier ending in its Linear layer or convolution).
    ``optimization``: onnxruntime's graph optimisation level; with ``"all"`` it may run the layer
    as an integer kernel (``QGemm``), whose exact integer sums stay within the same bound.
    """
    from ..quant.layers import QuantLayer

    name, last = [(n, m) for n, m in qmodel.net.named_modules() if isinstance(m, QuantLayer)][-1]
    captured = {}
    hook = last.register_forward_hook(lambda module, args, out: captured.update(x=args[0], out=out))
    ours = genie_activation_integers(qmodel, images)
    try:
        with torch.no_grad():
            output = qmodel.eval()(images.to(model_device(qmodel)))
    finally:
        hook.remove()
    if captured.get("out") is None or not torch.equal(captured["out"], output):
        raise GenieError(f"the model's output is not its last quantized layer's ({name!r}): output_parity compares "
                         "classifiers that end in their last Linear or convolution")
    theirs = onnx_activation_integers(model, images, upstream=ours, with_output=True, optimization=optimization)[None]
    with torch.no_grad():
        x = last.input_quant(captured["x"]) if last.input_quant is not None else captured["x"]
        w = last.quantized_weight()
        magnitude = last.apply_weight(x.abs().double(), w.abs().double(), None)
        if last.bias is not None:
            magnitude = magnitude + last.bias.abs().double().reshape((1, -1) + (1,) * (magnitude.dim() - 2))
    u = 2.0 ** -24
    n = w[0].numel() + 2  # the products, plus the dequantization of each factor
    gamma = n * u / (1 - n * u)
    bound = (2 * gamma * magnitude).cpu().numpy()
    diff = np.abs(theirs - output.cpu().numpy())
    worst = np.unravel_index(np.argmax(diff - bound), diff.shape)
    return float(diff[worst]), float(bound[worst])
