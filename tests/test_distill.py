"""GENIE-D: swing convolution, BNS loss, concurrent batches, seeds, checkpoints, bad input."""
import copy

import pytest
import torch
import torchvision
from torch import nn

from genie.distill import (
    BNStatsLoss,
    DistillConfig,
    SwingControl,
    SwingConv2d,
    apply_swing,
    bns_loss,
    distill,
    load_distilled,
    set_swing,
    swing_crop,
)
from genie.distill.distiller import DEFAULT_ITERS, DISTILLERS, STRATEGIES
from genie.errors import GenieError
from genie.events import BatchDone, DistillProgress, DistillSnapshot


class Tiny(nn.Module):
    """A small CNN with BatchNorm and one strided convolution."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 12, 3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(12)
        self.fc = nn.Linear(12, 5)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = Tiny()
    with torch.no_grad():
        for bn in (model.bn1, model.bn2):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
    return model.eval()


# --- swing convolution ---------------------------------------------------------------------

def test_swing_visits_all_nine_windows_evenly():
    control = SwingControl(torch.tensor([7, 1234567]), group_size=1)
    seen = torch.zeros(2, 3, 3)
    for _ in range(900):
        off = control.offsets(layer_id=0)
        for g in range(2):
            seen[g, off[g, 0], off[g, 1]] += 1
        control.step += 1
    assert bool((seen > 60).all()) and bool((seen < 140).all())  # about 100 each


def test_swing_layers_and_batches_draw_independently():
    """Two layers (or two batches) pick the same window in about 1 step of 9, as independent
    draws do; a batch gets the same windows whether it is distilled alone or with others."""
    together, alone = SwingControl(torch.tensor([7, 1234567]), group_size=1), SwingControl(torch.tensor([7]), 1)
    same_layer, same_batch = 0, 0
    for _ in range(900):
        a, b = together.offsets(0), together.offsets(1)
        same_layer += int(torch.equal(a[0], b[0]))
        same_batch += int(torch.equal(a[0], a[1]))
        assert torch.equal(alone.offsets(0), a[:1]) and torch.equal(alone.offsets(1), b[:1])
        together.step += 1
        alone.step += 1
    assert 50 < same_layer < 150 and 50 < same_batch < 150  # about 100 each


def test_centre_window_is_the_plain_strided_conv():
    x = torch.randn(4, 3, 9, 9)
    conv = nn.Conv2d(3, 5, 3, stride=2, padding=1)
    assert torch.equal(swing_crop(x, torch.tensor([[1, 1]])), x)
    # all 9 windows are the reflection-padded input shifted by (dy - 1, dx - 1)
    padded = nn.functional.pad(x, (1, 1, 1, 1), mode="reflect")
    for dy in range(3):
        for dx in range(3):
            crop = swing_crop(x, torch.tensor([[dy, dx]]))
            assert torch.equal(crop, padded[:, :, dy : dy + 9, dx : dx + 9])

    class Fixed:
        def offsets(self, layer_id):
            return torch.tensor([[1, 1]])

    wrapped = SwingConv2d(conv, 0)
    wrapped.control = Fixed()
    assert torch.equal(wrapped(x), conv(x))


def test_swing_crops_each_group_at_its_own_offset():
    x = torch.randn(6, 2, 5, 5)
    offsets = torch.tensor([[0, 2], [2, 1], [1, 0]])
    out = swing_crop(x, offsets)
    for g in range(3):
        assert torch.equal(out[2 * g : 2 * g + 2], swing_crop(x[2 * g : 2 * g + 2], offsets[g : g + 1]))


def test_host_swing_crop_matches_the_device_crop():
    """The CPU path (offsets read on the host, slices instead of pad + gather) gives the same
    windows for all 9 offsets and per-group offsets, in both layouts, and the same gradients."""
    from genie.distill.swing import swing_crop_host

    g = torch.Generator().manual_seed(0)
    cases = [torch.tensor([[dy, dx]]) for dy in range(3) for dx in range(3)] + [torch.tensor([[0, 2], [2, 1], [1, 0]])]
    for layout in (torch.contiguous_format, torch.channels_last):
        for offsets in cases:
            x = torch.randn(6, 4, 7, 5, dtype=torch.float64, generator=g).contiguous(memory_format=layout)
            x.requires_grad_(True)
            want, got = swing_crop(x, offsets), swing_crop_host(x, offsets)
            assert torch.equal(got, want), offsets.tolist()
            assert got.is_contiguous(memory_format=layout)  # the layout the strided convolution was given
            up = torch.randn(want.shape, dtype=torch.float64, generator=g)
            (grad_want,), (grad_got,) = torch.autograd.grad(want, x, up), torch.autograd.grad(got, x, up)
            assert torch.allclose(grad_got, grad_want, rtol=0, atol=1e-12), offsets.tolist()


def test_swing_wraps_every_strided_conv_and_leaves_the_model_alone():
    model = torchvision.models.resnet18(weights=None).eval()
    swung = apply_swing(model)
    strided = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and max(m.stride) > 1]
    assert len(strided) == 7  # stem, 3 downsampling 3x3, 3 projection 1x1
    assert sum(isinstance(m, SwingConv2d) for m in swung.modules()) == 7
    assert not any(isinstance(m, SwingConv2d) for m in model.modules())
    mobilenet = torchvision.models.mobilenet_v2(weights=None)
    depthwise = [m for m in apply_swing(mobilenet).modules() if isinstance(m, SwingConv2d) and m.conv.groups > 1]
    assert len(depthwise) == 4  # strided depthwise convolutions
    x = torch.randn(2, 3, 64, 64)
    set_swing(swung, enabled=False)
    with torch.no_grad():
        assert torch.equal(swung(x), model(x))
        set_swing(swung, enabled=True, control=SwingControl(torch.tensor([3]), 2))
        assert not torch.equal(swung(x), model(x))


# --- BNS loss -------------------------------------------------------------------------------

def test_bns_loss_is_zero_at_matching_statistics(tiny):
    model = copy.deepcopy(tiny)
    x = torch.randn(16, 3, 8, 8)

    def match(module, args):  # set running stats to this batch's own statistics, then normalise
        std, mean = torch.std_mean(args[0], dim=(0, 2, 3))
        module.running_mean.copy_(mean)
        module.running_var.copy_(std.pow(2) - 1e-6)

    handles = [bn.register_forward_pre_hook(match) for bn in (model.bn1, model.bn2)]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    per_layer = bns_loss(model, x, per_layer=True, with_input_term=False)
    assert set(per_layer) == {"bn1", "bn2"}
    assert all(abs(v) < 1e-8 for v in per_layer.values())
    assert bns_loss(tiny, x, with_input_term=False) > 0.01


def test_bns_loss_per_group_equals_separate_batches(tiny):
    x = torch.randn(12, 3, 8, 8)
    stats = BNStatsLoss(tiny, group_size=4)
    with torch.no_grad():
        tiny(x)
    grouped = stats.per_layer()
    stats.remove()
    for g in range(3):
        alone = bns_loss(tiny, x[4 * g : 4 * g + 4], per_layer=True, with_input_term=False)
        assert torch.allclose(grouped[g], torch.tensor([alone["bn1"], alone["bn2"]]), rtol=1e-5)


def test_model_without_batchnorm_is_refused():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    with pytest.raises(GenieError, match="has no BatchNorm2d layer: GENIE-D distils data from BatchNorm statistics"):
        distill(model, 8, num_images=4, batch_size=4, iters=1, progress=False)


# --- distillers -----------------------------------------------------------------------------

def test_every_distiller_has_a_strategy():
    """The strategy table is the list of distillers; each trains the tensors its name says and
    makes (G * n, 3, S, S) images with one learning rate per trained tensor."""
    assert DISTILLERS == tuple(STRATEGIES) == ("genie", "generator", "direct")
    assert DEFAULT_ITERS == {"genie": 4000, "generator": 4000, "direct": 500}
    cfg = DistillConfig()
    for name in DISTILLERS:
        gens = [torch.Generator().manual_seed(s) for s in (1, 2)]
        strategy = STRATEGIES[name](cfg, gens, 3, 8, torch.device("cpu"), torch.float32)
        images = strategy.images()
        assert images.shape == (6, 3, 8, 8)
        lrs = strategy.learning_rates(torch.zeros((), dtype=torch.int64))
        assert len(lrs) == len(strategy.params) > 0
        for lr, p in zip(lrs, strategy.params):
            assert p.requires_grad and (torch.as_tensor(lr) * p).shape == p.shape
        grads = torch.autograd.grad(images.sum(), strategy.params, allow_unused=True)
        assert all(g is not None for g in grads)  # every trained tensor makes the images
        trains_latents = any(p is getattr(strategy, "z", None) for p in strategy.params)
        assert trains_latents == (name == "genie")
        assert strategy.uses_generator == (name != "direct")
        assert strategy.images_are_params == (name == "direct")
    with pytest.raises(GenieError, match="use one of genie, generator, direct"):
        DistillConfig(distiller="zeroq").validate()


@pytest.mark.parametrize("distiller", ["genie", "generator", "direct"])
def test_concurrent_batches_match_sequential_ones(tiny, distiller):
    kwargs = dict(num_images=24, batch_size=8, iters=15, distiller=distiller, swing=True, seed=5, progress=False)
    # Grouped and single convolutions round differently in the last bits, and Adam's first
    # steps move every parameter by about lr whatever the gradient's size, so in float32 such
    # differences grow to ~1e-3. In float64 the two runs must agree to rounding.
    model = copy.deepcopy(tiny).double()
    together = distill(model, 8, concurrent_batches=3, **kwargs)
    one_by_one = distill(model, 8, concurrent_batches=1, **kwargs)
    assert together.images.shape == (24, 3, 8, 8) and together.images.dtype == torch.float64
    assert torch.allclose(together.images, one_by_one.images, atol=1e-9, rtol=1e-9)
    assert torch.allclose(together.losses, one_by_one.losses, rtol=1e-9)
    single = distill(tiny, 8, concurrent_batches=3, **kwargs)  # float32: the same images, less precisely
    assert (single.images - together.images.float()).abs().mean() < 5e-3
    # and the batches really are different problems
    assert (together.images[:8] - together.images[8:16]).abs().mean() > 0.1


def test_same_seed_same_images_other_seed_other_images(tiny):
    a = distill(tiny, 8, num_images=8, batch_size=8, iters=5, seed=1, progress=False)
    b = distill(tiny, 8, num_images=8, batch_size=8, iters=5, seed=1, progress=False)
    c = distill(tiny, 8, num_images=8, batch_size=8, iters=5, seed=2, progress=False)
    assert torch.equal(a.images, b.images) and not torch.equal(a.images, c.images)


def test_uneven_last_batch_and_events(tiny):
    events = []
    ds = distill(tiny, 8, num_images=20, batch_size=8, iters=6, seed=0, progress=False, callback=events.append,
                 report_every=4, snapshot_at=[0, 5], concurrent_batches=2)
    assert ds.images.shape == (20, 3, 8, 8) and ds.losses.shape == (6, 3) and ds.per_layer.shape == (3, 2)
    assert [e.batch for e in events if isinstance(e, BatchDone)] == [0, 1, 2]
    progress = [e for e in events if isinstance(e, DistillProgress)]
    assert [(p.start, tuple(p.batches), p.losses.shape[0]) for p in progress] == [
        (0, (0, 1), 4), (4, (0, 1), 2), (0, (2,), 4), (4, (2,), 2)]
    snaps = [e for e in events if isinstance(e, DistillSnapshot)]
    assert [(s.iteration, len(s.images)) for s in snaps] == [(0, 16), (5, 16), (0, 4), (5, 4)]
    assert torch.equal(snaps[1].images, ds.images[:16])  # the output is the last iteration's images


def test_direct_snapshots_are_copies_taken_before_the_step(tiny):
    snaps = []
    ds = distill(tiny, 8, num_images=4, batch_size=4, distiller="direct", iters=5, seed=0, progress=False,
                 snapshot_at=[0, 4], callback=lambda e: snaps.append(e) if isinstance(e, DistillSnapshot) else None)
    assert not torch.equal(snaps[0].images, snaps[1].images)
    assert torch.equal(snaps[1].images, ds.images)  # the output: the images the last loss was computed on


def test_resume_after_interruption_gives_the_same_set(tiny, tmp_path):
    kwargs = dict(num_images=24, batch_size=8, iters=8, seed=3, progress=False, concurrent_batches=1)
    full = distill(tiny, 8, **kwargs)

    def stop_after_first(event):
        if isinstance(event, BatchDone) and event.batch == 0:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        distill(tiny, 8, checkpoint_dir=tmp_path, callback=stop_after_first, **kwargs)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["batch_00000.pt"]
    done = []
    resumed = distill(tiny, 8, checkpoint_dir=tmp_path, callback=done.append, **kwargs)
    assert [e.batch for e in done if isinstance(e, BatchDone)] == [1, 2]  # batch 0 was not redone
    assert torch.equal(resumed.images, full.images)
    # a different run refuses to mix with these checkpoints
    with pytest.raises(GenieError, match="different distillation run"):
        distill(tiny, 8, checkpoint_dir=tmp_path, **{**kwargs, "seed": 4})


def test_save_and_load(tiny, tmp_path):
    ds = distill(tiny, 8, num_images=8, batch_size=8, iters=3, progress=False, model_name="tiny")
    loaded = load_distilled(ds.save(tmp_path / "set.pt"))
    assert torch.equal(loaded.images, ds.images) and loaded.metadata == ds.metadata
    assert loaded.layer_names == ["bn1", "bn2"] and loaded.metadata["model"] == "tiny"


@pytest.mark.parametrize("kwargs,match", [
    ({"iters": 0}, r"iterations \(iters\) must be positive \(an integer >= 1\) or None"),
    ({"iters": -5}, r"iterations \(iters\) must be positive \(an integer >= 1\) or None"),
    ({"distiller": "zeroq"}, "unknown distiller"),
    ({"num_images": 9, "batch_size": 8}, "at least 2 images"),
])
def test_bad_settings(tiny, kwargs, match):
    with pytest.raises(GenieError, match=match):
        distill(tiny, 8, **{"num_images": 8, "batch_size": 8, "progress": False, **kwargs})


def test_generator_needs_an_image_size_divisible_by_4(tiny):
    with pytest.raises(GenieError, match="divisible by 4"):
        distill(tiny, 10, num_images=4, batch_size=4, iters=1, progress=False)
    distill(tiny, 10, num_images=4, batch_size=4, iters=1, distiller="direct", progress=False)  # pixels: any size


def test_group_std_mean_gradient_matches_autograd():
    from genie.distill.bns import GroupStdMean

    x = torch.randn(2, 5, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(GroupStdMean.apply, (x,))
    std, mean = GroupStdMean.apply(x)
    ref_std, ref_mean = torch.std_mean(x, dim=(1, 3, 4))
    assert torch.allclose(std, ref_std) and torch.allclose(mean, ref_mean)
    # the channels-last path (the CPU layout): the same statistics and gradients
    flat = (torch.randn(10, 3, 4, 4, dtype=torch.float64) * 3 + 2).contiguous(memory_format=torch.channels_last)
    flat.requires_grad_(True)
    grouped = flat.unflatten(0, (2, 5))
    torch.autograd.gradcheck(GroupStdMean.apply, (grouped,))
    std, mean = GroupStdMean.apply(grouped)
    ref_std, ref_mean = torch.std_mean(grouped.detach().contiguous(), dim=(1, 3, 4))
    assert torch.allclose(std, ref_std) and torch.allclose(mean, ref_mean)


def test_folded_teacher_gives_the_unfolded_bns_losses_and_input_gradients():
    """The distillation teacher with BatchNorm folded into its convolutions: per-layer BNS losses,
    logits and the gradient with respect to the images equal the unfolded teacher's (float64,
    CIFAR ResNet-20 with random BN statistics), under the same layer names."""
    from genie.distill.folded_teacher import FoldedBatchNorm, fold_teacher_batchnorm
    from genie.models.cifar_resnet import CifarResNet

    torch.manual_seed(0)
    model = CifarResNet(20).double().eval()
    with torch.no_grad():
        for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.2, 3)
            bn.weight.uniform_(-1.5, 1.5)  # negative scales too: std(x) = std(y) / |a|
            bn.bias.uniform_(-0.5, 0.5)
    folded = copy.deepcopy(model)
    names = fold_teacher_batchnorm(folded)
    assert len(names) == 19 and not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert all(isinstance(folded.get_submodule(n), FoldedBatchNorm) for n in names)
    x = torch.randn(8, 3, 32, 32, dtype=torch.float64)
    results = []
    for teacher in (model, folded):
        images = x.clone().requires_grad_(True)
        stats = BNStatsLoss(teacher, group_size=4)
        logits = teacher(images)
        per_layer = stats.per_layer()
        (grad,) = torch.autograd.grad(per_layer.sum() + logits.square().sum(), images)
        results.append((stats.names, per_layer.detach(), logits.detach(), grad))
        stats.remove()
    (names_a, *plain), (names_b, *fold) = results
    assert names_a == names_b
    for a, b in zip(plain, fold):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-12)


def test_batchnorm_folds_only_where_its_statistics_survive_float32():
    """A channel whose offset swamps its spread (gamma near 0) keeps its BatchNorm; so does every
    layer of a model torch.fx cannot trace (pairs would be guessed)."""
    from genie.distill.folded_teacher import MAX_OFFSET_RATIO, fold_teacher_batchnorm

    model = Tiny().eval()
    with torch.no_grad():
        model.bn2.running_var.fill_(1.0)
        model.bn2.running_mean.fill_(0.0)
        model.bn2.bias.fill_(1.0)
        model.bn2.weight[3] = 0.5 / MAX_OFFSET_RATIO  # |b| / (|a| (|mu| + sigma)) about 2 * MAX_OFFSET_RATIO
    assert fold_teacher_batchnorm(copy.deepcopy(model)) == ["bn1"]
    model.bn2.weight.data[3] = 0.0
    assert fold_teacher_batchnorm(copy.deepcopy(model)) == ["bn1"]
    model.bn2.weight.data[3] = 2.0 / MAX_OFFSET_RATIO  # ratio about MAX_OFFSET_RATIO / 2: folds
    assert fold_teacher_batchnorm(copy.deepcopy(model)) == ["bn1", "bn2"]

    class Untraceable(Tiny):
        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
                x = -x
            return super().forward(x)

    assert fold_teacher_batchnorm(Untraceable().eval()) == []


def test_distillation_with_the_folded_teacher_follows_the_unfolded_one(tiny, monkeypatch):
    """The folding is a speed-up only: the same losses and images as the unfolded teacher, to
    float32 rounding over a few steps."""
    import genie.distill.distiller as distiller

    kwargs = dict(num_images=16, batch_size=8, iters=6, seed=3, progress=False)
    folded = distill(tiny, 8, **kwargs)
    assert isinstance(tiny.bn1, nn.BatchNorm2d)  # the caller's model keeps its BatchNorm
    monkeypatch.setattr(distiller, "fold_teacher_batchnorm", lambda work: [])
    plain = distill(tiny, 8, **kwargs)
    assert folded.layer_names == plain.layer_names == ["bn1", "bn2"]
    assert torch.allclose(folded.losses, plain.losses, rtol=1e-4)
    assert torch.allclose(folded.images, plain.images, atol=1e-4, rtol=1e-4)


def test_load_distilled_rejects_other_files(tmp_path):
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(GenieError, match="not a genie distilled set"):
        load_distilled(tmp_path / "other.pt")
    (tmp_path / "broken.pt").write_bytes(b"not a torch file")
    with pytest.raises(GenieError, match="not a readable genie distilled set"):
        load_distilled(tmp_path / "broken.pt")
    with pytest.raises(GenieError, match="no distilled set at"):
        load_distilled(tmp_path / "missing.pt")


@pytest.mark.parametrize("form", ["phases", "transposed"])
@pytest.mark.parametrize("groups,cin,cout", [(1, 6, 4), (3, 5, 3)])
def test_upsample_conv3x3_is_upsample_then_conv(groups, cin, cout, form):
    """The generator's phase-wise and transposed convolutions each equal nearest upsampling x2
    followed by a 3x3 convolution (padding 1), values and gradients, in both memory layouts."""
    import torch.nn.functional as F

    from genie.distill.generator import upsample_conv3x3 as phases, upsample_conv3x3_transposed as transposed

    upsample_conv3x3 = {"phases": phases, "transposed": transposed}[form]

    g = torch.Generator().manual_seed(0)
    for layout in (torch.contiguous_format, torch.channels_last):
        h = torch.randn(4, groups * cin, 5, 6, dtype=torch.float64, generator=g).contiguous(memory_format=layout)
        w = torch.randn(groups * cout, cin, 3, 3, dtype=torch.float64, generator=g)
        b = torch.randn(groups * cout, dtype=torch.float64, generator=g)
        for t in (h, w, b):
            t.requires_grad_(True)
        want = F.conv2d(F.interpolate(h, scale_factor=2, mode="nearest"), w, b, padding=1, groups=groups)
        got = upsample_conv3x3(h, w, b, groups)
        assert got.shape == want.shape and torch.allclose(got, want, atol=1e-12)
        up = torch.randn(want.shape, dtype=torch.float64, generator=g)
        for a, c in zip(torch.autograd.grad(want, (h, w, b), up), torch.autograd.grad(got, (h, w, b), up)):
            assert torch.allclose(a, c, atol=1e-10)


def test_channels_last_teacher_gives_the_plain_layouts_images(tiny, monkeypatch):
    """The CPU step's teacher weights in channels-last (distiller.teacher_layout) is a speed-up
    only: the same images and losses as the teacher in its own layout."""
    import genie.distill.distiller as distiller

    kwargs = dict(num_images=16, batch_size=8, iters=6, seed=3, progress=False)
    fast = distill(tiny, 8, **kwargs)
    assert all(p.is_contiguous() for p in tiny.parameters())  # the caller's model is left alone
    conv = distiller.teacher_layout(apply_swing(tiny), torch.device("cpu")).conv1.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    seen = []

    def plain(work, device):
        seen.append(all(p.is_contiguous() for p in work.parameters()))
        return work

    monkeypatch.setattr(distiller, "teacher_layout", plain)
    slow = distill(tiny, 8, **kwargs)
    assert seen == [True]
    assert torch.allclose(fast.images, slow.images, atol=1e-5, rtol=1e-5)
    assert torch.allclose(fast.losses, slow.losses, rtol=1e-5)
