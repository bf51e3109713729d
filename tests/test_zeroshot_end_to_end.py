"""Bar: zero-shot W4A4 ResNet-20 with 128 distilled images (200 distillation iterations) and 300
reconstruction iterations per block reaches FP32 - 5 on cifar10_test.npz, and the BNS loss
falls at least 10x; run through the command line."""
import json

import pytest

from genie.cli import main

pytestmark = pytest.mark.long


@pytest.fixture(scope="module")
def zeroshot_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("zeroshot")
    argv = ["run", "--model", "resnet20_cifar10", "--w-bits", "4", "--a-bits", "4", "--data", "synthetic",
            "--distiller", "genie", "--swing", "--samples", "128", "--distill-iters", "200",
            "--distill-batch", "128", "--recon-iters", "300", "--quantizer", "genie", "--seed", "0",
            "--device", "cpu", "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    return out, json.loads((out / "result.json").read_text())


def test_zeroshot_w4a4_is_within_5_points_of_fp32(zeroshot_run):
    _, result = zeroshot_run
    for key in ["distiller", "swing", "distill_iters", "distill_seconds", "final_bns_loss"]:
        assert key in result, key
    assert (result["data"], result["distiller"], result["swing"], result["distill_iters"]) == ("synthetic", "genie", True, 200)
    assert result["test_file"] == "cifar10_test.npz" and result["fp_top1"] == pytest.approx(81.03)
    assert result["q_top1"] >= result["fp_top1"] - 5.0, result["q_top1"]


def test_bns_loss_falls_tenfold(zeroshot_run):
    out, result = zeroshot_run
    assert result["final_bns_loss"] * 10 <= result["initial_bns_loss"]
    from genie.distill import load_distilled

    distilled = load_distilled(out / "distilled.pt")
    assert distilled.images.shape == (128, 3, 32, 32) and distilled.losses.shape == (200, 1)
    assert distilled.metadata["model"] == "resnet20_cifar10"
    assert (out / "distill_checkpoints" / "batch_00000.pt").is_file()
