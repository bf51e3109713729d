"""Figures and widgets for the notebooks: image grids, live loss curves and per-block error charts
fed from genie's events, progress bars, result tables and a control panel with a Run button.

Two display modes, picked by :func:`live_frontend`:

* **live** (a person in JupyterLab, Notebook or VS Code): plotly ``FigureWidget`` traces, image
  grids and ``ipywidgets`` progress bars update in place while a step runs; when the step ends
  each live view is replaced by its final static figure, so a saved notebook keeps its plots;
* **static** (papermill, nbval, a script): nothing is redrawn while a step runs; each view shows
  its final figure once at the end, and control panels show their settings as a table.

matplotlib, plotly, ipywidgets and IPython are imported inside the functions that use them:
``import genie.viz`` needs only torch and numpy. Outside IPython, figures are not displayed
(their ``figure()`` methods still return them) and summaries are printed.

Units on axes: iterations are optimisation steps; the BNS loss is a dimensionless sum of squared
differences of statistics (:mod:`genie.distill.bns`); reconstruction errors are squared output
differences in the units of the activations (:data:`ERROR_LABEL`); accuracy in percent; time in
seconds.
"""
from __future__ import annotations

import html
import io
import json
import os
import time
import traceback
from typing import Callable, Iterable, Optional, Sequence

import numpy as np
import torch

from .events import BatchDone, DistillProgress, DistillSnapshot, UnitEnd, UnitProgress, UnitStart

LIVE_ENV = "GENIE_LIVE"
# what genie.quant reports as a unit's error (reconstruction_error): the squared difference to the
# FP32 output summed over channels, averaged over spatial positions and images
ERROR_LABEL = "output error (squared, sum over channels, mean over pixels and images)"
PLOTLY_MIME = "application/vnd.plotly.v1+json"

# ----------------------------------------------------------------------------------------------
# display plumbing


def _ipython():
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    return get_ipython()


def live_frontend(override: Optional[bool] = None) -> bool:
    """Whether live widgets should be used: ``override`` if given, else ``$GENIE_LIVE``
    (``1``/``0``), else True when running in a Jupyter kernel whose current request comes from a
    frontend a person uses. Headless runners (papermill, nbval, nbclient) send execute requests
    with ``allow_stdin`` false, since nobody can answer a prompt; JupyterLab, Notebook and VS Code
    send it true."""
    if override is not None:
        return bool(override)
    env = os.environ.get(LIVE_ENV, "").strip().lower()
    if env in ("1", "true", "yes", "on"):
        return True
    if env in ("0", "false", "no", "off"):
        return False
    ip = _ipython()
    kernel = getattr(ip, "kernel", None)
    if kernel is None:
        return False
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        return False
    try:
        parent = kernel.get_parent()
    except Exception:
        return False
    return bool((parent or {}).get("content", {}).get("allow_stdin", False))


def _display(obj, raw: bool = False, handle=None, new: bool = True):
    """Display ``obj`` (or update ``handle``); returns the handle (None outside IPython)."""
    if _ipython() is None:
        return None
    from IPython.display import display

    if handle is not None:
        handle.update(obj, raw=raw)
        return handle
    if new:
        return display(obj, raw=raw, display_id=True)
    display(obj, raw=raw)
    return None


def _plotly_bundle(fig) -> dict:
    title = fig.layout.title.text if fig.layout.title and fig.layout.title.text else "figure"
    return {PLOTLY_MIME: json.loads(fig.to_json()), "text/plain": f"<plotly figure: {title}>"}


def _png_bundle(fig) -> dict:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi, bbox_inches="tight")
    import base64

    title = fig.get_suptitle() or (fig.axes[0].get_title() if fig.axes else "") or "figure"
    return {"image/png": base64.b64encode(buf.getvalue()).decode("ascii"), "text/plain": f"<image: {title}>"}


def show(fig) -> None:
    """Display a matplotlib ``Figure`` (as PNG) or a plotly figure (static; zoom and hover work
    in JupyterLab) in the notebook."""
    _show(fig)


def _show(fig, handle=None):
    """:func:`show`, or replace the output of ``handle``; returns the display handle."""
    if hasattr(fig, "savefig"):
        bundle = _png_bundle(fig)
    elif hasattr(fig, "to_plotly_json"):
        bundle = _plotly_bundle(fig)
    else:
        raise TypeError(f"show() takes a matplotlib or plotly figure, got {type(fig).__name__}")
    return _display(bundle, raw=True, handle=handle)


