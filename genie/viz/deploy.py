"""Figures and tables of deployment (notebook 7): the kernels onnxruntime runs for each exported
file (integer kernels next to float ones) and its latency per network for the FP32 graph and the
W8A8 files of each profile.

Inputs are what :mod:`genie.export.runtime` and :mod:`genie.export.latency` return:
``{op_type: count}`` of an optimised graph (:func:`~genie.export.runtime.operator_counts`) and
the rows of :func:`~genie.export.latency.measure_latency`. Units: operator counts are nodes of
onnxruntime's optimised graph; latency is the median milliseconds per image.
"""
from __future__ import annotations

from typing import Optional, Sequence

from ..export.latency import FILE_LABELS, FLOAT_KERNELS, INTEGER_KERNELS
from .figures import bar_figure, table

LATENCY_LABEL = "ms per image (median, onnxruntime CPU)"


def kernel_order(counts: dict) -> list:
    """The operator types of ``{label: {op_type: count}}`` in display order: integer kernels
    (:data:`~genie.export.latency.INTEGER_KERNELS` order), then float kernels
    (:data:`~genie.export.latency.FLOAT_KERNELS`); other operators are left out."""
    present = {op for ops in counts.values() for op, n in ops.items() if n}
    return [op for op in INTEGER_KERNELS + FLOAT_KERNELS if op in present]


def kernels_figure(counts: dict, title: str = "Kernels of onnxruntime's optimised graph"):
    """A grouped bar chart: one group per kernel type (integer kernels left, float ones right,
    a dotted line between them), one bar per ``{label: {op_type: count}}`` entry."""
    ops = kernel_order(counts)
    ints = [op for op in ops if op in INTEGER_KERNELS]
    fig = bar_figure(ops, {label: [c.get(op, 0) for op in ops] for label, c in counts.items()}, title=title,
                     xlabel="operator type: integer kernels | float kernels", ylabel="nodes in the optimised graph",
                     text_format=".0f")
    if ints and len(ints) < len(ops):
        fig.add_vline(x=len(ints) - 0.5, line_dash="dot", line_color="grey")
    starts = {"integer kernels": 0 if ints else None, "float kernels": len(ints) if len(ints) < len(ops) else None}
    for text, first in starts.items():
        if first is not None:
            fig.add_annotation(x=ops[first], y=1.0, yref="paper", yanchor="bottom", text=text, showarrow=False,
                               font=dict(size=11, color="grey"))
    return fig


def kernel_rows(counts: dict) -> list:
    """One table row per ``{label: {op_type: count}}`` entry: its integer and its float kernels
    as ``"19 QLinearConv, 9 QLinearAdd, ..."`` (``-`` for none)."""
    def listed(ops: dict, kinds: Sequence[str]) -> str:
        return ", ".join(f"{ops[op]} {op}" for op in kinds if ops.get(op)) or "-"

    return [{"file": label, "integer kernels": listed(ops, INTEGER_KERNELS),
             "float kernels": listed(ops, FLOAT_KERNELS)} for label, ops in counts.items()]


def _keys(rows: Sequence[dict], keys: Optional[Sequence[str]]) -> list:
    found = [k[: -len("_ms_per_image")] for k in (rows[0] if rows else {}) if k.endswith("_ms_per_image")]
    return [k for k in (keys or found) if k in found]


def _group(row: dict, rows: Sequence[dict]) -> str:
    """A bar group's name: the model, plus threads and batch when the rows have several."""
    label = f"{row['model']} ({row['px']} px)"
    if len({r["threads"] for r in rows}) > 1:
        label += f", {row['threads']} thread" + ("s" if row["threads"] > 1 else "")
    if len({r["batch"] for r in rows}) > 1:
        label += f", batch {row['batch']}"
    return label


def latency_figure(rows: Sequence[dict], keys: Optional[Sequence[str]] = None, title: Optional[str] = None,
                   log_y: Optional[bool] = None):
    """A grouped bar chart of :func:`~genie.export.latency.measure_latency` rows: one group per
    row (model, and threads / batch when they vary), one bar per file (``keys``: which, in
    order; default all in the rows), milliseconds per image. ``log_y``: None uses a log axis when
    the times span more than a factor of 20 (a 32-px and a 224-px network side by side)."""
    rows = list(rows)
    keys = _keys(rows, keys)
    series = {FILE_LABELS.get(k, k): [r[f"{k}_ms_per_image"] for r in rows] for k in keys}
    values = [v for vs in series.values() for v in vs if v]
    if log_y is None:
        log_y = bool(values) and max(values) > 20 * min(values)
    if title is None:
        threads = sorted({r["threads"] for r in rows})
        batches = sorted({r["batch"] for r in rows})
        title = (f"onnxruntime latency, batch {', '.join(map(str, batches))}, "
                 f"{', '.join(map(str, threads))} thread" + ("s" if threads != [1] else ""))
    return bar_figure([_group(r, rows) for r in rows], series, title=title, xlabel="network",
                      ylabel=LATENCY_LABEL + (" (log)" if log_y else ""), log_y=log_y, text_format=".3g")


def latency_rows(rows: Sequence[dict], keys: Optional[Sequence[str]] = None) -> list:
    """:func:`~genie.export.latency.measure_latency` rows for a table: model, px, threads, batch,
    ms per image per file and each quantized file's speed relative to FP32 (``2.0x``: twice as
    fast, ``0.5x``: half as fast)."""
    rows = list(rows)
    keys = _keys(rows, keys)
    out = []
    for r in rows:
        row = {"model": r["model"], "px": r["px"], "threads": r["threads"], "batch": r["batch"]}
        row.update({f"{FILE_LABELS.get(k, k)} ms": r[f"{k}_ms_per_image"] for k in keys})
        row.update({f"{FILE_LABELS.get(k, k)} vs FP32": f"{r[f'{k}_speedup']:.2f}x"
                    for k in keys if f"{k}_speedup" in r})
        out.append(row)
    return out


def latency_table(rows: Sequence[dict], keys: Optional[Sequence[str]] = None, title: Optional[str] = None) -> None:
    """Display :func:`latency_rows` as a table (milliseconds with 3 decimals)."""
    table(latency_rows(rows, keys), title=title or "onnxruntime latency per image", floatfmt=".3f")
