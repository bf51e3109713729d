"""genie.digests: a tensor's bytes for any dtype and layout, and the fingerprints stored in files
(a distilled set's model_fingerprint, a sensitivity table's weights_fingerprint) still computed
over the byte streams they had before the helper, so files written earlier still match."""
import hashlib

import pytest
import torch
from torch import nn

from genie.digests import tensor_bytes, tensor_digest
from genie.distill import model_fingerprint
from genie.quant.sensitivity import weights_fingerprint


@pytest.mark.parametrize("make", [
    lambda g: torch.randn(3, 4, generator=g),
    lambda g: torch.randint(-5, 5, (7,), generator=g),
    lambda g: torch.rand(6, generator=g) > 0.5,
    lambda g: torch.randn(2, 3, 4, 5, generator=g).contiguous(memory_format=torch.channels_last),
    lambda g: torch.randn(4, 6, generator=g)[:, ::2],
    lambda g: torch.randn((), generator=g),
    lambda g: torch.zeros(0),
], ids=["float32", "int64", "bool", "channels_last", "strided", "scalar", "empty"])
def test_tensor_bytes_are_numpys_row_major_bytes(make):
    t = make(torch.Generator().manual_seed(0))
    assert tensor_bytes(t) == t.contiguous().numpy().tobytes()


def test_tensor_bytes_of_bfloat16_which_numpy_cannot_hold():
    t = torch.tensor([1.0, -2.5, 3.0], dtype=torch.bfloat16)
    assert tensor_bytes(t) == t.view(torch.int16).numpy().tobytes() and len(tensor_bytes(t)) == 6
    assert tensor_bytes(t) != tensor_bytes(t + 1)


def test_tensor_digest_names_dtype_shape_and_values():
    t = torch.arange(6, dtype=torch.float32)
    base = tensor_digest([("a", t)])
    assert len(base) == 16 and base == tensor_digest([("a", t.clone())])
    others = [tensor_digest([("b", t)]), tensor_digest([("a", t.double())]), tensor_digest([("a", t.view(2, 3))]),
              tensor_digest([("a", t + 1)])]
    assert base not in others and len(set(others)) == 4


def _bn_model(dtype=torch.float32):
    g = torch.Generator().manual_seed(1)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1), nn.BatchNorm2d(2))
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g))
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model.to(dtype)


def test_model_fingerprint_keeps_the_byte_stream_that_distilled_sets_store():
    model = _bn_model()
    digest = hashlib.sha256()
    for name, m in model.named_modules():
        if isinstance(m, nn.BatchNorm2d):
            digest.update(name.encode())
            digest.update(m.running_mean.numpy().tobytes())
            digest.update(m.running_var.numpy().tobytes())
    assert model_fingerprint(model) == digest.hexdigest()[:16]
    assert len(model_fingerprint(_bn_model(torch.bfloat16))) == 16  # numpy has no bfloat16


def test_weights_fingerprint_keeps_the_byte_stream_that_sensitivity_tables_store():
    model = _bn_model()
    digest = hashlib.sha256()
    for name, t in model.state_dict().items():
        digest.update(name.encode())
        digest.update(str(tuple(t.shape)).encode())
        digest.update(t.contiguous().numpy().tobytes())
    assert weights_fingerprint(model) == digest.hexdigest()[:16]
    model[0].weight.data[0, 0, 0, 0] += 1
    assert weights_fingerprint(model) != digest.hexdigest()[:16]
