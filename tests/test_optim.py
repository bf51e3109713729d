"""Device-side Adam and plateau schedule match torch.optim's."""
import torch

from genie.optim import DeviceAdam, DevicePlateau


def test_device_adam_and_plateau_match_torch():
    torch.manual_seed(0)
    p_ref = torch.randn(3, 4, requires_grad=True)
    p_dev = p_ref.detach().clone().requires_grad_()
    opt = torch.optim.Adam([p_ref], lr=0.1)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, min_lr=1e-4, patience=3)
    dev_opt = DeviceAdam([p_dev])
    plateau = DevicePlateau(torch.tensor([0.1]), patience=3)
    lrs = []
    for i in range(40):
        target = torch.randn(3, 4) if i < 5 else torch.zeros(3, 4)
        weight = 1.0 if i < 10 else 0.0  # then a flat loss: the plateau schedule must cut the rate
        loss_ref = ((p_ref - target) ** 2).sum() * weight + 5.0 * (i >= 10)
        opt.zero_grad()
        loss_ref.backward()
        opt.step()
        sched.step(loss_ref.item())
        loss_dev = ((p_dev - target) ** 2).sum() * weight + 5.0 * (i >= 10)
        (grad,) = torch.autograd.grad(loss_dev, [p_dev])
        dev_opt.step([grad], [plateau.lr.view(1, 1)])
        plateau.step(loss_dev.detach().view(1))
        assert abs(opt.param_groups[0]["lr"] - plateau.lr.item()) < 1e-8
        lrs.append(plateau.lr.item())
    assert torch.allclose(p_ref, p_dev, atol=1e-5)  # bias corrections computed in float32 on the device
    assert lrs[0] == lrs[12] and lrs[-1] < lrs[0] / 100  # it did reduce


def test_per_batch_rates_are_independent():
    p = torch.zeros(2, 3, requires_grad=True)
    opt = DeviceAdam([p])
    opt.step([torch.ones(2, 3)], [torch.tensor([[0.1], [0.0]])])
    assert torch.allclose(p[0], torch.full((3,), -0.1)) and torch.equal(p[1], torch.zeros(3))


def test_fused_cpu_path_matches_the_composed_update():
    """fused=True: parameters with a number or 0-d rate take torch's fused kernel, the others
    (per-channel rates) the composed path; every update equals fused=False's up to rounding,
    and the per-channel one exactly."""
    g = torch.Generator().manual_seed(0)
    starts = [torch.randn(5, 4, generator=g), torch.randn(3, generator=g), torch.randn(3, 2, generator=g)]
    grads = [[torch.randn(p.shape, generator=g) for p in starts] for _ in range(30)]
    rates = [1e-2, torch.tensor(3e-3), torch.tensor([[1e-2], [1e-3], [0.0]])]
    results = []
    for fused in (True, False):
        params = [p.clone() for p in starts]
        opt = DeviceAdam(params, fused=fused)
        for step_grads in grads:
            opt.step(step_grads, rates)
        results.append(params)
    (a, b, c), (a0, b0, c0) = results
    assert not torch.equal(a, starts[0]) and torch.equal(c[2], starts[2][2])  # they moved; rate 0 did not
    torch.testing.assert_close(a, a0, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(b, b0, rtol=1e-5, atol=1e-6)
    assert torch.equal(c, c0)


def test_fused_update_takes_each_gradient_element_whatever_its_layout():
    """A channels-last gradient of a contiguous parameter (a convolution's weight gradient when
    its input is channels-last): the fused update equals the composed one. torch's CPU kernel
    alone would pair the elements by memory order and update each with another's gradient."""
    g = torch.Generator().manual_seed(1)
    start = torch.randn(8, 4, 3, 3, generator=g)
    grads = [torch.randn(8, 4, 3, 3, generator=g).contiguous(memory_format=torch.channels_last) for _ in range(5)]
    results = []
    for fused in (True, False):
        param = start.clone()
        opt = DeviceAdam([param], fused=fused)
        for grad in grads:
            opt.step([grad], [1e-2])
        results.append(param)
    torch.testing.assert_close(results[0], results[1], rtol=1e-5, atol=1e-6)
