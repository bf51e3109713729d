"""Figures and the budget slider of mixed precision (notebook 8): the sensitivity table as a heat
map, the Pareto front of weight memory against predicted loss, the bits of each layer under a
budget, and top-1 against weight memory.

The slider (:func:`budget_slider`) redraws the bits per layer from a table and its front computed
once (:func:`genie.quant.allocation.allocate` is a scan of the front: no measuring, no solving);
:func:`budget_explorer` shows it in a live frontend and one static figure per budget otherwise.

Units: weight memory is packed weight memory in bytes (``ceil(params * bits / 8)`` per layer,
:class:`~genie.quant.allocation.BitAllocation`); a budget is in bits per weight (the memory of the
uniform model of that many bits); sensitivity and predicted loss in the table's units (nats for
``kl``: the mean KL divergence of the softmax outputs); accuracy in percent.
"""
from __future__ import annotations

import html
from typing import Callable, Optional, Sequence

from ..quant.allocation import allocate, budget_weight_bits, pareto_front
from .display import _display, live_frontend, show
from .figures import _layout, heatmap_figure

MEMORY_LABEL = "packed weight memory (bytes)"
BITS_COLORS = {2: "#d62728", 3: "#ff7f0e", 4: "#2ca02c", 5: "#17becf", 6: "#1f77b4", 7: "#9467bd", 8: "#3b4cc0"}
FIXED_COLOR = "#9e9e9e"


def sensitivity_label(method: str) -> str:
    """What a score of ``method`` measures, with its unit (axis and colour-bar titles); every
    score is a mean over the images it was measured on."""
    return {"kl": "KL(FP || quantized), nats",
            "fisher": "Fisher estimate of KL(FP || quantized), nats"}.get(method, f"{method} sensitivity")


def sensitivity_figure(table, title: Optional[str] = None, log: bool = True):
    """The :class:`~genie.quant.sensitivity.SensitivityTable` as a plotly heat map: one row per
    free layer (forward order, top to bottom, with its weight count), one column per candidate;
    ``log``: colours by log10 of the score (scores span decades: on ResNet-20 a layer's score
    falls by three to four orders of magnitude from 2 to 8 bits)."""
    rows = [f"{layer} ({params:,} w)" for layer, params in zip(table.layers, table.params)]
    fixed = ", ".join(f"{layer} at {bits}" for layer, (bits, _) in table.fixed.items())
    title = title or (f"Sensitivity of each layer's weights ({table.method}, {table.images} images)"
                      + (f"; fixed: {fixed}" if fixed else ""))
    fig = heatmap_figure(table.matrix(), [f"W{b}" for b in table.bits], rows, title,
                         "weight bits of that layer alone (every other layer and every activation FP32)",
                         "layer (weights), in forward order", colorbar=sensitivity_label(table.method),
                         log=log)
    fig.update_yaxes(autorange="reversed")
    return fig


def pareto_figure(front: Sequence, marked: Optional[dict] = None,
                  title: str = "Pareto front: weight memory vs predicted loss", method: str = "kl", log_y: bool = True):
    """Every allocation of ``front`` (:func:`genie.quant.pareto_front`) as memory (bytes) against
    predicted loss (summed sensitivity), plus ``marked`` allocations ``{label: BitAllocation}``
    (e.g. the uniform models, the chosen ones) as labelled points."""
    import plotly.graph_objects as go

    fig = go.Figure(layout=_layout(title, MEMORY_LABEL, "predicted loss: summed sensitivity ("
                                   + sensitivity_label(method) + (", log)" if log_y else ")"), log_y,
                                   height=420))
    fig.add_trace(go.Scatter(
        x=[a.weight_bytes for a in front], y=[a.predicted for a in front], mode="lines+markers",
        name=f"Pareto front ({len(front)} allocations)", marker=dict(size=4), line=dict(shape="hv"),
        customdata=[[a.weight_bits_avg] for a in front],
        hovertemplate="%{x:,} bytes (%{customdata[0]:.3f} bits/weight): %{y:.4g}<extra></extra>"))
    for label, a in (marked or {}).items():
        fig.add_trace(go.Scatter(
            x=[a.weight_bytes], y=[a.predicted], mode="markers+text", name=str(label), text=[str(label)],
            textposition="top right", marker=dict(size=11, symbol="diamond"),
            hovertemplate=f"{html.escape(str(label))}: %{{x:,}} bytes, %{{y:.4g}}<extra></extra>"))
    return fig


