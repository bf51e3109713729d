"""A distilled calibration set and its metadata, saved and loaded as one file."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

import torch

from ..files import load_genie_file, save_atomically

FORMAT = "genie.distilled-set"


@dataclass
class DistilledSet:
    """Synthetic images ``(N, 3, S, S)`` in the model's normalised input space.

    ``losses``: total BNS loss per iteration and batch ``(iters, batches)``; ``per_layer``: the
    final per-layer BNS loss ``(batches, layers)`` with ``layer_names``; ``metadata``: model,
    distiller, swing, iterations, batch size, seed, image size, final loss per batch, seconds.
    """

    images: torch.Tensor
    metadata: dict
    losses: torch.Tensor = field(repr=False)
    per_layer: torch.Tensor = field(repr=False)
    layer_names: list = field(repr=False, default_factory=list)

    def __len__(self) -> int:
        return len(self.images)

    @property
    def initial_loss(self) -> float:
        """Mean over batches of the BNS loss at the first iteration."""
        return float(self.losses[0].mean()) if len(self.losses) else float("nan")

    @property
    def final_loss(self) -> float:
        """Mean over batches of the BNS loss at the last iteration."""
        return float(self.losses[-1].mean()) if len(self.losses) else float("nan")

    def save(self, path: Union[str, Path]) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        return save_atomically(
            {
                "format": FORMAT,
                "images": self.images.cpu(),
                "metadata": self.metadata,
                "losses": self.losses.cpu(),
                "per_layer": self.per_layer.cpu(),
                "layer_names": list(self.layer_names),
            },
            path,
            "the distilled set",
        )


def load_distilled(path: Union[str, Path]) -> DistilledSet:
    """Load a set written by :meth:`DistilledSet.save`."""
    blob = load_genie_file(path, FORMAT, "distilled set")
    return DistilledSet(blob["images"], blob["metadata"], blob["losses"], blob["per_layer"], blob["layer_names"])
