"""Unclear cases get one line naming the option or file and what to do (exit 2 on the command
line, GenieError in Python)."""
import pytest
import torch

from genie.cli import main
from genie.data import cifar10_test, evaluate
from genie.distill import DistillConfig, distill
from genie.errors import AssetError, GenieError
from genie.quant import quantize_model, reconstruct
from genie.sweep import notebook_parameters

from faults import QUICK_RUN, cli_error, tiny_bn


@pytest.fixture(scope="module")
def api_set(tmp_path_factory):
    """A set distilled through the API from another model (no zoo name), 8x8 pixels."""
    path = tmp_path_factory.mktemp("api") / "api.pt"
    distill(tiny_bn(), 8, num_images=4, batch_size=4, iters=2, progress=False).save(path)
    return path


def test_calib_file_without_synthetic_data(tmp_path, capsys):
    err = cli_error(QUICK_RUN + ["--calib-file", str(tmp_path / "set.pt")], capsys)
    assert f"--calib-file {tmp_path / 'set.pt'} is a distilled set, used only with --data synthetic" in err


def test_a_set_of_another_image_size(api_set, capsys):
    err = cli_error(QUICK_RUN + ["--data", "synthetic", "--calib-file", str(api_set)], capsys)
    assert "holds images of shape (3, 8, 8), but resnet20_cifar10 takes 32x32 pixels" in err


def test_an_api_set_from_another_model_is_refused(resnet20, tmp_path, capsys):
    from genie.models import load_model

    other = load_model("resnet56_cifar10")
    path = tmp_path / "other.pt"
    distill(other, 32, num_images=4, batch_size=4, iters=1, progress=False).save(path)
    err = cli_error(QUICK_RUN + ["--data", "synthetic", "--calib-file", str(path)], capsys)
    assert "was distilled from another model than resnet20_cifar10 (its BatchNorm statistics differ)" in err
    # the same set, distilled from resnet20 through the API, is accepted
    distill(resnet20, 32, num_images=4, batch_size=4, iters=1, progress=False).save(path)
    assert main(QUICK_RUN + ["--data", "synthetic", "--calib-file", str(path)]) == 0


@pytest.mark.parametrize("content", [b"hello, not a tensor file\n", "truncated"])
def test_unreadable_calib_file_names_the_file(api_set, tmp_path, capsys, content):
    path = tmp_path / "bad.pt"
    path.write_bytes(api_set.read_bytes()[:200] if content == "truncated" else content)
    err = cli_error(QUICK_RUN + ["--data", "synthetic", "--calib-file", str(path)], capsys)
    assert f"{path} is not a readable genie distilled set: the file is truncated, corrupt or of another kind" in err


def test_corrupt_checkpoint_names_the_file(tmp_path):
    distill(tiny_bn(), 8, num_images=4, batch_size=2, iters=1, progress=False, checkpoint_dir=str(tmp_path))
    (tmp_path / "batch_00001.pt").write_bytes((tmp_path / "batch_00001.pt").read_bytes()[:300])
    with pytest.raises(GenieError, match=r"batch_00001\.pt is not a readable genie distillation checkpoint"):
        distill(tiny_bn(), 8, num_images=4, batch_size=2, iters=1, progress=False, checkpoint_dir=str(tmp_path))
    torch.save([1, 2], tmp_path / "batch_00001.pt")
    with pytest.raises(GenieError, match=r"batch_00001\.pt is not a genie distillation checkpoint: delete it"):
        distill(tiny_bn(), 8, num_images=4, batch_size=2, iters=1, progress=False, checkpoint_dir=str(tmp_path))


@pytest.mark.parametrize("option,value", [("--concurrent-batches", "0"), ("--concurrent-batches", "-1"),
                                          ("--distill-batch", "0"), ("--distill-iters", "0"), ("--samples", "-3")])
def test_non_positive_distill_options(tmp_path, capsys, option, value):
    err = cli_error(["distill", "--out", str(tmp_path / "s.pt"), option, value], capsys)
    assert f"{option} must be positive (an integer >= 1), got {value}" in err


def test_non_positive_run_options(capsys):
    assert "--batch-size must be positive" in cli_error(QUICK_RUN + ["--batch-size", "0"], capsys)
    assert "--recon-iters must be an integer >= 0, got -1" in cli_error(QUICK_RUN + ["--recon-iters", "-1"], capsys)


def test_concurrent_batches_in_the_api():
    with pytest.raises(GenieError,
                       match=r"concurrent_batches must be positive \(an integer >= 1\) or None \(automatic\), got 0"):
        DistillConfig(concurrent_batches=0).validate()


def test_offline_never_tries_torchvision_download(tmp_path, monkeypatch):
    import torchvision

    asked = []

    class NoCifar:
        def __init__(self, root, train, download):
            asked.append(download)
            raise RuntimeError("Dataset not found or corrupted")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", NoCifar)
    monkeypatch.setenv("GENIE_OFFLINE", "1")
    with pytest.raises(AssetError, match=r"no torchvision CIFAR10 copy at .*; downloads are off \(GENIE_OFFLINE=1\)"):
        cifar10_test((0.5,) * 3, (0.5,) * 3, source="torchvision", root=str(tmp_path))
    assert asked == [False]


def test_reconstruct_with_one_channel_images(resnet20, calib64):
    qm = quantize_model(resnet20, calib64[:8])
    with pytest.raises(GenieError, match=r"calibration images have 1 channels but the model's first convolution "
                                         r"expects 3"):
        reconstruct(qm, calib64[:8, :1], iters=1, progress=False)


def test_evaluate_with_bad_labels(resnet20, calib64):
    images = calib64[:10]
    with pytest.raises(GenieError, match="one label per image: 10 images, labels of shape \\(9,\\)"):
        evaluate(resnet20, (images, torch.zeros(9, dtype=torch.int64)), progress=False)
    with pytest.raises(GenieError, match=r"2 of 10 labels are outside 0\.\.9"):
        evaluate(resnet20, (images, torch.tensor([0, 1, 2, 10, 3, 4, 5, -1, 6, 7])), progress=False)
    with pytest.raises(GenieError, match="a batch of 10 images with 9 labels"):
        evaluate(resnet20, [(images, torch.zeros(9, dtype=torch.int64))], progress=False)


def test_sweep_of_a_file_that_is_not_a_notebook(tmp_path, capsys):
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    fake = tmp_path / "fake.ipynb"
    fake.write_text("hello")
    with pytest.raises(GenieError, match=r"notes\.txt is not a Jupyter notebook \(\.ipynb\)"):
        notebook_parameters(text)
    err = cli_error(["sweep", str(fake), "--out", str(tmp_path / "o")], capsys, prog="genie sweep")
    assert f"{fake} is not a readable Jupyter notebook (NotJSONError" in err
    assert not (tmp_path / "o").exists()


def test_a_tensor_passed_as_a_setting_is_named_by_its_shape(resnet20, calib64):
    """A tensor where a number belongs (a positional-argument slip) is named by kind and shape,
    not by a repr that runs to pages."""
    with pytest.raises(GenieError) as info:
        quantize_model(resnet20, calib64, calib64)
    message = str(info.value)
    assert message == "w_bits must be an integer from 2 to 8, got a Tensor of shape (64, 3, 32, 32)"
