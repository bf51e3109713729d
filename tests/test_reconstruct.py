"""Block reconstruction: events, determinism, batching, QDrop limits."""
import copy

import pytest
import torch

from genie.errors import GenieError
from genie.events import UnitEnd, UnitProgress, UnitStart
from genie.quant import ActQuantizer, QuantLayer, prepare_fp_model, quantize_model, reconstruct
from genie.quant.bn_fold import fold_conv_bn
from genie.quant.recon_primitives import output_units
from genie.quant.reconstruction import (
    ParamGroup,
    ReconConfig,
    batch_indices,
    param_groups,
    reconstruction_error,
    reconstruction_loss,
)


def test_batch_indices_cover_every_image_equally():
    idx = batch_indices(10, 7, 4, torch.Generator().manual_seed(0), "cpu")
    assert idx.shape == (7, 4)
    counts = torch.bincount(idx.flatten(), minlength=10)
    assert sorted(counts.tolist()) == [2, 2] + [3] * 8
    # consecutive permutations: every image once in the first 10 draws and in the next 10
    flat = idx.flatten().tolist()
    assert sorted(flat[:10]) == sorted(flat[10:20]) == list(range(10))
    assert len(set(flat[20:])) == 8


def test_events_and_report(resnet20, calib64):
    qm = quantize_model(resnet20, calib64)
    qm.unit_names = qm.unit_names[:3]  # the first units are enough here
    events = []
    report = reconstruct(qm, calib64, iters=10, batch_size=16, callback=events.append, progress=False, report_every=4)
    starts = [e for e in events if isinstance(e, UnitStart)]
    ends = [e for e in events if isinstance(e, UnitEnd)]
    progress = [e for e in events if isinstance(e, UnitProgress)]
    assert [e.name for e in starts] == [e.name for e in ends] == ["conv1", "layer1.0", "layer1.1"]
    assert [p.start for p in progress if p.index == 1] == [0, 4, 8]
    assert sum(len(p.losses) for p in progress if p.index == 1) == 10
    assert len(report.units) == 3 and report.units[1].losses.shape == (10,)
    assert all(u.final_error >= 0 and u.init_error > 0 for u in report.units)
    assert torch.equal(ends[1].losses, report.units[1].losses)


def test_same_seed_same_model(resnet20, calib64):
    outs = []
    for seed in (0, 0, 1):
        qm = quantize_model(resnet20, calib64)
        qm.unit_names = qm.unit_names[:3]
        reconstruct(qm, calib64, iters=20, seed=seed, progress=False)
        with torch.no_grad():
            outs.append(qm(calib64[:8]))
    assert torch.equal(outs[0], outs[1])
    assert not torch.equal(outs[0], outs[2])


def test_any_number_of_images_and_batch_size(resnet20, calib64):
    for n, iters in ((37, 3), (5, 2)):  # 37: batches do not divide the set; 5: a batch larger than the set
        qm = quantize_model(resnet20, calib64[:n])
        qm.unit_names = qm.unit_names[:2]
        report = reconstruct(qm, calib64[:n], iters=iters, batch_size=32, progress=False)
        assert [u.losses.shape for u in report.units] == [(iters,), (iters,)]
        assert all(bool(torch.isfinite(u.losses).all()) and u.final_error >= 0 for u in report.units)
        trained = [layer for name, layer in qm.layers() if name == "conv1" or name.startswith("layer1.0.")]
        assert len(trained) == 3 and all(layer.weight_quant.is_integer for layer in trained)


def test_reconstruction_lowers_the_block_error(resnet20, calib64):
    qm = quantize_model(resnet20, calib64, w_bits=2, a_bits=4, quantizer="adaround")
    qm.unit_names = qm.unit_names[:3]
    report = reconstruct(qm, calib64, iters=150, progress=False)
    # W2 round-to-nearest is poor; AdaRound lowers the error of the blocks
    assert report.units[1].final_error < report.units[1].init_error
    assert report.units[2].final_error < report.units[2].init_error