def show_text(text: str, handle=None):
    """Show text (or replace ``handle``'s output); prints outside IPython. Returns the handle."""
    if _ipython() is None:
        print(text)
        return None
    return _display({"text/plain": text}, raw=True, handle=handle)


def chain(*callbacks: Optional[Callable]) -> Callable:
    """One callback that forwards every event to each of ``callbacks`` (None entries skipped)."""
    active = [c for c in callbacks if c is not None]

    def forward(event) -> None:
        for c in active:
            c(event)

    return forward


# ----------------------------------------------------------------------------------------------
# static figures


def to_rgb(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Normalised images ``(N, 3, H, W)`` -> RGB ``(N, H, W, 3)`` float32 in [0, 1]."""
    if not torch.is_tensor(images) or images.dim() != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if torch.is_tensor(images) else type(images).__name__
        raise ValueError(f"expected normalised RGB images (N, 3, H, W), got {shape}")
    x = images.detach().float().cpu()
    x = x * torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1) + torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    return x.clamp(0.0, 1.0).permute(0, 2, 3, 1).numpy()


def mosaic(rgb: np.ndarray, ncols: int = 8, pad: int = 1) -> np.ndarray:
    """Tile ``(N, H, W, 3)`` images into one ``(rows*(H+pad)-pad, ncols*(W+pad)-pad, 3)`` array
    with white gaps."""
    n, h, w, c = rgb.shape
    ncols = max(1, min(ncols, n))
    rows = -(-n // ncols)
    out = np.ones((rows * (h + pad) - pad, ncols * (w + pad) - pad, c), dtype=np.float32)
    for i in range(n):
        r, col = divmod(i, ncols)
        out[r * (h + pad) : r * (h + pad) + h, col * (w + pad) : col * (w + pad) + w] = rgb[i]
    return out


def image_grid(images, mean, std, ncols: int = 8, title: str = "Images", max_images: int = 32,
               scale: float = 0.45):
    """A matplotlib ``Figure`` showing up to ``max_images`` normalised images in a grid."""
    from matplotlib.figure import Figure

    rgb = to_rgb(images[:max_images], mean, std)
    grid = mosaic(rgb, ncols)
    n, h, w, _ = rgb.shape
    cols = max(1, min(ncols, n))
    rows = -(-n // cols)
    fig = Figure(figsize=(max(3.0, cols * w * scale / 10 + 0.8), rows * h * scale / 10 + 1.0), dpi=100)
    ax = fig.add_subplot()
    ax.imshow(grid, interpolation="nearest")
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(f"{n} images, {w} x {h} px each ({cols} per row)", fontsize=8)
    ax.set_ylabel("image rows", fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])
    fig.tight_layout()
    return fig


def image_grids(groups: dict, mean, std, ncols: int = 8, title: str = "Images", max_images: int = 16,
                scale: float = 0.45):
    """Side-by-side image grids, one per ``{caption: images}`` entry (e.g. without / with swing)."""
    from matplotlib.figure import Figure

    if not groups:
        raise ValueError("image_grids() needs at least one group of images")
    panels = {k: mosaic(to_rgb(v[:max_images], mean, std), ncols) for k, v in groups.items()}
    first = next(iter(groups.values()))
    n, h, w = min(len(first), max_images), first.shape[2], first.shape[3]
    cols = max(1, min(ncols, n))
    rows = -(-n // cols)
    fig = Figure(figsize=(len(panels) * (cols * w * scale / 10 + 0.6), rows * h * scale / 10 + 1.3), dpi=100)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (caption, grid) in zip(axes, panels.items()):
        ax.imshow(grid, interpolation="nearest")
        ax.set_title(caption, fontsize=9)
        ax.set_xlabel(f"{n} images, {w} x {h} px each", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0].set_ylabel("image rows", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def swing_windows_figure(image: torch.Tensor, mean, std, title: str = "The 9 swing windows (Fig. 10)"):
    """The image reflection-padded by 1 pixel, nine times, each with one swing window outlined:
    the crop at offset ``(dy, dx)`` in {0, 1, 2}^2 that the strided layer sees (``(1, 1)`` is the
    image itself). ``image``: one normalised image ``(3, H, W)``."""
    import torch.nn.functional as F
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    padded = F.pad(image[None].float(), (1, 1, 1, 1), mode="reflect")
    rgb = to_rgb(padded, mean, std)[0]
    h, w = image.shape[1], image.shape[2]
    fig = Figure(figsize=(7.2, 7.6), dpi=100)
    axes = fig.subplots(3, 3)
    for dy in range(3):
        for dx in range(3):
            ax = axes[dy][dx]
            ax.imshow(rgb, interpolation="nearest")
            ax.add_patch(Rectangle((dx - 0.5, dy - 0.5), w, h, fill=False, edgecolor="red", linewidth=1.8))
            ax.set_title(f"offset (dy={dy}, dx={dx})" + (" = input" if (dy, dx) == (1, 1) else ""), fontsize=8)
            ax.set_xticks([0, w + 1])
            ax.set_yticks([0, h + 1])
            ax.tick_params(labelsize=6)
            if dy == 2:
                ax.set_xlabel("x (px, padded image)", fontsize=7)
            if dx == 0:
                ax.set_ylabel("y (px)", fontsize=7)
    fig.suptitle(title + f": red = the {h} x {w} px window", fontsize=10)
    fig.tight_layout()
    return fig


def maps_figure(maps: dict, title: str, colorbar: str, xlabel: str = "x (px)", ylabel: str = "y (px)",
                cmap: str = "viridis", log: bool = False):
    """Side-by-side heat maps of 2-D arrays ``{caption: (H, W) array}`` with one colour bar each."""
    from matplotlib.colors import LogNorm
    from matplotlib.figure import Figure

    fig = Figure(figsize=(3.4 * len(maps) + 0.4, 3.3), dpi=100)
    axes = fig.subplots(1, len(maps), squeeze=False)[0]
    for ax, (caption, data) in zip(axes, maps.items()):
        data = np.asarray(torch.as_tensor(data).detach().cpu().float())
        norm = LogNorm(vmin=max(data[data > 0].min(), 1e-12) if (data > 0).any() else 1e-12, vmax=max(data.max(), 1e-11)) if log else None
        im = ax.imshow(data, cmap=cmap, norm=norm, interpolation="nearest")
        ax.set_title(caption, fontsize=9)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_ylabel(ylabel, fontsize=8)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04).set_label(colorbar, fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def histograms_figure(samples: dict, title: str, xlabel: str, ylabel: str = "count (weights)",
                      bins: int = 40, value_range=(0.0, 1.0), log_y: bool = True):
    """Overlaid step histograms, one per ``{label: 1-D values}`` entry, coloured in order
    (e.g. softbits h(V) at successive iterations)."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 3.6), dpi=100)
    ax = fig.add_subplot()
    cmap = colormaps["viridis"]
    for i, (label, values) in enumerate(samples.items()):
        v = np.asarray(torch.as_tensor(values).detach().cpu().float().flatten())
        ax.hist(v, bins=bins, range=value_range, histtype="step", linewidth=1.4,
                color=cmap(i / max(1, len(samples) - 1)), label=str(label))
    if log_y:
        ax.set_yscale("log")
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel, fontsize=9)
    ax.set_ylabel(ylabel, fontsize=9)
    ax.legend(fontsize=7, loc="upper center", ncols=min(4, max(1, len(samples))))
    fig.tight_layout()
    return fig


