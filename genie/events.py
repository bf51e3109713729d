"""Events that long-running steps send to a callback, for progress displays and live plots.

A callback is any callable taking one event. Loss values are gathered on the device and
delivered in chunks (``losses``: a CPU float tensor of the iterations since the last event), so
the hot loop never waits for the host.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

Callback = Optional[Callable[[object], None]]


@dataclass
class UnitStart:
    """Reconstruction of unit ``index`` (of ``total``) begins; ``init_error`` is its error with
    round-to-nearest weights and searched step sizes (squared error summed over channels,
    averaged over images and spatial positions)."""

    index: int
    total: int
    name: str
    kind: str
    iters: int
    init_error: float


@dataclass
class UnitProgress:
    """Reconstruction losses of iterations ``[start, start + len(losses))`` of unit ``index``."""

    index: int
    name: str
    start: int
    losses: torch.Tensor


@dataclass
class UnitEnd:
    """Unit ``index`` is done: errors before/after (same measure as :class:`UnitStart`), the whole
    loss curve and the wall time in seconds."""

    index: int
    name: str
    kind: str
    init_error: float
    final_error: float
    losses: torch.Tensor
    seconds: float


@dataclass
class UnitRestored(UnitEnd):
    """Unit ``index`` (of ``total``) was reconstructed by an earlier, interrupted run and is
    loaded from its checkpoint instead (``genie.quant.reconstruct(checkpoint_dir=...)``): its
    errors, loss curve and seconds are the earlier run's. Sent before the first unit this run
    reconstructs, so a monitor shows where a resumed run starts."""

    total: int = 0


@dataclass
class DistillProgress:
    """Distillation losses (total, per batch) of iterations ``[start, start + len)``:
    ``losses`` has shape ``(iterations, batches)``; ``batches`` are their global indices;
    ``per_layer`` ``(batches, BN layers)`` is the per-layer BNS loss at the last of them."""

    start: int
    batches: list
    losses: torch.Tensor
    per_layer: Optional[torch.Tensor] = None


@dataclass
class DistillSnapshot:
    """Images of ``batches`` at ``iteration`` (CPU tensor ``(n, 3, H, W)``, normalised space)."""

    iteration: int
    batches: list
    images: torch.Tensor


@dataclass
class BatchDone:
    """Distilled batch ``batch`` finished with final BNS loss ``loss``."""

    batch: int
    loss: float
    seconds: float
    per_layer: Optional[torch.Tensor] = field(default=None)


@dataclass
class SweepRunStart:
    """Run ``run`` of a sweep began on ``worker`` (a local process: ``"local 1"``, with its GPU
    when pinned; with a Dask scheduler the run was handed to the cluster, ``worker`` its address)."""

    run: str
    worker: str


@dataclass
class SweepRunEnd:
    """Run ``run`` of a sweep is accounted for: ``done`` of ``total`` runs are. ``status``: ``ok``,
    ``reused`` (a valid result of an earlier sweep, not run again), ``failed`` or ``no result``;
    ``attempts`` > 1: its worker died and it was run again; ``record``: its entry of results.json."""

    run: str
    status: str
    done: int
    total: int
    seconds: Optional[float]
    attempts: int
    error: Optional[str]
    record: dict


@dataclass
class SweepEnd:
    """A sweep ended: of ``total`` runs, ``skipped`` reused earlier results, ``finished`` ran
    once, ``retried`` finished after their worker died, ``failed`` did not finish (``total`` minus
    these four were never started: ``fail_fast``); ``seconds`` of wall time."""

    total: int
    skipped: int
    finished: int
    retried: int
    failed: int
    seconds: float


def emit(callback: Callback, event) -> None:
    if callback is not None:
        callback(event)
