"""Folding BatchNorm into the preceding convolution (what a deployed integer model does).

``W' = W * gamma / sqrt(var + eps)`` per output channel,
``b' = (b - mean) * gamma / sqrt(var + eps) + beta``; the BN module becomes ``nn.Identity``.
Pairs are found from the traced graph (a Conv2d whose only consumer is a BatchNorm2d); for
models torch.fx cannot trace, from module registration order (a BatchNorm2d registered right
after a Conv2d with as many channels), with a warning.
"""
from __future__ import annotations

import copy
import warnings
from typing import Optional

import torch
from torch import nn

from ..errors import GenieError

# the buffer of a folded convolution holding |gamma / sqrt(var + eps)| per output channel (C_out,)
FOLD_SCALE = "bn_fold_scale"


def _pairs_from_graph(model: nn.Module) -> list:
    import torch.fx

    graph = torch.fx.symbolic_trace(model).graph
    modules = dict(model.named_modules())
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), nn.BatchNorm2d):
            continue
        src = node.args[0] if node.args else None
        if (
            isinstance(src, torch.fx.Node)
            and src.op == "call_module"
            and isinstance(modules.get(src.target), nn.Conv2d)
            and len(src.users) == 1
        ):
            pairs.append((src.target, node.target))
    return pairs


def _pairs_from_registration_order(model: nn.Module) -> list:
    pairs = []
    for parent_name, parent in model.named_modules():
        children = list(parent.named_children())
        for (name_a, a), (name_b, b) in zip(children, children[1:]):
            if isinstance(a, nn.Conv2d) and isinstance(b, nn.BatchNorm2d) and b.num_features == a.out_channels:
                prefix = f"{parent_name}." if parent_name else ""
                pairs.append((prefix + name_a, prefix + name_b))
    return pairs


def find_conv_bn_pairs(model: nn.Module) -> list:
    """``[(conv_name, bn_name), ...]`` of BatchNorm2d layers that directly follow a Conv2d."""
    try:
        return _pairs_from_graph(model)
    except Exception as exc:  # torch.fx raises many kinds of errors on dynamic code
        warnings.warn(
            f"torch.fx could not trace {type(model).__name__} ({exc.__class__.__name__}); "
            "pairing Conv2d and BatchNorm2d by registration order instead",
            stacklevel=3,
        )
        return _pairs_from_registration_order(model)


@torch.no_grad()
def bn_factor(bn: nn.BatchNorm2d) -> torch.Tensor:
    """``gamma / sqrt(var + eps)`` per channel (eval statistics): what BN multiplies by."""
    std = torch.sqrt(bn.running_var + bn.eps)
    gamma = bn.weight if bn.affine else torch.ones_like(std)
    return gamma / std


@torch.no_grad()
def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """Fold ``bn`` (eval statistics) into ``conv`` in place; ``conv`` gains a bias."""
    factor = bn_factor(bn)
    beta = bn.bias if bn.affine else torch.zeros_like(factor)
    conv.weight.mul_(factor.view(-1, *([1] * (conv.weight.dim() - 1))))
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    new_bias = (bias - bn.running_mean) * factor + beta
    conv.bias = nn.Parameter(new_bias.to(conv.weight.dtype), requires_grad=conv.weight.requires_grad)
    # what each output channel was scaled by (times any earlier fold): reconstruction learns
    # step sizes divided by it, in the unfolded layer's units (genie.quant.layers.QuantLayer.fold_scale)
    earlier = getattr(conv, FOLD_SCALE, None)
    scale = factor.abs().to(conv.weight.dtype) * (earlier if earlier is not None else 1.0)
    conv.register_buffer(FOLD_SCALE, scale, persistent=False)


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def _fold_pair(model: nn.Module, conv_name: str, bn_name: str) -> None:
    fold_conv_bn(model.get_submodule(conv_name), model.get_submodule(bn_name))
    _set_submodule(model, bn_name, nn.Identity())


def fold_batchnorm(model: nn.Module, check_on: Optional[torch.Tensor] = None) -> int:
    """Fold every Conv2d -> BatchNorm2d pair of ``model`` (in eval mode) in place; returns how
    many were folded.

    check_on: inputs ``(N, C, H, W)`` on which the folded model must give the outputs of the
    original (to float tolerance); a mismatch (a pair guessed wrongly) raises a
    :class:`GenieError` naming the first pair that changes the outputs, with ``model`` unchanged.
    """
    pairs = find_conv_bn_pairs(model)
    if check_on is not None:
        _check_pairs(model, pairs, check_on)
    for conv_name, bn_name in pairs:
        _fold_pair(model, conv_name, bn_name)
    return len(pairs)


def _check_pairs(model: nn.Module, pairs: list, x: torch.Tensor) -> None:
    """Fold a copy of ``model`` and compare its outputs on ``x`` with the original's; on a
    mismatch, fold another copy pair by pair to name the first pair that changes them."""
    expected = _outputs(model, x)
    if expected is None:
        return
    folded = copy.deepcopy(model)
    for conv_name, bn_name in pairs:
        _fold_pair(folded, conv_name, bn_name)
    if _close(_outputs(folded, x), expected):
        return
    folded = copy.deepcopy(model)
    for conv_name, bn_name in pairs:
        _fold_pair(folded, conv_name, bn_name)
        if not _close(_outputs(folded, x), expected):
            raise GenieError(
                f"folding BatchNorm {bn_name!r} into convolution {conv_name!r} changes the model's outputs: that "
                "BatchNorm does not follow that convolution (pairs are guessed from registration order when "
                f"torch.fx cannot trace {type(model).__name__}); quantize with fold_bn=False (--no-fold-bn)"
            )


@torch.no_grad()
def run_on_images(model: nn.Module, x: torch.Tensor):
    """``model(x)``, or a :class:`GenieError` saying the model cannot take images of that shape."""
    try:
        return model(x)
    except Exception as exc:
        raise GenieError(
            f"the model cannot run on calibration images of shape {tuple(x.shape)}: {exc.__class__.__name__}: {exc}"
        ) from None


def _outputs(model: nn.Module, x: torch.Tensor) -> Optional[list]:
    """The output tensors of ``model(x)`` (a tensor, or a tuple/list of them); None otherwise."""
    out = run_on_images(model, x)
    outs = [out] if torch.is_tensor(out) else list(out) if isinstance(out, (tuple, list)) else None
    return outs if outs is not None and all(torch.is_tensor(o) for o in outs) else None


def _close(got: list, expected: list) -> bool:
    """Equal up to the rounding that folding causes (relative to each output's largest value)."""
    return all(a.shape == b.shape and bool(((a - b).abs().max() <= 1e-3 * (1 + b.abs().max())).item())
               for a, b in zip(got, expected))
