"""ONNX export (genie.export): valid QDQ graphs, integer parity with genie in onnxruntime,
integer kernels, byte-identical re-export, integer forms, symmetric weights, clear errors."""
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

onnx = pytest.importorskip("onnx", reason="the export extra (onnx, onnxruntime) is not installed")
pytest.importorskip("onnxruntime", reason="the export extra (onnx, onnxruntime) is not installed")

from genie.errors import GenieError  # noqa: E402
from genie.export import build_onnx, export_onnx, weight_footprint  # noqa: E402
from genie.export.runtime import integer_parity, onnx_session, operator_counts, output_parity, run_onnx  # noqa: E402
from genie.quant import load_quantized, quantize_model, reconstruct, save_quantized  # noqa: E402
from genie.quant.bias import input_quantizers  # noqa: E402


def _quantized(model, images, w_bits, a_bits, iters=4, **kw):
    qm = quantize_model(model, images, w_bits=w_bits, a_bits=a_bits, **kw)
    reconstruct(qm, images, iters=iters, batch_size=16, progress=False)
    return qm


def _assert_per_tensor_parity(qm, path, images, optimization="all"):
    """Every integer tensor, and the logits, as genie computes them when onnxruntime's node reads
    genie's integers of the tensors before it (what an exporter can guarantee on any CPU).
    ``optimization``: onnxruntime's graph optimisation level for the logits."""
    parity = integer_parity(qm, path, images)
    assert parity, "no activation quantizer was compared"
    worst = max(d for d, _ in parity.values())
    frac = max(f for _, f in parity.values())
    # Both sides compute the value before rounding in float32 from the same integers, in other
    # orders: they differ by float rounding, so an element can round the other way only next to
    # a tie (1 step, never 2). A sum of K products (K <= 576 here) rounds by ~ sqrt(K) * 2^-24 of
    # its magnitude (root mean square), at most 2^7 steps for an 8-bit tensor: ~ 24 * 6e-8 * 128
    # = 2e-4 steps, so with values spread evenly ~ 2 * 2e-4 = 4e-4 of the elements lie that close
    # to a tie. Values bunched on a tie would break this; genie's tie guard moves every step off
    # ties that calibration values sit on (measured: at most 6 in 10^6 on AVX-512, 2e-5 on AVX2).
    assert worst <= 1 and frac < 1e-3, {k: v for k, v in parity.items() if v[0] > 0}
    diff, bound = output_parity(qm, path, images, optimization)
    assert diff <= bound, (diff, bound)  # float32 summation in two orders (output_parity: Higham's bound)


@pytest.fixture(scope="module")
def test_images(cifar_spec):
    from genie.data import cifar10_test

    return cifar10_test(cifar_spec.mean, cifar_spec.std, source="lossless100")


@pytest.fixture(scope="module")
def resnet20_models(resnet20, calib64):
    return {bits: _quantized(resnet20, calib64, *bits) for bits in ((8, 8), (4, 4), (2, 4))}


@pytest.mark.parametrize("bits", [(8, 8), (4, 4), (2, 4)])
def test_resnet20_exports_a_valid_qdq_graph_with_genies_integers(resnet20_models, bits, test_images, tmp_path):
    qm = resnet20_models[bits]
    report = export_onnx(qm, tmp_path / "m.onnx", test_images.images[:8])
    model = onnx.load(str(report.path))
    onnx.checker.check_model(model, full_check=True)
    ops = report.operators
    enabled = [q for _, q in qm.act_quantizers() if q.enabled]
    assert ops["QuantizeLinear"] == len(enabled)
    # one DequantizeLinear per activation quantizer, weight, and int32 bias on a quantized input
    assert ops["DequantizeLinear"] == len(enabled) + len(qm.layers()) + len(input_quantizers(qm.net))
    assert "BatchNormalization" not in ops  # folded
    assert ops.get("Clip", 0) == sum(q.bits < 8 for q in enabled)  # QCDQ: a Clip for n < 8 bits
    # end to end (report.max_abs_diff) a tie that rounds the other way early on is carried
    # through the low-bit layers after it, by an amount no float bound limits (1.07 on an AVX2
    # CPU at W4A4): the logits are compared per tensor instead, and the predictions below
    assert np.isfinite(report.max_abs_diff)
    _assert_per_tensor_parity(qm, report.path, test_images.images[:32])
    with torch.no_grad():
        ours = qm(test_images.images).argmax(1).numpy()
    theirs = run_onnx(onnx_session(report.path), test_images.images).argmax(1)
    assert (ours == theirs).mean() >= 0.99


