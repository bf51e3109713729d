"""Display plumbing: live or static mode (:func:`live_frontend`), showing figures and text as
MIME bundles in IPython (printing outside it), and fanning one event callback out to several.

IPython is imported inside the functions that use it, so importing this module needs neither it
nor a plotting package.
"""
from __future__ import annotations

import base64
import contextlib
import io
import json
import os
from typing import Callable, Optional

LIVE_ENV = "GENIE_LIVE"
PLOTLY_MIME = "application/vnd.plotly.v1+json"

# > 0 while a RunPanel runs its callback: views then live inside the panel's output widget, where
# display updates by id do not reach, so they stay widgets (updated through their state) to the end
_panel_depth = 0


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


@contextlib.contextmanager
def _inside_panel():
    """While a :class:`~genie.viz.panel.RunPanel` runs its callback (see ``_panel_depth``)."""
    global _panel_depth
    _panel_depth += 1
    try:
        yield
    finally:
        _panel_depth -= 1


def _in_panel() -> bool:
    """Whether views made now are shown inside a RunPanel's output widget."""
    return _panel_depth > 0


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
    title = fig.get_suptitle() or (fig.axes[0].get_title() if fig.axes else "") or "figure"
    return {"image/png": base64.b64encode(buf.getvalue()).decode("ascii"), "text/plain": f"<image: {title}>"}


def show(fig) -> None:
    """Display a matplotlib ``Figure`` (as PNG) or a plotly figure (static; zoom and hover work
    in JupyterLab) in the notebook."""
    _show(fig)


def _is_figure(obj) -> bool:
    """Whether ``obj`` is a matplotlib or a plotly figure (what :func:`show` takes)."""
    return hasattr(obj, "savefig") or hasattr(obj, "to_plotly_json")


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
