"""The live views, each fed by hand or from genie's events: a progress bar, growing line traces,
an image grid of distillation snapshots and per-block error bars, on one base class.

Every view is a :class:`_View`: live, it shows a widget when made and updates it in place; on
``close()`` the final static figure (or summary line) replaces the widget. Static, nothing is
drawn until ``close()`` shows the final output once. Units: iterations are optimisation steps;
reconstruction errors are in :data:`~genie.viz.figures.ERROR_LABEL` units; time in seconds.
"""
from __future__ import annotations

import html
import io
import time
from typing import Iterable, Optional

import torch

from ..events import DistillSnapshot, UnitEnd, UnitStart
from .display import _display, _in_panel, _is_figure, _show, live_frontend, show_text
from .figures import ERROR_LABEL, _layout, bar_figure, image_grid, line_figure


class _View:
    """Base of the live views. Live: the widget from :meth:`_widget` is shown when the view is
    made and updated in place; ``close()`` replaces it by the final output from :meth:`_final`
    (inside a :class:`~genie.viz.panel.RunPanel` the widget stays, showing its final state).
    Static: ``close()`` shows the final output once. A view made of other views lists them in
    :meth:`_parts`; ``close()`` closes them in that order. Usable as a context manager (closes on
    exit, also after an error).

    Subclasses set the attributes that :meth:`_widget` reads, then call ``super().__init__(live)``
    (views made of parts call it first: the parts take its ``self.live``).
    """

    closed = False
    widget = None  # the live widget (None when static or for a view made of parts)
    handle = None  # the display handle of the widget, whose output close() replaces

    def __init__(self, live: Optional[bool] = None):
        self.live = live_frontend(live)
        self.nested = _in_panel()
        if self.live:
            self.widget = self._widget()
            if self.widget is not None:
                self.handle = _display(self.widget)

    def _widget(self):
        """The live widget (called only when live); None: the view shows nothing of its own."""
        return None

    def _final(self):
        """The final output: a matplotlib or plotly figure, a line of text, or None (nothing)."""
        return None

    def _parts(self) -> Iterable["_View"]:
        """The views this one is made of (None entries skipped), closed with it."""
        return ()

    def close(self) -> None:
        """Close the parts, then show the final output (see the class doc). Idempotent."""
        if self.closed:
            return
        self.closed = True
        for part in self._parts():
            if part is not None:
                part.close()
        final = self._final()
        if final is None or (self.live and self.nested):
            return
        handle = self.handle if self.live else None
        if _is_figure(final):
            _show(final, handle=handle)
        else:
            show_text(final, handle=handle)
        if self.widget is not None and self.live:
            self.widget.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


class Progress(_View):
    """A progress bar (ipywidgets) with a status line while live; one summary line at the end."""

    def __init__(self, total: int, description: str, live: Optional[bool] = None):
        self.total, self.description = max(1, int(total)), description
        self.count, self.text, self.t0 = 0, "", time.perf_counter()
        super().__init__(live)

    def _widget(self):
        import ipywidgets as w

        self.bar = w.IntProgress(value=0, min=0, max=self.total, description=self.description,
                                 style={"description_width": "initial"}, layout=w.Layout(width="360px"))
        self.label = w.HTML(value="starting")
        box = w.HBox([self.bar, self.label])
        box.add_class("genie-progress")
        return box

    def set_total(self, total: int) -> None:
        self.total = max(1, int(total))
        if self.live:
            self.bar.max = self.total

    def update(self, count: Optional[int] = None, text: Optional[str] = None) -> None:
        self.count = min(self.total, self.count if count is None else int(count))
        if text is not None:
            self.text = text
        if self.live:
            self.bar.value = self.count
            self.label.value = html.escape(f"{self.count}/{self.total}  {time.perf_counter() - self.t0:.0f} s  {self.text}")

    def summary(self) -> str:
        line = f"{self.description}: {self.count}/{self.total} done in {time.perf_counter() - self.t0:.1f} s"
        return line + (f"; {self.text}" if self.text else "")

    def _final(self):
        line = self.summary()
        if self.live and self.nested:  # the bar stays inside the panel: its label shows the summary
            self.label.value = html.escape(line)
        return line