@pytest.mark.parametrize("tamper", ["activation two steps off", "classifier scale 1 % off"])
def test_the_parity_checks_fail_on_a_wrong_graph(resnet20_models, test_images, tamper, tmp_path):
    """The bounds above are tight enough to catch an exporter error: an activation tensor whose
    integers are all 2 steps off (its zero point moved), or a classifier whose step is 1 % off."""
    qm = resnet20_models[(4, 4)]
    model = onnx.load(str(export_onnx(qm, tmp_path / "m.onnx", (1, 3, 32, 32)).path))
    name = "layer2.0.main.3.zero_point" if tamper.startswith("activation") else "linear.weight_scale"
    init = next(t for t in model.graph.initializer if t.name == name)
    value = onnx.numpy_helper.to_array(init)
    changed = value + np.asarray(2, dtype=value.dtype) if tamper.startswith("activation") else value * np.float32(1.01)
    init.CopyFrom(onnx.numpy_helper.from_array(changed.astype(value.dtype), name))
    onnx.save(model, str(tmp_path / "wrong.onnx"))
    with pytest.raises(AssertionError):
        _assert_per_tensor_parity(qm, tmp_path / "wrong.onnx", test_images.images[:16])
    if tamper.startswith("activation"):
        assert integer_parity(qm, tmp_path / "wrong.onnx", test_images.images[:16])["layer2.0.main.3"][0] == 2


def test_weights_are_integer_initializers_with_per_channel_scales(resnet20_models, tmp_path):
    qm = resnet20_models[(2, 4)]
    path = export_onnx(qm, tmp_path / "m.onnx", (1, 3, 32, 32)).path
    inits = {t.name: t for t in onnx.load(str(path)).graph.initializer}
    w = onnx.numpy_helper.to_array(inits["layer1.0.main.0.weight_int"])
    zp = onnx.numpy_helper.to_array(inits["layer1.0.main.0.weight_zero_point"])
    scale = onnx.numpy_helper.to_array(inits["layer1.0.main.0.weight_scale"])
    layer = qm.net.get_submodule("layer1.0.main.0").weight_quant
    assert w.dtype == np.uint8 and w.max() <= 3  # 2-bit integers in a uint8 container
    assert np.array_equal(w, layer.w_int.numpy())
    assert zp.shape == scale.shape == (16,)
    assert np.array_equal(zp, layer.zero_point.reshape(-1).numpy().astype(np.uint8))
    assert inits["layer1.0.main.0.bias_int"].data_type == onnx.TensorProto.INT32


def test_w8a8_runs_with_integer_kernels_in_onnxruntime(resnet20_models, tmp_path):
    path = export_onnx(resnet20_models[(8, 8)], tmp_path / "m.onnx", (1, 3, 32, 32)).path
    optimized = operator_counts(path, optimized=True, work_dir=str(tmp_path))
    assert optimized.get("QLinearConv", 0) + optimized.get("ConvInteger", 0) > 0, optimized


def test_reexport_after_save_and_load_is_byte_identical(resnet20_models, tmp_path):
    qm = resnet20_models[(4, 4)]
    qm.arch = "resnet20_cifar10"
    first = export_onnx(qm, tmp_path / "a.onnx", (1, 3, 32, 32)).path
    loaded = load_quantized(save_quantized(qm, tmp_path / "q.pt"))
    second = export_onnx(loaded, tmp_path / "b.onnx", torch.randn(4, 3, 32, 32)).path
    assert first.read_bytes() == second.read_bytes()


def test_reconstruction_leaves_biases_on_the_int32_grid(resnet20_models):
    pairs = input_quantizers(resnet20_models[(4, 4)].net)
    assert len(pairs) >= 19
    for layer, quant in pairs:
        ratio = layer.bias / (quant.scale.detach() * layer.weight_quant.scale.reshape(-1))
        assert torch.allclose(ratio, ratio.round(), atol=1e-3), ratio


