"""GENIE-M learns the same quantized weights whether BatchNorm is folded or not.

Folding multiplies each output channel's weights, and so its step size, by ``gamma / sigma``;
the step sizes are learned with an absolute learning rate, so unless the rate follows that
factor, the same run moves a folded channel's step at a different relative speed. And a lone
convolution's output is its BatchNorm's when folded, its own when not: unless its loss is
measured in the same units both ways, the two runs minimise different losses.
"""
import pytest
import torch
from torch import nn
from torchvision.models.resnet import BasicBlock

from genie.quant import quantize_model, reconstruct
from genie.quant.bn_fold import bn_factor


class _SmallNet(nn.Module):
    """Stem conv + BN, one residual block (two conv + BN pairs), pooling and a linear head."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU()
        self.block = BasicBlock(8, 8)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = self.block(self.relu(self.bn1(self.conv1(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


def _model_with_wide_bn(seed: int, signed: bool) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    model = _SmallNet()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        for bn in (model.bn1, model.block.bn1, model.block.bn2):
            c = bn.num_features
            # |gamma| log-uniform over 1e-3 .. 10: some channels near dead, some amplified 10x
            gamma = torch.pow(10.0, torch.rand(c, generator=g) * 4 - 3)
            if signed:
                gamma = gamma * torch.where(torch.rand(c, generator=g) < 0.5, -1.0, 1.0)
            bn.weight.copy_(gamma)
            bn.bias.copy_(torch.randn(c, generator=g) * 0.5)
            bn.running_mean.copy_(torch.randn(c, generator=g) * 0.5)
            bn.running_var.copy_(torch.rand(c, generator=g) * 2 + 0.1)
    return model.eval()


def _train_every_unit(model, images, fold_bn: bool):
    """Quantize (W4A4 genie) and reconstruct every unit (stem conv, residual block, linear head)
    for 20 steps: the quantized weights of the three convolutions and each unit's losses and
    errors."""
    qm = quantize_model(model, images, w_bits=4, a_bits=4, quantizer="genie", fold_bn=fold_bn)
    assert qm.unit_names == ["conv1", "block", "fc"]
    report = reconstruct(qm, images, iters=20, batch_size=16, seed=0, progress=False)
    weights = [layer.quantized_weight().detach() for name, layer in qm.layers() if name != "fc"]
    return weights, report.units


@pytest.mark.parametrize("signed", [False, True], ids=["positive-gamma", "signed-gamma"])
def test_folding_does_not_change_what_genie_learns(signed):
    """20 steps of each unit with fold_bn=True and False: each folded quantized weight is the
    unfolded one times its channel's gamma/sigma (the stem too, whose BatchNorm lies outside its
    unit when not folded); the stem's and the block's losses and starting errors, and the stem's
    final error, are the same (the head's input differs by the block's bias snapping, below)."""
    # In float64. Folding changes the rounding of every product, and in float32 an activation
    # within rounding of a quantization tie can land one step apart in the two runs; such a flip
    # moves the block's loss by ~1e-3 relative, and which elements flip depends on the QDrop
    # draws, not on what folding does to learning (signed-gamma block, float32: under 3e-4 with
    # the byte-per-element draws, 1.1e-3 with the bit-per-element ones; float64: 6e-8). In
    # float64 the test measures folding itself: without the unfolded rates or loss units
    # (genie.quant.unit_trainer, recon_primitives.output_units) it fails its bounds.
    model = _model_with_wide_bn(0, signed).double()
    images = torch.randn(64, 3, 12, 12, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    folded, folded_units = _train_every_unit(model, images, fold_bn=True)
    unfolded, unfolded_units = _train_every_unit(model, images, fold_bn=False)
    assert len(folded) == len(unfolded) == 3  # in module order: the stem and the block's two convs
    for k, (conv, bn_name) in enumerate((("conv1", "bn1"), ("block.conv1", "block.bn1"), ("block.conv2", "block.bn2"))):
        factor = bn_factor(model.get_submodule(bn_name)).view(-1, 1, 1, 1)
        expected = unfolded[k] * factor
        # relative to each channel's own size: near-dead channels must match too
        size = expected.flatten(1).abs().amax(1).clamp_min(1e-30).view(-1, 1, 1, 1)
        err = ((folded[k] - expected) / size).abs().amax()
        assert err < 1e-5, f"{conv}: folded weights differ from unfolded x gamma/sigma by {err:.3g} of the channel"
    # the stem and the block; the head's input comes from the finished block, whose folded biases
    # were snapped to the int32 accumulator grid (unfolded convolutions have none: their
    # BatchNorm stays in float), so it differs by that deployment rounding, not by training
    for f, u in zip(folded_units[:2], unfolded_units[:2]):
        assert f.losses.shape == (20,)
        # 3e-4: the stem's folded output is divided by gamma/sigma down to 1e-3 before the loss
        torch.testing.assert_close(f.losses, u.losses, rtol=3e-4, atol=0.0, msg=f"losses of unit {f.name}")
        assert f.init_error == pytest.approx(u.init_error, rel=1e-4), f"error of unit {f.name} before training"
    # the stem reads the FP image: no accumulator grid, so no snapping either
    assert folded_units[0].final_error == pytest.approx(unfolded_units[0].final_error, rel=1e-4)
