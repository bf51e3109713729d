"""Distillation checkpoints: each finished batch saved as one file (atomically), so a rerun with
the same settings skips it; and the fingerprint that says which model a set came from."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Optional

from torch import nn

from ..digests import tensor_bytes
from ..errors import GenieError
from ..files import check_output_folder, load_torch_file, save_atomically


def model_fingerprint(model: nn.Module) -> str:
    """16 hex digits of the sha256 of ``model``'s BatchNorm statistics: which model a set was distilled from."""
    digest = hashlib.sha256()
    for name, m in model.named_modules():
        if isinstance(m, nn.BatchNorm2d):
            digest.update(name.encode())
            digest.update(tensor_bytes(m.running_mean))
            digest.update(tensor_bytes(m.running_var))
    return digest.hexdigest()[:16]


class Checkpoints:
    """Finished batches saved one file each; a rerun with the same settings skips them."""

    def __init__(self, directory: Optional[str], fingerprint: dict):
        self.dir = Path(directory) if directory else None
        self.fingerprint = fingerprint
        if self.dir:
            check_output_folder(self.dir, "distillation checkpoints", "checkpoint_dir ")
            self.dir.mkdir(parents=True, exist_ok=True)

    def path(self, batch: int) -> Path:
        return self.dir / f"batch_{batch:05d}.pt"

    def load(self, batch: int) -> Optional[dict]:
        if self.dir is None or not self.path(batch).is_file():
            return None
        blob = load_torch_file(self.path(batch), "distillation checkpoint")
        if not isinstance(blob, dict) or "fingerprint" not in blob:
            raise GenieError(f"{self.path(batch)} is not a genie distillation checkpoint: delete it (the batch "
                             "is distilled again) or use another checkpoint directory")
        if blob.get("fingerprint") != self.fingerprint:
            raise GenieError(
                f"{self.path(batch)} belongs to a different distillation run "
                f"({_differences(blob.get('fingerprint'), self.fingerprint)}); use another checkpoint directory or "
                "delete it"
            )
        return blob

    def save(self, batch: int, record: dict) -> None:
        if self.dir is None:
            return
        save_atomically({**record, "fingerprint": self.fingerprint}, self.path(batch), "a distillation checkpoint")


def _differences(stored, current: dict, limit: int = 4) -> str:
    """What differs between a checkpoint's fingerprint and this run's, setting by setting
    (``seed: checkpoint 0, this run 1``; ``model`` is the BatchNorm statistics' fingerprint)."""
    if not isinstance(stored, dict):
        return f"its fingerprint is {stored!r}"
    keys = [k for k in list(current) + [k for k in stored if k not in current] if stored.get(k) != current.get(k)]
    parts = [f"{k}: checkpoint {stored.get(k)!r}, this run {current.get(k)!r}" for k in keys[:limit]]
    more = f"; and {len(keys) - limit} more" if len(keys) > limit else ""
    return "; ".join(parts) + more