def test_int4_form_uses_native_4_bit_types(resnet20_models, test_images, tmp_path):
    qm = resnet20_models[(4, 4)]
    report = export_onnx(qm, tmp_path / "m.onnx", test_images.images[:8], int_form="int4")
    model = onnx.load(str(report.path))
    onnx.checker.check_model(model, full_check=True)
    assert report.opset == 21 and np.isfinite(report.max_abs_diff)  # end to end: see the QDQ test
    _assert_per_tensor_parity(qm, report.path, test_images.images[:32])  # 4-bit tensors read as s * q
    inits = {t.name: t.data_type for t in model.graph.initializer}
    assert inits["layer1.0.main.0.weight_int"] == onnx.TensorProto.UINT4
    assert inits["layer1.0.main.3.zero_point"] == onnx.TensorProto.UINT4  # a 4-bit activation
    assert inits["layer1.0.input_quant.zero_point"] == onnx.TensorProto.UINT8  # the 8-bit second-layer input
    assert "Clip" not in report.operators
    with torch.no_grad():
        ours = qm(test_images.images).argmax(1).numpy()
    assert (run_onnx(onnx_session(report.path), test_images.images).argmax(1) == ours).mean() >= 0.99


def test_int4_form_refuses_2_bit_tensors(resnet20_models, tmp_path):
    with pytest.raises(GenieError, match="int_form='qcdq'"):
        export_onnx(resnet20_models[(2, 4)], tmp_path / "m.onnx", (1, 3, 32, 32), int_form="int4")
    assert not (tmp_path / "m.onnx").exists()


def test_symmetric_weights_export_signed_integers_with_zero_point_0(resnet20, calib64, tmp_path):
    qm = _quantized(resnet20, calib64, 4, 4, weight_symmetric=True)
    for _, layer in qm.layers():
        assert torch.all(layer.weight_quant.zero_point == 2 ** (layer.weight_quant.bits - 1))
    path = export_onnx(qm, tmp_path / "m.onnx", calib64[:8]).path
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}
    w, zp = inits["layer1.0.main.0.weight_int"], inits["layer1.0.main.0.weight_zero_point"]
    assert w.dtype == np.int8 and w.min() >= -8 and w.max() <= 7 and not zp.any()
    # the graph as written; onnxruntime's fused classifier (QGemm, uint8 inputs x int8 weights)
    # adds pairs of products in 16 bits with saturation on x86 CPUs without VNNI (AVX2's
    # vpmaddubsw): 255 * 127 * 2 > 32767, so 8-bit symmetric weights can give other logits there
    # (0.09 off measured on an AVX2 EPYC); README, Deployment
    _assert_per_tensor_parity(qm, path, calib64[:16], optimization="none")
    # an asymmetric model cannot be exported with zero points 0
    asym = _quantized(resnet20, calib64, 4, 4, iters=0)
    asym.config.weight_symmetric = True
    with pytest.raises(GenieError, match="--weight-symmetric"):
        build_onnx(asym, (1, 3, 32, 32))


def test_unfolded_batchnorm_is_folded_into_the_exported_weights(resnet20, calib64, tmp_path):
    qm = _quantized(resnet20, calib64, 4, 4, fold_bn=False)
    report = export_onnx(qm, tmp_path / "m.onnx", calib64[:8])
    assert "BatchNormalization" not in report.operators
    parity = integer_parity(qm, report.path, calib64[:16])
    # genie keeps BN in float here; the export's int32 bias rounds it: at most 1 step apart
    assert max(d for d, _ in parity.values()) <= 1


def _with_bn_statistics(model, size, seed=0):
    """Random weights, BatchNorm statistics measured on random images (as a trained model has)."""
    g = torch.Generator().manual_seed(seed)
    model.train()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None
            m.reset_running_stats()
    with torch.no_grad():
        model(torch.randn(16, 3, size, size, generator=g))
    return model.eval()


