"""GENIE-M weight quantizer: Eq. 11-13 and hard rounding."""
import pytest
import torch

from genie.quant.soft_rounding import GAMMA, ZETA, rectified_sigmoid
from genie.quant.weight_quantizer import WeightQuantizer


def _quantizer(method, bits=4, seed=0, shape=(5, 3, 3, 3)):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(*shape, generator=g) * 0.3
    q = WeightQuantizer(method)
    q.setup(w, bits)
    return q, w


def test_soft_init_reproduces_the_fp_weight_inside_the_range():
    q, w = _quantizer("genie")
    wq = q(w)
    inside = (w / q.scale + q.zero_point >= 0) & (w / q.scale + q.zero_point <= q.qmax - 1)
    assert torch.allclose(wq[inside], w[inside], atol=1e-5)


def test_genie_gradients_follow_eq13():
    q, w = _quantizer("genie")
    with torch.no_grad():  # spread the softbits so some sit in the clamped tails of h
        q.softbits.mul_(3.0)
    g = torch.Generator().manual_seed(3)
    upstream = torch.randn(w.shape, generator=g)
    (q(w) * upstream).sum().backward()

    # expectations computed without autograd
    s, z, base, v = q.scale.detach(), q.zero_point, q.base, q.softbits.detach()
    sig = torch.sigmoid(v)
    h = (sig * (ZETA - GAMMA) + GAMMA).clamp(0, 1)
    u = base + h + z
    in_range = (u >= 0) & (u <= q.qmax)
    w_int = u.clamp(0, q.qmax)
    # dWq/ds = B + h(V) inside the range (the clamp value minus z where clipped)
    expected_ds = (upstream * (w_int - z)).sum(dim=(1, 2, 3), keepdim=True)
    # dWq/dV = s * h'(V) inside both clamps
    h_inside = (sig * (ZETA - GAMMA) + GAMMA > 0) & (sig * (ZETA - GAMMA) + GAMMA < 1)
    expected_dv = upstream * s * sig * (1 - sig) * (ZETA - GAMMA) * h_inside * in_range
    assert torch.allclose(q.scale.grad, expected_ds, rtol=1e-5, atol=1e-6)
    assert torch.allclose(q.softbits.grad, expected_dv, rtol=1e-5, atol=1e-7)
    # dWq/dB = 0: B is a constant buffer, detached from s
    assert not q.base.requires_grad and "base" not in dict(q.named_parameters())
    base_before = q.base.clone()
    torch.optim.SGD([q.scale], lr=0.1).step()
    assert torch.equal(q.base, base_before)
    # in-range elements: the gradient to s per element is exactly B + h(V) (paper's b + v)
    per_elem = torch.autograd.grad(q(w)[in_range].sum(), q.scale)[0]
    assert torch.allclose(per_elem, ((base + h) * in_range).sum(dim=(1, 2, 3), keepdim=True), rtol=1e-5)


def test_adaround_freezes_the_step_size():
    q, w = _quantizer("adaround")
    assert not q.scale.requires_grad
    q(w).sum().backward()
    assert q.scale.grad is None and q.softbits.grad is not None


def test_hard_rounding_is_v_nonnegative_and_finalize_keeps_it():
    q, w = _quantizer("genie", seed=5)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        q.softbits.copy_(torch.randn(q.softbits.shape, generator=g) * 4)
        q.scale.mul_(1.1)  # a learned step size must be kept
    q.set_soft(False)
    expected = torch.clamp(q.base + (q.softbits >= 0).float() + q.zero_point, 0, q.qmax)
    hard = q(w)
    assert torch.equal(hard, (expected - q.zero_point) * q.scale)
    q.finalize(w)
    assert q.w_int.dtype == torch.uint8 and int(q.w_int.max()) <= 15
    assert torch.equal(q.w_int.float(), expected)
    assert torch.equal(q(None), hard)  # integer form: bit-identical output


