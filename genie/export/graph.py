"""A small ONNX graph builder: unique names, nodes, initializers, and the model proto.

Names are derived from the quantized model's module names (``layer1.0.main.0``), so a graph
viewer shows where each node came from and two exports of the same model are byte-identical.
"""
from __future__ import annotations

import numpy as np

# the exported graph's input and output (one output; several are numbered logits_0, logits_1, ...)
INPUT_NAME = "input"
OUTPUT_NAME = "logits"


def require_onnx():
    """The ``onnx`` module, or a :class:`GenieError` saying what to install."""
    from ..errors import GenieError

    try:
        import onnx
    except ImportError:
        raise GenieError(
            "ONNX export needs the onnx package: pip install 'genie-zsq[export]' "
            "(or pip install onnx onnxruntime)"
        ) from None
    return onnx


class OnnxGraph:
    """Collects nodes and initializers in execution order. ``opset``: the default-domain opset
    the nodes are written for (handlers consult it where operators changed between opsets)."""

    def __init__(self, opset: int):
        self.onnx = require_onnx()
        self.opset = opset
        self.nodes: list = []
        self.initializers: list = []
        self._used: set = set()

    def fresh(self, hint: str) -> str:
        """A tensor or node name based on ``hint``, unique in this graph."""
        name, k = hint, 1
        while name in self._used:
            name = f"{hint}_{k}"
            k += 1
        self._used.add(name)
        return name

    def node(self, op: str, inputs: list, hint: str, outputs: int = 1, **attrs):
        """Append an ``op`` node reading ``inputs`` (names; ``""`` for an omitted optional
        input); returns its output name (or list of names when ``outputs > 1``)."""
        names = [self.fresh(hint if outputs == 1 else f"{hint}:{i}") for i in range(outputs)]
        node_name = self.fresh(f"{hint}/{op}")
        self.nodes.append(self.onnx.helper.make_node(op, list(inputs), names, name=node_name, **attrs))
        return names[0] if outputs == 1 else names

    def constant(self, array, hint: str) -> str:
        """An initializer holding ``array`` (numpy; float64 becomes float32, python ints int64)."""
        arr = np.asarray(array)
        if arr.dtype == np.float64:
            arr = arr.astype(np.float32)
        elif arr.dtype.kind == "i" and arr.dtype != np.int32 and arr.dtype.itemsize != 1:
            arr = arr.astype(np.int64)
        name = self.fresh(hint)
        # np.ascontiguousarray would make a 0-d array 1-d: a per-tensor scale must stay a scalar
        # (onnxruntime fuses QDQ adds into QLinearAdd only with scalar scales)
        self.initializers.append(self.onnx.numpy_helper.from_array(arr.copy(order="C"), name))
        return name

    def integer_constant(self, values: np.ndarray, elem_type: int, hint: str) -> str:
        """An initializer of ONNX integer type ``elem_type`` (INT8, UINT8, INT4, UINT4, INT32)
        holding ``values``; 4-bit types are packed two to a byte by onnx's helper."""
        values = np.asarray(values)
        name = self.fresh(hint)
        tensor = self.onnx.helper.make_tensor(name, elem_type, list(values.shape), values.reshape(-1).tolist())
        self.initializers.append(tensor)
        return name

    def model(self, input_name: str, input_shape: list, output_names: list, output_shapes: list,
              graph_name: str, metadata: dict, producer_version: str):
        """The finished ``ModelProto``; shapes may hold a string (a symbolic batch dimension)."""
        helper, TensorProto = self.onnx.helper, self.onnx.TensorProto
        graph = helper.make_graph(
            self.nodes,
            graph_name,
            [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, input_shape)],
            [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in zip(output_names, output_shapes)],
            initializer=self.initializers,
        )
        model = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", self.opset)],
            producer_name="genie",
            producer_version=producer_version,
        )
        # the IR version that introduced this opset: runtimes as old as the opset can load it
        model.ir_version = _IR_FOR_OPSET.get(self.opset, model.ir_version)
        helper.set_model_props(model, {k: str(v) for k, v in sorted(metadata.items())})
        return model


# ONNX IR version paired with each default-domain opset (onnx/helper.py VERSION_TABLE)
_IR_FOR_OPSET = {13: 7, 14: 7, 15: 8, 16: 8, 17: 8, 18: 8, 19: 9, 20: 9, 21: 10}