def test_qdrop_limits_on_a_block(resnet20, calib64):
    """QDrop at p=0 is the fully quantized block, at p=1 the block with FP activations (and, on
    the block input, the FP model's input in place of the student's)."""
    qm = quantize_model(resnet20, calib64)
    qm.unit_names = qm.unit_names[:3]
    reconstruct(qm, calib64, iters=0, progress=False)
    block = qm.net.layer1[1]
    acts = [m for m in block.modules() if isinstance(m, ActQuantizer)]
    assert len(acts) == 2 and all(q.initialized for q in acts)
    x = torch.randn(4, 16, 32, 32).relu()
    x_fp = x + 0.05 * torch.randn(4, 16, 32, 32)
    with torch.no_grad():
        quantized = block(x)
        with qm.quantization_disabled(weights=False, activations=True):
            fp_acts, fp_acts_on_fp_input = block(x), block(x_fp)
        for q in acts:
            q.generator = torch.Generator().manual_seed(0)
            q.drop_prob = 0.0
        assert torch.equal(block(x), quantized)
        for q in acts:
            q.drop_prob = 1.0
        assert torch.equal(block(x), fp_acts)
        block.input_quant.fp_source = x_fp
        assert torch.equal(block(x), fp_acts_on_fp_input)
        for q in acts:
            q.drop_prob = 0.5
        half = block(x)
        assert not torch.equal(half, quantized) and not torch.equal(half, fp_acts_on_fp_input)


@pytest.mark.parametrize("kwargs,match", [
    ({"iters": -1}, "iterations"),
    ({"batch_size": 0}, "batch_size"),
    ({"drop_prob": 1.5}, "drop_prob"),
    ({"qdrop_input": "both"}, "qdrop_input must be one of 'qdrop', 'reference'"),
    ({"round_weight": -0.1}, "round_weight"),
])
def test_bad_reconstruction_settings(resnet20, calib64, kwargs, match):
    qm = quantize_model(resnet20, calib64)
    with pytest.raises(GenieError, match=match):
        reconstruct(qm, calib64, progress=False, **kwargs)


def test_bad_calibration_tensor(resnet20, calib64):
    qm = quantize_model(resnet20, calib64)
    with pytest.raises(GenieError, match=r"calibration images must be a 4-D tensor of shape \(N, C, H, W\), got "
                                         r"torch.float32 of shape \(64, 32, 32\)"):
        reconstruct(qm, calib64[:, 0], progress=False)


def test_qdrop_probability_one_trains(resnet20, calib64):
    """At QDrop probability 1 every activation stays FP: the weights' rounding and step sizes
    train, the activation step sizes get no gradient and keep their initial values."""
    qm = quantize_model(resnet20, calib64, quantizer="genie")
    qm.unit_names = qm.unit_names[:2]
    block = qm.net.layer1[0]
    layers = [m for m in block.modules() if isinstance(m, QuantLayer)]
    acts = [m for m in block.modules() if isinstance(m, ActQuantizer) and m.enabled]
    weight_scales = [layer.weight_quant.scale.detach().clone() for layer in layers]
    act_scales = {}

    def at_start(event):  # activation step sizes are initialised just before UnitStart
        if isinstance(event, UnitStart) and event.name == "layer1.0":
            act_scales.update({id(q): q.scale.detach().clone() for q in acts})

    # guard_ties off: after training it may move a step by a few 1e-5, which is not training
    report = reconstruct(qm, calib64, iters=3, drop_prob=1.0, progress=False, callback=at_start, guard_ties=False)
    assert report.units[1].losses.shape == (3,) and bool(torch.isfinite(report.units[1].losses).all())
    assert len(act_scales) == len(acts) == 2
    assert all(torch.equal(q.scale, act_scales[id(q)]) for q in acts)
    assert all(not torch.equal(layer.weight_quant.scale, s) for layer, s in zip(layers, weight_scales))