def _layout(title: str, xlabel: str, ylabel: str, log_y: bool = False, height: int = 380, **extra) -> dict:
    return dict(
        title=dict(text=title),
        xaxis=dict(title=dict(text=xlabel)),
        yaxis=dict(title=dict(text=ylabel), type="log" if log_y else "linear", exponentformat="power"),
        height=height,
        margin=dict(l=70, r=20, t=60, b=60),
        template="plotly_white",
        **extra,
    )


def line_figure(series: dict, title: str, xlabel: str, ylabel: str, log_y: bool = False, markers: bool = False):
    """A plotly figure with one line per ``{name: (x, y)}`` entry."""
    import plotly.graph_objects as go

    fig = go.Figure(layout=_layout(title, xlabel, ylabel, log_y))
    for name, (x, y) in series.items():
        fig.add_trace(go.Scatter(x=list(map(float, x)), y=list(map(float, y)), name=str(name),
                                 mode="lines+markers" if markers else "lines"))
    return fig


def bar_figure(categories: Sequence[str], series: dict, title: str, xlabel: str, ylabel: str,
               log_y: bool = False, text_format: Optional[str] = None):
    """A plotly grouped bar chart: one bar group per category, one bar per ``{name: values}``."""
    import plotly.graph_objects as go

    fig = go.Figure(layout=_layout(title, xlabel, ylabel, log_y, barmode="group"))
    for name, values in series.items():
        vals = [None if v is None else float(v) for v in values]
        text = [None if v is None else format(v, text_format) for v in vals] if text_format else None
        fig.add_trace(go.Bar(x=list(categories), y=vals, name=str(name), text=text))
    return fig


