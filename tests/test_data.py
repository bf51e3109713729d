"""Data loading and evaluation."""
import numpy as np
import pytest
import torch

from genie.data import cifar10_calibration, cifar10_test, evaluate, load_npz, normalize_uint8
from genie.errors import GenieError


def test_lossless_test_images_give_the_manifest_accuracy(resnet20, cifar_spec):
    test = cifar10_test(cifar_spec.mean, cifar_spec.std, source="lossless100")
    assert test.images.shape == (100, 3, 32, 32) and test.source == "cifar10_test_first100_lossless.npz"
    result = evaluate(resnet20, test, progress=False)
    assert result["top1"] == pytest.approx(94.0) and result["n"] == 100


def test_calibration_draw_is_seeded(cifar_spec):
    a = cifar10_calibration(16, cifar_spec.mean, cifar_spec.std, seed=3)
    b = cifar10_calibration(16, cifar_spec.mean, cifar_spec.std, seed=3)
    c = cifar10_calibration(16, cifar_spec.mean, cifar_spec.std, seed=4)
    assert torch.equal(a.images, b.images) and not torch.equal(a.images, c.images)
    with pytest.raises(GenieError, match="holds 5000"):
        cifar10_calibration(6000, cifar_spec.mean, cifar_spec.std)


def test_normalisation():
    images = np.full((2, 4, 4, 3), 255, dtype=np.uint8)
    x = normalize_uint8(images, (0.5, 0.5, 0.5), (0.25, 0.5, 1.0))
    assert x.shape == (2, 3, 4, 4)
    assert torch.allclose(x[0, :, 0, 0], torch.tensor([2.0, 1.0, 0.5]))
    images, labels, name = load_npz("cifar10_test_first100_lossless")
    assert images.dtype == np.uint8 and labels.dtype == np.int64 and name.endswith(".npz")


def test_evaluate_and_predict_build_no_autograd_graph():
    """Evaluation runs under no_grad: a graph per batch would cost time and memory for nothing."""
    from torch import nn

    from genie.data import predict_classes

    seen = []

    class Probe(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(12, 3)

        def forward(self, x):
            seen.append(torch.is_grad_enabled())
            return self.fc(x.flatten(1))

    images, labels = torch.randn(5, 3, 2, 2), torch.tensor([0, 1, 2, 0, 1])
    evaluate(Probe(), (images, labels), progress=False)
    pred = predict_classes(Probe(), images, batch_size=2)
    assert pred.shape == (5,) and pred.dtype == torch.int64
    assert seen and not any(seen)


def test_evaluate_keeps_predictions_and_counts_agreement():
    """``keep_predictions`` returns the top-1 behind ``top1`` (= predict_classes); ``agree_with``
    counts the images whose top-1 is the given class, batch boundaries included."""
    from torch import nn

    from genie.data import predict_classes

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 4))
    images, labels = torch.randn(7, 3, 2, 2), torch.tensor([0, 1, 2, 3, 0, 1, 2])
    r = evaluate(model, (images, labels), batch_size=3, progress=False, keep_predictions=True)
    pred = predict_classes(model, images, batch_size=3)
    assert torch.equal(r["predictions"], pred)
    assert r["top1"] == pytest.approx(100.0 * int((pred == labels).sum()) / 7)
    other = pred.clone()
    other[[0, 4, 6]] = (other[[0, 4, 6]] + 1) % 4  # differs on 3 images, two of them in later batches
    agree = evaluate(model, (images, labels), batch_size=3, progress=False, agree_with=other)
    assert agree["agree"] == pytest.approx(400.0 / 7) and "predictions" not in agree
    assert evaluate(model, (images, labels), progress=False, agree_with=pred)["agree"] == 100.0
    with pytest.raises(GenieError, match="8 reference predictions for 7 images"):
        evaluate(model, (images, labels), batch_size=3, progress=False, agree_with=torch.cat([pred, pred[:1]]))
    with pytest.raises(GenieError, match="5 reference predictions for more images"):
        evaluate(model, (images, labels), batch_size=3, progress=False, agree_with=pred[:5])
    assert evaluate(model, (images, labels), progress=False, agree_with=pred.tolist())["agree"] == 100.0
    with pytest.raises(GenieError, match="one class index per image"):
        evaluate(model, (images, labels), progress=False, agree_with=torch.randn(7, 4))  # logits, not classes


def test_fp_evaluation_is_remembered_only_for_the_same_weights_images_and_device(resnet20, cifar_spec, monkeypatch):
    """pipeline.fp_evaluation evaluates a model once per (weights, test images, device, threads) in a
    process; other weights or other images are evaluated again, and the result is evaluate()'s."""
    import copy

    from genie import pipeline

    monkeypatch.setattr(pipeline, "_FP_EVALUATIONS", {})
    calls = []
    monkeypatch.setattr(pipeline, "evaluate", lambda *a, **kw: calls.append(1) or evaluate(*a, **kw))
    test = cifar10_test(cifar_spec.mean, cifar_spec.std, source="lossless100")
    first = pipeline.fp_evaluation(resnet20, test)
    again = pipeline.fp_evaluation(resnet20, cifar10_test(cifar_spec.mean, cifar_spec.std, source="lossless100"))
    assert len(calls) == 1 and again["top1"] == first["top1"] == 94.0
    assert torch.equal(again["predictions"], evaluate(resnet20, test, progress=False, keep_predictions=True)["predictions"])
    other = copy.deepcopy(resnet20)
    with torch.no_grad():
        other.linear.weight.mul_(-1)  # other weights: evaluated again, and scored as themselves
    changed = pipeline.fp_evaluation(other, test)
    assert len(calls) == 2 and changed["top1"] == evaluate(other, test, progress=False)["top1"] != 94.0
    fewer = type(test)(test.images[:50], test.labels[:50], test.source)  # same name, other images
    pipeline.fp_evaluation(resnet20, fewer)
    assert len(calls) == 3
