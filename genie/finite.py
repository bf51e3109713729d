"""Guards against NaN and Inf: at the API boundary (images, weights, BatchNorm statistics) and
in the loss records of the training loops.

One non-finite value among calibration images or BN statistics does not stop any torch
operation; it spreads into step sizes and losses and leaves a silently broken model. These
checks name the tensor and the index instead. Each costs one host sync per call: they run once
per input, or once per progress report in the loops, never per iteration.
"""
from __future__ import annotations

from typing import Iterable, Optional, Tuple

import torch
from torch import nn

from .errors import GenieError


class NonFiniteError(GenieError):
    """A tensor holds NaN or Inf where genie needs finite numbers."""


def _kind(values: torch.Tensor) -> str:
    return "NaN" if torch.isnan(values).any() else "Inf"


def require_finite_images(images: torch.Tensor, what: str = "calibration images") -> None:
    """Raise :class:`NonFiniteError` naming the first image (index along dim 0) of ``images``
    ``(N, ...)`` that holds NaN or Inf, and how many do."""
    bad = ~torch.isfinite(images.detach()).flatten(1).all(1)
    if not bad.any():
        return
    where = bad.nonzero().flatten().tolist()
    more = f" (and {len(where) - 1} more of {len(images)})" if len(where) > 1 else f" (of {len(images)})"
    raise NonFiniteError(
        f"{what} hold {_kind(images[where[0]])} values: image {where[0]}{more}; "
        "remove or replace those images (e.g. images[torch.isfinite(images).flatten(1).all(1)])"
    )


def first_nonfinite(named: Iterable[Tuple[str, torch.Tensor]]) -> Optional[str]:
    """``"name[index] is NaN"`` for the first floating tensor of ``named`` holding NaN or Inf,
    else None (one host sync for all tensors together)."""
    named = [(n, t.detach()) for n, t in named if torch.is_tensor(t) and t.is_floating_point() and t.numel()]
    if not named:
        return None
    finite = torch.stack([torch.isfinite(t).all().to(named[0][1].device) for _, t in named])
    if bool(finite.all()):
        return None
    name, tensor = named[int((~finite).nonzero()[0])]
    flat = (~torch.isfinite(tensor)).flatten().nonzero()[0].item()
    index = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), tensor.shape))
    value = tensor.flatten()[flat].item()
    return f"{name}{list(index)} is {value}"


def require_finite_model(model: nn.Module, what: str) -> None:
    """Raise :class:`NonFiniteError` when a parameter or buffer of ``model`` (weights, BatchNorm
    running statistics, step sizes) holds NaN or Inf; ``what`` names the model in the message."""
    found = first_nonfinite(list(model.named_parameters()) + list(model.named_buffers()))
    if found is not None:
        raise NonFiniteError(f"{what} has non-finite values: {found}; load intact weights or statistics")


def require_finite_losses(losses: torch.Tensor, start: int, where: str, hint: str) -> None:
    """Raise :class:`NonFiniteError` when the loss record ``losses`` (iterations since ``start``
    along dim 0) holds NaN or Inf, naming ``where`` and the first such iteration."""
    bad = ~torch.isfinite(losses)
    if bad.dim() > 1:
        bad = bad.flatten(1).any(1)
    if bad.any():
        first = start + int(bad.nonzero()[0])
        raise NonFiniteError(f"{where}: the loss became {_kind(losses[first - start])} at iteration {first}; {hint}")


def require_positive_bn_variance(model: nn.Module, what: str, names=None) -> None:
    """Raise :class:`GenieError` when a BatchNorm of ``model`` (those in ``names``, default
    every one) has ``running_var + eps <= 0`` in some channel: its output divides by the square
    root of that, so it is NaN or Inf, folded or not. The message names the BatchNorm, the
    channel and the value."""
    for name, bn in model.named_modules():
        if not isinstance(bn, nn.modules.batchnorm._BatchNorm) or bn.running_var is None:
            continue
        if names is not None and name not in names:
            continue
        bad = (bn.running_var.detach() + bn.eps <= 0).nonzero().flatten()
        if len(bad):
            channel = int(bad[0])
            more = f" (and {len(bad) - 1} more channels)" if len(bad) > 1 else ""
            raise GenieError(
                f"{what}: BatchNorm {name!r} has running_var[{channel}] = {float(bn.running_var[channel]):g}{more} "
                f"with eps {bn.eps:g}: a variance must be positive (var + eps <= 0 makes that BatchNorm's output NaN "
                "or Inf, folded or not); load intact statistics, or recompute them over training images"
            )
