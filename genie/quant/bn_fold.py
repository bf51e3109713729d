"""Folding BatchNorm into the preceding convolution (what a deployed integer model does).

``W' = W * gamma / sqrt(var + eps)`` per output channel,
``b' = (b - mean) * gamma / sqrt(var + eps) + beta``; the BN module becomes ``nn.Identity``.
Pairs are found from the traced graph (a Conv2d whose only consumer is a BatchNorm2d); for
models torch.fx cannot trace, from module registration order (a BatchNorm2d registered right
after a Conv2d with as many channels), with a warning. A fold that changes the outputs is
reported with what was measured (the change, and whether the pairs were guessed or a module
runs more than once); a non-positive ``running_var + eps`` is reported as such.
"""
from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import nn

from ..errors import GenieError
from ..finite import require_positive_bn_variance

# the buffer of a folded convolution holding |gamma / sqrt(var + eps)| per output channel (C_out,)
FOLD_SCALE = "bn_fold_scale"


@dataclass
class Pairing:
    """The Conv2d -> BatchNorm2d pairs of a model and how they were found.

    ``pairs``: ``[(conv_name, bn_name)]``. ``guessed``: None when torch.fx traced the model (a
    BatchNorm paired with the convolution whose only consumer it is), else why tracing failed
    (the pairs then come from registration order). ``calls``: ``{module name: calls in one
    forward pass}`` from the trace (empty when guessed)."""

    pairs: list
    guessed: Optional[str] = None
    calls: dict = field(default_factory=dict)


def _pairs_from_graph(model: nn.Module) -> Pairing:
    import torch.fx

    graph = torch.fx.symbolic_trace(model).graph
    modules = dict(model.named_modules())
    pairs, calls = [], {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
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
    return Pairing(pairs, None, calls)


def _pairs_from_registration_order(model: nn.Module) -> list:
    pairs = []
    for parent_name, parent in model.named_modules():
        children = list(parent.named_children())
        for (name_a, a), (name_b, b) in zip(children, children[1:]):
            if isinstance(a, nn.Conv2d) and isinstance(b, nn.BatchNorm2d) and b.num_features == a.out_channels:
                prefix = f"{parent_name}." if parent_name else ""
                pairs.append((prefix + name_a, prefix + name_b))
    return pairs


def conv_bn_pairing(model: nn.Module) -> Pairing:
    """The :class:`Pairing` of ``model``: from its torch.fx graph, or (with a warning) from
    module registration order when torch.fx cannot trace it."""
    try:
        return _pairs_from_graph(model)
    except Exception as exc:  # torch.fx raises many kinds of errors on dynamic code
        warnings.warn(
            f"torch.fx could not trace {type(model).__name__} ({exc.__class__.__name__}); "
            "pairing Conv2d and BatchNorm2d by registration order instead",
            stacklevel=3,
        )
        return Pairing(_pairs_from_registration_order(model), exc.__class__.__name__)


def find_conv_bn_pairs(model: nn.Module) -> list:
    """``[(conv_name, bn_name), ...]`` of BatchNorm2d layers that directly follow a Conv2d."""
    return conv_bn_pairing(model).pairs


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

    Every paired BatchNorm must have ``running_var + eps > 0`` (else its output is NaN or Inf,
    folded or not: a :class:`GenieError` names the BatchNorm and channel). check_on: inputs
    ``(N, C, H, W)`` on which the folded model must give the outputs of the original (to float
    tolerance); a mismatch raises a :class:`GenieError` naming the first pair that changes the
    outputs and what was measured, with ``model`` unchanged.
    """
    pairing = conv_bn_pairing(model)
    require_positive_bn_variance(model, "the model", names={bn for _, bn in pairing.pairs})
    if check_on is not None:
        _check_pairs(model, pairing, check_on)
    for conv_name, bn_name in pairing.pairs:
        _fold_pair(model, conv_name, bn_name)
    return len(pairing.pairs)


def _check_pairs(model: nn.Module, pairing: Pairing, x: torch.Tensor) -> None:
    """Fold a copy of ``model`` and compare its outputs on ``x`` with the original's; on a
    mismatch, fold another copy pair by pair to name the first pair that changes them."""
    expected = _outputs(model, x)
    if expected is None:
        return
    if not all(bool(torch.isfinite(o).all()) for o in expected):
        raise GenieError(
            f"{type(model).__name__} gives NaN or Inf on the calibration images before any folding (its weights and "
            "BatchNorm statistics are finite): folding cannot be checked; look for an overflow in its forward, or "
            "quantize with fold_bn=False (--no-fold-bn)"
        )
    folded = copy.deepcopy(model)
    for conv_name, bn_name in pairing.pairs:
        _fold_pair(folded, conv_name, bn_name)
    if _close(_outputs(folded, x), expected):
        return
    folded = copy.deepcopy(model)
    for conv_name, bn_name in pairing.pairs:
        _fold_pair(folded, conv_name, bn_name)
        got = _outputs(folded, x)
        if not _close(got, expected):
            raise GenieError(_mismatch(model, pairing, conv_name, bn_name, got, expected, len(x)))


def _mismatch(model: nn.Module, pairing: Pairing, conv_name: str, bn_name: str, got: list, expected: list,
              images: int) -> str:
    """Why folding ``bn_name`` into ``conv_name`` changed the outputs, as far as measured: the
    largest output change, and the pairing's source (guessed, or a module called more than once
    in the traced forward pass)."""
    change = max(float((a - b).abs().max()) for a, b in zip(got, expected))
    scale = max(float(b.abs().max()) for b in expected)
    head = (f"folding BatchNorm {bn_name!r} into convolution {conv_name!r} changes the model's outputs on {images} "
            f"calibration images by up to {change:.3g} (largest output {scale:.3g})")
    fix = "quantize with fold_bn=False (--no-fold-bn)"
    model_name = type(model).__name__
    if pairing.guessed is not None:
        return (f"{head}: that BatchNorm may not follow that convolution (torch.fx cannot trace {model_name} "
                f"({pairing.guessed}), so the pairs were guessed from registration order); {fix}")
    shared = [f"{name!r} runs {pairing.calls[name]} times" for name in (conv_name, bn_name)
              if pairing.calls.get(name, 0) > 1]
    if shared:
        return (f"{head}: torch.fx traced {model_name} and in its forward pass {' and '.join(shared)}, so folding "
                f"changes every call; {fix}")
    return (f"{head}, although torch.fx traced {model_name} and that BatchNorm reads only that convolution's output "
            f"(its forward may use their parameters directly); {fix}")


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
