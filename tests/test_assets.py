"""Model zoo and asset lookup: checksums, missing files, unknown names."""
import hashlib

import pytest

from genie.assets import RemoteFile, fetch
from genie.errors import AssetError, ChecksumError, GenieError
from genie.models import list_models, load_model, model_spec


def test_zoo_lists_the_cifar_and_torchvision_models():
    names = list_models()
    for name in ["resnet20_cifar10", "resnet32_cifar10", "resnet44_cifar10", "resnet56_cifar10",
                 "resnet18", "resnet50", "mobilenet_v2", "mnasnet1_0", "regnet_x_600mf"]:
        assert name in names
    spec = model_spec("resnet56_cifar10")
    assert spec.image_size == 32 and spec.mean == (0.485, 0.456, 0.406)
    assert spec.checkpoint.sha256.startswith("4bfd9763")
    assert spec.checkpoint.url.endswith("pretrained_models/resnet56-4bfd9763.th")


def test_unknown_model_name():
    with pytest.raises(GenieError, match="unknown model 'resnet21'.*resnet20_cifar10"):
        model_spec("resnet21")


def test_checksum_mismatch(tmp_path, monkeypatch):
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "resnet20-12fca82f.th").write_bytes(b"not the checkpoint")
    monkeypatch.setenv("GENIE_ASSETS", str(tmp_path))
    with pytest.raises(ChecksumError, match="checksum mismatch.*resnet20-12fca82f.th.*expected sha256 12fca82f"):
        load_model("resnet20_cifar10")


def test_missing_offline_file_names_the_file_url_and_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("GENIE_ASSETS", str(tmp_path))
    with pytest.raises(AssetError) as info:
        load_model("resnet32_cifar10")  # published, not shipped offline
    message = str(info.value)
    assert "weights/resnet32-d509ac18.th" in message and "GENIE_ASSETS" in message
    assert "https://github.com/akamaster/pytorch_resnet_cifar10/raw/master/pretrained_models/resnet32-d509ac18.th" in message


def test_fetch_finds_and_verifies_cached_files(tmp_path, monkeypatch):
    data = b"hello genie"
    digest = hashlib.sha256(data).hexdigest()
    cache = tmp_path / "cache"
    (cache / "data").mkdir(parents=True)
    (cache / "data" / "x.bin").write_bytes(data)
    monkeypatch.setenv("GENIE_CACHE", str(cache))
    monkeypatch.delenv("GENIE_ASSETS", raising=False)
    assert fetch(RemoteFile("data/x.bin", None, digest)).read_bytes() == data
    assert fetch(RemoteFile("data/x.bin", None, digest[:8])).read_bytes() == data  # prefix form
    with pytest.raises(ChecksumError):
        fetch(RemoteFile("data/x.bin", None, "0" * 64))


def test_pretrained_cifar_models_load(resnet20):
    state = resnet20.state_dict()
    assert "layer3.2.bn2.running_var" in state and "linear.weight" in state
    assert load_model("resnet56_cifar10").layer3[8].conv2.weight.shape == (64, 64, 3, 3)


def test_pretrained_false_builds_without_weights():
    model = load_model("regnet_x_600mf", pretrained=False)
    assert sum(p.numel() for p in model.parameters()) > 5_000_000
    with pytest.raises(GenieError, match="torchvision publishes no RegNetX-600MF weights"):
        load_model("regnet_x_600mf")
