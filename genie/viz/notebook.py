"""Notebook set-up: the first code cell of every notebook (:func:`notebook_setup`: assets,
display mode, threads) and the smoke / full switch of the parameters (:func:`picker`)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Optional

import torch

from .. import __version__
from ..assets import ASSETS_ENV, use_checkout_assets
from .display import live_frontend

# the project checkout (the folder holding genie/), beside which CI keeps shared/assets
_CHECKOUT = Path(__file__).resolve().parents[2]


def picker(smoke: bool) -> Callable:
    """``pick(value, smoke_value, full_value)``: ``value`` unless it is None, else the value for
    the mode. Notebooks resolve their ``None`` parameters with it *after* the parameters cell,
    so that ``papermill -p smoke False`` switches every knob left at None to the full setting
    (papermill injects its values after the parameters cell, so expressions in that cell would
    keep their smoke values)."""

    def pick(value, smoke_value, full_value):
        if value is not None:
            return value
        return smoke_value if smoke else full_value

    return pick


def notebook_setup(assets: Optional[str] = None, live: Optional[bool] = None, threads: Optional[int] = None) -> dict:
    """The first code cell of every notebook: where weights and data come from, live or static
    display, CPU threads. Returns (and prints) what it found.

    ``assets``: a folder with the offline ``weights/`` and ``data/`` files (sets ``GENIE_ASSETS``).
    Without it ``$GENIE_ASSETS`` is kept; when that is unset too and a ``shared/assets`` folder
    sits next to the project checkout (this project's CI layout), that one is used; otherwise
    files are downloaded on first use into ``$GENIE_CACHE`` (default ``~/.cache/genie``).
    ``threads``: ``torch.set_num_threads`` (default: leave torch's choice).
    """
    if assets:
        folder = Path(assets).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(f"asset folder {folder} does not exist (expected weights/ and data/ inside)")
        os.environ[ASSETS_ENV] = str(folder.resolve())
    else:
        use_checkout_assets(_CHECKOUT)
    if threads:
        torch.set_num_threads(int(threads))
    info = {
        "genie": __version__,
        "torch": str(torch.__version__),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "not available",
        "cpu threads": torch.get_num_threads(),
        "assets": os.environ.get(ASSETS_ENV) or "none (download into the cache on first use)",
        "display": "live widgets" if live_frontend(live) else "static figures",
    }
    print("\n".join(f"{k:<12} {v}" for k, v in info.items()))
    return info