def heatmap_figure(z, x: Sequence[str], y: Sequence[str], title: str, xlabel: str, ylabel: str,
                   colorbar: str, log: bool = True):
    """A plotly heat map of ``z`` ``(len(y), len(x))``; ``log`` colours by log10 of the values."""
    import plotly.graph_objects as go

    z = np.asarray(torch.as_tensor(z).detach().cpu().double())
    shown = np.log10(np.clip(z, 1e-12, None)) if log else z
    fig = go.Figure(
        go.Heatmap(z=shown, x=list(x), y=list(y), colorscale="Viridis",
                   colorbar=dict(title=dict(text=("log10 " if log else "") + colorbar)),
                   customdata=z, hovertemplate="%{y} / %{x}: %{customdata:.4g}<extra></extra>"),
        layout=_layout(title, xlabel, ylabel, height=max(320, 28 * len(y) + 140)),
    )
    return fig


def table_text(rows: Sequence[dict], title: Optional[str] = None, floatfmt: str = ".2f") -> str:
    """``rows`` (dicts) as aligned plain text, one line per row under a header line."""
    return _table(rows, title, floatfmt)[0]


def table(rows: Sequence[dict], title: Optional[str] = None, floatfmt: str = ".2f") -> None:
    """Display ``rows`` (dicts; missing keys stay empty) as an HTML table with a plain-text copy;
    prints the text outside IPython."""
    text, markup = _table(rows, title, floatfmt)
    if _ipython() is None:
        print(text)
        return
    _display({"text/html": markup, "text/plain": text}, raw=True, new=False)


def _table(rows: Sequence[dict], title: Optional[str], floatfmt: str) -> tuple:
    rows = list(rows)
    columns = list(dict.fromkeys(k for r in rows for k in r))

    def fmt(v):
        if isinstance(v, float):
            return format(v, floatfmt)
        return "" if v is None else str(v)

    cells = [[fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    lines = ([title] if title else []) + ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    text = "\n".join(lines)
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in row) + "</tr>" for row in cells)
    caption = f"<caption style='caption-side:top;font-weight:bold'>{html.escape(title)}</caption>" if title else ""
    markup = f"<table class='genie-table'>{caption}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    return text, markup


# ----------------------------------------------------------------------------------------------
# live views

# > 0 while a RunPanel runs its callback: views then live inside the panel's output widget, where
# display updates by id do not reach, so they stay widgets (updated through their state) to the end
_panel_depth = 0


class _View:
    """Base of the live views. Live: a widget shown when the view is made and updated in
    place; ``close()`` replaces it by the final static output (inside a :class:`RunPanel` the
    widget stays, showing its final state). Static: ``close()`` shows the final output once.
    Usable as a context manager (closes on exit, also after an error)."""

    closed = False

    def _start(self, live: Optional[bool]) -> None:
        self.live = live_frontend(live)
        self.nested = _panel_depth > 0
        self.handle = None

    def _show_widget(self, widget) -> None:
        self.handle = _display(widget)

    def _finish(self, bundle_or_fig, widget=None) -> None:
        """Show the final output: replace the live widget (top level) or display it (static)."""
        if self.live and self.nested:
            return
        if hasattr(bundle_or_fig, "savefig") or hasattr(bundle_or_fig, "to_plotly_json"):
            _show(bundle_or_fig, handle=self.handle if self.live else None)
        else:
            show_text(bundle_or_fig, handle=self.handle if self.live else None)
        if widget is not None and self.live:
            widget.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def close(self) -> None:  # pragma: no cover - overridden
        self.closed = True


