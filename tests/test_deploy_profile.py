"""The deployment profile (quantize_model(profile="deploy")): where its quantizers go, that the
exported graph runs every convolution, add and the classifier on integers in onnxruntime, that
genie and onnxruntime agree per tensor, that it saves, loads and re-exports, and that the
paper profile is left as it was."""
import warnings

import pytest
import torch

onnx = pytest.importorskip("onnx", reason="the export extra (onnx, onnxruntime) is not installed")
pytest.importorskip("onnxruntime", reason="the export extra (onnx, onnxruntime) is not installed")

from genie.errors import GenieError  # noqa: E402
from genie.export import export_onnx  # noqa: E402
from genie.export.runtime import integer_parity, operator_counts, output_parity  # noqa: E402
from genie.quant import load_quantized, quantize_model, reconstruct, save_quantized  # noqa: E402

FLOAT_COMPUTE = ("Conv", "FusedConv", "Gemm", "MatMul", "Add")


def _deployed(model, images, bits=8, iters=2, **kw):
    qm = quantize_model(model, images, w_bits=bits, a_bits=bits, profile="deploy", **kw)
    reconstruct(qm, images, iters=iters, batch_size=8, progress=False)
    return qm


@pytest.fixture(scope="module")
def resnet20_deploy(resnet20, calib64):
    return _deployed(resnet20, calib64)


def test_deploy_quantizers_sit_on_the_image_the_adds_and_the_last_blocks_output(resnet20_deploy):
    enabled = {n: q.bits for n, q in resnet20_deploy.act_quantizers() if q.enabled}
    assert enabled["conv1.input_quant"] == 8  # the image
    blocks = [f"layer{s}.{i}" for s in (1, 2, 3) for i in range(3)]
    for b in blocks:
        assert enabled[f"{b}.main_quant"] == 8  # the main path's side of the add
    # option-A shortcuts (subsample + zero channels) get their own; identity ones add the block input
    assert {n for n in enabled if n.endswith("shortcut_quant")} == {"layer2.0.shortcut_quant", "layer3.0.shortcut_quant"}
    # only the last block's output reaches no quantizer (an average pool comes first); logits stay float
    assert [n for n in enabled if n.endswith("output_quant")] == ["layer3.2.output_quant"]


def test_resnet20_w8a8_runs_whole_integer_in_onnxruntime(resnet20_deploy, calib64, tmp_path):
    path = export_onnx(resnet20_deploy, tmp_path / "m.onnx", (1, 3, 32, 32)).path
    ops = operator_counts(path, optimized=True, work_dir=str(tmp_path))
    assert ops.get("QLinearConv", 0) == 19 and ops.get("QGemm", 0) == 1 and ops.get("QLinearAdd", 0) == 9, ops
    assert not any(ops.get(op, 0) for op in FLOAT_COMPUTE), ops  # no float convolution, matmul or add
    assert ops.get("Transpose", 0) <= 2, ops  # only where the float pooling and shortcut slicing meet NHWC
    parity = integer_parity(resnet20_deploy, path, calib64[:16])
    assert max(d for d, _ in parity.values()) <= 1 and max(f for _, f in parity.values()) < 1e-3, parity
    diff, bound = output_parity(resnet20_deploy, path, calib64[:16])
    assert diff <= bound  # float32 summation bound (genie.export.runtime.output_parity)
    # signed tensors (the adds' main-path inputs) are written uint8 with zero point 128
    inits = {t.name: t for t in onnx.load(str(path)).graph.initializer}
    zp = inits["layer1.0.main_quant.zero_point"]
    assert zp.data_type == onnx.TensorProto.UINT8 and onnx.numpy_helper.to_array(zp) == 128
    assert "Relu" not in {n.op_type for n in onnx.load(str(path)).graph.node}  # zero-point-0 quantizers clamp


def test_a_deploy_model_saves_loads_and_reexports_the_same_bytes(resnet20_deploy, calib64, tmp_path):
    resnet20_deploy.arch = "resnet20_cifar10"
    loaded = load_quantized(save_quantized(resnet20_deploy, tmp_path / "q.pt"))
    assert loaded.config.profile == "deploy"
    with torch.no_grad():
        assert torch.equal(loaded(calib64[:8]), resnet20_deploy(calib64[:8]))
    a = export_onnx(resnet20_deploy, tmp_path / "a.onnx", (1, 3, 32, 32)).path
    b = export_onnx(loaded, tmp_path / "b.onnx", (1, 3, 32, 32)).path
    assert a.read_bytes() == b.read_bytes()


