"""Static figures and tables: image grids (normalised tensors -> RGB), swing windows, heat maps,
histograms (matplotlib ``Figure`` objects), line / bar / heat-map charts (plotly figures) and
result tables (HTML with a plain-text copy).

matplotlib and plotly are imported inside the functions that use them. Units on axes:
iterations are optimisation steps; reconstruction errors are squared output differences in the
units of the activations (:data:`ERROR_LABEL`); image sizes in pixels.
"""
from __future__ import annotations

import html
from typing import Optional, Sequence

import numpy as np
import torch

from .display import _display, _ipython

# what genie.quant reports as a unit's error (reconstruction_error): the squared difference to the
# FP32 output summed over channels, averaged over spatial positions and images
ERROR_LABEL = "output error (squared, sum over channels, mean over pixels and images)"


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
