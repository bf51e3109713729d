"""Activation steps kept off populated rounding ties (genie.quant.rounding_ties)."""
import copy

import pytest
import torch

from genie.quant import quantize_model, reconstruct
from genie.quant.bias import integer_bias
from genie.quant.rounding_ties import TIE_CANDIDATES, TIE_STRIDE, _candidate_factors, choose_factor, guard_ties, tie_counts


def _finalized_first_block(resnet20, calib64):
    """ResNet-20 with conv1 and layer1.0 calibrated and hard-rounded (no training, no guard),
    layer1.0 and its input on the 64 calibration images."""
    qm = quantize_model(resnet20, calib64)
    qm.unit_names = qm.unit_names[:2]
    reconstruct(qm, calib64, iters=0, guard_ties=False, progress=False)
    block = dict(qm.named_modules())["net.layer1.0"]
    got = []
    handle = block.register_forward_pre_hook(lambda m, args: got.append(args[0].detach().clone()))
    with torch.no_grad():
        qm(calib64)
    handle.remove()
    return block, got[0]


def _integers_at(block, inputs, quantizer, dtype):
    """round(x / s) at ``quantizer``'s input when ``block`` runs in ``dtype``."""
    block, inputs = copy.deepcopy(block).to(dtype), inputs.to(dtype)
    q = dict(block.named_modules())[quantizer]
    got = []
    q.register_forward_pre_hook(lambda m, args: got.append(torch.round(args[0] / m.scale)))
    with torch.no_grad():
        block(inputs)
    return got[0]


def _put_channel_on_ties(block):
    """Set main.3's step to 16x the accumulator grid of channel 0 of main.0: that channel's
    values are multiples of the grid, so one in 16 of them sits exactly on a tie (the kind of
    step LSQ settles on: s_in * s_w / s_out = 11/256 in a trained ResNet-20)."""
    conv, q3 = block.main[0], block.main[3]
    grid = block.input_quant.scale.detach() * conv.weight_quant.scale.detach().flatten()[0]
    with torch.no_grad():
        q3.scale.copy_(16 * grid)
    return q3


def test_a_step_that_puts_a_lattice_on_ties_is_moved_and_float_precision_then_agrees(resnet20, calib64):
    block, inputs = _finalized_first_block(resnet20, calib64)
    q3 = _put_channel_on_ties(block)
    before = (_integers_at(block, inputs, "main.3", torch.float32)
              != _integers_at(block, inputs, "main.3", torch.float64)).sum()
    assert before >= 500  # the test's premise: float32 and float64 round the tied values differently
    start = float(q3.scale.detach())
    moves = guard_ties(block, inputs)
    assert [m.name for m in moves] == ["main.3"]
    assert moves[0].at_tie_before >= 100 and moves[0].at_tie_after <= moves[0].at_tie_before // 10
    assert float(q3.scale.detach()) == pytest.approx(start * moves[0].factor, rel=1e-6)
    assert 0 < abs(moves[0].factor - 1) <= TIE_STRIDE * TIE_CANDIDATES
    after = (_integers_at(block, inputs, "main.3", torch.float32)
             != _integers_at(block, inputs, "main.3", torch.float64)).sum()
    # what is left are values that float error puts across a tie by chance (as on any step)
    assert after * 20 <= before, (int(before), int(after))


def test_a_moved_step_resnaps_the_integer_biases_of_the_layer_that_reads_it(resnet20, calib64):
    """The exported model adds the bias on the grid of the moved step: genie's bias must be there."""
    block, inputs = _finalized_first_block(resnet20, calib64)
    q3 = _put_channel_on_ties(block)
    conv = block.main[4]
    old = conv.bias.detach().clone()
    assert [m.name for m in guard_ties(block, inputs)] == ["main.3"]
    snapped, grid = integer_bias(conv.bias, q3.scale, conv.weight_quant.scale)
    assert torch.equal(conv.bias.detach(), (snapped * grid).to(conv.bias.dtype))  # on the moved step's grid
    assert not torch.equal(conv.bias.detach(), old)
    assert ((conv.bias.detach() - old).abs() <= grid / 2 * 1.001).all()  # the grid point nearest the bias


def test_the_step_of_continuous_values_stays(resnet20, calib64):
    """The block's input (the stem's ReLU output, from the FP image) is not on a lattice."""
    block, inputs = _finalized_first_block(resnet20, calib64)
    step = block.input_quant.scale.detach().clone()
    assert all(m.name != "input_quant" for m in guard_ties(block, inputs))
    assert torch.equal(block.input_quant.scale.detach(), step)


def test_tie_counts_per_channel_and_candidate():
    factors = _candidate_factors()
    assert factors[0] == 1 and len(factors) == 2 * TIE_CANDIDATES + 1
    x = torch.zeros(2, 3, 4)
    x[:, 1] = 2.5 * 0.1  # channel 1: every element on the tie between 2 and 3 steps of 0.1
    x[:, 2] = 20.5 * 0.1  # channel 2: a tie beyond qmax = 15 rounds to 15 either way
    counts = tie_counts(x, 0.1, 0, 15, factors)
    assert counts.shape == (len(factors), 3)
    assert counts[0].tolist() == [0, 8, 0]
    assert counts[1:].sum() == 0  # every candidate takes them off


def test_choose_factor():
    chance = torch.full((17, 4), 10)
    assert choose_factor(chance) == (0, 0, 0)  # no channel above what ties catch by chance
    tied = chance.clone()
    tied[0, 2] = 500
    tied[3, 2] = 2  # the nearest candidate with the fewest in the flagged channel
    tied[5, 2] = 2
    assert choose_factor(tied) == (3, 500, 2)
    # the nearest candidates take channel 2 off its ties but put channel 0 on them: counted too
    moved_elsewhere = tied.clone()
    moved_elsewhere[3, 0] = 400
    assert choose_factor(moved_elsewhere) == (5, 510, 12)
    moved_elsewhere[5, 0] = 400  # every candidate that helps channel 2 ties channel 0: the rest
    assert choose_factor(moved_elsewhere) == (1, 510, 20)
    lattice = chance.clone()
    lattice[:, 1] = 300  # many values near ties at every candidate: not flagged, nothing to gain
    lattice[0, 1] = 400
    assert choose_factor(lattice) == (0, 0, 0)


@pytest.mark.parametrize("guard", [True, False])
def test_reconstruct_guards_each_finalized_unit_and_reports_the_moves(resnet20, calib64, monkeypatch, guard):
    import genie.quant.reconstruction as recon
    from genie.quant.rounding_ties import TieMove

    calls = []

    def spy(unit, inputs):
        calls.append((unit, inputs.shape[0], all(m.weight_quant.is_integer for m in unit.modules()
                                                 if hasattr(m, "weight_quant"))))
        return [TieMove("main.3", 1.00006, 100, 0)] if len(calls) == 2 else []

    monkeypatch.setattr(recon, "guard_ties", spy)
    qm = quantize_model(resnet20, calib64)
    qm.unit_names = qm.unit_names[:3]
    report = reconstruct(qm, calib64, iters=2, guard_ties=guard, progress=False)
    if not guard:
        assert calls == [] and all(u.tie_moves == [] for u in report.units)
        return
    units = dict(qm.named_modules())
    assert [c[0] for c in calls] == [units[f"net.{n}"] for n in ("conv1", "layer1.0", "layer1.1")]
    assert all(n == 64 and finalized for _, n, finalized in calls)  # hard-rounded when judged
    assert [len(u.tie_moves) for u in report.units] == [0, 1, 0] and report.units[1].tie_moves[0].factor == 1.00006
