"""Bar: few-shot W4A4 ResNet-20, 256 real images, 300 iterations per block, within 3 points of
FP32 on cifar10_test.npz; run through the command line, result.json and qmodel.pt checked; with
the export extra installed, the run also writes model.onnx, which onnxruntime scores like genie."""
import importlib.util
import json

import pytest

from genie.cli import main

pytestmark = pytest.mark.long
HAVE_ONNX = all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxruntime"))

REQUIRED = [
    "model", "w_bits", "a_bits", "data", "samples", "recon_iters", "quantizer", "seed", "device",
    "test_file", "fp_top1", "q_top1", "recon_seconds", "total_seconds", "torch_version", "genie_version",
]


@pytest.fixture(scope="module")
def fewshot_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("fewshot")
    argv = ["run", "--model", "resnet20_cifar10", "--w-bits", "4", "--a-bits", "4", "--data", "real",
            "--samples", "256", "--recon-iters", "300", "--quantizer", "genie", "--seed", "0",
            "--device", "cpu", "--out", str(out), "--no-progress"]
    if HAVE_ONNX:
        argv.append("--export-onnx")
    assert main(argv) == 0
    return out, json.loads((out / "result.json").read_text())


def test_fewshot_w4a4_is_within_3_points_of_fp32(fewshot_run):
    _, result = fewshot_run
    for key in REQUIRED:
        assert key in result, key
    assert result["test_file"] == "cifar10_test.npz" and result["test_images"] == 10000
    assert result["fp_top1"] == pytest.approx(81.03)  # the MANIFEST's figure for this file
    assert result["q_top1"] >= result["fp_top1"] - 3.0, result["q_top1"]
    assert (result["w_bits"], result["a_bits"], result["samples"], result["recon_iters"]) == (4, 4, 256, 300)


def test_saved_model_reproduces_the_reported_accuracy(fewshot_run, cifar_spec, resnet20):
    """The saved model scores the reported top-1, and agrees with the FP32 model's top-1 on the
    reported share of the test images."""
    from genie.data import cifar10_test, evaluate
    from genie.pipeline import fp_evaluation
    from genie.quant import load_quantized

    out, result = fewshot_run
    qmodel = load_quantized(out / "qmodel.pt")
    assert qmodel.metadata["q_top1"] == result["q_top1"]
    test = cifar10_test(cifar_spec.mean, cifar_spec.std)
    # the FP32 predictions the run compared with (remembered in this process: tests/test_data.py)
    fp_classes = fp_evaluation(resnet20, test)["predictions"]
    again = evaluate(qmodel, test, progress=False, agree_with=fp_classes)
    assert again["top1"] == result["q_top1"]
    agree = result["extra"]["q_agree_fp32"]  # not a record field: one producer's number
    assert again["agree"] == agree and 80.0 < agree < 100.0


@pytest.mark.skipif(not HAVE_ONNX, reason="the export extra (onnx, onnxruntime) is not installed")
def test_onnx_export_scores_like_genie_on_the_full_test_file(fewshot_run, cifar_spec):
    from genie.data import cifar10_test
    from genie.export.runtime import evaluate_onnx

    out, result = fewshot_run
    onnx_eval = evaluate_onnx(out / "model.onnx", cifar10_test(cifar_spec.mean, cifar_spec.std))
    assert onnx_eval["n"] == 10000
    # 0.05 points of 10000 images: at most 5 more or fewer images right (compared as counts)
    assert abs(round(onnx_eval["top1"] * 100) - round(result["q_top1"] * 100)) <= 5, (onnx_eval["top1"], result["q_top1"])


@pytest.mark.skipif(not HAVE_ONNX, reason="the export extra (onnx, onnxruntime) is not installed")
def test_genie_export_of_the_saved_model_is_byte_identical(fewshot_run, tmp_path):
    out, _ = fewshot_run
    assert main(["export", str(out / "qmodel.pt"), "--out", str(tmp_path / "again.onnx")]) == 0
    assert (tmp_path / "again.onnx").read_bytes() == (out / "model.onnx").read_bytes()