def test_the_paper_profile_has_no_deploy_quantizers(resnet20, calib64):
    qm = quantize_model(resnet20, calib64[:4], quantizer="nearest")
    names = [n for n, _ in qm.act_quantizers()]
    assert not [n for n in names if n.rsplit(".", 1)[-1] in ("main_quant", "shortcut_quant", "output_quant")]
    assert not qm.net.get_submodule("conv1").input_quant.enabled  # the image stays FP
    with pytest.raises(GenieError, match="unknown quantization profile 'int8'"):
        quantize_model(resnet20, calib64[:4], profile="int8")


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v2", "mnasnet0_5", "regnet_x_400mf"])
def test_torchvision_blocks_export_to_integer_kernels(arch, tmp_path):
    """Random weights, 64 px: every convolution and add of the optimised graph integer, genie's
    integers per tensor (MobileNetV2's and MnasNet's ReLU6 / ReLU before a quantizer included).
    Asymmetric weights: onnxruntime's uint8 x int8 kernels saturate on CPUs without VNNI (see
    test_symmetric_8_bit_weights_warn_of_saturation)."""
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)().eval()
    images = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    qm = _deployed(model, images, iters=0, quantizer="nearest")
    path = export_onnx(qm, tmp_path / "m.onnx", (1, 3, 64, 64)).path
    ops = operator_counts(path, optimized=True, work_dir=str(tmp_path))
    convs = sum(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    assert ops.get("QLinearConv", 0) == convs and not any(ops.get(op, 0) for op in FLOAT_COMPUTE), ops
    parity = integer_parity(qm, path, images[:2])
    assert max(d for d, _ in parity.values()) <= 1, {k: v for k, v in parity.items() if v[0] > 1}


def test_symmetric_8_bit_weights_warn_of_saturation(resnet20, calib64, tmp_path):
    """int8 weights beyond +-63 with uint8 inputs: onnxruntime's kernels on x86 CPUs without VNNI
    add products in int16 pairs and saturate (measured on this project's AVX2 CPU: integers up to
    75 steps off); 7-bit symmetric weights cannot saturate (255 * 64 * 2 < 32768)."""
    sym8 = _deployed(resnet20, calib64[:16], iters=0, quantizer="nearest", weight_symmetric=True)
    with pytest.warns(UserWarning, match="saturate.*VNNI.*w_bits=7"):
        export_onnx(sym8, tmp_path / "s8.onnx", (1, 3, 32, 32))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        qm = quantize_model(resnet20, calib64[:16], w_bits=7, a_bits=8, profile="deploy", quantizer="nearest",
                            weight_symmetric=True, setting="all")
        reconstruct(qm, calib64[:16], iters=0, progress=False)
        path = export_onnx(qm, tmp_path / "s7.onnx", (1, 3, 32, 32)).path
    assert max(d for d, _ in integer_parity(qm, path, calib64[:8]).values()) <= 1


@pytest.mark.parametrize("weight_symmetric", [False, True])
def test_symmetric_activations_export_int8_with_zero_point_0_and_match_in_onnxruntime(
        weight_symmetric, resnet20, calib64, tmp_path):
    """act_symmetric (TensorRT's int8 convention): every enabled activation quantizer is signed,
    ReLU outputs included, is written int8 with zero point 0, survives save/load, and onnxruntime
    computes genie's integers. Symmetric weights at 7 bits: 8-bit ones saturate onnxruntime's
    int16 pair sums on CPUs without VNNI (test_symmetric_8_bit_weights_warn_of_saturation)."""
    qm = quantize_model(resnet20, calib64, w_bits=7 if weight_symmetric else 8, a_bits=8, profile="deploy",
                        setting="all", weight_symmetric=weight_symmetric, act_symmetric=True)
    reconstruct(qm, calib64, iters=2, batch_size=8, progress=False)
    enabled = [(n, q) for n, q in qm.act_quantizers() if q.enabled]
    assert enabled and all(q.signed and q.qrange == (-128, 127) for _, q in enabled)
    paper = quantize_model(resnet20, calib64[:8], a_bits=8, quantizer="nearest")  # the default: ReLU outputs unsigned
    reconstruct(paper, calib64[:8], iters=0, progress=False)
    assert not paper.net.get_submodule("layer1.0").input_quant.signed
    path = export_onnx(qm, tmp_path / "m.onnx", (1, 3, 32, 32)).path
    model = onnx.load(str(path))
    inits = {t.name: t for t in model.graph.initializer}
    act_zps = [inits[n.input[2]] for n in model.graph.node if n.op_type == "QuantizeLinear"]
    assert act_zps and all(t.data_type == onnx.TensorProto.INT8 and onnx.numpy_helper.to_array(t) == 0 for t in act_zps)
    assert {p.key: p.value for p in model.metadata_props}["act_symmetric"] == "True"
    parity = integer_parity(qm, path, calib64[:16])
    assert max(d for d, _ in parity.values()) <= 1, {k: v for k, v in parity.items() if v[0] > 1}
    diff, bound = output_parity(qm, path, calib64[:16])
    assert diff <= bound
    qm.arch = "resnet20_cifar10"
    loaded = load_quantized(save_quantized(qm, tmp_path / "q.pt"))
    assert loaded.config.act_symmetric and all(q.always_signed for _, q in loaded.act_quantizers())
    with pytest.raises(GenieError, match="act_symmetric must be True or False"):
        quantize_model(resnet20, calib64[:4], act_symmetric="yes")


def test_the_command_line_runs_and_records_symmetric_activations(tmp_path, capsys):
    import json

    from genie.cli import main

    out = tmp_path / "run"
    assert main(["run", "--w-bits", "8", "--a-bits", "8", "--profile", "deploy", "--act-symmetric", "--data", "real",
                 "--samples", "8", "--recon-iters", "1", "--batch-size", "4", "--test-source", "lossless100",
                 "--device", "cpu", "--no-progress", "--out", str(out)]) == 0
    assert "deploy profile, symmetric activations" in capsys.readouterr().out
    assert json.loads((out / "result.json").read_text())["extra"]["act_symmetric"] is True
    assert all(q.signed for _, q in load_quantized(out / "qmodel.pt").act_quantizers() if q.enabled)