def test_regularizer_is_zero_at_binary_softbits_and_positive_between():
    q, _ = _quantizer("genie")
    with torch.no_grad():
        q.softbits.fill_(10.0)  # h = 1
    assert q.round_regularizer(2.0).item() == 0.0
    with torch.no_grad():
        q.softbits.fill_(0.0)  # h = 0.5
    assert abs(q.round_regularizer(2.0).item() - q.softbits.numel()) < 1e-3


@pytest.mark.parametrize("beta", [0.7, 2.0, 5.5, 20.0])
def test_rounding_regularizer_matches_the_composed_formula(beta):
    """Eq. 15's regulariser as one autograd function: the value and gradient of
    sum(1 - |2h - 1|^beta) composed in autograd, in float64, including h = 0, 1/2 and 1 (where
    d = 2h - 1 is 0 the gradient is 0)."""
    from genie.quant.soft_rounding import rounding_regularizer

    g = torch.Generator().manual_seed(0)
    h = torch.rand(5, 3, 3, 3, dtype=torch.float64, generator=g)
    h.view(-1)[:3] = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    results = []
    for fn in (lambda t: rounding_regularizer(t, beta), lambda t: (1.0 - (2.0 * t - 1.0).abs().pow(beta)).sum()):
        t = h.clone().requires_grad_(True)
        value = fn(t)
        (grad,) = torch.autograd.grad(value, t)
        results.append((value.detach(), grad))
    (v_fused, g_fused), (v_composed, g_composed) = results
    assert torch.allclose(v_fused, v_composed, rtol=1e-12)
    assert g_fused.view(-1)[1] == 0.0
    finite = torch.isfinite(g_composed)  # beta < 1: the composed gradient at d = 0 is NaN
    assert torch.allclose(g_fused[finite], g_composed[finite], rtol=1e-9, atol=1e-12)
    assert torch.isfinite(g_fused).all()
    t = (h[1:] * 0.9 + 0.05).clone().requires_grad_(True)  # away from d = 0 for the finite differences
    assert torch.autograd.gradcheck(lambda x: rounding_regularizer(x, beta), (t,))


def _composed_soft_rounding(q, beta):
    """W_q and Eq. 15's regulariser of a soft quantizer composed in autograd (before the fused
    functions of genie.quant.soft_rounding)."""
    from genie.quant.soft_rounding import rounding_regularizer

    w_int = torch.clamp(q.base + rectified_sigmoid(q.softbits) + q.zero_point, 0, q.qmax)
    return (w_int - q.zero_point) * q.scale, rounding_regularizer(rectified_sigmoid(q.softbits), beta)


@pytest.mark.parametrize("method", ["genie", "adaround"])
@pytest.mark.parametrize("shape", [(6, 4, 3, 3), (7, 10)], ids=["conv", "linear"])
def test_fused_soft_rounding_is_bit_identical_to_the_composed_formulas(method, shape):
    """W_q, the regulariser and their gradients (softbits, step size) from the fused functions
    equal those autograd computes from the composed formulas bit for bit, with softbits in both
    clamped tails of h and integers clipped at 0 and qmax."""
    q, w = _quantizer(method, bits=3, shape=shape)
    with torch.no_grad():
        q.softbits.mul_(4.0)  # some h clamped at 0 and at 1
        q.base.view(-1)[:3] = torch.tensor([-3.0, q.qmax + 2.0, q.qmax - q.zero_point.view(-1)[0] + 0.0])
    g = torch.Generator().manual_seed(5)
    upstream = torch.randn(shape, generator=g)
    beta = torch.tensor(7.3)
    params = [p for p in (q.softbits, q.scale) if p.requires_grad]

    def in_one_pass():  # what a reconstruction step does: h(V) once for W_q and the regulariser
        q.rounding_beta = beta
        wq = q(w)
        return wq, q.take_regularizer(beta)

    results = []
    for make in (lambda: (q(w), q.round_regularizer(beta)), in_one_pass, lambda: _composed_soft_rounding(q, beta)):
        wq, reg = make()
        loss = (wq * upstream).sum() + 0.01 * reg
        results.append((wq.detach(), reg.detach(), *torch.autograd.grad(loss, params)))
    q.rounding_beta = None
    assert len(results[0]) == 2 + len(params) == (4 if method == "genie" else 3)
    unclamped = (rectified_sigmoid(q.softbits) > 0) & (rectified_sigmoid(q.softbits) < 1)
    assert 0 < int(unclamped.sum()) < unclamped.numel()  # both regimes are exercised
    for fused, one_pass, composed in zip(*results):
        assert torch.equal(fused, composed) and torch.equal(one_pass, composed)


