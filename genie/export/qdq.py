"""Quantizers as ONNX QuantizeLinear / DequantizeLinear (QDQ) nodes.

Integer forms (``int_form``), a table from name to :class:`IntForm`:

* ``"qcdq"`` (default): opset 13. Every integer tensor lives in an int8 / uint8 container; an
  n-bit activation (n < 8) is ``QuantizeLinear -> Clip(qmin, qmax) -> DequantizeLinear`` (the
  convention Brevitas calls QCDQ), so any runtime with int8 QDQ support runs it.
* ``"int4"``: opset 21. 4-bit tensors use the native INT4 / UINT4 types (no Clip); 5-7 bit
  tensors are written as in ``qcdq``; tensors below 4 bits have no native type and are refused.

Activations: per tensor, symmetric (zero point 0): uint when genie found no negative values,
int otherwise (in the deploy profile uint with zero point ``2^(bits-1)`` instead: the same values,
one type for every activation). Weights: per output channel (``axis=0``), stored as integer initializers: uint
with the per-channel zero point (asymmetric) or int with zero point 0 (symmetric mode).
ONNX rounds half to even, as ``torch.round`` does.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..errors import GenieError


@dataclass(frozen=True)
class IntForm:
    """How n-bit tensors are written: ``opset``, the bit widths with a native ONNX type, and the
    narrowest width the form can hold."""

    name: str
    opset: int
    native_bits: tuple
    min_bits: int
    summary: str


INT_FORMS = {
    "qcdq": IntForm("qcdq", 13, (8,), 2, "opset 13, int8/uint8 containers, Clip to the n-bit range"),
    "int4": IntForm("int4", 21, (4, 8), 4, "opset 21, native INT4/UINT4 for 4-bit tensors"),
}


def int_form(name: str) -> IntForm:
    try:
        return INT_FORMS[name]
    except KeyError:
        raise GenieError(f"unknown ONNX integer form {name!r}; use one of {', '.join(INT_FORMS)}") from None


def container_type(bits: int, signed: bool, form: IntForm) -> tuple:
    """``(ONNX element type, needs a Clip)`` of a ``bits``-bit tensor in ``form``."""
    from onnx import TensorProto

    if bits == 4 and 4 in form.native_bits:
        return (TensorProto.INT4 if signed else TensorProto.UINT4), False
    return (TensorProto.INT8 if signed else TensorProto.UINT8), bits < 8


def quantize_activation(g, x: str, scale: float, bits: int, signed: bool, form: IntForm, name: str,
                        offset: bool = False) -> str:
    """``DequantizeLinear([Clip](QuantizeLinear(x)))`` with per-tensor ``scale`` (zero point 0);
    returns the dequantized tensor's name. The integer tensor is named ``"{name}.int"``.
    ``offset``: a signed tensor is written unsigned with zero point ``2^(bits-1)`` (each integer
    plus that offset: the same values in the unsigned type)."""
    zero = 2 ** (bits - 1) if signed and offset else 0
    signed = signed and not offset
    elem, clip = container_type(bits, signed, form)
    qmin, qmax = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    s = g.constant(np.array(scale, dtype=np.float32), f"{name}.scale")
    zp = g.integer_constant(np.array(zero, dtype=np.int64), elem, f"{name}.zero_point")
    q = g.node("QuantizeLinear", [x, s, zp], f"{name}.q" if clip else f"{name}.int")
    if clip:
        lo = g.integer_constant(np.array(qmin), elem, f"{name}.qmin")
        hi = g.integer_constant(np.array(qmax), elem, f"{name}.qmax")
        q = g.node("Clip", [q, lo, hi], f"{name}.int")
    return g.node("DequantizeLinear", [q, s, zp], f"{name}.dq")


def dequantized_weight(g, weight_quant, form: IntForm, symmetric: bool, name: str,
                       fold_factor: Optional[np.ndarray] = None) -> tuple:
    """Integer weight initializer -> ``DequantizeLinear(axis=0)``; returns ``(name, scale)``
    with ``scale`` the per-channel float32 step ``(C_out,)`` actually written.

    ``fold_factor``: ``gamma / sqrt(var + eps)`` per output channel of an unfolded BatchNorm
    that follows the layer, folded into the step size (exactly: the integers do not change; a
    negative factor mirrors the integers, ``w -> qmax - w``, so the step stays positive).
    """
    bits = weight_quant.bits
    qmax = 2**bits - 1
    w = weight_quant.w_int.detach().cpu().numpy().astype(np.int64)
    c_out = w.shape[0]
    zero = weight_quant.zero_point.detach().cpu().numpy().reshape(c_out).astype(np.int64)
    scale = weight_quant.scale.detach().cpu().numpy().reshape(c_out).astype(np.float32)
    if fold_factor is not None:
        f = fold_factor.astype(np.float32)
        flip = (f < 0).reshape((c_out,) + (1,) * (w.ndim - 1))
        w = np.where(flip, qmax - w, w)
        zero = np.where(f < 0, qmax - zero, zero)
        dead = (f == 0).reshape(flip.shape)
        w = np.where(dead, zero.reshape(flip.shape), w)  # a channel BN multiplies by 0
        scale = np.where(f == 0, scale, scale * np.abs(f)).astype(np.float32)
    if symmetric:
        centre = 2 ** (bits - 1)
        if not np.all(zero == centre):
            raise GenieError(
                f"layer {name!r} was not quantized with symmetric weights; quantize with "
                "weight_symmetric=True (--weight-symmetric) to export zero points of 0"
            )
        values, zp_values, signed = w - centre, np.zeros(c_out, dtype=np.int64), True
    else:
        values, zp_values, signed = w, zero, False
    elem, _ = container_type(bits, signed, form)
    w_name = g.integer_constant(values, elem, f"{name}.weight_int")
    s_name = g.constant(scale, f"{name}.weight_scale")
    z_name = g.integer_constant(zp_values, elem, f"{name}.weight_zero_point")
    return g.node("DequantizeLinear", [w_name, s_name, z_name], f"{name}.weight", axis=0), scale
