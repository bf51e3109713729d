"""Reading the files genie writes (distilled sets, quantized models), and writing files atomically."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Union

import torch

from .errors import GenieError


def load_genie_file(path: Union[str, Path], fmt: str, what: str) -> dict:
    """The dict saved at ``path`` with ``"format": fmt``, loaded with ``weights_only=True`` onto
    the CPU; a :class:`GenieError` naming ``what`` was expected when the file is missing,
    unreadable or of another kind."""
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise GenieError(f"no {what} at {path}") from None
    except Exception as exc:
        raise GenieError(f"{path} is not a readable genie {what}: {exc}") from None
    if not isinstance(blob, dict) or blob.get("format") != fmt:
        raise GenieError(f"{path} is not a genie {what} (format {fmt!r} expected)")
    return blob


def write_atomically(path: Union[str, Path], data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path`` and rename it into place: a failed
    write leaves an existing file at ``path`` as it was, and no partial file behind."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
