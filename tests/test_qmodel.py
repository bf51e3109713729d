"""Quantized-model builder: units, bit settings, block table, BN folding, bad input."""
import pytest
import torch
import torchvision
from torch import nn

from genie.errors import GenieError
from genie.quant import BlockParts, QuantBlock, QuantLayer, fold_batchnorm, quantize_model
from genie.quant.bn_fold import find_conv_bn_pairs


def test_resnet20_units_and_brecq_bits(resnet20, calib64):
    qm = quantize_model(resnet20, calib64, w_bits=4, a_bits=4)
    assert qm.unit_names == ["conv1"] + [f"layer{s}.{i}" for s in (1, 2, 3) for i in range(3)] + ["linear"]
    units = dict(qm.units())
    assert isinstance(units["conv1"], QuantLayer) and isinstance(units["layer2.0"], QuantBlock)
    bits = {n: b for n, _, b in qm.bit_summary()}
    assert bits["conv1"] == 8 and bits["linear"] == 8  # first/last weights
    assert bits["conv1.input_quant"] is None  # the image is not quantized
    assert bits["layer1.0.input_quant"] == 8  # the second layer's input
    assert bits["linear.input_quant"] == 8  # the last layer's input
    assert bits["layer1.0.main.0"] == 4 and bits["layer2.1.input_quant"] == 4 and bits["layer3.2.main.3"] == 4


def test_all_setting_quantizes_first_and_last_at_target_bits(resnet20, calib64):
    qm = quantize_model(resnet20, calib64, w_bits=3, a_bits=5, setting="all")
    bits = {n: b for n, _, b in qm.bit_summary()}
    assert bits["conv1"] == 3 and bits["linear"] == 3
    assert bits["layer1.0.input_quant"] == 5 and bits["linear.input_quant"] == 5
    assert bits["conv1.input_quant"] is None


def test_the_original_model_is_not_modified(resnet20, calib64):
    before = {k: v.clone() for k, v in resnet20.state_dict().items()}
    qm = quantize_model(resnet20, calib64)
    from genie.quant import reconstruct

    reconstruct(qm, calib64[:8], iters=2, progress=False)
    after = resnet20.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert isinstance(resnet20.bn1, nn.BatchNorm2d)


def test_residual_branch_uses_the_quantized_input(resnet20, calib64):
    qm = quantize_model(resnet20, calib64)
    from genie.quant import reconstruct

    reconstruct(qm, calib64[:16], iters=0, progress=False)
    block = qm.net.layer1[1]  # identity shortcut
    x = torch.randn(2, 16, 32, 32).relu()
    xq = block.input_quant(x)
    expected = block.post(block.main(xq) + xq)
    assert torch.equal(block(x), expected)
    assert not torch.equal(block(x), block.post(block.main(xq) + x))


def test_bn_folding_preserves_the_function(resnet20):
    import copy

    folded = copy.deepcopy(resnet20)
    assert fold_batchnorm(folded) == 19
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(folded(x), resnet20(x), atol=1e-4)


