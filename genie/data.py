"""Data: CIFAR-10 from the offline ``.npz`` assets or torchvision, ImageNet-style folders, and
top-1/top-5 evaluation.

Images handed to models are float tensors ``(N, 3, H, W)`` already normalised with the model's
mean and std (see :class:`genie.models.ModelSpec`); distilled images live in the same space.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from .assets import OFFLINE_ENV, RemoteFile, asset_dir, cache_dir, fetch, offline
from .devices import model_device
from .errors import AssetError, GenieError
from .progress import progress_iter
from .validate import COUNT, SEED, check_bool, check_images, check_int, check_labels, check_module

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

# Offline CIFAR-10 files (see the asset MANIFEST). They have no public URL: without them the
# loaders fall back to torchvision's CIFAR10 download.
NPZ_FILES = {
    "cifar10_test": RemoteFile(
        "data/cifar10_test.npz", None, "cfce7ce075e8a97eb8dff2d8fb9268413511e4e8afe116fdf8214a5ea93875ef"
    ),
    "cifar10_test_first100_lossless": RemoteFile(
        "data/cifar10_test_first100_lossless.npz",
        None,
        "d43520965366cf92c3edb2df33abfe79e5d895ae6dff996e134feb12d89b846c",
    ),
    "cifar10_train_calib5k": RemoteFile(
        "data/cifar10_train_calib5k.npz", None, "b4e0f659ffffa7792aea45e0d333c2b3dddeb4bcc64e1b74650f1a51a26dd94a"
    ),
}


@dataclass
class LabeledImages:
    """Normalised images ``(N, 3, H, W)`` float32 with int64 ``labels`` ``(N,)``; ``source`` says
    where they came from (a file name, for reports)."""

    images: torch.Tensor
    labels: torch.Tensor
    source: str

    def __len__(self) -> int:
        return len(self.labels)


def normalize_uint8(images: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 ``(N, H, W, 3)`` RGB -> float32 ``(N, 3, H, W)`` normalised with ``mean``/``std``."""
    if images.ndim != 4 or images.shape[-1] != 3:
        raise GenieError(f"expected uint8 images of shape (N, H, W, 3), got {tuple(images.shape)}")
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255.0)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return x.sub_(mean_t).div_(std_t).contiguous()


def load_npz(name: str) -> tuple:
    """``(images uint8 (N,32,32,3), labels int64 (N,), source)`` of an offline CIFAR-10 file.

    ``name`` is a key of :data:`NPZ_FILES` or a path to an ``.npz`` with ``images`` and ``labels``.
    """
    if name in NPZ_FILES:
        path = fetch(NPZ_FILES[name])
    else:
        path = Path(name)
        if not path.is_file():
            raise AssetError(f"no such data file: {name} (known names: {', '.join(NPZ_FILES)})")
    with np.load(path, allow_pickle=False) as blob:
        if "images" not in blob or "labels" not in blob:
            raise GenieError(f"{path} must hold arrays 'images' (N,H,W,3 uint8) and 'labels' (N,)")
        return blob["images"], blob["labels"].astype(np.int64), path.name


def _have_npz(key: str) -> bool:
    root = asset_dir()
    rel = NPZ_FILES[key].relpath
    return (root is not None and (root / rel).is_file()) or (cache_dir() / rel).is_file()


def _torchvision_cifar10(train: bool, root: Optional[str], download: bool) -> tuple:
    import torchvision

    root = root or str(cache_dir() / "cifar10")
    no_downloads = offline()
    try:
        dataset = torchvision.datasets.CIFAR10(root, train=train, download=download and not no_downloads)
    except Exception as exc:
        why = f"downloads are off ({OFFLINE_ENV}=1)" if no_downloads and download else f"it failed ({exc})"
        raise AssetError(
            f"CIFAR-10 not available: no offline file under $GENIE_ASSETS/data and no torchvision "
            f"CIFAR10 copy at {root}; {why}. Set GENIE_ASSETS to the asset directory or pass "
            "root= to an existing torchvision CIFAR-10 copy."
        ) from None
    split = "train" if train else "test"
    return dataset.data, np.asarray(dataset.targets, dtype=np.int64), f"torchvision CIFAR10 {split}"


def cifar10_test(
    mean: Sequence[float], std: Sequence[float], source: str = "auto", root: Optional[str] = None
) -> LabeledImages:
    """The CIFAR-10 test set, normalised.

    ``source``: ``"npz"`` (offline ``cifar10_test.npz``: JPEG-degraded, see the MANIFEST),
    ``"lossless100"`` (the first 100 test images, lossless), ``"torchvision"`` (the real test set
    under ``root``, downloaded if missing) or ``"auto"`` (npz when present, else torchvision).
    """
    if source == "auto":
        source = "npz" if _have_npz("cifar10_test") else "torchvision"
    if source == "npz":
        images, labels, name = load_npz("cifar10_test")
    elif source == "lossless100":
        images, labels, name = load_npz("cifar10_test_first100_lossless")
    elif source == "torchvision":
        images, labels, name = _torchvision_cifar10(False, root, download=True)
    else:
        raise GenieError(f"unknown CIFAR-10 test source {source!r}: use auto, npz, lossless100 or torchvision")
    return LabeledImages(normalize_uint8(images, mean, std), torch.from_numpy(labels), name)


