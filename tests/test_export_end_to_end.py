"""Bar: the exported ONNX file scores like genie in onnxruntime, W8A8 and W2A4 ResNet-20 quantized
few-shot (256 real images, 300 iterations per block, seed 0): top-1 on all of cifar10_test.npz
within 0.05 points (W4A4 at the same setting: tests/test_fewshot_end_to_end.py)."""
import json

import pytest

pytest.importorskip("onnx", reason="the export extra (onnx, onnxruntime) is not installed")
pytest.importorskip("onnxruntime", reason="the export extra (onnx, onnxruntime) is not installed")

from genie.cli import main  # noqa: E402

pytestmark = pytest.mark.long


@pytest.mark.parametrize("w_bits,a_bits", [(8, 8), (2, 4)])
def test_onnxruntime_top1_matches_genie(w_bits, a_bits, tmp_path, cifar_spec):
    from genie.data import cifar10_test
    from genie.export.runtime import evaluate_onnx

    argv = ["run", "--w-bits", str(w_bits), "--a-bits", str(a_bits), "--data", "real", "--samples", "256",
            "--recon-iters", "300", "--seed", "0", "--device", "cpu", "--out", str(tmp_path), "--no-progress",
            "--export-onnx"]
    assert main(argv) == 0
    result = json.loads((tmp_path / "result.json").read_text())
    onnx_eval = evaluate_onnx(tmp_path / "model.onnx", cifar10_test(cifar_spec.mean, cifar_spec.std))
    assert onnx_eval["n"] == result["test_images"] == 10000
    # 0.05 points of 10000 images: at most 5 more or fewer images right (compared as counts)
    assert abs(round(onnx_eval["top1"] * 100) - round(result["q_top1"] * 100)) <= 5, (onnx_eval["top1"], result["q_top1"])