def test_param_groups_follow_the_method(resnet20, calib64):
    """genie learns softbits, weight and activation step sizes; adaround keeps the weight step
    sizes frozen; only step sizes have a cosine schedule and a floor."""
    cfg = ReconConfig()
    for method, n_weight_scales in (("genie", 2), ("adaround", 0)):
        qm = quantize_model(resnet20, calib64[:8], quantizer=method)
        block = qm.net.layer1[0]
        layers = [m for m in block.modules() if isinstance(m, QuantLayer)]
        acts = [m for m in block.modules() if isinstance(m, ActQuantizer) and m.enabled]
        groups = param_groups(layers, acts, method, cfg)
        assert [g.name for g in groups] == ["softbits", "weight step sizes", "activation step sizes"]
        assert all(isinstance(g, ParamGroup) for g in groups)
        softbits, weight_scales, act_scales = groups
        assert [p is l.weight_quant.softbits for p, l in zip(softbits.params, layers)] == [True, True]
        assert (softbits.lr, softbits.schedule, softbits.floor) == (cfg.lr_softbits, "constant", None)
        assert len(weight_scales.params) == n_weight_scales
        assert (weight_scales.lr, weight_scales.schedule) == (cfg.lr_weight_scale, "cosine")
        assert (act_scales.lr, act_scales.schedule) == (cfg.lr_act_scale, "cosine")
        assert weight_scales.floor == act_scales.floor == cfg.min_scale_ratio
        assert [p is q.scale for p, q in zip(act_scales.params, acts)] == [True, True]


def test_training_lowers_the_loss_and_moves_every_group(resnet20, calib64):
    """A genie unit trained for 60 iterations: the loss goes down, and softbits, weight step
    sizes and activation step sizes all change."""
    qm = quantize_model(resnet20, calib64, w_bits=2, quantizer="genie")
    qm.unit_names = qm.unit_names[:2]
    block = qm.net.layer1[0]
    layers = [m for m in block.modules() if isinstance(m, QuantLayer)]
    acts = [m for m in block.modules() if isinstance(m, ActQuantizer) and m.enabled]
    before, after = {}, {}

    def snapshot(store):
        store["softbits"] = [l.weight_quant.softbits.detach().clone() for l in layers]
        store["weight"] = [l.weight_quant.scale.detach().clone() for l in layers]
        store["act"] = [q.scale.detach().clone() for q in acts]

    def watch(event):
        if isinstance(event, UnitStart) and event.name == "layer1.0":
            snapshot(before)
        elif isinstance(event, UnitProgress) and event.name == "layer1.0" and event.start + len(event.losses) == 60:
            snapshot(after)  # the last report, before the weights are hard-rounded

    report = reconstruct(qm, calib64, iters=60, drop_prob=0.0, report_every=60, progress=False, callback=watch)
    losses = report.units[1].losses
    assert losses[-10:].mean() < 0.9 * losses[:10].mean()
    for group in ("softbits", "weight", "act"):
        assert all(not torch.equal(a, b) for a, b in zip(before[group], after[group])), group


def test_an_explicit_teacher_gives_the_same_model(resnet20, calib64):
    """reconstruct(qm, images, teacher=prepare_fp_model(model, fold_bn)) is what the kept
    teacher does; without either it refuses; a teacher without the units' modules is refused."""
    outs = []
    for explicit in (False, True):
        qm = quantize_model(resnet20, calib64)
        qm.unit_names = qm.unit_names[:3]
        teacher = None
        if explicit:
            qm.release_teacher()
            teacher = prepare_fp_model(resnet20, fold_bn=True)
        reconstruct(qm, calib64, iters=5, teacher=teacher, progress=False)
        with torch.no_grad():
            outs.append(qm(calib64[:8]))
    assert torch.equal(outs[0], outs[1])
    qm = quantize_model(resnet20, calib64)
    assert qm.teacher is not None and not any(k.startswith("teacher") for k in qm.state_dict())
    assert all(m is not qm.teacher for m in qm.modules())
    with pytest.raises(GenieError, match="no module 'conv1'"):
        reconstruct(qm, calib64, iters=0, teacher=torch.nn.Sequential(torch.nn.Conv2d(3, 3, 1)), progress=False)
    qm.release_teacher()
    with pytest.raises(GenieError, match="no FP teacher"):
        reconstruct(qm, calib64, iters=0, progress=False)


def test_learned_step_sizes_stay_positive(resnet20, calib64):
    """conv1 of ResNet-20 has channels of near-zero weights (step ~1e-7); an absolute learning
    rate of 1e-4 must not push their step below zero (which would flip the weights' sign)."""
    qm = quantize_model(resnet20, calib64, quantizer="genie")
    qm.unit_names = qm.unit_names[:1]
    conv1 = dict(qm.layers())["conv1"]
    initial = conv1.weight_quant.scale.detach().flatten().clone()
    fp_weight = conv1.weight.clone()
    tiny = initial < 1e-5
    assert tiny.any()  # the case that matters is present
    reconstruct(qm, calib64, iters=20, seed=0, progress=False)
    learned = conv1.weight_quant.scale.flatten()
    assert bool((learned >= 0.1 * initial * (1 - 1e-6)).all())
    # the near-zero channels stay near zero (a negative step would flip and inflate them)
    quantized = conv1.quantized_weight()
    assert quantized[tiny].abs().max() <= 2 * fp_weight[tiny].abs().max()