class LayersOutsideBlocks(nn.Module):
    """A user model: no residual block, layers outside any block, a view + Linear head (the view
    also checks that reconstruction keeps such a model out of the channels-last layout)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU6())
        self.conv = nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        self.act = nn.Hardswish()
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(16 * 4 * 4, 10)

    def forward(self, x):
        x = self.pool(self.act(self.bn(self.conv(self.stem(x)))))
        return self.fc(x.view(x.size(0), -1))  # view: fails on channels-last tensors


@pytest.mark.parametrize("name,size", [("mobilenet_v2", 32), ("resnet18", 32), ("user", 16)])
def test_other_cnns_export_and_match(name, size, tmp_path):
    import torchvision

    torch.manual_seed(0)
    build = {"mobilenet_v2": lambda: torchvision.models.mobilenet_v2(), "resnet18": lambda: torchvision.models.resnet18(),
             "user": LayersOutsideBlocks}[name]
    model = _with_bn_statistics(build(), size)
    images = torch.randn(16, 3, size, size, generator=torch.Generator().manual_seed(1))
    qm = _quantized(model, images, 4, 4, iters=0)
    report = export_onnx(qm, tmp_path / "m.onnx", images)
    onnx.checker.check_model(onnx.load(str(report.path)), full_check=True)
    _assert_per_tensor_parity(qm, report.path, images)


def test_weight_footprint_counts_bits():
    model = _with_bn_statistics(LayersOutsideBlocks(), 16)
    qm = _quantized(model, torch.randn(8, 3, 16, 16), 4, 4, iters=0, setting="all")
    sizes = weight_footprint(qm)
    weights = 3 * 8 * 9 + 8 * 16 * 9 + 256 * 10
    channels = 8 + 16 + 10
    biases = 4 * (8 + 16 + 10)  # the conv gained a bias from its folded BatchNorm
    assert sizes["fp32"] == 4 * weights + biases
    assert sizes["int8"] == weights + 5 * channels + biases
    assert sizes["packed"] == sum(-(-n * 4 // 8) for n in (3 * 8 * 9, 8 * 16 * 9, 2560)) + 5 * channels + biases


# --- errors ------------------------------------------------------------------------------------


def test_exporting_an_fp_model_is_refused(resnet20, tmp_path):
    with pytest.raises(GenieError, match="not quantized. Quantize it first"):
        export_onnx(resnet20, tmp_path / "m.onnx", (1, 3, 32, 32))


def test_exporting_before_reconstruction_is_refused(resnet20, calib64, tmp_path):
    qm = quantize_model(resnet20, calib64, w_bits=4, a_bits=4)
    with pytest.raises(GenieError, match="run reconstruct"):
        export_onnx(qm, tmp_path / "m.onnx", (1, 3, 32, 32))


class SineBlock(nn.Module):
    def forward(self, x):
        return torch.sin(x)


class WithSine(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.odd = SineBlock()
        self.gelu = nn.GELU()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(self.gelu(self.odd(self.conv(x))).mean((2, 3)))


def test_an_unhandled_operator_is_named_with_its_module(tmp_path):
    images = torch.randn(4, 3, 8, 8)
    qm = _quantized(WithSine(), images, 8, 8, iters=0)
    with pytest.raises(GenieError, match=r"operator torch\.sin in module 'odd' \(SineBlock\)"):
        export_onnx(qm, tmp_path / "m.onnx", images)
    qm.net.odd = nn.Identity()
    with pytest.raises(GenieError, match=r"module type torch\.nn\.modules\.activation\.GELU in module 'gelu'"):
        export_onnx(qm, tmp_path / "m.onnx", images)
    assert not list(tmp_path.iterdir())


def test_output_path_in_a_missing_folder_is_refused(resnet20_models, tmp_path):
    with pytest.raises(GenieError, match="does not exist"):
        export_onnx(resnet20_models[(8, 8)], tmp_path / "missing" / "m.onnx", (1, 3, 32, 32))
    with pytest.raises(GenieError, match="it is a folder"):
        export_onnx(resnet20_models[(8, 8)], tmp_path, (1, 3, 32, 32))


@pytest.mark.parametrize("example, message", [
    ("1x3x32x32", r"example must be an input tensor \(N, C, H, W\) or its shape, got '1x3x32x32'"),
    ((1, 3, 32), r"example must be an input tensor \(N, C, H, W\) or its shape, got \(1, 3, 32\)"),
    ((1, 3, 0, 32), r"example\[2\] \(the input shape N, C, H, W\)"),
    ((1, 3, 32.5, 32), r"example\[2\] \(the input shape N, C, H, W\)"),
    ((1, 3, 9000, 32), r"example's image side must be"),
], ids=["string", "three-sizes", "zero-side", "fractional-side", "side-too-large"])
def test_a_wrong_example_shape_is_named_and_nothing_is_written(resnet20_models, tmp_path, example, message):
    with pytest.raises(GenieError, match=message):
        export_onnx(resnet20_models[(8, 8)], tmp_path / "m.onnx", example)
    assert not list(tmp_path.iterdir())


def test_an_example_shape_of_numpy_integers_is_taken(resnet20_models, tmp_path):
    shape = tuple(np.array([2, 3, 32, 32], dtype=np.int64))
    report = export_onnx(resnet20_models[(8, 8)], tmp_path / "m.onnx", shape)
    dims = onnx.load(str(report.path)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["N", 3, 32, 32]


def test_missing_onnx_package_says_what_to_install(resnet20_models, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(GenieError, match=r"pip install 'genie-zsq\[export\]'"):
        export_onnx(resnet20_models[(8, 8)], tmp_path / "m.onnx", (1, 3, 32, 32))


def test_genie_imports_without_onnx():
    code = ("import sys; sys.modules['onnx'] = None; sys.modules['onnxruntime'] = None; "
            "import genie.quant, genie.export, genie.pipeline, genie.cli; print('ok')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_cli_export_errors_exit_2(tmp_path, capsys):
    from genie.cli import main

    assert main(["export", str(tmp_path / "none.pt"), "--out", str(tmp_path / "no" / "m.onnx")]) == 2
    assert "folder" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "none.pt"), "--out", str(tmp_path / "m.onnx")]) == 2
    assert "no quantized model" in capsys.readouterr().err
    assert main(["run", "--export-onnx", "--device", "cpu"]) == 2
    assert "give --out DIR" in capsys.readouterr().err
    assert main(["run", "--export-onnx", "--onnx-int", "int4", "--w-bits", "2", "--device", "cpu",
                 "--out", str(tmp_path / "r")]) == 2
    assert "needs --onnx-int qcdq" in capsys.readouterr().err


def test_a_failed_write_leaves_the_previous_file(resnet20_models, tmp_path, monkeypatch):
    import os

    path = export_onnx(resnet20_models[(8, 8)], tmp_path / "m.onnx", (1, 3, 32, 32)).path
    before = path.read_bytes()

    def full_disk(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(GenieError, match="could not write the ONNX model.*No space left"):
        export_onnx(resnet20_models[(4, 4)], path, (1, 3, 32, 32))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]  # no temporary file left behind


def test_a_mixed_precision_model_exports_each_layers_bits(resnet20, calib64, test_images, tmp_path):
    import json

    names = [n for n, _ in quantize_model(resnet20, calib64[:4], quantizer="nearest").layers()]
    free = [n for n in names if n not in ("conv1", "linear")]
    plan = {n: (2, 3, 4, 8)[i % 4] for i, n in enumerate(free)}
    qm = _quantized(resnet20, calib64, plan, 4)
    report = export_onnx(qm, tmp_path / "m.onnx", (1, 3, 32, 32))
    model = onnx.load(str(report.path))
    props = {p.key: p.value for p in model.metadata_props}
    assert props["w_bits"] == "mixed" and json.loads(props["w_bits_per_layer"]) == qm.weight_bits()
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    for name, bits in qm.weight_bits().items():
        w = inits[f"{name}.weight_int"]
        assert w.max() <= 2 ** bits - 1 and np.array_equal(w, qm.net.get_submodule(name).weight_quant.w_int.numpy())
    _assert_per_tensor_parity(qm, report.path, test_images.images[:16])
    with pytest.raises(GenieError, match="has 2 bits"):
        export_onnx(qm, tmp_path / "i4.onnx", (1, 3, 32, 32), int_form="int4")
    # 4- and 8-bit layers only: native UINT4 where 4 bits
    plan48 = {n: (4, 8)[i % 2] for i, n in enumerate(free)}
    qm48 = _quantized(resnet20, calib64, plan48, 4)
    model = onnx.load(str(export_onnx(qm48, tmp_path / "i4.onnx", (1, 3, 32, 32), int_form="int4").path))
    types = {t.name: t.data_type for t in model.graph.initializer}
    for name, bits in qm48.weight_bits().items():
        assert types[f"{name}.weight_int"] == (onnx.TensorProto.UINT4 if bits == 4 else onnx.TensorProto.UINT8)
    _assert_per_tensor_parity(qm48, tmp_path / "i4.onnx", test_images.images[:16])