def _bits_values(allocation, table=None) -> tuple:
    layers = list(allocation.bits)
    fixed = set(table.fixed) if table is not None else set()
    values = [allocation.bits[n] for n in layers]
    colors = [FIXED_COLOR if n in fixed else BITS_COLORS.get(b, "#444444") for n, b in zip(layers, values)]
    return layers, values, colors


def _bits_title(allocation, table=None) -> str:
    budget = allocation.budget_bits
    head = f"budget {budget:g} bits/weight" if budget is not None else "allocation"
    if budget is not None and table is not None:
        head += f" ({budget_weight_bits(table, budget) / 8:,.0f} bytes)"
    return (f"{head}: {allocation.weight_bytes:,} bytes allocated ({allocation.weight_bits_avg:.3f} bits/weight), "
            f"predicted loss {allocation.predicted:.4g}")


def bits_figure(allocation, table=None, title: Optional[str] = None):
    """The weight bits of every quantized layer (forward order) under ``allocation``
    (:class:`~genie.quant.allocation.BitAllocation`), coloured by bits (layers the setting fixes
    in grey when ``table`` is given); a dashed line marks the budget in bits per weight. The title
    gives the memory and the predicted loss."""
    import plotly.graph_objects as go

    layers, values, colors = _bits_values(allocation, table)
    params = _layer_params(allocation, table)
    fig = go.Figure(layout=_layout(title or _bits_title(allocation, table), "quantized layer, in forward order",
                                   "weight bits", height=400, showlegend=False))
    fig.add_trace(go.Bar(x=layers, y=values, marker=dict(color=colors), name="bits", text=values,
                         customdata=[[p] for p in params],
                         hovertemplate="%{x}: %{y} bits, %{customdata[0]:,} weights<extra></extra>"))
    budget = allocation.budget_bits
    fig.add_trace(go.Scatter(x=[layers[0], layers[-1]], y=[budget, budget] if budget is not None else [None, None],
                             mode="lines", name="budget (bits/weight)", line=dict(dash="dash", color="black"),
                             hovertemplate="budget %{y:g} bits/weight<extra></extra>"))
    fig.update_yaxes(range=[0, 8.5], dtick=1)
    return fig


def _layer_params(allocation, table=None) -> list:
    if table is None:
        return [None] * len(allocation.bits)
    params = dict(zip(table.layers, table.params))
    params.update({n: p for n, (_, p) in table.fixed.items()})
    return [params.get(n) for n in allocation.bits]


def accuracy_memory_figure(series: dict, fp_top1: Optional[float] = None,
                           title: str = "Top-1 against weight memory"):
    """Top-1 (%) against packed weight memory (bytes): one line per ``{name: [(bytes, top1,
    label), ...]}`` entry (e.g. uniform and mixed), points labelled; ``fp_top1``: a dashed line
    at the FP32 model's top-1."""
    import plotly.graph_objects as go

    fig = go.Figure(layout=_layout(title, MEMORY_LABEL, "top-1 accuracy (%)", height=420))
    for name, points in series.items():
        points = sorted(points)
        fig.add_trace(go.Scatter(x=[p[0] for p in points], y=[p[1] for p in points], text=[str(p[2]) for p in points],
                                 mode="lines+markers+text", textposition="bottom right", name=str(name),
                                 marker=dict(size=10), hovertemplate="%{text}: %{x:,} bytes, %{y:.2f} %<extra></extra>"))
    if fp_top1 is not None:
        xs = [p[0] for points in series.values() for p in points]
        if xs:
            fig.add_trace(go.Scatter(x=[min(xs), max(xs)], y=[fp_top1, fp_top1], mode="lines", name="FP32",
                                     line=dict(dash="dash", color="black")))
    return fig