@pytest.mark.parametrize("shape", [(6, 5, 4, 3), (6, 10)])
def test_training_loss_is_the_mean_reported_error(shape):
    g = torch.Generator().manual_seed(0)
    out, target = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    assert torch.allclose(reconstruction_loss(out, target), reconstruction_error(out, target).mean(), rtol=1e-6)


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_training_loss_gradient_is_the_mean_squared_errors(layout):
    """The loss keeps the difference for its backward pass: same gradient as mse_loss x channels,
    gradcheck in float64, and the gradient keeps the activation's layout."""
    g = torch.Generator().manual_seed(0)
    out = torch.randn(4, 6, 5, 3, dtype=torch.float64, generator=g).contiguous(memory_format=layout)
    target = torch.randn(out.shape, dtype=torch.float64, generator=g)
    out.requires_grad_(True)
    torch.autograd.gradcheck(lambda o: reconstruction_loss(o, target), (out,))
    (ours,) = torch.autograd.grad(reconstruction_loss(out, target), out)
    (want,) = torch.autograd.grad(torch.nn.functional.mse_loss(out, target) * 6, out)
    assert torch.allclose(ours, want) and ours.is_contiguous(memory_format=layout)


def test_weighted_loss_is_the_error_of_the_rescaled_output():
    """A per-channel weight (a lone folded conv's 1 / |gamma/sigma|) gives the loss, error and
    gradient of output and target both multiplied by it."""
    g = torch.Generator().manual_seed(0)
    out = torch.randn(4, 6, 5, 3, dtype=torch.float64, generator=g).contiguous(memory_format=torch.channels_last)
    target = torch.randn(out.shape, dtype=torch.float64, generator=g)
    weight = torch.rand(1, 6, 1, 1, dtype=torch.float64, generator=g) * 10
    out.requires_grad_(True)
    torch.autograd.gradcheck(lambda o: reconstruction_loss(o, target, weight), (out,))
    loss = reconstruction_loss(out, target, weight)
    want = reconstruction_loss(out * weight, target * weight)
    assert torch.allclose(loss, want)
    assert torch.allclose(reconstruction_error(out, target, weight), reconstruction_error(out * weight, target * weight))
    (ours,) = torch.autograd.grad(loss, out)
    (expected,) = torch.autograd.grad(want, out)
    assert torch.allclose(ours, expected)


def test_a_lone_folded_conv_measures_its_error_in_unfolded_units():
    """output_units: 1 / |gamma/sigma| per channel for a lone conv with a BatchNorm folded into it
    (0 where gamma is 0), None for an unfolded conv, a linear layer and a block."""
    conv, bn = torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4).eval()
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([2.0, -0.5, 0.0, 1e-3]))
        bn.running_var.copy_(torch.tensor([4.0, 0.25, 1.0, 1.0]) - bn.eps)
    plain = QuantLayer(conv, "genie", own_input_quant=True)
    assert output_units(plain) is None
    folded_conv = copy.deepcopy(conv)
    fold_conv_bn(folded_conv, bn)
    units = output_units(QuantLayer(folded_conv, "genie", own_input_quant=True))
    assert units.shape == (1, 4, 1, 1)
    assert torch.allclose(units.flatten(), torch.tensor([1.0, 1.0, 0.0, 1e3]))
    assert output_units(QuantLayer(torch.nn.Linear(3, 4), "genie", own_input_quant=True)) is None


