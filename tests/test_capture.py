"""What reconstruction trains each unit on, with few forward passes (genie.quant.capture), and
the sampled activation step-size search: both must give what the plain paths give."""
import pytest
import torch
from torch import nn

import genie.quant.reconstruction as recon
from genie.quant import quantize_model, reconstruct
from genie.quant.capture import TeacherActivations, chained_units
from genie.quant.recon_primitives import capture, init_activations
from genie.quant.step_size import search_act_scale


class _Glue(nn.Module):
    """u0 -> relu -> u1 -> u2 -> (in place) relu_ -> u3: only u1 -> u2 hands its output over untouched."""

    def __init__(self):
        super().__init__()
        self.u0, self.u1, self.u2, self.u3 = (nn.Conv2d(3, 3, 1) for _ in range(4))

    def forward(self, x):
        x = torch.relu(self.u0(x))
        x = self.u2(self.u1(x))
        x.relu_()  # same object, modified: not chained
        return self.u3(x)


def test_chained_units_sees_glue_and_in_place_changes(resnet20, calib64):
    assert chained_units(_Glue().eval(), ["u0", "u1", "u2", "u3"], torch.randn(1, 3, 4, 4)) == [False, False, True,
                                                                                                 False]
    qm = quantize_model(resnet20, calib64)
    names = qm.unit_names
    chained = chained_units(qm.teacher, names, calib64[:1])
    # conv1 -> ReLU -> layer1.0, blocks hand over to blocks, layer3.2 -> pooling -> fc
    assert chained == [False, False] + [True] * (len(names) - 3) + [False]
    assert chained_units(qm.net, names, calib64[:1]) == chained


@pytest.mark.parametrize("budget_mb", [0, 8, 1024])
def test_teacher_groups_equal_stopped_forwards(resnet20, calib64, budget_mb):
    qm = quantize_model(resnet20, calib64)
    names = qm.unit_names
    chained = chained_units(qm.teacher, names, calib64[:1])
    acts = TeacherActivations(qm.teacher, names, calib64, 16, budget_mb << 20, chained)
    for k, name in enumerate(names):
        fp_in, fp_out = acts.take(k)
        want_in, want_out = capture(qm.teacher, qm.teacher.get_submodule(name), calib64, 16, with_output=True)
        assert torch.equal(fp_in, want_in) and torch.equal(fp_out, want_out), name
    expected = {0: len(names), 1024: 1}.get(budget_mb)
    if expected is not None:
        assert acts.forward_passes == expected
    else:  # 8 MiB holds a few units of 64 images: more than one pass, fewer than one per unit
        assert 1 < acts.forward_passes < len(names)
    assert not acts.cache


def _reconstructed(resnet20, calib64, **kw):
    qm = quantize_model(resnet20, calib64, w_bits=2)
    qm.unit_names = qm.unit_names[:5]
    report = reconstruct(qm, calib64, iters=8, batch_size=16, chunk_size=16, progress=False, **kw)
    return qm, report


def test_reconstruction_with_chained_inputs_equals_stopped_forwards(resnet20, calib64, monkeypatch):
    """The student's unit inputs handed over from the unit before (and the teacher's captured in
    one pass) train the same model as forward passes stopped at every unit."""
    fast, fast_report = _reconstructed(resnet20, calib64)
    monkeypatch.setattr(recon, "chained_units", lambda model, names, example: [False] * len(names))
    plain, plain_report = _reconstructed(resnet20, calib64, capture_mb=0)
    for a, b in zip(fast_report.units, plain_report.units):
        assert a.init_error == pytest.approx(b.init_error, rel=1e-5)
        assert a.final_error == pytest.approx(b.final_error, rel=1e-5)
        assert torch.allclose(a.losses, b.losses, rtol=1e-4)
    for (name, x), (_, y) in zip(fast.state_dict().items(), plain.state_dict().items()):
        if torch.is_tensor(x) and x.is_floating_point():
            assert torch.allclose(x, y, rtol=1e-4, atol=1e-6), name


def _lp_best(x, bits, p=2.4):
    return search_act_scale(x, bits, p)  # exhaustive: every candidate over every value


