"""Activation step sizes kept off the rounding ties of heavily populated values.

The values that reach an activation quantizer often lie on a lattice: integers times the step
before, times integer weights, plus an integer bias. LSQ learns the step through the
straight-through estimator, whose gradient jumps where values cross a rounding tie, and such a
jump can hold the step where many lattice values sit exactly on ties. Measured on the W4A4
ResNet-20 of the end-to-end test (256 real images, 300 iterations per unit): in one channel
1127 of 256000 test elements took one value 2e-6 of a step from a tie, because the learned steps
satisfied ``s_in * s_w / s_out = 11/256`` to 4e-7. Which way such an element rounds then depends
on the order of float additions, so onnxruntime or a float64 evaluation of the same integer
model changed the prediction of 85 test images of 10000 (5 on a model without such a tie).

:func:`guard_ties` looks for such channels on calibration inputs once a unit is trained, and
moves the step by a few 1e-4 of itself to take those values off the ties: the rounding of every
other element is unchanged up to that relative shift, and the model no longer depends on float
arithmetic there. It runs after each unit (:func:`genie.quant.reconstruct`), so the units after
it are trained on the roundings it leaves: all of a channel's tie values round one way once it
has moved, where float noise had split them, and applied once to a finished model instead it
cost up to 0.64 top-1 (ResNet-56 W4A4).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .act_quantizer import ActQuantizer
from .bias import snap_biases

# an element is "at a tie" when its value in steps, u, is within TIE_TOLERANCE * max(1, |u|) of
# a half-integer: float32 sums of a few hundred products differ between runtimes by about 1e-6
# of the largest partial sum, well inside this
TIE_TOLERANCE = 2e-5
# candidate steps: s * (1 + k * TIE_STRIDE), 1 <= |k| <= TIE_CANDIDATES; a value on a tie moves
# by at least 3 tolerances, so it leaves the tie under every candidate
TIE_STRIDE = 3 * TIE_TOLERANCE
TIE_CANDIDATES = 8
# what the guard looks at: the first 256 images of a unit's input, fewer where they hold more
# than 2^22 values (10 images at MobileNetV2's first block at 224 px): a lattice shows in every
# image, and memory and time stay small
GUARD_IMAGES = 256
GUARD_VALUES = 2**22


@dataclass
class TieMove:
    """One activation step moved off ties: its name in the unit, the factor it was multiplied
    by, and the calibration elements at a tie (in the flagged channels) before and after."""

    name: str
    factor: float
    at_tie_before: int
    at_tie_after: int


def _candidate_factors() -> torch.Tensor:
    """``(2K + 1,)`` float64: 1 first, then 1 + k * stride for k = 1, -1, 2, -2, ..."""
    ks = [0] + [s * k for k in range(1, TIE_CANDIDATES + 1) for s in (1, -1)]
    return 1.0 + TIE_STRIDE * torch.tensor(ks, dtype=torch.float64)


def _near_tie(u: torch.Tensor, tolerance: float) -> torch.Tensor:
    """Whether each value ``u`` (in steps) is within ``tolerance * max(1, |u|)`` of a half-integer."""
    return (u - u.floor() - 0.5).abs() <= tolerance * u.abs().clamp(min=1.0)


def tie_counts(x: torch.Tensor, scale: float, qmin: int, qmax: int, factors: torch.Tensor) -> torch.Tensor:
    """``(len(factors), C)`` int64: per channel (dim 1 of ``x``, ``(N, C, ...)`` or ``(N, C)``),
    the elements whose value in steps of ``scale * factor`` is at a rounding tie strictly inside
    ``[qmin, qmax]``."""
    channels = x.shape[1]
    x = x.detach()
    # a first pass in x's dtype keeps only the values some candidate can put at a tie (about
    # 1e-3 of them); those are judged in float64
    u = x / scale
    reach = TIE_TOLERANCE + TIE_STRIDE * TIE_CANDIDATES
    close = _near_tie(u, reach) & (u > qmin - 1) & (u < qmax + 1)
    del u
    channel = close.nonzero()[:, 1]
    values = x[close].double() / scale
    counts = torch.zeros(len(factors), channels, dtype=torch.int64, device=x.device)
    for i, factor in enumerate(factors.tolist()):
        v = values / factor
        hit = _near_tie(v, TIE_TOLERANCE) & (v > qmin) & (v < qmax)
        counts[i] = torch.bincount(channel[hit], minlength=channels)
    return counts


def choose_factor(counts: torch.Tensor) -> tuple:
    """``(index into the candidates, at tie before, at tie after)`` from :func:`tie_counts`.

    A channel sits on ties at a step when its count there exceeds twice the median count of the
    candidate steps, plus 8 (those show how many elements a tie catches by chance). Nothing
    moves unless some channel sits on ties at the current step. Candidates are compared by
    their elements at a tie in every channel that sits on ties at *some* candidate, so that a
    move that takes one channel off its ties but puts another on them counts both. The
    candidate with the fewest is taken (the nearest on equal counts) if it halves them;
    otherwise index 0, the current step."""
    chance = counts[1:].median(dim=0).values
    populated = counts > 2 * chance + 8  # (candidates, channels)
    if not bool(populated[0].any()):
        return 0, 0, 0
    totals = counts[:, populated.any(0)].sum(1)
    best = int(torch.argmin(totals[1:])) + 1  # argmin returns the first minimum: the nearest candidate
    before, after = int(totals[0]), int(totals[best])
    return (best, before, after) if 2 * after <= before else (0, before, before)


@torch.no_grad()
def guard_ties(unit: nn.Module, inputs: torch.Tensor, max_images: int = GUARD_IMAGES,
               max_values: int = GUARD_VALUES) -> list:
    """Move the step of each active :class:`ActQuantizer` of ``unit`` off populated rounding
    ties, judged on the unit's calibration ``inputs`` ``(N, ...)``: one forward pass of the first
    ``max_images`` images, fewer where they hold more than ``max_values`` values (at least one),
    in which each quantizer is judged on its input with the quantizers before it already moved. Call it with
    QDrop off, weights hard-rounded and biases snapped (:func:`genie.quant.bias.snap_biases`,
    which it calls again after each move). Returns a :class:`TieMove` for each step it moved."""
    moves, handles, judged = [], [], set()
    factors = _candidate_factors()

    def judge(name):
        def hook(quantizer: ActQuantizer, args):
            if name in judged or not quantizer.enabled or not quantizer.initialized or quantizer.drop_prob > 0.0:
                return
            judged.add(name)
            qmin, qmax = quantizer.qrange
            scale = float(quantizer.scale)
            best, before, after = choose_factor(tie_counts(args[0], scale, qmin, qmax, factors))
            if best:
                quantizer.scale.mul_(float(factors[best]))
                # the layers reading this quantizer add their bias on a grid proportional to its
                # step (genie.quant.bias): back onto the moved grid, as the exported model has it
                snap_biases(unit)
                moves.append(TieMove(name, float(factors[best]), before, after))
        return hook

    inputs = inputs[:max(1, min(max_images, max_values // max(1, inputs[0].numel())))]
    for name, m in unit.named_modules():  # each module once, even where it is shared
        if isinstance(m, ActQuantizer):
            handles.append(m.register_forward_pre_hook(judge(name)))
    try:
        unit(inputs)
    finally:
        for h in handles:
            h.remove()
    return moves