def test_models_that_view_their_activations_reconstruct_on_cpu():
    """reconstruct runs CPU images in channels-last layout for speed, except for models whose
    forward cannot take it (``x.view(n, -1)`` raises on a channels-last activation)."""
    from torch import nn

    class ViewHead(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.bn = nn.BatchNorm2d(4)
            self.fc = nn.Linear(4 * 8 * 8, 3)

        def forward(self, x):
            x = torch.relu(self.bn(self.conv(x)))
            return self.fc(x.view(x.size(0), -1))

    images = torch.randn(8, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    qm = quantize_model(ViewHead().eval(), images, w_bits=4, a_bits=4)
    report = reconstruct(qm, images, iters=2, batch_size=4, progress=False)
    assert len(report.units) == 2
    with torch.no_grad():
        assert qm(images).shape == (8, 3)


def test_the_adaround_baseline_uses_the_papers_lambda():
    """Eq. 15's lambda: 1.0 for GENIE-M, 0.1 for the AdaRound baseline (paper Sec. 4.1, not
    BRECQ's code default 0.01); round_weight overrides both."""
    cfg = ReconConfig()
    assert (cfg.rounding_weight("genie"), cfg.rounding_weight("adaround")) == (1.0, 0.1)
    assert ReconConfig(round_weight=0.01).rounding_weight("adaround") == 0.01


def _entry_quantizer_io(resnet20, calib64, qdrop_input):
    """Input, output and step size of block layer1.0's input quantizer at its training step."""
    qm = quantize_model(resnet20, calib64, w_bits=4, a_bits=4)
    qm.unit_names = qm.unit_names[:2]
    entry = qm.net.layer1[0].input_quant
    seen = []
    hook = entry.register_forward_hook(
        lambda m, inputs, out: seen.append((inputs[0].detach(), out.detach(), m.scale.detach().clone())))
    reconstruct(qm, calib64, iters=1, drop_prob=0.5, qdrop_input=qdrop_input, progress=False, guard_ties=False)
    hook.remove()
    return seen[-2]  # the last call is the error after training (no tie guard's pass before it)


@pytest.mark.parametrize("qdrop_input", ["qdrop", "reference"])
def test_qdrop_at_the_unit_input(resnet20, calib64, qdrop_input):
    """qdrop: each element of a unit's input quantizer's output is quantized or the FP input (never
    its own input unquantized). reference: the input quantizer drops to its own (already
    FP/student-mixed) input for about half of the elements."""
    x, out, scale = _entry_quantizer_io(resnet20, calib64, qdrop_input)
    nonzero = (x != 0) & (out != 0)  # ReLU's zeros are on the grid whatever happened to them
    x, out = x[nonzero], out[nonzero]
    on_grid = ((out / scale) - torch.round(out / scale)).abs() < 1e-3
    passed_through = (out == x) & ~on_grid
    assert x.numel() > 10000 and 0.4 < on_grid.float().mean() < 0.6  # quantized with probability 1 - drop_prob
    if qdrop_input == "qdrop":
        assert passed_through.float().mean() < 0.01
    else:
        assert 0.4 < passed_through.float().mean() < 0.6


def test_steps_at_floor_counts_the_step_sizes_the_floor_holds(resnet20, calib64):
    """A floor just under each start (min_scale_ratio 0.999) holds some step sizes in 20
    iterations; the report counts at least those still held at the end, and the lowest ratio
    asked for lies below the floor; without a floor it counts none."""
    counts = {}
    for ratio in (0.999, None):
        qm = quantize_model(resnet20, calib64, quantizer="genie")
        qm.unit_names = qm.unit_names[1:2]
        layers = [m for m in qm.net.layer1[0].modules() if isinstance(m, QuantLayer)]
        acts = [m for m in qm.net.layer1[0].modules() if isinstance(m, ActQuantizer) and m.enabled]
        start = {}

        def at_start(event):  # activation step sizes are set just before UnitStart
            start["steps"] = [t.detach().clone() for t in [l.weight_quant.scale for l in layers] + [q.scale for q in acts]]

        report = reconstruct(qm, calib64, iters=20, min_scale_ratio=ratio, progress=False,
                             callback=lambda e: at_start(e) if isinstance(e, UnitStart) else None)
        learned = [l.weight_quant.scale for l in layers] + [q.scale for q in acts]
        held = sum(int((s <= 0.999 * s0).sum()) for s, s0 in zip(learned, start["steps"]))
        counts[ratio] = report.units[0].steps_at_floor
        if ratio is not None:
            total = sum(s.numel() for s in learned)
            assert total >= counts[ratio] >= held > 0
            assert report.units[0].lowest_step_ratio < 0.999
    assert counts[None] == 0 and report.units[0].lowest_step_ratio == 1.0
