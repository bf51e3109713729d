"""Saving and loading quantized models: integer weights (uint8), per-channel scales and zero
points, activation step sizes, bit configuration and the remaining FP tensors (biases, unfolded
BatchNorm). Loading rebuilds the same structure and gives bit-identical outputs."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import torch
from torch import nn

from ..errors import GenieError
from ..files import load_genie_file, save_atomically
from ..finite import require_finite_model
from ..validate import check_module, check_path
from .qmodel import QuantConfig, QuantizedModel, integer_model_structure

FORMAT = "genie.quantized-model"
FORMAT_VERSION = 1


def save_quantized(qmodel: QuantizedModel, path: Union[str, Path], metadata: Optional[dict] = None) -> Path:
    """Write ``qmodel`` (finalized: every weight hard-rounded) to ``path``; returns the path.

    ``metadata``: extra JSON-like information kept with the model (e.g. the run's settings).
    """
    from .. import __version__

    if not isinstance(qmodel, QuantizedModel):
        raise GenieError(f"save_quantized takes a QuantizedModel (from genie.quant.quantize_model, then reconstruct), "
                         f"got {type(qmodel).__name__}; a float model is saved with "
                         "torch.save(model.state_dict(), path)")
    path = check_path(path, "path")
    if metadata is not None and not isinstance(metadata, dict):
        raise GenieError(f"metadata must be a dict (JSON-like values) or None, got {type(metadata).__name__}")
    not_final = [n for n, layer in qmodel.layers() if not layer.weight_quant.is_integer]
    if not_final:
        raise GenieError(
            f"{len(not_final)} layers (first: {not_final[0]}) still have soft or FP weights; "
            "run reconstruct() (iters=0 for round-to-nearest) or qmodel.finalize() before saving"
        )
    require_finite_model(qmodel.net, f"the quantized model (not saved to {path})")
    blob = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "genie_version": __version__,
        "torch_version": str(torch.__version__),
        "arch": qmodel.arch,
        "config": qmodel.config.to_dict(),
        "unit_names": list(qmodel.unit_names),
        "state_dict": {k: v.detach().cpu() if torch.is_tensor(v) else v for k, v in qmodel.net.state_dict().items()},
        "metadata": metadata or {},
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_atomically(blob, path, "the quantized model")


def load_quantized(
    path: Union[str, Path], model: Optional[nn.Module] = None, blocks=None, map_location="cpu"
) -> QuantizedModel:
    """Load a model written by :func:`save_quantized`.

    ``model``: the FP architecture (weights are not used); needed unless the file names a zoo
    model. ``blocks``: the same custom block-table entries used when quantizing, if any.
    """
    path = check_path(path, "path")
    if model is not None:
        check_module(model, "model", "pass the FP architecture the file was quantized from "
                                     "(e.g. genie.models.load_model(name, pretrained=False)), or None for a zoo model")
    blob = load_genie_file(path, FORMAT, "quantized model")
    if blob["format_version"] > FORMAT_VERSION:
        raise GenieError(f"{path} has format version {blob['format_version']}; this genie reads up to {FORMAT_VERSION}")
    if model is None:
        if not blob.get("arch"):
            raise GenieError(f"{path} does not name a zoo model: pass the FP model architecture as model=")
        from ..models import load_model

        model = load_model(blob["arch"], pretrained=False)
    qm = integer_model_structure(model, QuantConfig(**blob["config"]), blob["unit_names"], blocks)
    try:
        qm.net.load_state_dict(blob["state_dict"])
    except RuntimeError as exc:
        raise GenieError(f"{path} does not fit the given architecture: {exc}") from None
    qm.arch = blob.get("arch")
    qm.metadata = blob.get("metadata", {})
    return qm.to(map_location).eval()
