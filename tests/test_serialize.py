"""Save/load of quantized models round-trips bit-exactly."""
import pytest
import torch

from genie.errors import GenieError
from genie.quant import load_quantized, quantize_model, reconstruct, save_quantized


@pytest.mark.parametrize("fold_bn,quantizer", [(True, "genie"), (False, "adaround"), (True, "nearest")])
def test_round_trip_is_bit_exact(resnet20, calib64, tmp_path, fold_bn, quantizer):
    qm = quantize_model(resnet20, calib64, w_bits=3, a_bits=4, quantizer=quantizer, fold_bn=fold_bn)
    qm.arch = "resnet20_cifar10"
    reconstruct(qm, calib64, iters=3, progress=False)
    path = save_quantized(qm, tmp_path / "q.pt", metadata={"note": "test"})
    loaded = load_quantized(path)
    x = calib64[:16]
    with torch.no_grad():
        assert torch.equal(qm(x), loaded(x))
    assert loaded.config == qm.config and loaded.metadata == {"note": "test"}
    state = torch.load(path, weights_only=True)["state_dict"]
    w_int = state["layer1.0.main.0.weight_quant.w_int"]
    assert w_int.dtype == torch.uint8 and int(w_int.max()) <= 7  # 3-bit integers
    layer_names = [name for name, _ in loaded.layers()]
    assert len(layer_names) == 20 and not any(f"{name}.weight" in state for name in layer_names)  # no FP weights
    # without the zoo name, the architecture must be given
    loaded2 = load_quantized(path, model=resnet20)
    with torch.no_grad():
        assert torch.equal(qm(x), loaded2(x))


def test_save_refuses_unfinished_models(resnet20, calib64, tmp_path):
    qm = quantize_model(resnet20, calib64)
    with pytest.raises(GenieError, match="run reconstruct"):
        save_quantized(qm, tmp_path / "q.pt")


def test_load_rejects_other_files(tmp_path):
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(GenieError, match="not a genie quantized model"):
        load_quantized(tmp_path / "other.pt")
    with pytest.raises(GenieError, match="no quantized model"):
        load_quantized(tmp_path / "missing.pt")
