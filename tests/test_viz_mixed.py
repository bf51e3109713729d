"""genie.viz.mixed: the mixed-precision figures built from a small synthetic sensitivity table,
and the budget slider (static: one figure per budget; live: a value change redraws the bars from
the cached front and calls back with the allocation that allocate() gives)."""
import warnings

import pytest

from genie.quant.allocation import allocate, pareto_front, uniform_allocation
from genie.quant.sensitivity import SensitivityTable


@pytest.fixture
def viz():
    pytest.importorskip("plotly")
    from genie import viz

    return viz


@pytest.fixture
def table():
    layers = ["b1.conv", "b2.conv", "b3.conv"]
    return SensitivityTable(
        layers=layers, sources=layers, params=[64, 256, 1024], bits=[2, 3, 4, 8],
        scores=[[0.5, 0.1, 0.02, 1e-5], [0.3, 0.05, 0.01, 2e-5], [0.2, 0.02, 0.004, 1e-6]],
        fixed={"first": [8, 27], "fc": [8, 40]}, method="kl", setting="brecq", fold_bn=True,
        weight_symmetric=False, images=8, seconds=0.1, model="synthetic", fingerprint="0",
        order=["first", *layers, "fc"])


def test_sensitivity_heatmap_has_a_row_per_layer_and_log_colours(viz, table):
    fig = viz.sensitivity_figure(table)
    heat = fig.data[0]
    assert list(heat.x) == ["W2", "W3", "W4", "W8"] and len(heat.y) == 3 and heat.y[0].startswith("b1.conv (64 w)")
    assert heat.z[0][3] == pytest.approx(-5.0) and heat.customdata[2][0] == 0.2 # log10 colours, raw values on hover
    assert "kl, 8 images" in fig.layout.title.text and "first at 8" in fig.layout.title.text
    assert fig.layout.xaxis.title.text and fig.layout.yaxis.title.text and "nats" in heat.colorbar.title.text


def test_pareto_figure_draws_the_front_and_the_marked_points(viz, table):
    front = pareto_front(table)
    marked = {f"W{b}": uniform_allocation(table, b) for b in (2, 3, 4)}
    fig = viz.pareto_figure(front, marked, method=table.method)
    assert list(fig.data[0].x) == [a.weight_bytes for a in front] and list(fig.data[0].y) == [a.predicted for a in front]
    assert [t.name for t in fig.data[1:]] == ["W2", "W3", "W4"]
    assert fig.data[2].x[0] == marked["W3"].weight_bytes and fig.layout.yaxis.type == "log"
    assert "bytes" in fig.layout.xaxis.title.text


def test_bits_figure_shows_every_layer_with_the_fixed_ones_grey(viz, table):
    alloc = allocate(table, 3, pareto_front(table))
    fig = viz.bits_figure(alloc, table)
    bars, budget = fig.data
    assert list(bars.x) == table.order and list(bars.y) == [alloc.bits[n] for n in table.order]
    assert bars.y[0] == 8 and bars.y[-1] == 8 and bars.marker.color[0] == bars.marker.color[-1] == viz.mixed.FIXED_COLOR
    assert list(budget.y) == [3, 3] and f"{alloc.weight_bytes:,} bytes" in fig.layout.title.text
    assert bars.customdata[1][0] == 64


def test_accuracy_memory_figure_has_one_line_per_series_and_the_fp32_line(viz):
    fig = viz.accuracy_memory_figure({"uniform": [(300, 80.0, "W3"), (200, 60.0, "W2")],
                                      "mixed": [(250, 75.0, "2.5")]}, fp_top1=90.0)
    assert [t.name for t in fig.data] == ["uniform", "mixed", "FP32"]
    assert list(fig.data[0].x) == [200, 300] and list(fig.data[0].text) == ["W2", "W3"]  # sorted by memory
    assert list(fig.data[2].y) == [90.0, 90.0] and list(fig.data[2].x) == [200, 300]


def test_budget_explorer_in_static_mode_shows_one_figure_per_budget(viz, table, monkeypatch):
    shown = []
    monkeypatch.setattr(viz.mixed, "show", shown.append)
    assert viz.budget_explorer(table, budgets=[2.5, 3], live=False) is None
    assert [f.data[1].y[0] for f in shown] == [2.5, 3]


def test_budget_explorer_in_live_mode_displays_the_slider(viz, table, monkeypatch):
    pytest.importorskip("ipywidgets")
    displayed = []
    monkeypatch.setattr(viz.mixed, "_display", lambda obj, **kw: displayed.append(obj))
    explorer = viz.budget_explorer(table, budgets=[3, 2.5], live=True)
    assert displayed == [explorer.widget] and explorer.slider.value == 3.0
    assert explorer.allocation == allocate(table, 3)


def test_budget_slider_redraws_and_calls_back_with_the_allocation(viz, table):
    pytest.importorskip("ipywidgets")
    front = pareto_front(table)
    calls = []
    slider = viz.budget_slider(table, front, budget=8, on_change=calls.append)
    assert (slider.slider.min, slider.slider.max, slider.slider.value) == (2.0, 8.0, 8.0)
    assert slider.widget.children == (slider.slider, slider.summary, slider.plot)
    assert list(slider.plot.data[0].y) == [8] * 5
    slider.slider.value = 2.5  # what a person moving it does
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # in range: allocate() does not warn
        expected = allocate(table, 2.5, front)
    assert calls == [expected] and slider.allocation == expected
    assert list(slider.plot.data[0].y) == [expected.bits[n] for n in table.order]
    assert list(slider.plot.data[1].y) == [2.5, 2.5]
    assert f"{expected.weight_bytes:,} bytes" in slider.summary.value
    assert slider.plot.layout.title.text.startswith("budget 2.5 bits/weight")
    slider.slider.value = 2.0  # the narrowest: every free layer at 2 bits
    assert calls[-1].bits == uniform_allocation(table, 2).bits and len(calls) == 2
