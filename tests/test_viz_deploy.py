"""genie.viz.deploy: the kernel chart and table of onnxruntime's optimised graphs and the latency
chart and table, built from synthetic operator counts and latency rows (no onnx or onnxruntime
needed), plus the pure helpers of genie.export.latency they read."""
import pytest

from genie.export.latency import FLOAT_KERNELS, INTEGER_KERNELS, LATENCY_FILES, has_vnni, split_kernels

# the optimised graphs of ResNet-20 W8A8 (benchmarks/RESULTS.md, issue 25)
PAPER = {"QGemm": 1, "QLinearConv": 9, "Conv": 1, "FusedConv": 9, "Transpose": 18, "QuantizeLinear": 12}
DEPLOY = {"QGemm": 1, "QLinearAdd": 9, "QLinearConv": 19, "Transpose": 2, "DequantizeLinear": 3}


def _row(model, px, threads, fp32, paper, deploy, batch=1):
    return {"model": model, "px": px, "threads": threads, "batch": batch, "fp32_ms_per_image": fp32,
            "paper_ms_per_image": paper, "deploy_ms_per_image": deploy,
            "paper_speedup": round(fp32 / paper, 2), "deploy_speedup": round(fp32 / deploy, 2)}


ROWS = [_row("resnet20_cifar10", 32, 1, 2.58, 3.79, 3.43), _row("resnet18", 224, 1, 104.9, 136.7, 111.0)]


@pytest.fixture
def viz():
    pytest.importorskip("plotly")
    from genie import viz

    return viz


def test_split_kernels_and_vnni():
    ints, floats = split_kernels(PAPER)
    assert ints == {"QGemm": 1, "QLinearConv": 9} and floats == {"Conv": 1, "FusedConv": 9, "Transpose": 18}
    assert not set(INTEGER_KERNELS) & set(FLOAT_KERNELS)
    assert list(LATENCY_FILES)[:3] == ["fp32", "paper", "deploy"] and LATENCY_FILES["fp32"] is None
    assert has_vnni({"avx2": True, "avx512_vnni": False, "avx_vnni": True})
    assert not has_vnni({"cpu": "AMD EPYC", "avx2": True, "avx512_vnni": False, "avx_vnni": False})


def test_kernels_figure_puts_integer_kernels_before_float_ones(viz):
    fig = viz.kernels_figure({"W8A8 paper": PAPER, "W8A8 deploy": DEPLOY}, title="ResNet-20")
    paper, deploy = fig.data
    assert [paper.name, deploy.name] == ["W8A8 paper", "W8A8 deploy"]
    # integer kernels first (in INTEGER_KERNELS order), then float ones; Q/DQ nodes are left out
    assert list(paper.x) == ["QLinearConv", "QGemm", "QLinearAdd", "Conv", "FusedConv", "Transpose"]
    assert list(paper.y) == [9, 1, 0, 1, 9, 18] and list(deploy.y) == [19, 1, 9, 0, 0, 2]
    assert fig.layout.barmode == "group" and fig.layout.title.text == "ResNet-20"
    assert fig.layout.shapes[0].x0 == pytest.approx(2.5)  # the line between the two kinds
    assert [a.text for a in fig.layout.annotations] == ["integer kernels", "float kernels"]
    assert fig.layout.xaxis.title.text and fig.layout.yaxis.title.text


def test_kernels_figure_with_one_kind_only_draws_no_separator(viz):
    fig = viz.kernels_figure({"FP32": {"Conv": 19, "Add": 6, "Gemm": 1}})
    assert list(fig.data[0].x) == ["Conv", "Gemm", "Add"] and not fig.layout.shapes
    assert [a.text for a in fig.layout.annotations] == ["float kernels"]


def test_kernel_rows_list_each_kind(viz):
    rows = viz.kernel_rows({"W8A8 paper": PAPER, "W8A8 deploy": DEPLOY, "empty": {}})
    assert rows[0] == {"file": "W8A8 paper", "integer kernels": "9 QLinearConv, 1 QGemm",
                       "float kernels": "1 Conv, 9 FusedConv, 18 Transpose"}
    assert rows[1]["integer kernels"] == "19 QLinearConv, 1 QGemm, 9 QLinearAdd" and rows[1]["float kernels"] == "2 Transpose"
    assert rows[2]["integer kernels"] == rows[2]["float kernels"] == "-"


def test_latency_figure_has_a_group_per_model_and_a_bar_per_file(viz):
    fig = viz.latency_figure(ROWS)
    assert [t.name for t in fig.data] == ["FP32", "W8A8 paper", "W8A8 deploy"]
    assert list(fig.data[0].x) == ["resnet20_cifar10 (32 px)", "resnet18 (224 px)"]
    assert list(fig.data[2].y) == [3.43, 111.0] and fig.data[2].text[1] == "111"
    assert fig.layout.yaxis.type == "log"  # 2.6 to 137 ms: more than a factor of 20
    assert fig.layout.title.text == "onnxruntime latency, batch 1, 1 thread" and "ms per image" in fig.layout.yaxis.title.text
    linear = viz.latency_figure(ROWS[:1], keys=["fp32", "deploy"])
    assert [t.name for t in linear.data] == ["FP32", "W8A8 deploy"] and linear.layout.yaxis.type == "linear"


def test_latency_figure_names_threads_when_they_vary(viz):
    rows = ROWS[:1] + [_row("resnet20_cifar10", 32, 2, 1.37, 2.38, 1.87)]
    fig = viz.latency_figure(rows)
    assert list(fig.data[0].x) == ["resnet20_cifar10 (32 px), 1 thread", "resnet20_cifar10 (32 px), 2 threads"]
    assert fig.layout.title.text.endswith("1, 2 threads")


def test_latency_rows_and_table(viz, capsys):
    rows = viz.latency_rows(ROWS)
    assert rows[1] == {"model": "resnet18", "px": 224, "threads": 1, "batch": 1, "FP32 ms": 104.9,
                       "W8A8 paper ms": 136.7, "W8A8 deploy ms": 111.0, "W8A8 paper vs FP32": "0.77x",
                       "W8A8 deploy vs FP32": "0.95x"}
    viz.latency_table(ROWS, title="latency")
    text = capsys.readouterr().out  # outside IPython the table is printed
    assert text.startswith("latency\nmodel") and "111.000" in text and "0.95x" in text
