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
