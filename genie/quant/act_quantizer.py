"""Activation quantizer: per-tensor LSQ step size with QDrop.

States:
* ``enabled=False``: identity (the network input of the first layer, or a quantizer switched off);
* not yet initialised: identity (reconstruction searches the step size on the captured input of
  the quantizer, :func:`genie.quant.step_size.search_act_scale`, and calls :meth:`initialize`);
* initialised: fake quantization with the learned step size ``scale``; during reconstruction each
  element keeps its FP value with probability ``drop_prob`` (QDrop; 0 disables it, 1 keeps the
  tensor entirely FP).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .fake_quant import bernoulli_mask, lsq_fake_quant
from .step_size import act_qrange


class ActQuantizer(nn.Module):
    """Per-tensor activation fake quantizer (symmetric, signed if the data has negatives)."""

    def __init__(self, bits: int = 8):
        super().__init__()
        self.bits = bits
        self.signed = False
        # signed even where the data has no negatives (TensorRT-style int8 with zero point 0):
        # QuantConfig.act_symmetric
        self.always_signed = False
        self.enabled = True
        self.initialized = False
        self.scale = nn.Parameter(torch.ones(()))
        self.drop_prob = 0.0
        self.generator: Optional[torch.Generator] = None  # draws the QDrop masks
        # a unit's input quantizer during reconstruction: dropped elements take the FP model's
        # value of the input instead of the student's own (QDrop's input mixing)
        self.fp_source: Optional[torch.Tensor] = None

    # --- state kept in state_dict (python attributes, so no host sync in forward) ---
    def get_extra_state(self):
        return {"bits": self.bits, "signed": self.signed, "enabled": self.enabled, "initialized": self.initialized,
                "always_signed": self.always_signed}

    def set_extra_state(self, state):
        self.bits = int(state["bits"])
        self.signed = bool(state["signed"])
        self.enabled = bool(state["enabled"])
        self.initialized = bool(state["initialized"])
        self.always_signed = bool(state.get("always_signed", False))  # files from before the option

    @property
    def qrange(self) -> tuple:
        return act_qrange(self.bits, self.signed)

    @torch.no_grad()
    def initialize(self, scale: torch.Tensor, signed: bool) -> None:
        """Set the step size (0-d tensor) and signedness found by a search; the quantizer is then active."""
        self.scale.data = scale.to(self.scale.device, self.scale.dtype).reshape(())
        self.signed = bool(signed) or self.always_signed
        self.initialized = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled or not self.initialized:
            return x
        qmin, qmax = self.qrange
        keep_fp = None
        if self.drop_prob > 0.0:
            if self.drop_prob >= 1.0 and self.fp_source is None:
                return x
            keep_fp = bernoulli_mask(x, self.drop_prob, self.generator, dtype=x.dtype)  # 0/1: the fast form
        return lsq_fake_quant(x, self.scale, qmin, qmax, keep_fp, self.fp_source)

    def extra_repr(self) -> str:
        state = "off" if not self.enabled else f"{'int' if self.signed else 'uint'}{self.bits}"
        return f"{state}, initialized={self.initialized}"