def test_a_regularizer_is_handed_over_once_and_dropped_with_its_beta():
    """With rounding_beta set, a soft forward pass leaves its regulariser for take_regularizer(),
    once; the next take computes it afresh. Setting rounding_beta to None drops one not taken
    (it holds the step's graph)."""
    q, w = _quantizer("genie")
    beta = torch.tensor(3.0)
    q.rounding_beta = beta
    q(w)
    first = q.take_regularizer(beta)
    assert first.grad_fn is not None and "SoftRoundedWeight" in type(first.grad_fn).__name__
    again = q.take_regularizer(beta)
    assert "SoftbitsRegularizer" in type(again.grad_fn).__name__ and torch.equal(again, first)
    q(w)
    q.rounding_beta = None
    assert "SoftbitsRegularizer" in type(q.take_regularizer(beta).grad_fn).__name__
    q(w)  # off: nothing left behind
    assert "SoftbitsRegularizer" in type(q.take_regularizer(beta).grad_fn).__name__


def test_nearest_rounds_to_nearest():
    q, w = _quantizer("nearest")
    expected = (torch.clamp(torch.round(w / q.scale) + q.zero_point, 0, 15) - q.zero_point) * q.scale
    assert torch.equal(q(w), expected)
    assert rectified_sigmoid(torch.tensor([-100.0, 100.0])).tolist() == [0.0, 1.0]


def test_state_transitions():
    """unset -> soft (adaround/genie) or nearest; soft <-> hard; then integer, holding only
    w_int, scale and zero_point; integer_placeholders: unset -> integer."""
    for method, first in (("genie", "soft"), ("adaround", "soft"), ("nearest", "nearest")):
        q = WeightQuantizer(method)
        assert (q.state, q.has_softbits, q.is_integer) == ("unset", False, False)
        with pytest.raises(RuntimeError, match="not set up"):
            q(torch.zeros(2, 3))
        q, w = _quantizer(method)
        assert q.state == first and q.has_softbits == (first == "soft") and q.soft == (first == "soft")
        if q.has_softbits:
            q.set_soft(False)
            assert (q.state, q.soft, q.has_softbits) == ("hard", False, True)
            q.set_soft(True)
            assert q.state == "soft"
            assert {"softbits", "base"} <= set(q.state_dict())
        else:
            with pytest.raises(RuntimeError, match="no softbits"):
                q.set_soft(False)
        q.finalize(w)
        assert (q.state, q.has_softbits, q.is_integer, q.soft) == ("integer", False, True, False)
        assert set(q.state_dict()) == {"zero_point", "scale", "w_int", "_extra_state"}
        assert not hasattr(q, "softbits") and not hasattr(q, "base") and not list(q.parameters())
        with pytest.raises(RuntimeError, match="no softbits"):
            q.set_soft(True)
        q.finalize(w)  # nothing left to do
        assert q.state == "integer"
        with pytest.raises(RuntimeError, match="already 'integer'"):
            q.setup(w, 4)
    placeholder = WeightQuantizer("genie")
    placeholder.integer_placeholders((5, 3, 3, 3), 4)
    assert placeholder.state == "integer" and set(placeholder.state_dict()) == set(q.state_dict())
    assert placeholder.get_extra_state().keys() == {"method", "bits", "enabled", "is_integer", "symmetric"}
    placeholder.load_state_dict(q.state_dict())
    assert torch.equal(placeholder(None), q(None))
    with pytest.raises(RuntimeError, match="integer_placeholders"):
        WeightQuantizer("genie").load_state_dict(q.state_dict(), strict=False)
