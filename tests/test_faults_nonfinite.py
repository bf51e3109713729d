"""NaN and Inf: refused at the API boundary with the tensor and index named; a loss that turns
non-finite stops distillation or reconstruction naming the unit and iteration; no broken model
is saved."""
import pytest
import torch

from genie.distill import DistillConfig, distill
from genie.finite import NonFiniteError
from genie.quant import ReconConfig, quantize_model, reconstruct, save_quantized

from faults import tiny_bn


@pytest.mark.parametrize("index,value,kind", [(5, float("nan"), "NaN"), (0, float("inf"), "Inf"), (1, -float("inf"), "Inf")])
def test_non_finite_calibration_image_is_named(resnet20, calib64, index, value, kind):
    images = calib64.clone()
    images[index, 1, 3, 4] = value
    images[40, 0, 0, 0] = value
    with pytest.raises(NonFiniteError, match=rf"calibration images hold {kind} values: image {index} \(and 1 more of 64\)"):
        quantize_model(resnet20, images)


def test_reconstruct_refuses_non_finite_images(resnet20, calib64):
    qm = quantize_model(resnet20, calib64)
    images = calib64.clone()
    images[17] = float("nan")
    with pytest.raises(NonFiniteError, match=r"image 17 \(of 64\)"):
        reconstruct(qm, images, iters=1, progress=False)


@pytest.mark.parametrize("tensor", ["running_var", "running_mean", "weight"])
def test_non_finite_batchnorm_statistics_are_named(tensor):
    model = tiny_bn()
    getattr(model.bn2, tensor).data[3] = float("nan")
    images = torch.randn(8, 3, 8, 8)
    with pytest.raises(NonFiniteError, match=rf"bn2\.{tensor}\[3\] is nan"):
        quantize_model(model, images, w_bits=8, a_bits=8)
    with pytest.raises(NonFiniteError, match=rf"BatchNorm statistics.*bn2\.{tensor}\[3\] is nan"):
        distill(model, 8, num_images=4, batch_size=4, iters=2, progress=False)


def test_distillation_loss_turning_nan_stops_the_run(monkeypatch):
    # a NaN learning rate makes the loss NaN from the second step; the API refuses one
    # (genie.validate), so the settings go in unchecked here
    monkeypatch.setattr(DistillConfig, "validate", lambda self: self)
    with pytest.raises(NonFiniteError, match=r"distillation of batches \[0\]: the loss became NaN at iteration 1;"):
        distill(tiny_bn(), 8, num_images=4, batch_size=4, iters=3, lr_latent=float("nan"), progress=False)


def test_reconstruction_loss_turning_nan_names_the_unit_and_iteration(resnet20, calib64, monkeypatch):
    monkeypatch.setattr(ReconConfig, "validate", lambda self: self)  # as above: a NaN rate, unchecked
    qm = quantize_model(resnet20, calib64[:16])
    first = qm.unit_names[0]
    # checked at each report (every 2 iterations here) and at the end of the unit, not per iteration
    with pytest.raises(NonFiniteError, match=rf"reconstruction of unit '{first}': the loss became NaN at iteration 1;"):
        reconstruct(qm, calib64[:16], iters=5, report_every=2, lr_softbits=float("nan"), progress=False)


def test_save_refuses_a_model_with_non_finite_values(resnet20, calib64, tmp_path):
    qm = quantize_model(resnet20, calib64[:16])
    qm.unit_names = qm.unit_names[:1]
    reconstruct(qm, calib64[:16], iters=0, progress=False)
    qm.finalize()
    name, quantizer = next((n, q) for n, q in qm.act_quantizers() if q.enabled)
    with torch.no_grad():
        quantizer.scale.fill_(float("inf"))
    with pytest.raises(NonFiniteError, match=rf"not saved to .*q\.pt.*{name}\.scale\[\] is inf"):
        save_quantized(qm, tmp_path / "q.pt")
    assert list(tmp_path.iterdir()) == []
