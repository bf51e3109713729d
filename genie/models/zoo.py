"""The model zoo: pretrained CNNs by name, each with its input normalisation and image size.

CIFAR-10 ResNets use the project's own definition (:mod:`genie.models.cifar_resnet`) and the
published checkpoints of github.com/akamaster/pytorch_resnet_cifar10; ImageNet CNNs come from
torchvision's weights API. Any other ``nn.Module`` with BatchNorm works through the Python API.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from torch import nn

from ..assets import RemoteFile, fetch
from ..errors import GenieError
from .cifar_resnet import CifarResNet

CIFAR_MEAN = (0.485, 0.456, 0.406)
CIFAR_STD = (0.229, 0.224, 0.225)
_AKAMASTER = "https://github.com/akamaster/pytorch_resnet_cifar10/raw/master/pretrained_models/"


@dataclass(frozen=True)
class ModelSpec:
    """What a zoo entry is: how to build it, its weights and the input it expects.

    ``mean``/``std`` normalise RGB images in [0, 1]; ``image_size`` is the (square) input side in
    pixels; ``dataset`` names the data it was trained on (``cifar10`` or ``imagenet``).
    """

    name: str
    dataset: str
    image_size: int
    mean: tuple
    std: tuple
    num_classes: int
    build: Callable[[], nn.Module] = field(repr=False, compare=False)
    checkpoint: Optional[RemoteFile] = None  # CIFAR entries
    torchvision_weights: Optional[str] = None  # e.g. "ResNet18_Weights.IMAGENET1K_V1"
    reference_top1: Optional[float] = None  # the checkpoint's published top-1 (%)
    note: str = ""


def _cifar(depth: int, filename: str, sha256: str, top1: float) -> ModelSpec:
    return ModelSpec(
        name=f"resnet{depth}_cifar10",
        dataset="cifar10",
        image_size=32,
        mean=CIFAR_MEAN,
        std=CIFAR_STD,
        num_classes=10,
        build=lambda: CifarResNet(depth, num_classes=10),
        checkpoint=RemoteFile(f"weights/{filename}", _AKAMASTER + filename, sha256),
        reference_top1=top1,
    )


def _torchvision_builder(name: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import torchvision  # imported when a model is built: importing genie stays light

        return torchvision.models.get_model(name, weights=None)

    return build


def _tv(name: str, weights: Optional[str], top1: Optional[float], note: str = "") -> ModelSpec:
    return ModelSpec(
        name=name,
        dataset="imagenet",
        image_size=224,
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
        num_classes=1000,
        build=_torchvision_builder(name),
        torchvision_weights=weights,
        reference_top1=top1,
        note=note,
    )


def _regnet_x_600mf() -> nn.Module:
    # pycls RegNetX-600MF (the model used by BRECQ/QDrop/GENIE): depth 16, w0 48, wa 36.97,
    # wm 2.24, group width 24. torchvision ships no weights for it.
    from torchvision.models.regnet import BlockParams, RegNet

    params = BlockParams.from_init_params(depth=16, w_0=48, w_a=36.97, w_m=2.24, group_width=24)
    return RegNet(params)


_SPECS = [
    _cifar(20, "resnet20-12fca82f.th", "12fca82f0bebc4135bf1f32f6e3710e61d5108578464b84fd6d7f5c1b04036c8", 91.78),
    _cifar(32, "resnet32-d509ac18.th", "d509ac1820d7f25398913559d7e81a13229b1e7adc5648e3bfa5e22dc137f850", 92.78),
    _cifar(44, "resnet44-014dd654.th", "014dd6541728a1c700b1642ab640e211dc6eb8ed507d70697458dc8f8a0ae2e4", 93.14),
    _cifar(56, "resnet56-4bfd9763.th", "4bfd97631478d6b638d2764fd2baff3edb1d7d82252d54439343b6596b9b5367", 93.62),
    _tv("resnet18", "ResNet18_Weights.IMAGENET1K_V1", 69.758),
    _tv("resnet50", "ResNet50_Weights.IMAGENET1K_V1", 76.130),
    _tv("mobilenet_v2", "MobileNet_V2_Weights.IMAGENET1K_V1", 71.878),
    _tv("mnasnet1_0", "MNASNet1_0_Weights.IMAGENET1K_V1", 73.456),
    _tv("regnet_x_400mf", "RegNet_X_400MF_Weights.IMAGENET1K_V1", 72.834),
    _tv("regnet_x_800mf", "RegNet_X_800MF_Weights.IMAGENET1K_V1", 75.212),
]
_REGISTRY = {spec.name: spec for spec in _SPECS}
_REGISTRY["regnet_x_600mf"] = ModelSpec(
    name="regnet_x_600mf",
    dataset="imagenet",
    image_size=224,
    mean=(0.485, 0.456, 0.406),
    std=(0.229, 0.224, 0.225),
    num_classes=1000,
    build=_regnet_x_600mf,
    note="architecture only: torchvision publishes no RegNetX-600MF weights; "
    "load your own state_dict (pretrained=False)",
)


def list_models() -> list:
    """Names of all zoo entries."""
    return sorted(_REGISTRY)


def model_spec(name: str) -> ModelSpec:
    """The :class:`ModelSpec` of a zoo entry; raises :class:`GenieError` for an unknown name."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise GenieError(
            f"unknown model {name!r}; available: {', '.join(list_models())}. "
            "Any other nn.Module with BatchNorm can be passed to the Python API directly."
        ) from None


def _load_cifar_state(spec: ModelSpec) -> dict:
    path = fetch(spec.checkpoint)
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise GenieError(f"could not read checkpoint {path}: {exc}") from None
    state = blob.get("state_dict", blob) if isinstance(blob, dict) else blob
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}


def _load_torchvision_state(spec: ModelSpec) -> dict:
    import torchvision

    if spec.torchvision_weights is None:
        raise GenieError(f"{spec.name}: {spec.note}")
    weights = torchvision.models.get_weight(spec.torchvision_weights)
    filename = weights.url.rsplit("/", 1)[-1]
    prefix = filename.rsplit("-", 1)[-1].split(".")[0]
    remote = RemoteFile(
        f"weights/{filename}",
        weights.url,
        prefix,
        also_look_in=(f"{torch.hub.get_dir()}/checkpoints",),
    )
    return torch.load(fetch(remote), map_location="cpu", weights_only=True)


def load_model(name: str, pretrained: bool = True) -> nn.Module:
    """Build zoo model ``name`` in eval mode, with its pretrained weights unless told otherwise.

    Weights are found through :func:`genie.assets.fetch` (asset directory, cache, download) and
    verified against their sha256.
    """
    spec = model_spec(name)
    model = spec.build()
    if pretrained:
        state = _load_cifar_state(spec) if spec.checkpoint is not None else _load_torchvision_state(spec)
        missing, unexpected = model.load_state_dict(state, strict=False)
        # the akamaster checkpoints carry no num_batches_tracked; anything else is an error
        missing = [k for k in missing if not k.endswith("num_batches_tracked")]
        if missing or unexpected:
            raise GenieError(
                f"checkpoint for {name} does not fit the architecture: missing {missing[:5]}, "
                f"unexpected {unexpected[:5]}"
            )
    return model.eval()