def test_quantizing_a_model_without_torchvision_blocks_does_not_import_torchvision():
    """torchvision's block types join the table once torchvision is imported (importing it
    costs about 2 s, a tenth of ``make demo``'s reconstruction)."""
    import subprocess
    import sys

    code = ("import sys, torch; from genie.models.cifar_resnet import CifarResNet; from genie.quant import quantize_model; "
            "qm = quantize_model(CifarResNet(20).eval(), torch.randn(2, 3, 32, 32)); "
            "print(sum(type(m).__name__ == 'QuantBlock' for _, m in qm.units()), 'torchvision' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["9", "False"]


def _tv_model(name):
    from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

    if name == "resnet_basic":  # ResNet-18's block type, one block per stage (fast)
        return ResNet(BasicBlock, [1, 1, 1, 1])
    if name == "resnet_bottleneck":  # ResNet-50's block type
        return ResNet(Bottleneck, [1, 1, 1, 1])
    return torchvision.models.get_model(name, weights=None)


@pytest.mark.parametrize(
    "name,blocks",
    [("resnet_basic", 4), ("resnet_bottleneck", 4), ("mobilenet_v2", 17), ("mnasnet1_0", 16), ("regnet_x_400mf", 22)],
)
def test_torchvision_block_table(name, blocks):
    torch.manual_seed(0)
    model = _tv_model(name).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():  # give BN non-trivial statistics so folding is exercised
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    # building checks that each block's parts reproduce the FP block's output
    qm = quantize_model(model, x, w_bits=4, a_bits=4)
    kinds = [type(m).__name__ for _, m in qm.units()]
    assert kinds.count("QuantBlock") == blocks
    assert kinds[0] == "QuantLayer" and kinds[-1] == "QuantLayer"
    layers = [m for m in qm.net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert layers == []  # every weight layer is quantized
    with qm.quantization_disabled(), torch.no_grad():
        assert torch.allclose(qm(x), model(x), atol=1e-3, rtol=1e-3)


def test_custom_block_type_can_be_added():
    class MyBlock(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(8, 8, 3, padding=1)
            self.bn = nn.BatchNorm2d(8)
            self.b = nn.Conv2d(8, 8, 1)

        def forward(self, x):
            return x + self.b(torch.relu(self.bn(self.a(x))))

    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), MyBlock(), nn.Flatten(), nn.LazyLinear(4))
    x = torch.randn(2, 3, 8, 8)
    model(x)
    model.eval()
    table = {MyBlock: lambda m: BlockParts([m.a, m.bn, nn.ReLU(), m.b], nn.Identity())}
    qm = quantize_model(model, x, blocks=table)
    assert qm.unit_names == ["0", "3", "5"]
    assert isinstance(qm.net[3], QuantBlock)
    # a wrong entry is caught: it does not reproduce the block's output
    bad = {MyBlock: lambda m: BlockParts([m.a, m.bn, nn.ReLU(), m.b], None)}
    with pytest.raises(GenieError, match="does not reproduce"):
        quantize_model(model, x, blocks=bad)
    # without the entry the block's layers become single-layer units
    assert quantize_model(model, x).unit_names == ["0", "3.a", "3.b", "5"]


def test_conv_bn_pairs_fall_back_to_registration_order():
    class Untraceable(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.bn = nn.BatchNorm2d(4)

        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace this
                return self.bn(self.conv(x))
            return self.bn(self.conv(-x))

    with pytest.warns(UserWarning, match="registration order"):
        assert find_conv_bn_pairs(Untraceable()) == [("conv", "bn")]


@pytest.mark.parametrize("bits", [1, 9, 0, 4.0, True])
def test_bits_out_of_range(resnet20, calib64, bits):
    with pytest.raises(GenieError, match="w_bits must be an integer from 2 to 8"):
        quantize_model(resnet20, calib64, w_bits=bits)
    with pytest.raises(GenieError, match="a_bits must be an integer from 2 to 8"):
        quantize_model(resnet20, calib64, a_bits=bits)


def test_model_without_quantizable_layer():
    model = nn.Sequential(nn.BatchNorm2d(3), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
    with pytest.raises(GenieError, match="no quantizable layer"):
        quantize_model(model, torch.randn(2, 3, 8, 8))


def test_unsupported_layer():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ConvTranspose2d(4, 4, 2))
    with pytest.raises(GenieError, match="ConvTranspose2d.*Conv2d and Linear"):
        quantize_model(model, torch.randn(2, 3, 8, 8))


@pytest.mark.parametrize(
    "bad,match",
    [
        (torch.randn(2, 32, 32), r"shape \(N, C, H, W\)"),
        (torch.randn(2, 1, 32, 32), "1 channels but the model's first convolution expects 3"),
        (torch.randint(0, 255, (2, 3, 32, 32)), "float tensor"),
        (torch.randn(0, 3, 32, 32), "empty"),
    ],
)
def test_calibration_tensors_of_the_wrong_shape(resnet20, bad, match):
    with pytest.raises(GenieError, match=match):
        quantize_model(resnet20, bad)


def test_calibration_images_the_model_cannot_take():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 6 * 6, 2)).eval()
    with pytest.raises(GenieError, match=r"cannot run on calibration images of shape \(2, 3, 10, 10\)"):
        quantize_model(model, torch.randn(2, 3, 10, 10))


def test_unknown_quantizer_and_setting(resnet20, calib64):
    with pytest.raises(GenieError, match="unknown quantizer"):
        quantize_model(resnet20, calib64, quantizer="brecq")
    with pytest.raises(GenieError, match="unknown bit setting"):
        quantize_model(resnet20, calib64, setting="paper")
