"""The monitors of genie's steps, made of live views (:mod:`genie.viz.views`): distillation
(:class:`DistillMonitor`), block reconstruction (:class:`ReconMonitor`), a whole pipeline run
(:class:`PipelineMonitor`) and a sweep of notebook runs (:class:`SweepMonitor`). Each is one
event callback; closing it closes its views, which then show their final figures. Units:
iterations are optimisation steps; the BNS loss is dimensionless (:mod:`genie.distill.bns`);
reconstruction losses are squared errors.
"""
from __future__ import annotations

from typing import Optional

from ..distill.schedule import snapshot_schedule
from ..events import (BatchDone, DistillProgress, DistillSnapshot, SweepEnd, SweepRunEnd, SweepRunStart, UnitEnd,
                      UnitProgress, UnitRestored, UnitStart)
from .views import BlockErrorChart, ImageGridView, LiveLines, Progress, _View


class DistillMonitor(_View):
    """Live view of a distillation: progress bar, image grid (from snapshots) and BNS loss
    curve (one trace per batch). Pass it as ``callback`` together with its ``report_every`` and
    ``snapshot_at``::

        with viz.DistillMonitor(spec.mean, spec.std, iters, batches) as mon:
            ds = distill(model, size, ..., callback=mon, report_every=mon.report_every,
                         snapshot_at=mon.snapshot_at, progress=False)
    """

    def __init__(self, mean, std, iters: int, batches: int = 1, title: str = "GENIE-D", live: Optional[bool] = None,
                 snapshots: int = 6, max_images: int = 32, ncols: int = 8, loss_ylabel: str = "BNS loss (log scale)",
                 images: bool = True):
        super().__init__(live)
        self.iters, self.batches = iters, batches
        self.report_every = max(1, iters // 40)
        self.snapshot_at = snapshot_schedule(iters, snapshots) if images else []
        self.progress = Progress(iters * batches, f"{title} distillation", live=self.live)
        self.images = ImageGridView(mean, std, f"{title} images", ncols, max_images, live=self.live) if images else None
        self.curve = LiveLines(f"{title}: BNS loss while distilling", "iteration",
                               loss_ylabel, log_y=True, live=self.live)
        self._done = 0

    def _parts(self):
        return (self.progress, self.images, self.curve)

    def __call__(self, event) -> None:
        if isinstance(event, DistillSnapshot):
            if self.images is not None:
                self.images(event)
        elif isinstance(event, DistillProgress):
            k = len(event.losses)
            for j, b in enumerate(event.batches):
                self.curve.extend(f"batch {b}", range(event.start, event.start + k), event.losses[:, j])
            last = ", ".join(f"{float(v):.4g}" for v in event.losses[-1])
            self.progress.update(self._done + (event.start + k) * len(event.batches), f"BNS loss {last}")
        elif isinstance(event, BatchDone):
            self._done += self.iters
            self.progress.update(self._done, f"batch {event.batch} done, BNS loss {event.loss:.4g}")


class ReconMonitor(_View):
    """Live view of block reconstruction: progress bar, per-block error bars and the
    reconstruction loss of each unit over its iterations."""

    def __init__(self, iters: int, units: Optional[int] = None, title: str = "GENIE-M", live: Optional[bool] = None,
                 show_loss: bool = True):
        super().__init__(live)
        self.iters = iters
        self.report_every = max(1, iters // 20)
        self.progress = Progress(max(1, iters) * (units or 1), f"{title} reconstruction", live=self.live)
        self.chart = BlockErrorChart(f"{title}: reconstruction error per block", live=self.live)
        self.curve = (LiveLines(f"{title}: reconstruction loss of each unit", "iteration within the unit",
                                "reconstruction loss (squared error, log)", log_y=True, live=self.live)
                      if show_loss else None)
        self._units_done = 0

    def _parts(self):
        return (self.progress, self.chart, self.curve)

    def __call__(self, event) -> None:
        if isinstance(event, UnitStart):
            if self.progress.total < event.total * max(1, self.iters):
                self.progress.set_total(event.total * max(1, self.iters))
            self.progress.update(self._units_done * max(1, self.iters), f"unit {event.index + 1}/{event.total} {event.name}")
        elif isinstance(event, UnitProgress):
            k = len(event.losses)
            if self.curve is not None:
                self.curve.extend(event.name, range(event.start, event.start + k), event.losses)
            self.progress.update(self._units_done * self.iters + event.start + k,
                                 f"{event.name} loss {float(event.losses[-1]):.4g}")
        elif isinstance(event, UnitRestored):  # finished by an interrupted run: this one resumes after it
            self._units_done += 1
            if self.curve is not None and len(event.losses):
                self.curve.extend(event.name, range(len(event.losses)), event.losses)
            self.progress.update(self._units_done * max(1, self.iters),
                                 f"resumed: units 1-{event.index + 1} of {event.total} restored from checkpoints")
        elif isinstance(event, UnitEnd):
            self._units_done += 1
            self.progress.update(self._units_done * max(1, self.iters),
                                 f"{event.name}: error {event.init_error:.4g} -> {event.final_error:.4g}")
        self.chart(event)


class PipelineMonitor(_View):
    """Distillation and reconstruction views for one callback (``genie.pipeline.run``). The
    distillation views appear at once (when ``distill_iters`` > 0), the reconstruction views
    with the first reconstruction event. ``images=False`` leaves out the live image grid (the
    pipeline sends no snapshots)."""

    def __init__(self, mean, std, distill_iters: int, batches: int, recon_iters: int, live: Optional[bool] = None,
                 images: bool = True):
        super().__init__(live)
        self.recon_iters = recon_iters
        self.distill: Optional[DistillMonitor] = None
        self.recon: Optional[ReconMonitor] = None
        if distill_iters:
            self.distill = DistillMonitor(mean, std, distill_iters, batches, live=self.live, images=images)

    def _parts(self):
        return (self.distill, self.recon)

    def __call__(self, event) -> None:
        if isinstance(event, (DistillSnapshot, DistillProgress, BatchDone)):
            if self.distill is not None:
                self.distill(event)
        elif isinstance(event, (UnitStart, UnitProgress, UnitEnd)):
            if self.distill is not None:
                self.distill.close()
            if self.recon is None:
                self.recon = ReconMonitor(self.recon_iters, getattr(event, "total", None), live=self.live)
            self.recon(event)


class SweepMonitor(_View):
    """Live view of a sweep (``genie.sweep.sweep(..., callback=monitor)``): a progress bar over
    its runs whose status line names the last run that ended (its status and seconds) and the
    runs in progress; at the end one line with the counts (skipped, finished, retried, failed)."""

    def __init__(self, total: int, title: str = "papermill runs", live: Optional[bool] = None):
        super().__init__(live)
        self.progress = Progress(total, title, live=self.live)
        self.running: list = []
        self.last = ""

    def _parts(self):
        return (self.progress,)

    def _status(self) -> str:
        busy = f"running: {', '.join(self.running)}" if self.running else ""
        return "; ".join(t for t in (self.last, busy) if t)

    def __call__(self, event) -> None:
        if isinstance(event, SweepRunStart):
            self.running.append(event.run)
            self.progress.update(text=self._status())
        elif isinstance(event, SweepRunEnd):
            if event.run in self.running:
                self.running.remove(event.run)
            self.last = f"[{event.done}/{event.total}] {event.run}: {event.status}"
            if event.status != "reused" and event.seconds is not None:
                self.last += f" in {event.seconds:.0f} s"
            if event.attempts > 1:
                self.last += f" (attempt {event.attempts})"
            self.progress.update(event.done, self._status())
        elif isinstance(event, SweepEnd):
            self.progress.update(text=f"{event.skipped} skipped (earlier results reused), {event.finished} finished, "
                                      f"{event.retried} retried, {event.failed} failed")
