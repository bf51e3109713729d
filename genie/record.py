"""The result record: the one shape of ``result.json``, whoever writes it.

The command line (``genie run``), the benchmarks and every notebook describe a run with a
:class:`RunRecord`: the fields every producer shares, at the top level of the JSON object
(``None``, JSON ``null``, where a producer has no such number), and ``extra``, a free-form
dict for what only one producer measures (per-method errors, a table of variants, ...).
``python -m genie.sweep --collect`` reads the fields by name, so results of different
producers line up in one table.

    record = RunRecord(producer="01_quickstart", model="resnet20_cifar10", w_bits=4, a_bits=4,
                       q_top1=q["top1"], extra={"rtn_top1": rtn["top1"]})
    write_record(out / "result.json", record)
    read_record(out / "result.json").q_top1
"""
from __future__ import annotations

import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Optional, Union

from . import __version__
from .errors import GenieError, shown
from .files import read_json, write_json

# raised when a field is added, removed, renamed or changes meaning; read_record accepts this one only
SCHEMA_VERSION = 1


def _torch_version() -> str:
    import torch

    return str(torch.__version__)


@dataclass
class RunRecord:
    """One run's settings and results. Accuracies are top-1 percentages (0-100) on ``test_file``
    (``test_images`` images); times are wall-clock seconds; BNS losses are the distillation loss
    averaged over batches at the first and the last iteration."""

    producer: str  # what wrote it: "genie run", "bench", a notebook's name ("01_quickstart")
    model: str  # zoo name, e.g. resnet20_cifar10
    w_bits: Optional[int] = None
    a_bits: Optional[int] = None
    quantizer: Optional[str] = None  # genie | adaround | nearest
    data: Optional[str] = None  # calibration images: real | synthetic
    samples: Optional[int] = None  # calibration images used
    calib_source: Optional[str] = None  # where they came from, in words
    recon_iters: Optional[int] = None  # reconstruction iterations per unit
    distiller: Optional[str] = None  # genie | direct | generator (synthetic data)
    swing: Optional[bool] = None
    distill_iters: Optional[int] = None
    initial_bns_loss: Optional[float] = None
    final_bns_loss: Optional[float] = None
    seed: Optional[int] = None
    device: Optional[str] = None  # torch device, e.g. cpu, cuda:0
    device_name: Optional[str] = None  # GPU model, or CPU and thread count
    test_file: Optional[str] = None
    test_images: Optional[int] = None
    fp_top1: Optional[float] = None
    q_top1: Optional[float] = None
    distill_seconds: Optional[float] = None
    recon_seconds: Optional[float] = None
    total_seconds: Optional[float] = None
    genie_version: str = __version__
    torch_version: str = field(default_factory=_torch_version)
    extra: dict = field(default_factory=dict)  # producer-specific values (JSON-serialisable)
    schema: int = SCHEMA_VERSION

    @classmethod
    def from_values(cls, producer: str, values: dict) -> "RunRecord":
        """A record from a flat dict: keys named like a field fill it, the others go to ``extra``."""
        names = set(FIELDS) - {"extra", "schema", "producer"}
        return cls(producer=producer, **{k: v for k, v in values.items() if k in names},
                   extra={k: v for k, v in values.items() if k not in names})

    def to_dict(self) -> dict:
        """The JSON object of ``result.json``: ``schema`` first, ``extra`` last."""
        data = asdict(self)
        return {"schema": data.pop("schema"), **data}

    def row(self) -> dict:
        """One table row: every field but ``extra``, then ``extra.<name>`` for its scalar values."""
        data = self.to_dict()
        extra = data.pop("extra")
        return {**data, **flat_extras(extra)}


FIELDS = tuple(f.name for f in fields(RunRecord))
_HINTS = typing.get_type_hints(RunRecord)
_REQUIRED = ("schema", "producer", "model")


def flat_extras(extra: dict, prefix: str = "extra.") -> dict:
    """The scalar values of ``extra`` as ``{prefix + name: value}``; nested dicts become
    ``extra.outer.inner``; lists are left out (they do not fit a table cell)."""
    out = {}
    for key, value in extra.items():
        if isinstance(value, dict):
            out.update(flat_extras(value, f"{prefix}{key}."))
        elif isinstance(value, (str, int, float, bool)) or value is None:
            out[f"{prefix}{key}"] = value
    return out


def _allowed(hint) -> tuple:
    return typing.get_args(hint) if typing.get_origin(hint) is Union else (hint,)


def _fits(value, allowed: tuple) -> bool:
    if value is None:
        return type(None) in allowed
    if isinstance(value, bool):  # a bool is an int to isinstance, not to the record
        return bool in allowed
    if isinstance(value, int):
        return int in allowed or float in allowed
    return any(isinstance(value, t) for t in allowed if t is not type(None))


_WORDS = {int: "an integer", float: "a number", str: "a string", bool: "true or false", dict: "an object",
          type(None): "null"}


def validate_record(data, source: str = "the result record") -> RunRecord:
    """``data`` (a dict read from JSON) as a :class:`RunRecord`; a :class:`GenieError` naming
    ``source`` and the field when one is missing, unknown or of the wrong type, or when the
    record has another schema version."""
    if not isinstance(data, dict):
        raise GenieError(f"{source} is not a genie result record: a JSON object was expected, got "
                         f"{type(data).__name__}")
    if "schema" not in data:
        raise GenieError(f"{source} is not a genie result record (no 'schema' field): it was written by an "
                         f"older genie or by hand; write it with genie.record.write_record")
    version = data["schema"]
    if version != SCHEMA_VERSION or isinstance(version, bool):
        newer = isinstance(version, int) and not isinstance(version, bool) and version > SCHEMA_VERSION
        todo = ("upgrade genie to read it" if newer else
                "run its producer again with this genie (or read it with the genie that wrote it)")
        raise GenieError(f"{source} has record schema {version!r}, this genie reads schema {SCHEMA_VERSION}: {todo}")
    for name in _REQUIRED:
        if name not in data:
            raise GenieError(f"{source}: field '{name}' is missing")
    unknown = [k for k in data if k not in FIELDS]
    if unknown:
        raise GenieError(f"{source}: unknown field '{unknown[0]}'; producer-specific values go under 'extra'")
    for name, value in data.items():
        allowed = _allowed(_HINTS[name])
        if not _fits(value, allowed):
            words = " or ".join(_WORDS[t] for t in allowed)
            raise GenieError(f"{source}: field '{name}' must be {words}, got {shown(value)} ({type(value).__name__})")
    if not all(isinstance(k, str) for k in data.get("extra", {})):
        raise GenieError(f"{source}: field 'extra' must have string keys")
    return RunRecord(**data)


def write_record(path: Union[str, Path], record: Union[RunRecord, dict]) -> Path:
    """Check ``record`` and write it to ``path`` as JSON, atomically (:func:`genie.files.write_json`)."""
    data = record.to_dict() if isinstance(record, RunRecord) else record
    checked = validate_record(data, f"the result record for {path}")
    try:
        return write_json(path, checked.to_dict(), "result file")
    except TypeError as exc:  # json.dumps fails before any file is touched
        raise GenieError(f"the result record for {path} holds a value JSON cannot store ({exc}): "
                         "store plain numbers, strings, lists and dicts (tensor.item(), .tolist())") from None


def read_record(path: Union[str, Path]) -> RunRecord:
    """The record in ``path`` (written by :func:`write_record`), checked."""
    return validate_record(read_json(path, "result record"), str(path))
