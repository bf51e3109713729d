"""genie.viz: figures, showing them as MIME bundles, live views in static and live mode (closing
into their final output, inside and outside a control panel), controls, plus the lazy-import
promise."""
import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch


def test_import_genie_needs_no_plotting_or_notebook_package():
    code = ("import sys, genie, genie.viz, genie.analysis, genie.sweep; "
            "print([m for m in ('matplotlib', 'plotly', 'ipywidgets', 'IPython', 'papermill') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.fixture
def viz():
    pytest.importorskip("matplotlib")
    pytest.importorskip("plotly")
    from genie import viz

    return viz


def test_live_frontend_is_off_outside_jupyter_and_follows_overrides(viz, monkeypatch):
    monkeypatch.delenv("GENIE_LIVE", raising=False)
    assert viz.live_frontend() is False
    assert viz.live_frontend(True) is True
    monkeypatch.setenv("GENIE_LIVE", "1")
    assert viz.live_frontend() is True and viz.live_frontend(False) is False
    monkeypatch.setenv("GENIE_LIVE", "0")
    assert viz.live_frontend() is False


def test_image_grid_has_title_and_axis_labels(viz, cifar_spec):
    images = torch.randn(10, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    fig = viz.image_grid(images, cifar_spec.mean, cifar_spec.std, ncols=4, title="grid")
    ax = fig.axes[0]
    assert ax.get_title() == "grid" and "10 images, 32 x 32 px" in ax.get_xlabel() and ax.get_ylabel()
    assert ax.images[0].get_array().shape == (3 * 33 - 1, 4 * 33 - 1, 3)
    rgb = viz.to_rgb(images, cifar_spec.mean, cifar_spec.std)
    assert rgb.shape == (10, 32, 32, 3) and rgb.min() >= 0 and rgb.max() <= 1
    with pytest.raises(ValueError, match="RGB"):
        viz.to_rgb(torch.zeros(2, 1, 8, 8), cifar_spec.mean, cifar_spec.std)


def test_plotly_figures_carry_title_and_axis_titles(viz):
    figs = [
        viz.line_figure({"a": ([0, 1], [1.0, 0.5])}, "T1", "iteration", "loss", log_y=True),
        viz.bar_figure(["x", "y"], {"s": [1, None]}, "T2", "unit", "error"),
        viz.heatmap_figure([[1.0, 2.0]], ["l1", "l2"], ["d"], "T3", "layer", "distiller", colorbar="BNS"),
    ]
    for i, fig in enumerate(figs, 1):
        assert fig.layout.title.text == f"T{i}"
        assert fig.layout.xaxis.title.text and fig.layout.yaxis.title.text
    assert figs[0].layout.yaxis.type == "log"


def test_table_text_lines_up_columns(viz):
    text = viz.table_text([{"a": 1.234, "b": "x"}, {"a": 10.0, "c": None}], title="T")
    lines = text.splitlines()
    assert lines[0] == "T" and lines[1].split() == ["a", "b", "c"] and lines[2].split() == ["1.23", "x"]
    assert lines[1].index("b") == lines[2].index("x") and lines[3].split() == ["10.00"]


def test_distill_monitor_in_static_mode_collects_snapshots_and_losses(viz, cifar_spec):
    from genie.events import BatchDone, DistillProgress, DistillSnapshot

    mon = viz.DistillMonitor(cifar_spec.mean, cifar_spec.std, iters=20, batches=1, live=False)
    assert mon.snapshot_at[0] == 0 and mon.snapshot_at[-1] == 19 and mon.report_every >= 1
    images = torch.zeros(4, 3, 32, 32)
    mon(DistillSnapshot(0, [0], images))
    images += 1.0  # the distiller may update its tensor in place after the event
    mon(DistillProgress(0, [0], torch.tensor([[3.0], [2.0]]), None))
    mon(BatchDone(0, 2.0, 0.1))
    assert torch.equal(mon.images.iterations(0)[0], torch.zeros(4, 3, 32, 32))
    assert mon.curve.data["batch 0"] == ([0.0, 1.0], [3.0, 2.0])
    assert mon.progress.count == 20
    mon.close()
    assert mon.closed and mon.curve.figure().layout.yaxis.type == "log"


def test_recon_monitor_fills_the_block_chart(viz):
    from genie.events import UnitEnd, UnitProgress, UnitStart

    mon = viz.ReconMonitor(iters=4, units=2, live=False)
    for i, name in enumerate(["b0", "b1"]):
        mon(UnitStart(i, 2, name, "block", 4, 10.0 * (i + 1)))
        mon(UnitProgress(i, name, 0, torch.tensor([5.0, 4.0, 3.0, 2.0])))
        mon(UnitEnd(i, name, "block", 10.0 * (i + 1), 1.0 * (i + 1), torch.ones(4), 0.1))
    fig = mon.chart.figure()
    assert list(fig.data[0].x) == ["b0", "b1"] and list(fig.data[0].y) == [10.0, 20.0] and list(fig.data[1].y) == [1.0, 2.0]
    assert mon.progress.count == 8 and mon.curve.data["b1"][1] == [5.0, 4.0, 3.0, 2.0]
    mon.close()


def test_recon_monitor_shows_where_a_resumed_run_starts(viz):
    from genie.events import UnitEnd, UnitRestored, UnitStart

    mon = viz.ReconMonitor(iters=4, units=3, live=False)
    for i, name in enumerate(["b0", "b1"]):  # restored from checkpoints: their curves and errors are drawn
        mon(UnitRestored(i, name, "block", 10.0, 1.0 + i, torch.tensor([5.0, 4.0, 3.0, 2.0]), 0.1, total=3))
    assert mon.progress.count == 8 and mon.progress.text == "resumed: units 1-2 of 3 restored from checkpoints"
    mon(UnitStart(2, 3, "b2", "block", 4, 30.0))
    assert mon.progress.count == 8  # the resumed run's first unit starts after the restored ones
    mon(UnitEnd(2, "b2", "block", 30.0, 3.0, torch.ones(4), 0.1))
    assert list(mon.chart.figure().data[1].y) == [1.0, 2.0, 3.0] and mon.curve.data["b0"][1] == [5.0, 4.0, 3.0, 2.0]
    assert mon.progress.count == 12
    mon.close()


def test_run_panel_without_a_frontend_uses_the_defaults(viz):
    calls = []
    panel = viz.RunPanel(calls.append, {"w_bits": 4, "swing": True}, {"w_bits": (2, 8)}, live=False)
    assert panel.values() == {"w_bits": 4, "swing": True}
    panel.click()
    assert calls == [{"w_bits": 4, "swing": True}] and panel.runs == 1


def test_run_panel_widgets_report_their_values(viz):
    pytest.importorskip("ipywidgets")
    panel = viz.RunPanel(lambda values: None, {"model": "a", "w_bits": 4, "swing": True, "iters": 30},
                         {"model": ["a", "b"], "w_bits": (2, 8)}, live=True)
    kinds = {k: type(w).__name__ for k, w in panel.widgets.items()}
    assert kinds == {"model": "Dropdown", "w_bits": "IntSlider", "swing": "Checkbox", "iters": "BoundedIntText"}
    panel.widgets["w_bits"].value = 6
    assert panel.values()["w_bits"] == 6 and "w_bits=6" in panel.status.value


def test_snapshot_schedule(viz):
    from genie.distill import snapshot_schedule

    assert viz.snapshot_schedule is snapshot_schedule  # re-exported where notebooks look for it
    assert viz.snapshot_schedule(1, 6) == [0]
    assert viz.snapshot_schedule(100, 3) == [0, 50, 99]
    assert viz.snapshot_schedule(0) == []


@pytest.fixture
def shown(monkeypatch):
    """What viz displays, as a list of ``(object, raw)``: an IPython session without a kernel."""
    IPython = pytest.importorskip("IPython")
    import IPython.display

    out = []
    monkeypatch.setattr(IPython, "get_ipython", lambda: object())
    monkeypatch.setattr(IPython.display, "display", lambda obj, raw=False, **kw: out.append((obj, raw)))
    return out


def test_show_emits_mime_bundles_that_round_trip(viz, shown):
    import plotly.io

    viz.show(viz.line_figure({"a": ([0, 1], [3, 2])}, "T", "x", "y"))
    bundle, raw = shown[-1]
    assert raw and bundle["text/plain"] == "<plotly figure: T>"
    fig = plotly.io.from_json(json.dumps(bundle[viz.PLOTLY_MIME]))
    assert fig.layout.title.text == "T" and list(fig.data[0].y) == [3.0, 2.0] and fig.data[0].name == "a"

    viz.show(viz.image_grid(torch.zeros(2, 3, 8, 8), (0.5,) * 3, (0.25,) * 3, title="grid"))
    bundle, raw = shown[-1]
    assert raw and bundle["text/plain"] == "<image: grid>"
    assert base64.b64decode(bundle["image/png"]).startswith(b"\x89PNG\r\n\x1a\n")
    with pytest.raises(TypeError, match="matplotlib or plotly"):
        viz.show("not a figure")


def test_static_views_show_their_final_output_once_on_close(viz, capsys):
    with viz.Progress(4, "steps", live=False) as bar:
        bar.update(3, "nearly")
    assert capsys.readouterr().out.startswith("steps: 3/4 done in ")
    bar.close()
    assert capsys.readouterr().out == "" and bar.closed
    grid = viz.ImageGridView((0.5,) * 3, (0.25,) * 3, live=False)
    grid.close()
    assert capsys.readouterr().out == ""  # no snapshot: nothing to show


def test_live_views_are_replaced_by_their_final_output(viz, shown):
    pytest.importorskip("ipywidgets")
    from genie.events import UnitEnd, UnitStart

    mon = viz.ReconMonitor(iters=2, units=1, live=True)
    widgets = [mon.progress.widget, mon.chart.widget, mon.curve.widget]
    assert [obj for obj, _ in shown] == widgets and all(w.comm is not None for w in widgets)
    mon(UnitStart(0, 1, "b0", "block", 2, 5.0))
    mon(UnitEnd(0, "b0", "block", 5.0, 1.0, torch.ones(2), 0.1))
    assert list(mon.chart.widget.data[1].y) == [1.0]  # the live chart fills in as units end
    mon.close()
    assert all(p.closed for p in (mon.progress, mon.chart, mon.curve))
    assert all(w.comm is None for w in widgets)  # each widget closed once its final output replaced it


def test_live_views_inside_a_run_panel_stay_widgets(viz, shown):
    pytest.importorskip("ipywidgets")
    made = {}

    def run(values):
        with viz.Progress(values["iters"], "inside", live=True) as made["bar"]:
            made["bar"].update(values["iters"])

    panel = viz.RunPanel(run, {"iters": 3}, live=True)
    panel.click()
    bar = made["bar"]
    assert panel.runs == 1 and bar.closed and bar.nested
    assert bar.widget.comm is not None and bar.label.value.startswith("inside: 3/3 done in ")
    with viz.Progress(1, "outside", live=True) as outside:
        assert not outside.nested


def test_notebook_setup_finds_the_assets(viz, monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("GENIE_ASSETS", raising=False)
    beside = Path(__file__).resolve().parents[1].parent / "shared" / "assets"
    info = viz.notebook_setup(live=False)
    # unset: the shared/assets folder beside the checkout when there is one, else the cache
    if beside.is_dir():
        assert info["assets"] == str(beside) == os.environ.get("GENIE_ASSETS")
    else:
        assert info["assets"].startswith("none") and os.environ.get("GENIE_ASSETS") is None
    monkeypatch.setenv("GENIE_ASSETS", str(tmp_path))
    assert viz.notebook_setup(live=False)["assets"] == str(tmp_path)  # a setting already made wins
    (tmp_path / "mine").mkdir()
    info = viz.notebook_setup(str(tmp_path / "mine"), live=False)
    assert info["assets"] == str((tmp_path / "mine").resolve()) and info["display"] == "static figures"
    assert "static figures" in capsys.readouterr().out
    with pytest.raises(FileNotFoundError, match="does not exist"):
        viz.notebook_setup(str(tmp_path / "missing"))