@pytest.mark.parametrize("kind", ["relu", "signed", "heavy_tail", "sparse"])
def test_sampled_act_search_equals_the_exhaustive_one(kind):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(64, 16, 24, 24, generator=g)
    if kind == "relu":
        x = x.relu()
    elif kind == "heavy_tail":
        x = (x * 2).exp() - 1
    elif kind == "sparse":
        x = x.relu() * (torch.rand(x.shape, generator=g) < 0.05)
    for bits in (2, 4, 8):
        exhaustive = _lp_best(x, bits)
        # a poor estimate only widens the exact window; 1 << 20: all values rank the ratios coarse
        # to fine (no draw), which must still find the minimum of all 100
        for sample in (1 << 12, 64, 1 << 20):
            sampled = search_act_scale(x, bits, sample=sample, generator=torch.Generator().manual_seed(0))
            assert sampled[1] == exhaustive[1]
            assert torch.equal(sampled[0], exhaustive[0]), (kind, bits, sample)


def test_the_sampled_search_ranks_a_third_of_the_ratios_and_skips_zeros(monkeypatch):
    """The estimate ranks every 5th ratio and the ones around the best (at most 28 of 100), on the
    drawn values that are not zero; the exact phase adds a few ratios over the non-zero values."""
    from genie.quant import step_size

    work = []
    real = step_size._lp_errors

    def counting(values, scales, *args):
        work.append((len(scales), values.numel(), bool((values == 0).any())))
        return real(values, scales, *args)

    monkeypatch.setattr(step_size, "_lp_errors", counting)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(64, 16, 24, 24, generator=g).relu()  # half zeros
    search_act_scale(x, 4, sample=1 << 12, generator=torch.Generator().manual_seed(0))
    assert not any(has_zero for *_, has_zero in work)
    estimate = [(r, n) for r, n, _ in work if n < 1 << 12]
    assert sum(r for r, _ in estimate) <= 28 and all(1500 < n < 2600 for _, n in estimate)  # ~half of 4096
    exact = [r for r, n, _ in work if n > 1 << 12]
    assert 3 <= sum(exact) <= 9


def test_init_activations_sampled_equals_exhaustive(resnet20, calib64):
    scales = []
    for sample in (None, 256):
        qm = quantize_model(resnet20, calib64)
        name, unit = qm.units()[1]
        q_in, _ = capture(qm.net, unit, calib64, 16, with_output=False)
        init_activations(unit, q_in, 16, 2.4, sample=sample, generator=torch.Generator().manual_seed(0))
        scales.append([m.scale.item() for m in unit.modules() if hasattr(m, "initialized") and m.initialized])
    assert len(scales[0]) == 2 and scales[0] == scales[1]


def test_act_search_of_huge_tensors_measures_a_sample_of_runs():
    """Beyond ``exact_limit`` values the exact phase runs on random runs of values: the answer is
    the exhaustive one or a neighbouring ratio whose error is within 0.5 % of the best."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(64, 16, 24, 24, generator=g).relu().contiguous(memory_format=torch.channels_last)
    best, signed = _lp_best(x, 4)
    got, got_signed = search_act_scale(x, 4, sample=1 << 12, generator=torch.Generator().manual_seed(0),
                                       exact_limit=1 << 15)
    assert got_signed == signed
    assert abs(got.item() / best.item() - 1) <= 0.03  # ratios step by 0.01 of ~0.3-0.5

    def lp(s):
        return (x - torch.clamp(torch.round(x / s), 0, 15) * s).abs().pow(2.4).mean().item()
    assert lp(got) <= lp(best) * 1.005


def test_take_rows_equals_advanced_indexing_and_keeps_the_layout():
    from genie.quant.recon_primitives import take_rows

    g = torch.Generator().manual_seed(0)
    idx = torch.randperm(10, generator=g)[:4]
    for t in (torch.randn(10, 3, 4, 5, generator=g).contiguous(memory_format=torch.channels_last),
              torch.randn(10, 3, 4, 5, generator=g), torch.randn(10, 7, generator=g)):
        got = take_rows(t, idx)
        assert torch.equal(got, t[idx]) and got.stride() == t[idx].stride()