def cifar10_calibration(
    num_images: int,
    mean: Sequence[float],
    std: Sequence[float],
    seed: int = 0,
    source: str = "auto",
    root: Optional[str] = None,
) -> LabeledImages:
    """``num_images`` real CIFAR-10 training images for few-shot calibration, normalised.

    Drawn without replacement by a generator seeded with ``seed`` from ``cifar10_train_calib5k.npz``
    (``source="npz"``, 5000 images) or torchvision's training set (``"torchvision"``).
    """
    num_images = check_int(num_images, "number of calibration images (num_images)", COUNT)
    seed = check_int(seed, "seed", SEED)
    if source == "auto":
        source = "npz" if _have_npz("cifar10_train_calib5k") else "torchvision"
    if source == "npz":
        images, labels, name = load_npz("cifar10_train_calib5k")
    elif source == "torchvision":
        images, labels, name = _torchvision_cifar10(True, root, download=True)
    else:
        raise GenieError(f"unknown CIFAR-10 calibration source {source!r}: use auto, npz or torchvision")
    if num_images > len(labels):
        raise GenieError(f"asked for {num_images} calibration images but {name} holds {len(labels)}")
    generator = torch.Generator().manual_seed(seed)
    pick = torch.randperm(len(labels), generator=generator)[:num_images].numpy()
    return LabeledImages(
        normalize_uint8(images[pick], mean, std), torch.from_numpy(labels[pick]), f"{name} ({num_images} images, seed {seed})"
    )