class Progress(_View):
    """A progress bar (ipywidgets) with a status line while live; one summary line at the end."""

    def __init__(self, total: int, description: str, live: Optional[bool] = None):
        self._start(live)
        self.total, self.description = max(1, int(total)), description
        self.count, self.text, self.t0 = 0, "", time.perf_counter()
        if self.live:
            import ipywidgets as w

            self.bar = w.IntProgress(value=0, min=0, max=self.total, description=description,
                                     style={"description_width": "initial"}, layout=w.Layout(width="360px"))
            self.label = w.HTML(value="starting")
            self.box = w.HBox([self.bar, self.label])
            self.box.add_class("genie-progress")
            self._show_widget(self.box)

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

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        line = self.summary()
        if self.live and self.nested:
            self.label.value = html.escape(line)
        self._finish(line, getattr(self, "box", None))


class LiveLines(_View):
    """Line traces that grow while a step runs (a plotly ``FigureWidget`` when live, redrawn at
    most every ``min_interval`` seconds); the final static figure replaces it on ``close()``."""

    def __init__(self, title: str, xlabel: str, ylabel: str, log_y: bool = False, live: Optional[bool] = None,
                 min_interval: float = 0.3, height: int = 380):
        self._start(live)
        self.title, self.xlabel, self.ylabel, self.log_y, self.height = title, xlabel, ylabel, log_y, height
        self.min_interval = min_interval
        self.data: dict = {}
        self._dirty, self._last_draw = False, 0.0
        self.widget = None
        if self.live:
            import plotly.graph_objects as go

            self.widget = go.FigureWidget(layout=_layout(title, xlabel, ylabel, log_y, height))
            self.widget.add_class("genie-live-plot")
            self._show_widget(self.widget)

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

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.flush()
        self._finish(self.figure(), self.widget)


class ImageGridView(_View):
    """An image grid redrawn in place (live) from :class:`~genie.events.DistillSnapshot` events;
    the last grid stays. Keeps every snapshot (cloned) in ``snapshots[(batch, iteration)]``."""

    def __init__(self, mean, std, title: str = "Distilled images", ncols: int = 8, max_images: int = 32,
                 live: Optional[bool] = None):
        self._start(live)
        self.mean, self.std, self.title = mean, std, title
        self.ncols, self.max_images = ncols, max_images
        self.snapshots: dict = {}
        self.last = None
        if self.live:
            import ipywidgets as w

            self.image = w.Image(format="png", layout=w.Layout(max_width="100%"))
            self.waiting = w.HTML(value=html.escape(f"{title}: waiting for the first snapshot"))
            self.box = w.VBox([self.waiting])
            self.box.add_class("genie-image-grid")
            self._show_widget(self.box)

    def update(self, images: torch.Tensor, caption: str) -> None:
        self.last = (images[: self.max_images].detach().cpu().clone(), caption)
        if self.live:
            buf = io.BytesIO()
            self.figure().savefig(buf, format="png", bbox_inches="tight")
            self.image.value = buf.getvalue()
            if self.box.children[0] is not self.image:
                self.box.children = [self.image]

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

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.last is not None:
            self._finish(self.figure(), getattr(self, "box", None))
        elif self.live and not self.nested:
            self._finish(f"{self.title}: no snapshot arrived", self.box)


class BlockErrorChart(_View):
    """Per-unit reconstruction error before (round-to-nearest weights, searched step sizes) and
    after reconstruction, as grouped bars that fill in unit by unit."""

    BEFORE = "before (round-to-nearest)"
    AFTER = "after reconstruction"

    def __init__(self, title: str = "Reconstruction error per block", live: Optional[bool] = None, log_y: bool = True):
        self._start(live)
        self.title, self.log_y = title, log_y
        self.names: list = []
        self.before: dict = {}
        self.after: dict = {}
        self.widget = None
        if self.live:
            import plotly.graph_objects as go

            self.widget = go.FigureWidget(self.figure())
            self.widget.add_class("genie-live-plot")
            self._show_widget(self.widget)

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

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._finish(self.figure(), self.widget)