class BudgetSlider:
    """A budget slider (bits per weight, ``ipywidgets.FloatSlider``) above the bits per layer
    (a plotly ``FigureWidget``) and a line with the allocation's memory and predicted loss.
    Moving the slider picks the allocation from the cached ``front`` (no measuring, no solving)
    and redraws in place; ``on_change(allocation)`` is called each time.

    ``widget``: the box to display (the object displays as it, too); ``slider``, ``plot``,
    ``summary``: its parts; ``allocation``: the allocation of the current value."""

    def __init__(self, table, front: Optional[Sequence] = None, budget: Optional[float] = None, step: float = 0.05,
                 on_change: Optional[Callable] = None):
        import ipywidgets as w
        import plotly.graph_objects as go

        self.table = table
        self.front = pareto_front(table) if front is None else list(front)
        self.on_change = on_change
        lo, hi = float(table.bits[0]), float(table.bits[-1])
        value = min(max(float(budget if budget is not None else (lo + hi) / 2), lo), hi)
        self.allocation = allocate(table, value, self.front)
        self.slider = w.FloatSlider(value=value, min=lo, max=hi, step=step, description="budget (bits/weight)",
                                    readout_format=".2f", continuous_update=True, style={"description_width": "initial"},
                                    layout=w.Layout(width="520px"))
        self.summary = w.HTML(value=self._summary_text())
        self.summary.add_class("genie-budget-summary")
        self.plot = go.FigureWidget(bits_figure(self.allocation, table))
        self.plot.add_class("genie-live-plot")
        self.widget = w.VBox([self.slider, self.summary, self.plot])
        self.widget.add_class("genie-budget-slider")
        self.slider.observe(self._changed, names="value")

    def _summary_text(self) -> str:
        return f"<code>{html.escape(_bits_title(self.allocation, self.table))}</code>"

    def _changed(self, change) -> None:
        self.set_budget(change["new"])

    def set_budget(self, budget: float):
        """Allocate under ``budget`` (from the front), redraw, call ``on_change``; returns the
        allocation. Moving the slider calls it."""
        self.allocation = allocate(self.table, float(budget), self.front)
        _, values, colors = _bits_values(self.allocation, self.table)
        with self.plot.batch_update():
            bars, line = self.plot.data[0], self.plot.data[1]
            bars.y, bars.text, bars.marker.color = values, values, colors
            line.y = [self.allocation.budget_bits] * 2
            self.plot.layout.title.text = _bits_title(self.allocation, self.table)
        self.summary.value = self._summary_text()
        if self.on_change is not None:
            self.on_change(self.allocation)
        return self.allocation

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)


def budget_slider(table, front: Optional[Sequence] = None, budget: Optional[float] = None, step: float = 0.05,
                  on_change: Optional[Callable] = None) -> BudgetSlider:
    """A :class:`BudgetSlider` over budgets from the narrowest to the widest candidate of
    ``table`` (not displayed yet; display it, or its ``widget``). ``front``: the table's Pareto
    front when already computed; ``budget``: the start value."""
    return BudgetSlider(table, front, budget, step, on_change)


def budget_explorer(table, front: Optional[Sequence] = None, budgets: Sequence[float] = (), live: Optional[bool] = None,
                    on_change: Optional[Callable] = None) -> Optional[BudgetSlider]:
    """Live (a person in Jupyter): display a :func:`budget_slider` starting at the first of
    ``budgets`` and return it. Static (papermill, nbval, a script): show :func:`bits_figure` of
    every budget in ``budgets`` and return None."""
    front = pareto_front(table) if front is None else front
    if live_frontend(live):
        slider = budget_slider(table, front, budgets[0] if len(budgets) else None, on_change=on_change)
        _display(slider.widget, new=False)
        return slider
    for budget in budgets:
        show(bits_figure(allocate(table, budget, front), table))
    return None
