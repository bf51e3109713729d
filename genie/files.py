"""Files genie reads and writes: loading its own files, checking output paths before any work,
writing atomically, and locking an output folder.

Every file genie writes goes through :func:`atomic_file`: the bytes go to a temporary file in the
target's folder, are flushed to disk and renamed onto the target. A failure at any point (a full
disk, a permission change, an interrupt) leaves an existing file byte-identical and no temporary
behind, and an ``OSError`` becomes a :class:`WriteError` naming the file and the reason.
"""
from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import BinaryIO, Iterator, Union

from .errors import GenieError

PathLike = Union[str, Path]
LOCK_NAME = ".genie.lock"


class WriteError(GenieError):
    """A file could not be written (full disk, no permission, ...); the previous file is kept."""


def load_genie_file(path: PathLike, fmt: str, what: str) -> dict:
    """The dict saved at ``path`` with ``"format": fmt``, loaded with ``weights_only=True`` onto
    the CPU; a :class:`GenieError` naming ``what`` was expected when the file is missing,
    unreadable or of another kind."""
    blob = load_torch_file(path, what)
    if not isinstance(blob, dict) or blob.get("format") != fmt:
        raise GenieError(f"{path} is not a genie {what} (format {fmt!r} expected)")
    return blob


def load_torch_file(path: PathLike, what: str):
    """``torch.load(path, weights_only=True)`` onto the CPU; a missing, truncated, corrupt or
    foreign file raises a :class:`GenieError` naming the file and ``what`` was expected."""
    import torch  # here, not at the top: writing JSON (a sweep's worker) needs no torch

    path = Path(path)
    if path.is_dir():
        raise GenieError(f"{path} is a folder, not a {what} file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise GenieError(f"no {what} at {path}") from None
    except Exception as exc:  # torch.load raises many kinds (UnpicklingError, RuntimeError, KeyError, ...)
        raise GenieError(
            f"{path} is not a readable genie {what}: the file is truncated, corrupt or of another kind "
            f"({exc.__class__.__name__}: {exc}); write it again with genie"
        ) from None


def _default_mode() -> int:
    """The permission bits a newly created file gets (0666 minus the umask): mkstemp's files are
    0600, which would make every result private."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextmanager
def atomic_file(path: PathLike, what: str = "file") -> Iterator[BinaryIO]:
    """A binary file to write ``path``'s new content into; renamed onto ``path`` when the block
    ends without error (after an fsync). On any error the temporary file is removed and an
    existing ``path`` is left as it was; an ``OSError`` is raised as :class:`WriteError`
    naming ``what``, the file and the reason."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise _write_error(path, what, exc) from None
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, path.stat().st_mode & 0o777 if path.exists() else _default_mode())
        os.replace(tmp, path)
    except OSError as exc:
        raise _write_error(path, what, exc) from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _write_error(path: Path, what: str, exc: OSError) -> WriteError:
    kept = "the previous file is unchanged" if path.is_file() else "nothing was written"
    return WriteError(f"could not write {what} to {path}: {exc.strerror or exc}; {kept}")


def write_atomically(path: PathLike, data: bytes, what: str = "file") -> None:
    """Write ``data`` to ``path`` through :func:`atomic_file`."""
    with atomic_file(path, what) as handle:
        handle.write(data)


def save_atomically(obj, path: PathLike, what: str = "file") -> Path:
    """``torch.save(obj)`` to ``path`` through :func:`atomic_file`; returns the path."""
    import torch

    with atomic_file(path, what) as handle:
        torch.save(obj, handle)
    return Path(path)


def write_json(path: PathLike, obj, what: str = "result file") -> Path:
    """``obj`` as indented JSON (one trailing newline) to ``path`` through :func:`atomic_file`."""
    write_atomically(path, (json.dumps(obj, indent=2) + "\n").encode(), what)
    return Path(path)


def read_json(path: PathLike, what: str):
    """The JSON value in ``path``; a :class:`GenieError` saying there is no ``what`` there, or
    that it is not a readable one."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise GenieError(f"no {what} at {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise GenieError(f"{path} is not a readable {what} ({type(exc).__name__}: {exc})") from None


def _nearest_existing(path: Path) -> Path:
    for candidate in [path, *path.parents]:
        if candidate.exists():
            return candidate
    return Path(".")


def _folder_writable(folder: Path) -> bool:
    """Whether a file can be created in ``folder``, found by creating one (``os.access`` says
    yes to root on a read-only folder, and knows nothing of read-only mounts)."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".genie-probe.", dir=folder)
    except OSError:
        return False
    os.close(fd)
    os.unlink(probe)
    return True


def _check_creatable(folder: Path, target: Path, what: str, option: str) -> None:
    """``folder`` exists as a writable folder, or can be created under one."""
    existing = _nearest_existing(folder)
    if not existing.is_dir():
        raise GenieError(f"{option}{target}: cannot write {what} there, {existing} is a file, not a folder")
    if not _folder_writable(existing):
        raise GenieError(f"{option}{target}: cannot write {what} there, folder {existing} is not writable")


def check_output_file(path: PathLike, what: str, option: str = "", create_parents: bool = True) -> Path:
    """``path`` as a Path after checking, before any work is done, that a file can be written
    there: it is not a folder, and its folder exists (or, with ``create_parents``, can be
    created) and is writable. ``option`` (e.g. ``"--out "``) starts the message."""
    path = Path(path)
    if path.is_dir():
        raise GenieError(f"{option}{path}: it is a folder; give a file name for {what}, such as {path / 'out.pt'}")
    if not create_parents and not path.parent.is_dir():
        raise GenieError(f"{option}{path}: cannot write {what} there, folder {path.parent} does not exist")
    _check_creatable(path.parent, path, what, option)
    return path


def check_output_folder(path: PathLike, what: str, option: str = "", files: tuple = ()) -> Path:
    """``path`` as a Path after checking, before any work is done, that it is (or can be created
    as) a writable folder in which none of ``files`` is a folder."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise GenieError(f"{option}{path}: is a file; {what} needs a folder (an existing one or a new name)")
    _check_creatable(path, path, what, option)
    for name in files:
        if (path / name).is_dir():
            raise GenieError(f"{option}{path}: {path / name} is a folder, where genie writes a file; move it away")
    return path


@contextmanager
def folder_lock(folder: PathLike, option: str = "--out ") -> Iterator[Path]:
    """Hold an exclusive lock on ``folder`` (creating it) while the block runs, so that two
    runs never write into one folder: the second gets a :class:`GenieError` at once.

    The lock is an ``flock`` on ``folder/.genie.lock``, removed when the block ends; the system
    releases it when the process ends, even when killed, so a lock is never stale. Where
    ``fcntl`` does not exist (Windows) there is no lock."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield folder
        return
    path = folder / LOCK_NAME
    while True:
        handle = open(path, "a+")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise GenieError(
                f"{option}{folder}: another genie run is writing into this folder; wait for it to finish "
                "or give another folder"
            ) from None
        try:
            # the holder before us may have removed the file between our open and our flock
            if os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino:
                break
        except FileNotFoundError:
            pass
        handle.close()
    try:
        yield folder
    finally:
        with suppress(FileNotFoundError):
            os.unlink(path)  # while still locked: an opener of the old file retries on a fresh one
        handle.close()
