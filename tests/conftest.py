"""Shared fixtures. Tests never download: GENIE_OFFLINE=1, and GENIE_ASSETS points at the
offline asset directory (the Makefile sets it; ../shared/assets is the fallback)."""
import os
from pathlib import Path

import pytest
import torch

from genie.assets import use_checkout_assets

ROOT = Path(__file__).resolve().parents[1]
use_checkout_assets(ROOT)
os.environ["GENIE_OFFLINE"] = "1"
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs one worker per core: each worker (and what it launches) takes one thread,
    # which gets more work done than two workers fighting over two threads each
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
else:
    torch.set_num_threads(max(1, min(torch.get_num_threads(), os.cpu_count() or 1)))


def pytest_collection_modifyitems(config, items):
    # the end-to-end runs take minutes: with parallel workers (make test), starting them first
    # lets the short tests fill the other workers meanwhile (stable sort: order otherwise kept)
    items.sort(key=lambda item: item.get_closest_marker("long") is None)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("GENIE_CACHE", str(tmp_path_factory.getbasetemp() / "genie-cache"))


@pytest.fixture(scope="session")
def resnet20():
    from genie.models import load_model

    return load_model("resnet20_cifar10")


@pytest.fixture(scope="session")
def cifar_spec():
    from genie.models import model_spec

    return model_spec("resnet20_cifar10")


@pytest.fixture(scope="session")
def calib64(cifar_spec):
    from genie.data import cifar10_calibration

    return cifar10_calibration(64, cifar_spec.mean, cifar_spec.std, seed=0).images


@pytest.fixture
def no_model_loading(monkeypatch):
    """Loading a model fails the test: what it checks must come before any model is loaded."""
    import genie.models
    import genie.pipeline

    def load_model(*args, **kwargs):
        raise AssertionError("a model was loaded before the check that should have stopped the command")

    monkeypatch.setattr(genie.pipeline, "load_model", load_model)
    monkeypatch.setattr(genie.models, "load_model", load_model)