def snapshot_schedule(iters: int, count: int = 6) -> list:
    """``count`` iterations spread over ``[0, iters - 1]`` (first and last included)."""
    if iters <= 0:
        return []
    count = max(1, min(count, iters))
    if count == 1:
        return [iters - 1]
    return sorted({round(i * (iters - 1) / (count - 1)) for i in range(count)})


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
        self.live = live_frontend(live)
        self.iters, self.batches = iters, batches
        self.report_every = max(1, iters // 40)
        self.snapshot_at = snapshot_schedule(iters, snapshots) if images else []
        self.progress = Progress(iters * batches, f"{title} distillation", live=self.live)
        self.images = ImageGridView(mean, std, f"{title} images", ncols, max_images, live=self.live) if images else None
        self.curve = LiveLines(f"{title}: BNS loss while distilling", "iteration",
                               loss_ylabel, log_y=True, live=self.live)
        self._done = 0

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

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.progress.close()
        if self.images is not None:
            self.images.close()
        self.curve.close()


class ReconMonitor(_View):
    """Live view of block reconstruction: progress bar, per-block error bars and the
    reconstruction loss of each unit over its iterations."""

    def __init__(self, iters: int, units: Optional[int] = None, title: str = "GENIE-M", live: Optional[bool] = None,
                 show_loss: bool = True):
        self.live = live_frontend(live)
        self.iters = iters
        self.report_every = max(1, iters // 20)
        self.progress = Progress(max(1, iters) * (units or 1), f"{title} reconstruction", live=self.live)
        self.chart = BlockErrorChart(f"{title}: reconstruction error per block", live=self.live)
        self.curve = (LiveLines(f"{title}: reconstruction loss of each unit", "iteration within the unit",
                                "reconstruction loss (squared error, log)", log_y=True, live=self.live)
                      if show_loss else None)
        self._units_done = 0

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
        elif isinstance(event, UnitEnd):
            self._units_done += 1
            self.progress.update(self._units_done * max(1, self.iters),
                                 f"{event.name}: error {event.init_error:.4g} -> {event.final_error:.4g}")
        self.chart(event)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.progress.close()
        self.chart.close()
        if self.curve is not None:
            self.curve.close()


class PipelineMonitor(_View):
    """Distillation and reconstruction views for one callback (``genie.pipeline.run``). The
    distillation views appear at once (when ``distill_iters`` > 0), the reconstruction views
    with the first reconstruction event. ``images=False`` leaves out the live image grid (the
    pipeline sends no snapshots)."""

    def __init__(self, mean, std, distill_iters: int, batches: int, recon_iters: int, live: Optional[bool] = None,
                 images: bool = True):
        self.live = live_frontend(live)
        self.recon_iters = recon_iters
        self.distill: Optional[DistillMonitor] = None
        self.recon: Optional[ReconMonitor] = None
        if distill_iters:
            self.distill = DistillMonitor(mean, std, distill_iters, batches, live=self.live, images=images)

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

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for part in (self.distill, self.recon):
            if part is not None:
                part.close()


# ----------------------------------------------------------------------------------------------
# controls


class RunPanel:
    """Controls for the settings a person wants to vary, a Run button and an output area.

    ``settings``: ``{name: default}``; ``choices``: ``{name: list of options}`` (a dropdown) or
    ``(min, max)`` / ``(min, max, step)`` (a slider); bools become check boxes. ``run(values)``
    is called with the current values when Run is pressed; whatever it displays (monitors,
    tables) appears in the panel's output area. A status line, written by the kernel whenever a
    control changes, shows the settings the kernel has. In static mode (papermill, nbval) the
    panel shows its settings as a table instead, and ``values()`` returns the defaults.
    """

    def __init__(self, run: Callable[[dict], object], settings: dict, choices: Optional[dict] = None,
                 title: str = "Settings", live: Optional[bool] = None):
        self.run_fn = run
        self.defaults = dict(settings)
        self.choices = dict(choices or {})
        self.title = title
        self.live = live_frontend(live)
        self.widgets: dict = {}
        self.runs = 0
        if self.live:
            self._build()
        else:
            table([{"setting": k, "value": v} for k, v in self.defaults.items()],
                  title=f"{title} (controls need a live Jupyter frontend; these are the notebook's parameters)")

    def _build(self) -> None:
        import ipywidgets as w

        style = {"description_width": "120px"}
        for name, value in self.defaults.items():
            spec = self.choices.get(name)
            label = name.replace("_", " ")
            if isinstance(value, bool):
                widget = w.Checkbox(value=value, description=label, style=style, indent=False)
            elif isinstance(spec, list):
                widget = w.Dropdown(options=list(spec), value=value, description=label, style=style)
            elif isinstance(spec, tuple) and isinstance(value, int):
                lo, hi = spec[0], spec[1]
                step = spec[2] if len(spec) > 2 else 1
                widget = w.IntSlider(value=value, min=lo, max=hi, step=step, description=label, style=style,
                                     continuous_update=False)
            elif isinstance(value, int):
                widget = w.BoundedIntText(value=value, min=1, max=10**7, description=label, style=style)
            elif isinstance(value, float):
                widget = w.FloatText(value=value, description=label, style=style)
            else:
                widget = w.Text(value=str(value), description=label, style=style)
            widget.observe(self._changed, names="value")
            self.widgets[name] = widget
        self.button = w.Button(description="Run", button_style="primary", icon="play",
                               tooltip="run with these settings (output below)")
        self.button.on_click(self._clicked)
        self.status = w.HTML(value=self._status_text())
        self.status.add_class("genie-kernel-settings")
        self.output = w.Output()
        header = w.HTML(value=f"<b>{html.escape(self.title)}</b>")
        self.box = w.VBox([header, *self.widgets.values(), w.HBox([self.button]), self.status, self.output])
        self.box.add_class("genie-run-panel")
        _display(self.box, new=False)

    def values(self) -> dict:
        """The current settings (the defaults in static mode)."""
        if not self.live:
            return dict(self.defaults)
        return {k: wdg.value for k, wdg in self.widgets.items()}

    def _status_text(self) -> str:
        items = ", ".join(f"{k}={v}" for k, v in self.values().items())
        return f"<code>kernel settings: {html.escape(items)}</code>"

    def _changed(self, change) -> None:
        self.status.value = self._status_text()

    def _clicked(self, _button=None) -> None:
        self.button.disabled = True
        self.button.description = "Running..."
        self.output.clear_output()
        t0 = time.perf_counter()
        global _panel_depth
        with self.output:
            _panel_depth += 1
            try:
                self.run_fn(self.values())
                self.runs += 1
                show_text(f"run {self.runs} finished in {time.perf_counter() - t0:.1f} s")
            except Exception:
                show_text("the run failed:\n" + traceback.format_exc())
            finally:
                _panel_depth -= 1
                self.button.disabled = False
                self.button.description = "Run"

    def click(self) -> None:
        """Press Run from code (tests; static mode runs with the defaults)."""
        if self.live:
            self._clicked()
        else:
            self.run_fn(self.values())
            self.runs += 1


# ----------------------------------------------------------------------------------------------
# notebook set-up


def picker(smoke: bool) -> Callable:
    """``pick(value, smoke_value, full_value)``: ``value`` unless it is None, else the value for
    the mode. Notebooks resolve their ``None`` parameters with it *after* the parameters cell,
    so that ``papermill -p smoke False`` switches every knob left at None to the full setting
    (papermill injects its values after the parameters cell, so expressions in that cell would
    keep their smoke values)."""

    def pick(value, smoke_value, full_value):
        if value is not None:
            return value
        return smoke_value if smoke else full_value

    return pick


def notebook_setup(assets: Optional[str] = None, live: Optional[bool] = None, threads: Optional[int] = None) -> dict:
    """The first code cell of every notebook: where weights and data come from, live or static
    display, CPU threads. Returns (and prints) what it found.

    ``assets``: a folder with the offline ``weights/`` and ``data/`` files (sets ``GENIE_ASSETS``).
    Without it ``$GENIE_ASSETS`` is kept; when that is unset too and a ``shared/assets`` folder
    sits next to the project checkout (this project's CI layout), that one is used; otherwise
    files are downloaded on first use into ``$GENIE_CACHE`` (default ``~/.cache/genie``).
    ``threads``: ``torch.set_num_threads`` (default: leave torch's choice).
    """
    from pathlib import Path

    from . import __version__

    if assets:
        folder = Path(assets).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(f"asset folder {folder} does not exist (expected weights/ and data/ inside)")
        os.environ["GENIE_ASSETS"] = str(folder.resolve())
    elif not os.environ.get("GENIE_ASSETS"):
        beside = Path(__file__).resolve().parents[1].parent / "shared" / "assets"
        if beside.is_dir():
            os.environ["GENIE_ASSETS"] = str(beside)
    if threads:
        torch.set_num_threads(int(threads))
    info = {
        "genie": __version__,
        "torch": str(torch.__version__),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "not available",
        "cpu threads": torch.get_num_threads(),
        "assets": os.environ.get("GENIE_ASSETS") or "none (download into the cache on first use)",
        "display": "live widgets" if live_frontend(live) else "static figures",
    }
    print("\n".join(f"{k:<12} {v}" for k, v in info.items()))
    return info