def image_folder(
    root: Union[str, Path],
    image_size: int = 224,
    resize: Optional[int] = None,
    mean: Sequence[float] = (0.485, 0.456, 0.406),
    std: Sequence[float] = (0.229, 0.224, 0.225),
):
    """An ImageNet-style folder (``root/<class>/<image>``) as a torchvision ``ImageFolder``
    yielding normalised ``(3, image_size, image_size)`` tensors (resize to ``resize``, default
    ``image_size * 8 // 7``, then centre crop)."""
    import torchvision
    from torchvision import transforms as T

    if not Path(root).is_dir():
        raise AssetError(f"image folder {root} does not exist; expected root/<class>/<image files>")
    transform = T.Compose(
        [
            T.Resize(resize or image_size * 8 // 7),
            T.CenterCrop(image_size),
            T.ToTensor(),
            T.Normalize(mean, std),
        ]
    )
    return torchvision.datasets.ImageFolder(str(root), transform=transform)


def sample_images(dataset, num_images: int, seed: int = 0) -> LabeledImages:
    """``num_images`` items drawn without replacement (seeded) from a ``(image, label)`` dataset,
    stacked into tensors: calibration images from an image folder."""
    num_images = check_int(num_images, "num_images", COUNT)
    seed = check_int(seed, "seed", SEED)
    if not 0 < num_images <= len(dataset):
        raise GenieError(f"cannot draw {num_images} images from a dataset of {len(dataset)}")
    generator = torch.Generator().manual_seed(seed)
    pick = torch.randperm(len(dataset), generator=generator)[:num_images].tolist()
    items = [dataset[i] for i in pick]
    images = torch.stack([torch.as_tensor(x) for x, _ in items])
    labels = torch.tensor([int(y) for _, y in items], dtype=torch.int64)
    return LabeledImages(images, labels, f"{len(pick)} images drawn with seed {seed}")


def _eval_batch_size(device: torch.device) -> int:
    return 1000 if device.type == "cuda" else 100  # small batches stay in CPU caches


def _eval_input(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    if device.type == "cpu" and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)  # faster oneDNN convolutions
    return x


@torch.no_grad()
def predict_logits(model: nn.Module, images: torch.Tensor, batch_size: Optional[int] = None) -> torch.Tensor:
    """The outputs ``(N, classes)`` (on the CPU) of ``model`` on ``images`` ``(N, C, H, W)``, computed
    in the batches and memory layout :func:`evaluate` uses (the same float arithmetic)."""
    return _batched(model, images, batch_size, lambda out: out)


@torch.no_grad()
def predict_classes(model: nn.Module, images: torch.Tensor, batch_size: Optional[int] = None) -> torch.Tensor:
    """The top-1 class ``(N,)`` (int64, on the CPU) of each image ``(N, C, H, W)``, computed in the
    batches and memory layout :func:`evaluate` uses, so the predictions are the ones behind its
    top-1 (the same float arithmetic)."""
    return _batched(model, images, batch_size, lambda out: out.argmax(1))


def _batched(model: nn.Module, images: torch.Tensor, batch_size: Optional[int], reduce) -> torch.Tensor:
    """``reduce(model(batch))`` for :func:`evaluate`'s batches of ``images``, concatenated on the CPU."""
    device = model_device(model)
    if batch_size is None:
        batch_size = _eval_batch_size(device)
    was_training = model.training
    model.eval()
    try:
        return torch.cat([reduce(model(_eval_input(images[i : i + batch_size], device))).cpu()
                          for i in range(0, len(images), batch_size)])
    finally:
        model.train(was_training)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data,
    batch_size: Optional[int] = None,
    progress: bool = True,
    desc: str = "evaluate",
    keep_predictions: bool = False,
    agree_with: Optional[torch.Tensor] = None,
) -> dict:
    """Top-1 and top-5 accuracy (%) of ``model`` on ``data``: ``{"top1", "top5", "n"}``.

    ``data`` is a :class:`LabeledImages`, an ``(images, labels)`` pair of tensors, or a dataset /
    iterable of ``(images, labels)`` batches. Runs on the model's device, in eval mode.
    ``keep_predictions``: also ``"predictions"``, the top-1 class of each image ``(N,)`` (int64,
    CPU). ``agree_with``: another model's predictions on the same data in the same order
    ``(N,)``; adds ``"agree"``, the % of images where this model's top-1 is that class (how
    closely a quantized model follows its FP32 original, without the labels' noise).
    """
    check_module(model, "model", "pass the network to evaluate")
    batch_size = check_int(batch_size, "batch_size", COUNT, or_none=" or None (automatic)")
    keep_predictions = check_bool(keep_predictions, "keep_predictions")
    device = model_device(model)
    if batch_size is None:
        batch_size = _eval_batch_size(device)
    was_training = model.training
    model.eval()
    if isinstance(data, LabeledImages):
        data = (data.images, data.labels)
    if isinstance(data, (tuple, list)) and len(data) == 2 and torch.is_tensor(data[0]):
        images, labels = data
        check_images(images, "evaluate()'s images")
        check_labels(labels, "evaluate()'s labels")
        if not torch.is_tensor(labels) or labels.dim() != 1 or len(labels) != len(images):
            shape = tuple(labels.shape) if torch.is_tensor(labels) else type(labels).__name__
            raise GenieError(f"evaluate() needs one label per image: {len(images)} images, labels of shape {shape}")
        batches = ((images[i : i + batch_size], labels[i : i + batch_size]) for i in range(0, len(labels), batch_size))
        total = (len(labels) + batch_size - 1) // batch_size
    elif isinstance(data, torch.utils.data.Dataset):  # e.g. an image folder: decode in worker processes
        workers = min(8, os.cpu_count() or 1)
        loader = torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=False, num_workers=workers,
                                             pin_memory=device.type == "cuda")
        batches, total = iter(loader), len(loader)
    else:
        batches, total = iter(data), None
    reference = None
    if agree_with is not None:
        reference = torch.as_tensor(agree_with)
        if reference.dim() != 1 or reference.is_floating_point() or reference.is_complex():
            raise GenieError(f"evaluate(agree_with=...) takes one class index per image, shape (N,), integers; "
                             f"got shape {tuple(reference.shape)}, {reference.dtype}")
        reference = reference.to(device=device, dtype=torch.int64)
    agreed = torch.zeros((), dtype=torch.int64, device=device)
    predicted = []
    correct1 = torch.zeros((), dtype=torch.int64, device=device)
    correct5 = torch.zeros((), dtype=torch.int64, device=device)
    # labels outside 0..classes-1 would count as misses: counted on the device, checked at the end
    out_of_range = torch.zeros((), dtype=torch.int64, device=device)
    count, classes = 0, None
    for x, y in progress_iter(batches, total, desc, show=progress):
        if len(y) != len(x):
            raise GenieError(f"evaluate() got a batch of {len(x)} images with {len(y)} labels")
        x, y = _eval_input(x, device), y.to(device, non_blocking=True)
        logits = model(x)
        classes = logits.shape[1]
        out_of_range += ((y < 0) | (y >= classes)).sum()
        top = logits.topk(min(5, classes), dim=1).indices
        hit = top == y[:, None]
        correct1 += hit[:, 0].sum()
        correct5 += hit.any(dim=1).sum()
        if keep_predictions:
            predicted.append(top[:, 0])
        if reference is not None:
            if count + len(y) > len(reference):
                raise GenieError(f"evaluate(agree_with=...) got {len(reference)} reference predictions for more images")
            agreed += (top[:, 0] == reference[count : count + len(y)]).sum()
        count += len(y)
    model.train(was_training)
    if count == 0:
        raise GenieError("evaluate() got no data")
    if out_of_range.item():
        raise GenieError(f"{out_of_range.item()} of {count} labels are outside 0..{classes - 1}, the classes the "
                         "model outputs: the labels do not belong to this model's dataset")
    result = {"top1": 100.0 * correct1.item() / count, "top5": 100.0 * correct5.item() / count, "n": count}
    if keep_predictions:
        result["predictions"] = torch.cat(predicted).cpu()
    if reference is not None:
        if len(reference) != count:
            raise GenieError(f"evaluate(agree_with=...) got {len(reference)} reference predictions for {count} images")
        result["agree"] = 100.0 * agreed.item() / count
    return result
