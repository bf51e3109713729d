"""LSQ activation quantizer and QDrop."""
import pytest
import torch

from genie.quant.act_quantizer import ActQuantizer
from genie.quant.fake_quant import bernoulli_mask, lsq_fake_quant, lsq_fake_quant_reference
from genie.quant.step_size import search_act_scale


def _initialized(x, bits=4):
    q = ActQuantizer(bits)
    assert torch.equal(q(x), x)  # identity until initialised
    q.initialize(*search_act_scale(x, bits))
    assert q.initialized
    return q


@pytest.mark.parametrize("mask_dtype", [torch.bool, torch.float32], ids=["bool-mask", "01-mask"])
@pytest.mark.parametrize("with_mask,with_source", [(False, False), (True, False), (True, True)])
def test_lsq_function_matches_composed_reference(with_mask, with_source, mask_dtype):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 5, 5, generator=g) * 3
    # values rounding exactly onto qmin/qmax sit on the clamp's edge, where the composed
    # reference's x + (round(x) - x) lands a rounding error inside or outside at random
    r = torch.round(x / 0.4)
    x = torch.where((r == -8) | (r == 7), torch.zeros_like(x), x)
    src = torch.randn(4, 3, 5, 5, generator=g)
    keep = (torch.rand(x.shape, generator=g) < 0.5) if with_mask else None
    fp_value = src if with_source else None
    outs, grads = [], []
    for fn in (lsq_fake_quant, lsq_fake_quant_reference):
        xi = x.clone().requires_grad_()
        s = torch.tensor(0.4, requires_grad=True)
        # the fused function takes the mask as bool or as 0/1 floats; the reference takes bool
        y = fn(xi, s, -8, 7, keep.to(mask_dtype) if fn is lsq_fake_quant and with_mask else keep, fp_value)
        (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
        outs.append(y.detach())
        grads.append((xi.grad, s.grad))
    assert torch.equal(outs[0], outs[1])
    assert torch.allclose(grads[0][0], grads[1][0])
    assert torch.allclose(grads[0][1], grads[1][1], rtol=1e-5)


def test_qdrop_p0_is_fully_quantized_and_p1_is_fp():
    x = torch.randn(8, 4, 6, 6).relu()
    q = _initialized(x)
    q.generator = torch.Generator().manual_seed(0)
    full = lsq_fake_quant(x, q.scale, *q.qrange)
    q.drop_prob = 0.0
    assert torch.equal(q(x), full)
    q.drop_prob = 1.0
    assert torch.equal(q(x), x)
    q.drop_prob = 0.5
    mixed = q(x)
    from_fp = mixed == x
    from_q = mixed == full
    assert bool((from_fp | from_q).all())
    differs = x != full
    frac_fp = (from_fp & differs).sum().item() / differs.sum().item()
    assert 0.4 < frac_fp < 0.6


def test_input_mixing_takes_the_fp_source():
    x = torch.randn(8, 4, 6, 6).relu()
    fp = x + 1.0
    q = _initialized(x)
    q.generator = torch.Generator().manual_seed(0)
    q.fp_source = fp
    q.drop_prob = 1.0
    assert torch.equal(q(x), fp)
    q.drop_prob = 0.0
    assert torch.equal(q(x), lsq_fake_quant(x, q.scale, *q.qrange))


def test_signed_when_the_data_has_negatives():
    assert _initialized(torch.randn(1000)).signed
    assert not _initialized(torch.rand(1000)).signed
    assert _initialized(torch.randn(1000), bits=4).qrange == (-8, 7)


@pytest.mark.parametrize("p", [0.0, 0.25, 0.5, 1.0])
def test_bernoulli_mask_rate(p):
    like = torch.empty(64, 8, 16, 16).contiguous(memory_format=torch.channels_last)
    m = bernoulli_mask(like, p, torch.Generator().manual_seed(1))
    assert m.shape == like.shape and m.dtype == torch.bool
    assert abs(m.float().mean().item() - p) < 0.01
    a = bernoulli_mask(like, 0.5, torch.Generator().manual_seed(2))
    b = bernoulli_mask(like, 0.5, torch.Generator().manual_seed(2))
    assert torch.equal(a, b)


@pytest.mark.parametrize("p", [0.0, 0.3, 0.7, 1.0])
def test_bernoulli_mask_on_cpu_is_the_low_seven_bytes_of_each_word_under_the_threshold(p):
    """The CPU mask's documented construction at p != 0.5, so runs stay reproducible across
    versions: the generator's int64 words (drawn over [0, 2^63)), bytes 0-6 of each in memory
    order, each True when < round(256 p); laid out as ``like`` (channels-last here)."""
    like = torch.empty(3, 5, 4, 6).contiguous(memory_format=torch.channels_last)
    got = bernoulli_mask(like, p, torch.Generator().manual_seed(4))
    n = like.numel()
    words = torch.empty(-(-n // 7), dtype=torch.int64).random_(generator=torch.Generator().manual_seed(4))
    data = words.numpy().tobytes()
    flags = [data[8 * i + j] < round(256 * p) for i in range(len(words)) for j in range(7)][:n]
    want = torch.tensor(flags).view(3, 4, 6, 5).permute(0, 3, 1, 2)
    assert torch.equal(got, want) and got.is_contiguous(memory_format=torch.channels_last)
    # as 0/1 floats (the form the reconstruction uses on every device): the same draws
    as_floats = bernoulli_mask(like, p, torch.Generator().manual_seed(4), dtype=torch.float32)
    assert as_floats.dtype == torch.float32 and as_floats.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(as_floats, want.float())


def test_bernoulli_mask_on_cpu_at_one_half_is_one_bit_of_each_word_per_element():
    """At p = 0.5 (QDrop's default) the documented construction is one bit per element: int64
    words drawn over [-2^63, 2^63 - 1), bytes in memory order, the bits of each least
    significant first; bool and 0/1 floats from the same draws, laid out as ``like``."""
    like = torch.empty(3, 5, 4, 7).contiguous(memory_format=torch.channels_last)  # 420: not a multiple of 64
    got = bernoulli_mask(like, 0.5, torch.Generator().manual_seed(4))
    n = like.numel()
    words = torch.empty(-(-n // 64), dtype=torch.int64).random_(-(2**63), 2**63 - 1,
                                                                generator=torch.Generator().manual_seed(4))
    data = words.numpy().tobytes()
    flags = [bool((data[i // 8] >> (i % 8)) & 1) for i in range(n)]
    want = torch.tensor(flags).view(3, 4, 7, 5).permute(0, 3, 1, 2)
    assert torch.equal(got, want) and got.is_contiguous(memory_format=torch.channels_last)
    as_floats = bernoulli_mask(like, 0.5, torch.Generator().manual_seed(4), dtype=torch.float32)
    assert as_floats.dtype == torch.float32 and torch.equal(as_floats, want.float())
    assert 0.4 < want.float().mean().item() < 0.6
