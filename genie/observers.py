"""Observers of a GENIE-M run: what the notebooks plot about the softbits and the step sizes,
computed here from the events and the model, never in a notebook. No display code.

* :class:`SoftbitObserver` - a callback for :func:`genie.quant.reconstruct`: per unit, the
  fraction of softbits already decided (within ``margin`` of 0 or 1) at each report, and the
  softbit values of one watched unit (for histograms);
* :func:`weight_step_sizes` / :func:`step_size_drift` - the weight step sizes before
  reconstruction and how far each layer's moved (GENIE-M learns them, AdaRound keeps them).
"""
from __future__ import annotations

from typing import Optional

import torch

from .events import UnitProgress, UnitStart


def unit_layers(qmodel, unit: str) -> list:
    """The quantized layers ``[(name, QuantLayer), ...]`` of unit ``unit`` (a block or a layer)."""
    return [(name, layer) for name, layer in qmodel.layers() if name == unit or name.startswith(unit + ".")]


class SoftbitObserver:
    """Records the softbits ``h(V)`` in ``[0, 1]`` of every unit while it is optimised.

    ``decided[unit]``: ``[(iteration, fraction of softbits within margin of 0 or 1), ...]``, one
    entry at the unit's start and one per progress report; ``histograms``: ``{"iteration i":
    h (flattened, CPU)}`` for ``watch_unit``. Pass it (or chain it) as ``callback=`` to
    :func:`genie.quant.reconstruct`; the report interval is ``report_every`` there.
    """

    def __init__(self, qmodel, watch_unit: Optional[str] = None, margin: float = 0.01):
        self.qmodel, self.watch_unit, self.margin = qmodel, watch_unit, margin
        self.decided: dict = {}
        self.histograms: dict = {}

    def __call__(self, event) -> None:
        if isinstance(event, UnitStart):
            iteration = 0
        elif isinstance(event, UnitProgress):
            iteration = event.start + len(event.losses)
        else:
            return
        soft = [layer.weight_quant.soft_offset().detach().flatten()
                for _, layer in unit_layers(self.qmodel, event.name) if layer.weight_quant.has_softbits]
        if not soft:  # round-to-nearest units and finalized layers have no softbits
            return
        h = torch.cat(soft).cpu()
        decided = ((h < self.margin) | (h > 1 - self.margin)).float().mean().item()
        self.decided.setdefault(event.name, []).append((iteration, decided))
        if event.name == self.watch_unit:
            self.histograms[f"iteration {iteration}"] = h


def weight_step_sizes(qmodel) -> dict:
    """``{layer name: weight step sizes (per output channel, CPU copy)}``."""
    return {name: layer.weight_quant.scale.detach().cpu().clone() for name, layer in qmodel.layers()}


def step_size_drift(qmodel, start: dict) -> dict:
    """``{layer name: (mean, max) of |s / s0 - 1| over output channels, in %}``: how far each
    layer's weight step sizes ``s`` moved from ``start`` (:func:`weight_step_sizes` taken before)."""
    drift = {}
    for name, scale in weight_step_sizes(qmodel).items():
        change = (scale / start[name] - 1).abs().flatten()
        drift[name] = (100 * change.mean().item(), 100 * change.max().item())
    return drift
