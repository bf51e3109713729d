"""genie.analysis: the checkerboard measure (energy at the stride frequencies) and the gradient
footprint of strided convolutions, with and without swing."""
import pytest
import torch

from genie.analysis import gradient_coverage, power_spectrum, stride_artifact_energy, stride_frequency_mask
from genie.errors import GenieError


def _checkerboard(n=2, size=8, period=2):
    y, x = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    board = ((y // (period // 2) + x // (period // 2)) % 2).float() * 2 - 1
    return board.expand(n, 3, size, size).clone()


# ---------------------------------------------------------------------------------------------
# the artifact measure


def test_stride_frequency_mask_marks_the_stride_frequencies():
    mask = stride_frequency_mask(8, 8, 2)
    assert mask.sum() == 3 and mask[0, 4] and mask[4, 0] and mask[4, 4] and not mask[0, 0]
    assert stride_frequency_mask(16, 16, 4).sum() == 15


def test_checkerboard_scores_one_and_smooth_images_zero():
    assert torch.allclose(stride_artifact_energy(_checkerboard()), torch.ones(2, dtype=torch.float64))
    constant = torch.full((2, 3, 8, 8), 0.7)
    assert torch.equal(stride_artifact_energy(constant), torch.zeros(2, dtype=torch.float64))
    ramp = torch.linspace(-1, 1, 32).view(1, 1, 1, 32).expand(1, 3, 32, 32)
    assert stride_artifact_energy(ramp).item() < 0.01


def test_period_four_pattern_is_seen_at_stride_four_not_two():
    board4 = _checkerboard(1, 16, period=4)
    assert stride_artifact_energy(board4, stride=2).item() < 1e-12
    assert stride_artifact_energy(board4, stride=4).item() == pytest.approx(1.0)


def test_white_noise_scores_its_share_of_frequencies():
    noise = torch.randn(512, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    expected = 3 / (32 * 32 - 1)
    assert stride_artifact_energy(noise).mean().item() == pytest.approx(expected, rel=0.1)


def test_measure_ignores_brightness_and_contrast():
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(stride_artifact_energy(x), stride_artifact_energy(3.0 * x + 5.0))


def test_added_checkerboard_raises_the_measure_of_real_images(cifar_spec):
    from genie.data import cifar10_test

    real = cifar10_test(cifar_spec.mean, cifar_spec.std, source="lossless100").images[:32]
    clean = stride_artifact_energy(real)
    assert clean.mean().item() < 0.005
    dirty = stride_artifact_energy(real + 0.3 * _checkerboard(32, 32))
    assert (dirty > clean).all()


def test_power_spectrum_conserves_energy():
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(2)).double()
    centred = x - x.mean(dim=(2, 3), keepdim=True)
    assert torch.allclose(power_spectrum(x).sum(dim=(1, 2)), 64 * centred.pow(2).sum(dim=(1, 2, 3)))


@pytest.mark.parametrize("bad", [torch.zeros(3, 8, 8), torch.zeros(0, 3, 8, 8), torch.zeros(1, 3, 8, 8, dtype=torch.int64)])
def test_measure_rejects_bad_input(bad):
    with pytest.raises(GenieError, match="image"):
        stride_artifact_energy(bad)


def test_measure_rejects_indivisible_sizes_and_bad_strides():
    with pytest.raises(GenieError, match="not divisible"):
        stride_artifact_energy(torch.zeros(1, 3, 9, 9))
    with pytest.raises(GenieError, match="stride"):
        stride_artifact_energy(torch.zeros(1, 3, 8, 8), stride=1)


# ---------------------------------------------------------------------------------------------
# the gradient footprint


def test_gradient_coverage_of_a_strided_conv_is_a_checkerboard():
    plain = gradient_coverage(8, 3, 2)
    assert plain[2:6, 2:6].tolist() == [[1, 2, 1, 2], [2, 4, 2, 4], [1, 2, 1, 2], [2, 4, 2, 4]]
    assert torch.equal(gradient_coverage(8, 3, 1)[2:6, 2:6], torch.full((4, 4), 9.0, dtype=torch.float64))


def test_swing_flattens_the_footprint():
    swung = gradient_coverage(8, 3, 2, swing=True)
    # mean over offsets -1, 0, +1 of a 1:2 pattern: (1 + 2 + 2) / 3 and (2 + 1 + 1) / 3 per axis
    assert swung[2, 2].item() == pytest.approx(25 / 9) and swung[3, 3].item() == pytest.approx(16 / 9)
    assert swung[2, 3].item() == pytest.approx(20 / 9)
    plain, swing = gradient_coverage(32)[None, None], gradient_coverage(32, swing=True)[None, None]
    assert stride_artifact_energy(swing).item() < 0.6 * stride_artifact_energy(plain).item()


def test_gradient_coverage_checks_its_arguments():
    with pytest.raises(GenieError, match="size"):
        gradient_coverage(1)
    with pytest.raises(GenieError, match="stride"):
        gradient_coverage(8, 3, 0)
