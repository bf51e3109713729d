"""Reading the files genie writes (distilled sets, quantized models)."""
from __future__ import annotations

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
