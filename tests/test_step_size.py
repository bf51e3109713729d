"""Step-size search (Eq. 8/16) against brute force."""
import pytest
import torch

from genie.quant.step_size import (
    ActRangeSearch,
    act_qrange,
    asymmetric_params,
    clip_ratios,
    quantize_asymmetric,
    search_act_scale,
    search_weight_scale,
)


def _lp(x, q, p):
    return (x.double() - q.double()).abs().pow(p).mean().item()


def test_candidate_ratios_are_the_method_cards():
    r = clip_ratios()
    assert len(r) == 100 and r[0].item() == 1.0 and abs(r[-1].item() - 0.01) < 1e-7
    assert torch.allclose(r[:-1] - r[1:], torch.full((99,), 0.01), atol=1e-6)


@pytest.mark.parametrize("bits,p", [(2, 2.4), (4, 2.4), (4, 2.0), (8, 1.0)])
def test_weight_search_matches_brute_force(bits, p):
    g = torch.Generator().manual_seed(bits)
    w = torch.randn(6, 3, 3, 3, generator=g) * torch.tensor([0.01, 0.1, 1.0, 3.0, 0.5, 0.2]).view(6, 1, 1, 1)
    w[1] = w[1].abs()  # a channel without negative weights
    scale, zp = search_weight_scale(w, bits, p)
    for c in range(6):
        wc = w[c].flatten()
        lo, hi = min(wc.min().item(), 0.0), max(wc.max().item(), 0.0)
        errors = []
        for r in [k / 100 for k in range(100, 0, -1)]:  # plain Python loop over the ratios
            s, z = asymmetric_params(torch.tensor(r * lo), torch.tensor(r * hi), bits)
            errors.append(_lp(wc, quantize_asymmetric(wc, s, z, bits), p))
        best = min(errors)
        ours = _lp(wc, quantize_asymmetric(wc, scale[c], zp[c], bits), p)
        assert ours <= best * (1 + 1e-5) + 1e-12
        # and the returned parameters are those of a brute-force candidate
        k = errors.index(best)
        r = (100 - k) / 100
        s_bf, z_bf = asymmetric_params(torch.tensor(r * lo), torch.tensor(r * hi), bits)
        if sorted(errors)[1] > best * (1 + 1e-4):  # unique minimiser
            assert torch.isclose(scale[c], s_bf, rtol=1e-5) and zp[c] == z_bf


def test_weights_on_the_grid_are_found_exactly():
    s0, z0 = 0.05, 7.0
    ints = torch.arange(16.0).repeat(4, 1)  # every level used: range exactly [0, 15]
    w = s0 * (ints - z0)
    scale, zp = search_weight_scale(w, 4)
    assert torch.allclose(scale, torch.full((4,), s0), rtol=1e-5)
    assert torch.equal(zp, torch.full((4,), z0))
    assert torch.allclose(quantize_asymmetric(w, scale[:, None], zp[:, None], 4), w, atol=1e-6)


@pytest.mark.parametrize("signed", [False, True])
def test_act_search_brute_force_and_streaming(signed):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4000, generator=g).exp() if not signed else torch.randn(4000, generator=g) * 2
    x[::7] = 0.0
    scale, is_signed = search_act_scale(x, 4)
    assert is_signed == signed
    qmin, qmax = act_qrange(4, signed)
    absmax = x.abs().max().item() if signed else x.max().item()
    errs = []
    for r in [k / 100 for k in range(100, 0, -1)]:
        s = r * absmax / qmax
        errs.append(_lp(x, torch.clamp(torch.round(x / s), qmin, qmax) * s, 2.4))
    ours = _lp(x, torch.clamp(torch.round(x / scale), qmin, qmax) * scale, 2.4)
    assert ours <= min(errs) * (1 + 1e-5)
    # streaming over batches gives the same answer as all values at once
    search = ActRangeSearch(4)
    for part in x.split(333):
        search.observe_range(part)
    for part in x.split(333):
        search.observe_error(part)
    s2, signed2 = search.result()
    assert signed2 == signed and torch.isclose(s2, scale, rtol=1e-6)
