"""Progress bars: tqdm's when it is installed, a silent stand-in when it is not.

The algorithms show progress through these two functions only, so genie runs where nothing but
torch, torchvision and numpy is installed (e.g. a bare GPU image: ``benchmarks/gpu_check.py``).
"""
from __future__ import annotations

from typing import Iterable, Optional


class _Silent:
    """What the algorithms call on a tqdm bar, doing nothing."""

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, text: str, refresh: bool = True) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> "_Silent":
        return self

    def __exit__(self, *exc) -> None:
        pass


def _tqdm():
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm


def progress_bar(total: int, desc: str, show: bool = True, unit: str = "it"):
    """A bar of ``total`` steps (a context manager with ``update``/``set_postfix_str``/``close``);
    silent when ``show`` is False or tqdm is not installed."""
    tqdm = _tqdm()
    if tqdm is None or not show:
        return _Silent()
    return tqdm(total=total, desc=desc, unit=unit)


def progress_iter(items: Iterable, total: Optional[int], desc: str, show: bool = True) -> Iterable:
    """``items`` with a transient bar (removed when done); the items themselves when ``show`` is
    False or tqdm is not installed."""
    tqdm = _tqdm()
    if tqdm is None or not show:
        return items
    return tqdm(items, total=total, desc=desc, leave=False)
