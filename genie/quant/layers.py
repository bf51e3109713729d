"""Quantized Conv2d / Linear: fake-quantized weight, optionally its own input quantizer."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import GenieError
from .act_quantizer import ActQuantizer
from .bn_fold import FOLD_SCALE
from .weight_quantizer import WeightQuantizer


class QuantLayer(nn.Module):
    """A ``Conv2d`` or ``Linear`` whose weight goes through a :class:`WeightQuantizer`.

    ``own_input_quant``: the layer quantizes its own input (a layer outside any block). Inside a
    block the block places the activation quantizers, so the layer has none.
    ``own_output_quant``: it also has an output quantizer (the deployment profile; enabled by
    :func:`genie.quant.quantize_model` where nothing quantizes the output before it is used).
    The FP weight and bias are buffers: the only trainable tensors are quantization parameters.
    """

    def __init__(self, layer: nn.Module, method: str, own_input_quant: bool, own_output_quant: bool = False):
        super().__init__()
        if isinstance(layer, nn.Conv2d):
            self.kind = "conv"
            self.stride, self.padding, self.dilation = layer.stride, layer.padding, layer.dilation
            self.groups, self.padding_mode = layer.groups, layer.padding_mode
            self._reversed_padding = getattr(layer, "_reversed_padding_repeated_twice", None)
        elif isinstance(layer, nn.Linear):
            self.kind = "linear"
        else:
            raise GenieError(f"QuantLayer takes Conv2d or Linear, got {type(layer).__name__}")
        self.source_name: Optional[str] = getattr(layer, "genie_source_name", None)  # name in the FP model
        self.in_features = layer.in_channels if self.kind == "conv" else layer.in_features
        self.out_features = layer.out_channels if self.kind == "conv" else layer.out_features
        self.register_buffer("weight", layer.weight.detach().clone())
        bias = layer.bias.detach().clone() if layer.bias is not None else None
        self.register_buffer("bias", bias)
        # |gamma / sigma| per output channel (C_out,) of a BatchNorm folded into the layer, else
        # ones: folding scales a channel's weights and step size by it, so reconstruction learns
        # the step divided by it, in the unfolded layer's units (genie.quant.unit_trainer). Not
        # saved: only a layer still being reconstructed needs it.
        fold_scale = getattr(layer, FOLD_SCALE, None)
        fold_scale = torch.ones(self.out_features, dtype=layer.weight.dtype, device=layer.weight.device) \
            if fold_scale is None else fold_scale.detach().clone()
        self.register_buffer("fold_scale", fold_scale, persistent=False)
        self.weight_quant = WeightQuantizer(method)
        self.input_quant: Optional[ActQuantizer] = ActQuantizer() if own_input_quant else None
        # the deployment profile: a layer outside any block whose output reaches no quantizer
        # (e.g. a convolution before a pooling) quantizes it itself
        self.output_quant: Optional[ActQuantizer] = ActQuantizer() if own_output_quant else None

    def quantized_weight(self) -> torch.Tensor:
        return self.weight_quant(self.weight)

    def finalize(self, placeholder: bool = False) -> None:
        """Hard-round the weight and drop the FP copy: only integers, scales and zero points remain.
        ``placeholder``: make empty integer buffers instead (to load a saved model into)."""
        if self.weight_quant.is_integer:
            return
        if placeholder:
            self.weight_quant.integer_placeholders(self.weight.shape, self.weight_quant.bits)
        else:
            self.weight_quant.finalize(self.weight)
        shape = self.weight.shape
        del self.weight
        self.register_buffer("weight", None)
        self.weight_shape = tuple(shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_quant is not None:
            x = self.input_quant(x)
        y = self.apply_weight(x, self.weight_quant(self.weight), self.bias)
        return self.output_quant(y) if self.output_quant is not None else y

    def apply_weight(self, x: torch.Tensor, w: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        """The layer's linear map (convolution or matrix product) of ``x`` with weight ``w``
        (the weight's shape) and ``bias`` (or ``None``)."""
        if self.kind == "linear":
            return F.linear(x, w, bias)
        if self.padding_mode != "zeros":
            x = F.pad(x, self._reversed_padding, mode=self.padding_mode)
            return F.conv2d(x, w, bias, self.stride, 0, self.dilation, self.groups)
        return F.conv2d(x, w, bias, self.stride, self.padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        return f"{self.kind} {self.in_features}->{self.out_features}"
