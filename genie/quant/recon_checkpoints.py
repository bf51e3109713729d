"""Reconstruction checkpoints: each finished unit saved as one file (atomically), so that a rerun
of an interrupted reconstruction continues at the first unfinished unit and ends with the model an
uninterrupted run makes, bit for bit.

What unit k's file holds is what the units after it need and cannot recompute: the unit's state
after reconstruction (integer weights, scales, zero points, snapped biases, activation step
sizes), the random generators' states when it finished (batch indices, QDrop masks, the
activation step-size search), and its report. Everything else the next units read (the
teacher's activations, the student's input of the next unit) is a deterministic forward pass of
the models, recomputed on resume.

Every file carries the run's fingerprint (:func:`recon_fingerprint`): the FP teacher's weights,
the quantized model before reconstruction (bits, quantizer, setting, initial step sizes), the
calibration images, the reconstruction settings, the device type and the code. A file made
under another fingerprint is refused, naming what differs.
"""
from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from ..digests import tensor_digest
from ..errors import GenieError
from ..files import check_output_folder, load_torch_file, save_atomically
from .sensitivity import weights_fingerprint

FORMAT = "genie.recon-checkpoint"
_FILE = "unit_{:03d}.pt"


def code_digest() -> str:
    """16 hex digits of the sha256 of genie's Python sources: a checkpoint is only resumed by the
    code that wrote it (any change may change the numbers)."""
    root = Path(__file__).resolve().parent.parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def recon_fingerprint(teacher: nn.Module, student: nn.Module, images: torch.Tensor, cfg, quant_config: dict,
                      units: list, device: torch.device) -> dict:
    """What decides a reconstruction's result, one entry per cause (so that a refusal names it).

    ``student``: the quantized network before any unit is reconstructed; ``cfg``: the
    :class:`~genie.quant.recon_state.ReconConfig`; ``quant_config``: the quantized model's
    configuration (``QuantConfig.to_dict()``)."""
    from .. import __version__

    return {
        "teacher weights": weights_fingerprint(teacher),
        "quantized model": weights_fingerprint(student) + "|" + repr(sorted(quant_config.items())),
        "calibration images": tensor_digest([("images", images)]),
        "reconstruction settings": dataclasses.asdict(cfg),
        "units": list(units),
        "device type": torch.device(device).type,
        "genie code": f"{__version__}+{code_digest()}",
    }


def _difference(saved: dict, current: dict) -> str:
    """What differs between two fingerprints, in words (settings by name: old -> new)."""
    parts = []
    for key in current:
        old, new = saved.get(key), current[key]
        if old == new:
            continue
        if isinstance(old, dict) and isinstance(new, dict):
            changed = [f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in new if old.get(k) != new.get(k)]
            parts.append(f"{key} ({', '.join(changed)})")
        elif isinstance(old, str) and isinstance(new, str) and len(old) + len(new) < 80:
            parts.append(f"{key} ({old} -> {new})")
        else:
            parts.append(key)
    return ", ".join(parts) or "its format"


class ReconCheckpoints:
    """Finished units saved one file each under ``directory``; :meth:`finished` returns an
    interrupted run's units, checked against this run's fingerprint."""

    def __init__(self, directory, fingerprint: dict):
        self.dir = Path(directory)
        self.fingerprint = fingerprint
        check_output_folder(self.dir, "reconstruction checkpoints", "checkpoint_dir ")

    def path(self, index: int) -> Path:
        return self.dir / _FILE.format(index)

    def _load(self, index: int) -> Optional[dict]:
        path = self.path(index)
        if not path.is_file():
            return None
        blob = load_torch_file(path, "reconstruction checkpoint")
        if not isinstance(blob, dict) or blob.get("format") != FORMAT:
            raise GenieError(f"{path} is not a genie reconstruction checkpoint: delete it, or give another "
                             "checkpoint folder")
        if blob.get("fingerprint") != self.fingerprint:
            raise GenieError(
                f"{path} was written by a reconstruction with other {_difference(blob.get('fingerprint') or {}, self.fingerprint)}: "
                f"delete {self.dir} to start this reconstruction from its first unit, or give another folder")
        return blob

    def finished(self) -> list:
        """The saved units ``0, 1, ..., k-1`` (the longest run of consecutive files from unit 0),
        each checked against this run's fingerprint."""
        blobs = []
        while True:
            blob = self._load(len(blobs))
            if blob is None:
                return blobs
            blobs.append(blob)

    def save(self, index: int, module: nn.Module, report: dict, rng: dict) -> None:
        """Unit ``index`` finished: its state, its report (a dict) and the generators' states."""
        self.dir.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu() if torch.is_tensor(v) else v for k, v in module.state_dict().items()}
        blob = {"format": FORMAT, "fingerprint": self.fingerprint, "index": index, "state": state,
                "report": report, "rng": rng}
        save_atomically(blob, self.path(index), "a reconstruction checkpoint")

    def remove(self) -> None:
        """Delete the unit files (and the folder, when nothing else is in it)."""
        remove_checkpoints(self.dir)


def remove_checkpoints(directory) -> None:
    """Delete the reconstruction checkpoints under ``directory`` (and the folder when it is left
    empty); nothing happens when there are none."""
    directory = Path(directory)
    if not directory.is_dir():
        return
    for path in directory.glob("unit_[0-9][0-9][0-9].pt"):
        path.unlink(missing_ok=True)
    try:
        directory.rmdir()
    except OSError:  # something else is in it: leave it
        pass
