"""Helpers shared by the fault tests (tests/test_faults_*.py): small models, a quick CLI run,
and ways to make a save fail part-way."""
import os

import torch
from torch import nn

# a `run` that takes seconds on a CPU: 16 real images, step sizes only, 100 lossless test images
QUICK_RUN = ["run", "--device", "cpu", "--recon-iters", "0", "--test-source", "lossless100", "--no-progress"]


def cli_error(argv, capsys, prog: str = "genie") -> str:
    """Run the command line on ``argv``: it must exit 2 with exactly one line ``prog: error: ...``
    and no traceback; returns that line."""
    from genie.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"{prog}: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


class TinyBN(nn.Module):
    """Two conv + BN layers and a classifier, with non-trivial BN statistics."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean((2, 3)))


def tiny_bn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = TinyBN()
    with torch.no_grad():
        for bn in (model.bn1, model.bn2):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.2, 3.0)
            bn.weight.uniform_(0.3, 2.0)
            bn.bias.uniform_(-0.5, 0.5)
    return model.eval()


def fail_saves(monkeypatch, where: str) -> None:
    """Make every save fail as on a full disk: ``"write"`` after the new bytes were written
    (at the flush to disk), ``"rename"`` when the temporary file is renamed into place."""
    def no_space(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, {"write": "fsync", "rename": "replace"}[where], no_space)


def listing(folder) -> list:
    """Names in ``folder`` (sorted), temporary files included."""
    return sorted(os.listdir(folder))
