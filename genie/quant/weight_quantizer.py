"""Weight quantizers: per-output-channel, asymmetric, ``bits`` in 2..8.

``method``:
* ``"nearest"``  - round to nearest with the searched step size (nothing to learn);
* ``"adaround"`` - AdaRound softbits V with the step size s frozen (the BRECQ/QDrop baseline);
* ``"genie"``    - GENIE-M (Alg. 2, Eq. 11-13): softbits V *and* step size s learned jointly,
  with the base integers ``B = floor(W / s_0)`` fixed at initialisation (detached), so
  ``W_q = s * (clamp(B + h(V) + z, 0, 2^b - 1) - z)`` and
  dW_q/ds = B + h(V), dW_q/dV = s * h'(V), dW_q/dB = 0 (inside the clamp range).

After reconstruction :meth:`WeightQuantizer.finalize` hard-rounds (``V >= 0`` -> +1) and keeps
only integer weights (uint8), per-channel scale and zero point: ``W_q = s * (W_int - z)``.

A quantizer's :attr:`~WeightQuantizer.state` says which tensors it holds and how it computes W_q:

* ``"unset"``   - just made: no step size yet (:meth:`~WeightQuantizer.setup` not called);
* ``"nearest"`` - ``scale``, ``zero_point``: the FP weight rounded to nearest (method ``nearest``);
* ``"soft"``    - also ``base`` and ``softbits``: W_q from the soft offset h(V) (training);
* ``"hard"``    - the same tensors, W_q from the hard rounding ``V >= 0`` (evaluation);
* ``"integer"`` - only ``w_int`` (uint8), ``scale``, ``zero_point`` (finalized, or loaded).

Transitions: ``unset -> nearest | soft`` (:meth:`setup`), ``soft <-> hard``
(:meth:`set_soft`), ``nearest | soft | hard -> integer`` (:meth:`finalize`) and
``unset -> integer`` (:meth:`integer_placeholders`, to load a saved model into).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .soft_rounding import inverse_rectified_sigmoid, rectified_sigmoid, soft_rounded_weight, softbits_regularizer
from .step_size import DEFAULT_P, quantize_asymmetric, search_weight_scale

WEIGHT_METHODS = ("genie", "adaround", "nearest")
WEIGHT_STATES = ("unset", "nearest", "soft", "hard", "integer")


class WeightQuantizer(nn.Module):
    """Fake quantizer for one layer's weight ``(C_out, ...)``; call :meth:`setup` before use."""

    def __init__(self, method: str = "genie"):
        super().__init__()
        if method not in WEIGHT_METHODS:
            raise ValueError(f"unknown weight quantizer {method!r}; use one of {', '.join(WEIGHT_METHODS)}")
        self.method = method
        self.bits = 8
        self.enabled = True  # False: pass the FP weight through
        self.symmetric = False  # zero point fixed at 2^(bits-1): a signed weight with zero point 0
        self._state = "unset"  # one of WEIGHT_STATES (module docstring); changed only by the methods below
        self._rounding_beta: Optional[torch.Tensor] = None  # see the property rounding_beta
        self._regularizer: Optional[torch.Tensor] = None

    @property
    def state(self) -> str:
        """``"unset"``, ``"nearest"``, ``"soft"``, ``"hard"`` or ``"integer"`` (module docstring)."""
        return self._state

    @property
    def has_softbits(self) -> bool:
        """Whether the quantizer holds learnable rounding (``softbits`` and ``base``): adaround or
        genie, set up and not yet finalized."""
        return self._state in ("soft", "hard")

    @property
    def soft(self) -> bool:
        """Whether W_q uses the soft offset h(V) (state ``"soft"``)."""
        return self._state == "soft"

    @property
    def is_integer(self) -> bool:
        """Whether only integer weights, scale and zero point remain (state ``"integer"``)."""
        return self._state == "integer"

    def set_soft(self, soft: bool) -> None:
        """Switch between soft rounding h(V) (training) and hard rounding ``V >= 0``."""
        if not self.has_softbits:
            raise RuntimeError(f"a {self._state!r} weight quantizer has no softbits to round softly or hard")
        self._state = "soft" if soft else "hard"

    def get_extra_state(self):
        # the keys saved models have always had: only the integer state is ever saved
        return {"method": self.method, "bits": self.bits, "enabled": self.enabled, "is_integer": self.is_integer,
                "symmetric": self.symmetric}

    def set_extra_state(self, state):
        self.method = state["method"]
        self.bits = int(state["bits"])
        self.symmetric = bool(state.get("symmetric", False))
        self.enabled = bool(state["enabled"])
        if bool(state["is_integer"]) and not self.is_integer:
            raise RuntimeError("load an integer checkpoint into a quantizer made with integer_placeholders()")

    @property
    def qmax(self) -> int:
        return 2**self.bits - 1

    @torch.no_grad()
    def setup(self, weight: torch.Tensor, bits: int, p: float = DEFAULT_P, symmetric: bool = False) -> None:
        """Search the step size (Eq. 16, norm ``p``) and initialise softbits so h(V) = frac(W/s).
        ``symmetric``: zero point fixed at ``2^(bits-1)`` (see :func:`search_weight_scale`).
        State: ``"nearest"`` (method nearest), else ``"soft"`` (``"hard"`` stays hard when set up again)."""
        if self._state == "integer":
            raise RuntimeError("setup() of a weight quantizer that is already 'integer' (no FP weight left to round)")
        self.bits = bits
        self.symmetric = symmetric
        scale, zero_point = search_weight_scale(weight, bits, p, symmetric=symmetric)
        shape = (weight.shape[0],) + (1,) * (weight.dim() - 1)
        scale, zero_point = scale.view(shape).to(weight.dtype), zero_point.view(shape).to(weight.dtype)
        self.scale = nn.Parameter(scale, requires_grad=self.method == "genie")
        self.register_buffer("zero_point", zero_point)
        if self.method in ("adaround", "genie"):
            base = torch.floor(weight / scale)
            frac = (weight / scale - base).clamp(0.0, 1.0 - 1e-6)
            self.register_buffer("base", base)
            self.softbits = nn.Parameter(inverse_rectified_sigmoid(frac))
            self._state = "hard" if self._state == "hard" else "soft"
        else:
            self._state = "nearest"

    def integer_placeholders(self, weight_shape, bits: int, device=None) -> None:
        """Empty integer-form buffers of the right shapes, to load a saved quantized model into.
        State: ``"unset"`` -> ``"integer"``."""
        if self._state != "unset":
            raise RuntimeError(f"integer_placeholders() of a weight quantizer that is already {self._state!r}")
        self.bits = bits
        shape = (weight_shape[0],) + (1,) * (len(weight_shape) - 1)
        self.register_buffer("scale", torch.ones(shape, device=device))
        self.register_buffer("zero_point", torch.zeros(shape, device=device))
        self.register_buffer("w_int", torch.zeros(weight_shape, dtype=torch.uint8, device=device))
        self._state = "integer"

    def soft_offset(self) -> torch.Tensor:
        """h(V), the soft rounding offset in [0, 1] (adaround/genie)."""
        return rectified_sigmoid(self.softbits)

    def round_regularizer(self, beta: float) -> torch.Tensor:
        """Eq. 15's ``sum(1 - |2 h(V) - 1|^beta)``: 0 when every softbit is 0 or 1."""
        return softbits_regularizer(self.softbits, beta)

    @property
    def rounding_beta(self) -> Optional[torch.Tensor]:
        """Set by reconstruction for its training steps (a 0-d tensor): a soft forward pass then
        also computes Eq. 15's regulariser of the same h(V), one h per step instead of two, which
        :meth:`take_regularizer` hands over. ``None`` (the default) turns this off and drops a
        regulariser not taken."""
        return self._rounding_beta

    @rounding_beta.setter
    def rounding_beta(self, beta: Optional[torch.Tensor]) -> None:
        self._rounding_beta = beta
        if beta is None:
            self._regularizer = None  # it holds the step's autograd graph

    def take_regularizer(self, beta) -> torch.Tensor:
        """Eq. 15's regulariser of the last soft forward pass run with :attr:`rounding_beta` set
        (``beta`` should be that value), handed over once; without one, computed now."""
        regularizer, self._regularizer = self._regularizer, None
        return regularizer if regularizer is not None else self.round_regularizer(beta)

    def _require_set_up(self) -> None:
        if self._state == "unset":
            raise RuntimeError("the weight quantizer is not set up: call setup() (or integer_placeholders()) first")

    def integer_weight(self, weight: torch.Tensor = None) -> torch.Tensor:
        """Hard-rounded integer weights in ``[0, 2^bits - 1]`` (float tensor); ``weight``: the FP
        weight (unused once integer)."""
        self._require_set_up()
        if self._state == "integer":
            return self.w_int.to(self.scale.dtype)
        if self._state == "nearest":
            return torch.clamp(torch.round(weight / self.scale) + self.zero_point, 0, self.qmax)
        hard = (self.softbits >= 0).to(self.base.dtype)
        return torch.clamp(self.base + hard + self.zero_point, 0, self.qmax)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return weight
        if self._state == "soft":
            if self._rounding_beta is None:
                return soft_rounded_weight(self.softbits, self.scale, self.base, self.zero_point, self.qmax)
            weight_q, self._regularizer = soft_rounded_weight(self.softbits, self.scale, self.base, self.zero_point,
                                                              self.qmax, self._rounding_beta)
            return weight_q
        if self._state == "nearest":
            return quantize_asymmetric(weight, self.scale, self.zero_point, self.bits)
        return (self.integer_weight(weight) - self.zero_point) * self.scale  # hard or integer

    @torch.no_grad()
    def finalize(self, weight: torch.Tensor) -> None:
        """Hard-round and keep only ``w_int`` (uint8), ``scale`` and ``zero_point``: state
        ``"integer"`` (nothing to do when already there)."""
        if self._state == "integer":
            return
        w_int = self.integer_weight(weight).to(torch.uint8)
        scale = self.scale.detach().clone()
        del self.scale  # a Parameter (or a frozen one); it comes back as a buffer
        if self.has_softbits:
            del self.softbits, self.base
        self.register_buffer("scale", scale)
        self.register_buffer("w_int", w_int)
        self._state = "integer"

    def extra_repr(self) -> str:
        return f"{self.method}, {self.bits} bits, {self._state}" + ("" if self.enabled else ", off")
