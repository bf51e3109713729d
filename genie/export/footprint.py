"""How many bytes a quantized model's parameters take in three storage forms."""
from __future__ import annotations


def weight_footprint(qmodel) -> dict:
    """Bytes of every quantized layer's parameters, ``{"fp32", "int8", "packed"}``:

    * ``fp32``: weights and biases as float32 (the FP model);
    * ``int8``: one byte per weight (the ONNX ``qcdq`` form), plus a float32 scale and a one-byte
      zero point per output channel and the float32 bias;
    * ``packed``: each weight in exactly its bit width (``ceil(numel * bits / 8)`` bytes per
      layer), plus the same scales, zero points and biases.

    Activation step sizes (one float each) and parameters outside quantized layers are left out.
    """
    sizes = {"fp32": 0, "int8": 0, "packed": 0}
    for _, layer in qmodel.layers():
        wq = layer.weight_quant
        shape = wq.w_int.shape if wq.is_integer else layer.weight.shape
        numel = 1
        for d in shape:
            numel *= int(d)
        channels = int(shape[0])
        bias = 0 if layer.bias is None else 4 * layer.bias.numel()
        per_channel = channels * (4 + 1)
        sizes["fp32"] += 4 * numel + bias
        sizes["int8"] += numel + per_channel + bias
        sizes["packed"] += -(-numel * wq.bits // 8) + per_channel + bias
    return sizes
