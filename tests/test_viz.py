"""genie.analysis (the checkerboard measure, the gradient footprint of strided convolutions) and
genie.viz (figures, live views in static mode, controls), plus the lazy-import promise."""
import json
import subprocess
import sys

import pytest
import torch

from genie.analysis import gradient_coverage, power_spectrum, stride_artifact_energy, stride_frequency_mask
from genie.errors import GenieError


def _checkerboard(n=2, size=8, period=2):
    y, x = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    board = ((y // (period // 2) + x // (period // 2)) % 2).float() * 2 - 1
    return board.expand(n, 3, size, size).clone()


# ---------------------------------------------------------------------------------------------
# the artifact measure


def test_stride_frequency_mask_marks_the_stride_frequencies():
    mask = stride_frequency_mask(8, 8, 2)
    assert mask.sum() == 3 and mask[0, 4] and mask[4, 0] and mask[4, 4] and not mask[0, 0]
    assert stride_frequency_mask(16, 16, 4).sum() == 15


def test_checkerboard_scores_one_and_smooth_images_zero():
    assert torch.allclose(stride_artifact_energy(_checkerboard()), torch.ones(2, dtype=torch.float64))
    constant = torch.full((2, 3, 8, 8), 0.7)
    assert torch.equal(stride_artifact_energy(constant), torch.zeros(2, dtype=torch.float64))
    ramp = torch.linspace(-1, 1, 32).view(1, 1, 1, 32).expand(1, 3, 32, 32)
    assert stride_artifact_energy(ramp).item() < 0.01


def test_period_four_pattern_is_seen_at_stride_four_not_two():
    board4 = _checkerboard(1, 16, period=4)
    assert stride_artifact_energy(board4, stride=2).item() < 1e-12
    assert stride_artifact_energy(board4, stride=4).item() == pytest.approx(1.0)


def test_white_noise_scores_its_share_of_frequencies():
    noise = torch.randn(512, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    expected = 3 / (32 * 32 - 1)
    assert stride_artifact_energy(noise).mean().item() == pytest.approx(expected, rel=0.1)


def test_measure_ignores_brightness_and_contrast():
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(stride_artifact_energy(x), stride_artifact_energy(3.0 * x + 5.0))


def test_added_checkerboard_raises_the_measure_of_real_images(cifar_spec):
    from genie.data import cifar10_test

    real = cifar10_test(cifar_spec.mean, cifar_spec.std, source="lossless100").images[:32]
    clean = stride_artifact_energy(real)
    assert clean.mean().item() < 0.005
    dirty = stride_artifact_energy(real + 0.3 * _checkerboard(32, 32))
    assert (dirty > clean).all()


def test_power_spectrum_conserves_energy():
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(2)).double()
    centred = x - x.mean(dim=(2, 3), keepdim=True)
    assert torch.allclose(power_spectrum(x).sum(dim=(1, 2)), 64 * centred.pow(2).sum(dim=(1, 2, 3)))


@pytest.mark.parametrize("bad", [torch.zeros(3, 8, 8), torch.zeros(0, 3, 8, 8), torch.zeros(1, 3, 8, 8, dtype=torch.int64)])
def test_measure_rejects_bad_input(bad):
    with pytest.raises(GenieError, match="image"):
        stride_artifact_energy(bad)


def test_measure_rejects_indivisible_sizes_and_bad_strides():
    with pytest.raises(GenieError, match="not divisible"):
        stride_artifact_energy(torch.zeros(1, 3, 9, 9))
    with pytest.raises(GenieError, match="stride"):
        stride_artifact_energy(torch.zeros(1, 3, 8, 8), stride=1)


def test_gradient_coverage_of_a_strided_conv_is_a_checkerboard():
    plain = gradient_coverage(8, 3, 2)
    assert plain[2:6, 2:6].tolist() == [[1, 2, 1, 2], [2, 4, 2, 4], [1, 2, 1, 2], [2, 4, 2, 4]]
    assert torch.equal(gradient_coverage(8, 3, 1)[2:6, 2:6], torch.full((4, 4), 9.0, dtype=torch.float64))


def test_swing_flattens_the_footprint():
    swung = gradient_coverage(8, 3, 2, swing=True)
    # mean over offsets -1, 0, +1 of a 1:2 pattern: (1 + 2 + 2) / 3 and (2 + 1 + 1) / 3 per axis
    assert swung[2, 2].item() == pytest.approx(25 / 9) and swung[3, 3].item() == pytest.approx(16 / 9)
    assert swung[2, 3].item() == pytest.approx(20 / 9)
    plain, swing = gradient_coverage(32)[None, None], gradient_coverage(32, swing=True)[None, None]
    assert stride_artifact_energy(swing).item() < 0.6 * stride_artifact_energy(plain).item()


def test_gradient_coverage_checks_its_arguments():
    with pytest.raises(GenieError, match="size"):
        gradient_coverage(1)
    with pytest.raises(GenieError, match="stride"):
        gradient_coverage(8, 3, 0)


# ---------------------------------------------------------------------------------------------
# genie.viz


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
    assert viz.snapshot_schedule(1, 6) == [0]
    assert viz.snapshot_schedule(100, 3) == [0, 50, 99]
    assert viz.snapshot_schedule(0) == []


def test_static_show_emits_mime_bundles(viz):
    fig = viz.line_figure({"a": ([0], [1])}, "T", "x", "y")
    bundle = viz._plotly_bundle(fig)
    assert json.dumps(bundle[viz.PLOTLY_MIME]) and bundle["text/plain"] == "<plotly figure: T>"
