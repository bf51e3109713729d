"""BatchNorm folding is checked against the original model on calibration images: a pairing
guessed wrongly (an untraceable model registering modules in another order than it calls them)
is refused with the pair named, instead of quantizing a different function."""
import warnings

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from genie.errors import GenieError
from genie.quant import fold_batchnorm, quantize_model


class Untraceable(nn.Module):
    """Shape-dependent Python in forward (torch.fx cannot trace it); ``misordered`` registers
    each BatchNorm next to the convolution it does not follow."""

    def __init__(self, misordered: bool):
        super().__init__()
        self.conv_a = nn.Conv2d(3, 4, 3, padding=1)
        if misordered:
            self.bn_b = nn.BatchNorm2d(4)
            self.conv_b = nn.Conv2d(4, 4, 3, padding=1)
            self.bn_a = nn.BatchNorm2d(4)
        else:
            self.bn_a = nn.BatchNorm2d(4)
            self.conv_b = nn.Conv2d(4, 4, 3, padding=1)
            self.bn_b = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        if x.shape[-1] % 2:  # TF-style "same" padding: a Python branch on the input size
            x = F.pad(x, (0, 1, 0, 1))
        x = F.relu(self.bn_a(self.conv_a(x)))
        x = F.relu(self.bn_b(self.conv_b(x)))
        return self.fc(x.mean((2, 3)))


def _model(misordered: bool) -> nn.Module:
    torch.manual_seed(0)
    model = Untraceable(misordered)
    with torch.no_grad():
        for bn in (model.bn_a, model.bn_b):
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.1, 4.0)
            bn.weight.uniform_(0.2, 3.0)
    return model.eval()


def test_a_wrong_guessed_pair_is_refused_with_its_names():
    images = torch.randn(8, 3, 9, 9)
    model = _model(misordered=True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the registration-order warning
        with pytest.raises(GenieError, match=r"folding BatchNorm 'bn_b' into convolution 'conv_a' changes the "
                                             r"model's outputs.*fold_bn=False \(--no-fold-bn\)"):
            quantize_model(model, images, w_bits=8, a_bits=8)
        with pytest.raises(GenieError, match="'bn_b' into convolution 'conv_a'"):
            fold_batchnorm(model, check_on=images[:4])
    # the model is untouched, and quantizing it with BN unfolded works
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert isinstance(model.bn_a, nn.BatchNorm2d)
    qm = quantize_model(model, images, w_bits=8, a_bits=8, fold_bn=False)
    assert qm.config.fold_bn is False


def test_a_right_guess_passes_the_check():
    images = torch.randn(8, 3, 9, 9)
    model = _model(misordered=False)
    with pytest.warns(UserWarning, match="registration order"):
        qm = quantize_model(model, images, w_bits=8, a_bits=8)
    with torch.no_grad():
        assert torch.allclose(qm.teacher(images), model(images), atol=1e-5)

