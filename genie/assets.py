"""Finding downloadable files: asset directory first, then the cache, then the internet.

A file is named by its path relative to the asset root (``weights/resnet20-12fca82f.th``), its
public URL and its sha256. Lookup order:

1. ``$GENIE_ASSETS/<relpath>`` (an offline copy: CI and the Makefile point it at ``../shared/assets``),
2. ``$GENIE_CACHE/<relpath>`` (default ``~/.cache/genie``), where downloads are kept,
3. a download from the URL into the cache, unless ``GENIE_OFFLINE=1``.

Every file is checked against its sha256 before use.

:func:`use_checkout_assets` is the one place that applies this project's layout (an offline copy
in ``shared/assets`` beside the checkout) when ``$GENIE_ASSETS`` is unset: the test and notebook
conftests, the benchmark scripts and :func:`genie.viz.notebook_setup` call it.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .errors import AssetError, ChecksumError

ASSETS_ENV = "GENIE_ASSETS"
CACHE_ENV = "GENIE_CACHE"
OFFLINE_ENV = "GENIE_OFFLINE"

# sha256 of files already verified in this process: (path, size, mtime) -> digest
_verified: dict = {}


@dataclass(frozen=True)
class RemoteFile:
    """A file that can be found offline or downloaded: ``relpath`` under the asset root.

    ``sha256`` is the full hex digest, or a prefix of at least 8 hex digits where only a prefix
    is published (torchvision weight files carry one in their names).
    """

    relpath: str
    url: Optional[str]
    sha256: str
    also_look_in: tuple = ()  # further directories holding the bare file name (torch hub cache)


def asset_dir() -> Optional[Path]:
    """The offline asset directory from ``$GENIE_ASSETS``, or None when unset."""
    value = os.environ.get(ASSETS_ENV, "").strip()
    return Path(value).expanduser() if value else None


def use_checkout_assets(root: Path) -> Optional[Path]:
    """Point ``$GENIE_ASSETS`` at ``<root>/../shared/assets`` when it is unset (or empty) and that
    folder exists; returns the asset directory in effect afterwards (:func:`asset_dir`).

    ``root``: the project checkout (the folder holding ``genie/``). A ``$GENIE_ASSETS`` already set
    is kept, so a Makefile or CI setting always wins over this layout.
    """
    if asset_dir() is None:
        beside = Path(root).resolve().parent / "shared" / "assets"
        if beside.is_dir():
            os.environ[ASSETS_ENV] = str(beside)
    return asset_dir()


def offline() -> bool:
    """Whether downloads are off (``GENIE_OFFLINE`` set to anything but empty or 0)."""
    return os.environ.get(OFFLINE_ENV, "") not in ("", "0")


def cache_dir() -> Path:
    """Where downloads are stored: ``$GENIE_CACHE`` or ``~/.cache/genie``."""
    value = os.environ.get(CACHE_ENV, "").strip()
    return Path(value).expanduser() if value else Path.home() / ".cache" / "genie"


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file (memoised per path, size and modification time)."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _verified:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
        _verified[key] = digest.hexdigest()
    return _verified[key]


def verify(path: Path, sha256: str) -> Path:
    """Return ``path`` if its sha256 matches, else raise :class:`ChecksumError`."""
    actual = sha256_of(path)
    if len(sha256) < 8 or not actual.startswith(sha256.lower()):
        raise ChecksumError(
            f"checksum mismatch for {path}: expected sha256 {sha256}, got {actual}. "
            "The file is corrupt or a different version; delete it (it will be fetched again) "
            "or replace it with the published file."
        )
    return path


def _download(url: str, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=target.parent, delete=False, suffix=".part") as tmp:
        try:
            with urllib.request.urlopen(url, timeout=60) as response:
                shutil.copyfileobj(response, tmp)
        except BaseException:
            tmp.close()
            os.unlink(tmp.name)
            raise
    os.replace(tmp.name, target)


def fetch(remote: RemoteFile) -> Path:
    """Local path of ``remote``, verified; downloads it into the cache if needed.

    Raises :class:`AssetError` naming the file, the URL and the variable to set when the file is
    not available, and :class:`ChecksumError` when a copy does not match its sha256.
    """
    root = asset_dir()
    if root is not None and (root / remote.relpath).is_file():
        return verify(root / remote.relpath, remote.sha256)
    cached = cache_dir() / remote.relpath
    if cached.is_file():
        return verify(cached, remote.sha256)
    for extra in remote.also_look_in:
        candidate = Path(extra) / Path(remote.relpath).name
        if candidate.is_file():
            return verify(candidate, remote.sha256)

    where = f"${ASSETS_ENV}={root}" if root is not None else f"${ASSETS_ENV} is not set"
    hint = (
        f"put the file at $GENIE_ASSETS/{remote.relpath} (set {ASSETS_ENV} to the offline asset "
        f"directory) or at {cached}"
    )
    if remote.url is None:
        raise AssetError(f"{remote.relpath} not found ({where}) and it has no download URL: {hint}.")
    if offline():
        raise AssetError(
            f"{remote.relpath} not found ({where}) and downloads are off ({OFFLINE_ENV}=1): "
            f"{hint}, or download it from {remote.url}."
        )
    try:
        _download(remote.url, cached)
    except Exception as exc:  # network errors come in many types
        raise AssetError(
            f"{remote.relpath} not found ({where}) and the download from {remote.url} failed "
            f"({exc.__class__.__name__}: {exc}): {hint}."
        ) from None
    try:
        return verify(cached, remote.sha256)
    except ChecksumError:
        cached.unlink(missing_ok=True)
        raise