class LiveLines(_View):
    """Line traces that grow while a step runs (a plotly ``FigureWidget`` when live, redrawn at
    most every ``min_interval`` seconds); the final static figure replaces it on ``close()``."""

    def __init__(self, title: str, xlabel: str, ylabel: str, log_y: bool = False, live: Optional[bool] = None,
                 min_interval: float = 0.3, height: int = 380):
        self.title, self.xlabel, self.ylabel, self.log_y, self.height = title, xlabel, ylabel, log_y, height
        self.min_interval = min_interval
        self.data: dict = {}
        self._dirty, self._last_draw = False, 0.0
        super().__init__(live)

    def _widget(self):
        import plotly.graph_objects as go

        widget = go.FigureWidget(layout=_layout(self.title, self.xlabel, self.ylabel, self.log_y, self.height))
        widget.add_class("genie-live-plot")
        return widget

    def extend(self, name: str, x: Iterable, y: Iterable) -> None:
        xs, ys = self.data.setdefault(str(name), ([], []))
        xs.extend(float(v) for v in x)
        ys.extend(float(v) for v in y)
        self._dirty = True
        if self.live and time.perf_counter() - self._last_draw >= self.min_interval:
            self.flush()

    def flush(self) -> None:
        if not (self.live and self._dirty):
            return
        import plotly.graph_objects as go

        with self.widget.batch_update():
            names = [t.name for t in self.widget.data]
            for name, (xs, ys) in self.data.items():
                if name in names:
                    trace = self.widget.data[names.index(name)]
                    trace.x, trace.y = list(xs), list(ys)
                else:
                    self.widget.add_trace(go.Scatter(x=list(xs), y=list(ys), name=name, mode="lines"))
        self._dirty, self._last_draw = False, time.perf_counter()

    def figure(self):
        fig = line_figure(dict(self.data), self.title, self.xlabel, self.ylabel, self.log_y)
        fig.update_layout(height=self.height)
        return fig

    def _final(self):
        self.flush()  # the points not drawn yet (the widget stays inside a panel)
        return self.figure()


class ImageGridView(_View):
    """An image grid redrawn in place (live) from :class:`~genie.events.DistillSnapshot` events;
    the last grid stays. Keeps every snapshot (cloned) in ``snapshots[(batch, iteration)]``."""

    def __init__(self, mean, std, title: str = "Distilled images", ncols: int = 8, max_images: int = 32,
                 live: Optional[bool] = None):
        self.mean, self.std, self.title = mean, std, title
        self.ncols, self.max_images = ncols, max_images
        self.snapshots: dict = {}
        self.last = None
        super().__init__(live)

    def _widget(self):
        import ipywidgets as w

        self.image = w.Image(format="png", layout=w.Layout(max_width="100%"))
        self.waiting = w.HTML(value=html.escape(f"{self.title}: waiting for the first snapshot"))
        box = w.VBox([self.waiting])
        box.add_class("genie-image-grid")
        return box

    def update(self, images: torch.Tensor, caption: str) -> None:
        self.last = (images[: self.max_images].detach().cpu().clone(), caption)
        if self.live:
            buf = io.BytesIO()
            self.figure().savefig(buf, format="png", bbox_inches="tight")
            self.image.value = buf.getvalue()
            if self.widget.children[0] is not self.image:
                self.widget.children = [self.image]

    def figure(self):
        images, caption = self.last
        return image_grid(images, self.mean, self.std, self.ncols, f"{self.title} ({caption})", self.max_images)

    def __call__(self, event) -> None:
        if isinstance(event, DistillSnapshot):
            # clone: the images of a snapshot can share memory with tensors the optimiser updates
            images = event.images.detach().cpu().clone()
            per_batch = len(images) // max(1, len(event.batches))
            for i, b in enumerate(event.batches):
                self.snapshots[(b, event.iteration)] = images[i * per_batch : (i + 1) * per_batch]
            self.update(images, f"iteration {event.iteration + 1}, batch {', '.join(map(str, event.batches))}")

    def iterations(self, batch: int = 0) -> dict:
        """``{iteration: images}`` of the snapshots of one batch, in order."""
        return {it: imgs for (b, it), imgs in sorted(self.snapshots.items()) if b == batch}

    def _final(self):
        if self.last is not None:
            return self.figure()
        # live, the waiting line is replaced; static, a view that never got an image shows nothing
        return f"{self.title}: no snapshot arrived" if self.live else None


class BlockErrorChart(_View):
    """Per-unit reconstruction error before (round-to-nearest weights, searched step sizes) and
    after reconstruction, as grouped bars that fill in unit by unit."""

    BEFORE = "before (round-to-nearest)"
    AFTER = "after reconstruction"

    def __init__(self, title: str = "Reconstruction error per block", live: Optional[bool] = None, log_y: bool = True):
        self.title, self.log_y = title, log_y
        self.names: list = []
        self.before: dict = {}
        self.after: dict = {}
        super().__init__(live)

    def _widget(self):
        import plotly.graph_objects as go

        widget = go.FigureWidget(self.figure())
        widget.add_class("genie-live-plot")
        return widget

    def __call__(self, event) -> None:
        if not isinstance(event, (UnitStart, UnitEnd)):
            return
        if event.name not in self.names:
            self.names.append(event.name)
        if isinstance(event, UnitStart):
            self.before[event.name] = event.init_error
        else:
            self.before.setdefault(event.name, event.init_error)
            self.after[event.name] = event.final_error
        if self.live:
            with self.widget.batch_update():
                for trace, values in zip(self.widget.data, (self.before, self.after)):
                    trace.x = list(self.names)
                    trace.y = [values.get(n) for n in self.names]

    def figure(self):
        return bar_figure(self.names, {self.BEFORE: [self.before.get(n) for n in self.names],
                                       self.AFTER: [self.after.get(n) for n in self.names]},
                          self.title, "reconstruction unit (block or single layer), in forward order",
                          ERROR_LABEL + ", log", log_y=self.log_y)

    def _final(self):
        return self.figure()
