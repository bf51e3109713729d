"""Argument checks shared by every public entry point: the command-line options, ``distill``,
``quantize_model``, ``reconstruct``, ``evaluate``, ``save_quantized`` / ``load_quantized``,
``export_onnx`` and the sweep helper.

Each check is a small pure function that returns the value in its canonical form (a Python
``int`` or ``float``) or raises :class:`genie.errors.GenieError` with one line naming the
argument, what it got, what it needs and, where there is one, how to get there. Numbers are
checked against a :class:`Range`; the command line builds its option parsers from
:data:`OPTION_RANGES` (option -> range), and the API checks the same settings against the same
ranges, so an option and its API argument accept the same values.

Integers are Python or numpy integers (``np.int64(4)`` is 4); ``True``/``False`` and floats
(``4.0``) are refused. Floats are any real number (Python, numpy, integers) and must be finite.
This module imports nothing from genie but :mod:`genie.errors`.
"""
from __future__ import annotations

import argparse
import math
import numbers
import operator
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

from .errors import GenieError, shown

# a ceiling for counts (images, batch sizes, iterations): genie allocates per-iteration buffers
# up front (a loss per iteration, the batch indices of every step), which beyond this cannot fit
# in any memory; within it, memory is not checked in advance
COUNT_MAX = 2**31 - 1
# torch.Generator.manual_seed takes [-2**63, 2**64); negative seeds are the same generators as
# seed + 2**64 there, while genie's own seed derivation (genie.seeding) takes the seed's two
# 32-bit halves: 0..2**64 - 1 gives every generator exactly once, and both agree on it
SEED_MAX = 2**64 - 1


def _number_text(x) -> str:
    """``x`` as written in a message: integers in full, other floats as ``repr`` gives them."""
    if isinstance(x, int):
        return str(x)
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else repr(float(x))


@dataclass(frozen=True)
class Range:
    """The values a numeric setting takes.

    ``kind``: ``int`` or ``float``. ``low`` / ``high``: the smallest / largest value (None:
    unbounded); ``low_open`` / ``high_open``: that end itself excluded (floats only). ``note``:
    why the bounds are what they are (shown in the message). ``short_low``: below ``low`` the
    message states only the lower bound ("positive (an integer >= 1)"), where the upper one is
    a formality (counts). ``words``: strings accepted besides numbers (``--w-bits mixed``).
    ``expected``: a description replacing the generated one.
    """

    kind: type
    low: Optional[Union[int, float]] = None
    high: Optional[Union[int, float]] = None
    low_open: bool = False
    high_open: bool = False
    note: str = ""
    short_low: bool = False
    words: tuple = ()
    expected: str = ""

    def describe(self, below: bool = False) -> str:
        """What a value must be, e.g. ``"an integer from 2 to 8"``; ``below``: the value given
        was under ``low`` (counts then state only the lower bound)."""
        if self.expected:
            text = self.expected
        elif self.kind is int:
            if below and self.short_low:
                text = "positive (an integer >= 1)" if self.low == 1 else f"an integer >= {self.low}"
            elif self.low is not None and self.high is not None:
                text = f"an integer from {self.low} to {self.high}"
            elif self.low is not None:
                text = f"an integer >= {self.low}"
            else:
                text = "an integer"
        elif self.low is not None and self.high is not None and not (self.low_open or self.high_open):
            text = f"a number from {_number_text(self.low)} to {_number_text(self.high)}"
        else:
            parts = []
            if self.low is not None:
                parts.append(f"{'>' if self.low_open else '>='} {_number_text(self.low)}")
            if self.high is not None:
                parts.append(f"{'<' if self.high_open else '<='} {_number_text(self.high)}")
            text = "a finite number" + (" " + " and ".join(parts) if parts else "")
        if self.note and not (below and self.short_low):
            text += f" ({self.note})"
        if self.words:
            text += " or " + " or ".join(repr(w) for w in self.words)
        return text

    def _in_range(self, x) -> Optional[str]:
        """None when ``x`` (a number of the right kind) lies in the range, else ``"below"`` or
        ``"above"``."""
        if self.low is not None and (x < self.low or (self.low_open and x == self.low)):
            return "below"
        if self.high is not None and (x > self.high or (self.high_open and x == self.high)):
            return "above"
        return None

    def refusal(self, name: str, got: str, below: bool = False, or_none: str = "") -> GenieError:
        """The error for ``name`` given ``got`` (already formatted for the message)."""
        return GenieError(f"{name} must be {self.describe(below)}{or_none}, got {got}")

    def check(self, value, name: str, or_none: str = ""):
        """``value`` (an API argument) as a Python int or float in the range (or one of
        ``words``, or None when ``or_none`` describes what None means), else a
        :class:`GenieError` naming ``name``."""
        if value is None and or_none:
            return None
        if isinstance(value, str) and value in self.words:
            return value
        number = _as_int(value) if self.kind is int else _as_float(value)
        if number is None:
            return _raise(self.refusal(name, _got(value), or_none=or_none))
        side = self._in_range(number)
        if side is not None:
            return _raise(self.refusal(name, _got(value), below=side == "below", or_none=or_none))
        return number

    def parse(self, text: str, name: str):
        """``text`` (a command-line value) as a number in the range, else a :class:`GenieError`
        naming ``name`` (an option such as ``--seed``)."""
        stripped = text.strip()
        if stripped in self.words:
            return stripped
        try:
            number = int(stripped, 10) if self.kind is int else float(stripped)
        except ValueError:
            number = None
        if number is None or (self.kind is float and not math.isfinite(number)):
            # a number typed as such is shown as typed; anything else quoted, so '' and ' ' show
            got = stripped if _looks_numeric(stripped) else repr(text)
            raise self.refusal(name, got)
        side = self._in_range(number)
        if side is not None:
            raise self.refusal(name, stripped, below=side == "below")
        return number


def _raise(error: GenieError):
    raise error


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _is_numpy_bool(value) -> bool:
    return type(value).__module__ == "numpy" and type(value).__name__ in ("bool", "bool_")


def _is_bool(value) -> bool:
    """Python, numpy and torch booleans (numbers to ``operator.index``, but not counts)."""
    return isinstance(value, bool) or _is_numpy_bool(value) \
        or str(getattr(value, "dtype", "")) in ("bool", "torch.bool")


def _as_int(value) -> Optional[int]:
    """``value`` as a Python int when it is an integer (Python, numpy, a 0-d integer tensor),
    else None."""
    if _is_bool(value):
        return None
    try:
        return int(operator.index(value))
    except TypeError:
        return None


def _as_float(value) -> Optional[float]:
    """``value`` as a finite Python float when it is a real number (not a bool), else None."""
    if _is_bool(value) or not isinstance(value, numbers.Real):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _got(value) -> str:
    """``value`` for a message; a float where an integer belongs is marked as one."""
    text = shown(value)
    return f"{text} (a float)" if isinstance(value, float) and value.is_integer() else text


# ranges of the settings (shared by the command line and the API)
BITS = Range(int, 2, 8)
COUNT = Range(int, 1, COUNT_MAX, short_low=True)  # images, batch sizes, iterations
COUNT_OR_ZERO = Range(int, 0, COUNT_MAX, short_low=True)
SEED = Range(int, 0, SEED_MAX, expected=f"an integer from 0 to 2**64 - 1 = {SEED_MAX} (the seeds torch's random "
                                         "generators take)")
IMAGE_SIZE = Range(int, 1, 8192, note="pixels; a float32 RGB image of 8192 x 8192 is 768 MiB")
PROBABILITY = Range(float, 0.0, 1.0)
FRACTION_BELOW_ONE = Range(float, 0.0, 1.0, high_open=True)
NON_NEGATIVE = Range(float, 0.0)
POSITIVE = Range(float, 0.0, low_open=True)
BUDGET_BITS = Range(float, 0.0, low_open=True, expected="a positive number of bits per weight (e.g. 2.5)")
SECONDS = Range(float, 0.0, 1e6, low_open=True, note="seconds; omit the option for no limit")
W_BITS = Range(int, 2, 8, words=("mixed",))
WORKERS = Range(int, 1, 1024, words=("auto",), note="notebooks run at once")
THREADS = Range(int, 1, 1024, note="threads per run")
RETRIES = Range(int, 0, 100, note="runs again after its worker died")
CONNECT_SECONDS = Range(float, 0.0, 3600.0, low_open=True, note="seconds to wait for the scheduler")

# every numeric option of `python -m genie` and `python -m genie.sweep`, by its dest (the
# RunConfig field, where there is one): the parsers take their types from here
# (apply_option_ranges), so an option refuses what its API argument refuses
OPTION_RANGES = {
    "w_bits": W_BITS,
    "a_bits": BITS,
    "w_candidates": BITS,  # a comma-separated list (LIST_OPTIONS)
    "samples": COUNT,
    "recon_iters": COUNT_OR_ZERO,
    "batch_size": COUNT,
    "drop_prob": PROBABILITY,
    "round_weight": NON_NEGATIVE,
    "seed": SEED,
    "distill_iters": COUNT,
    "distill_batch": COUNT,
    "concurrent_batches": COUNT,
    "budget_bits": BUDGET_BITS,
    "sensitivity_samples": COUNT,
    "image_size": IMAGE_SIZE,
    "cell_timeout": SECONDS,
    "workers": WORKERS,
    "threads": THREADS,
    "retries": RETRIES,
    "connect_timeout": CONNECT_SECONDS,
}
LIST_OPTIONS = ("w_candidates",)  # options that take numbers separated by commas


def check_int(value, name: str, allowed: Range, or_none: str = "") -> Optional[int]:
    """``value`` as a Python int in ``allowed`` (Python and numpy integers; not bools or
    floats); ``or_none``: None is accepted and means that (e.g. ``" or None (automatic)"``)."""
    return allowed.check(value, name, or_none)


def check_float(value, name: str, allowed: Range, or_none: str = "") -> Optional[float]:
    """``value`` as a finite Python float in ``allowed`` (any real number but a bool)."""
    return allowed.check(value, name, or_none)


def check_bool(value, name: str) -> bool:
    """``value`` as a Python bool (``True``/``False``, or a numpy bool), else a GenieError."""
    if isinstance(value, bool) or _is_numpy_bool(value):
        return bool(value)
    raise GenieError(f"{name} must be True or False, got {shown(value)}")


def check_choice(value, name: str, choices: Sequence[str]) -> str:
    """``value`` when it is one of ``choices`` (strings), else a GenieError listing them."""
    if isinstance(value, str) and value in choices:
        return value
    raise GenieError(f"{name} must be one of {', '.join(map(repr, choices))}, got {shown(value)}")


def check_path(value, name: str) -> Path:
    """``value`` (a str or os.PathLike, not empty) as a Path."""
    if isinstance(value, (str, os.PathLike)) and str(value).strip():
        return Path(value)
    raise GenieError(f"{name} must be a file path (str or pathlib.Path), got {shown(value)}")


def check_module(value, name: str, hint: str):
    """``value`` when it is a ``torch.nn.Module``; else a GenieError saying how to get one."""
    from torch import nn

    if isinstance(value, nn.Module):
        return value
    raise GenieError(f"{name} must be a torch.nn.Module, got {shown(value)}: {hint}")


def check_images(images, name: str = "calibration images", channels: Optional[int] = None):
    """``images`` when it is a non-empty floating-point tensor ``(N, C, H, W)`` (with
    ``channels`` channels when given); else a GenieError naming the dtype and shape it got and
    how to convert (integer pixels: divide by 255 and normalise with the model's mean and std;
    numpy arrays and ``(N, H, W, C)`` layouts: the conversion that gives ``(N, C, H, W)``)."""
    import torch

    if not torch.is_tensor(images):
        if hasattr(images, "shape") and hasattr(images, "dtype"):  # a numpy array
            raise GenieError(f"{name} must be a torch tensor (N, C, H, W), got a {type(images).__name__} of dtype "
                             f"{images.dtype} and shape {tuple(images.shape)}: convert with torch.from_numpy(array)")
        raise GenieError(f"{name} must be a float tensor of shape (N, C, H, W), got {shown(images)}")
    got = f"{images.dtype} of shape {tuple(images.shape)}"
    if images.dim() != 4:
        fix = ""
        if images.dim() == 3 and channels is not None and images.shape[0] == channels:
            fix = f": one image of {channels} channels? add the batch dimension with images.unsqueeze(0)"
        elif images.dim() == 3 and channels == 1:
            fix = ": one-channel images (N, H, W)? add the channel dimension with images.unsqueeze(1)"
        raise GenieError(f"{name} must be a 4-D tensor of shape (N, C, H, W), got {got}{fix}")
    if not images.is_floating_point():
        if images.dtype == torch.bool or images.is_complex():
            fix = "convert to float32 in the model's normalised space"
        else:
            if images.numel():
                got += f" with values from {int(images.min())} to {int(images.max())}"
            fix = ("integer pixels? convert with images.float() / 255, then normalise per channel with "
                   "the model's mean and std, (x - mean) / std (genie.models.model_spec(name).mean and .std for a zoo "
                   "model; genie.data.normalize_uint8 does both for (N, H, W, 3) uint8 arrays)")
        raise GenieError(f"{name} must be a float tensor of shape (N, C, H, W), normalised like the model's "
                         f"training data, got {got}: {fix}")
    if images.shape[0] == 0:
        raise GenieError(f"{name} are empty (N = 0), got {got}: give at least one image")
    if channels is not None and images.shape[1] != channels:
        fix = ("; the layout looks like (N, H, W, C): use images.permute(0, 3, 1, 2)"
               if images.shape[-1] == channels else "")
        raise GenieError(f"{name} have {images.shape[1]} channels but the model's first convolution expects "
                         f"{channels}: expected shape (N, {channels}, H, W), got {tuple(images.shape)}{fix}")
    return images


def check_labels(labels, name: str = "labels"):
    """``labels`` when it is a 1-D integer tensor of class indices ``(N,)``, else a GenieError
    (how many there must be is the caller's check)."""
    import torch

    if not torch.is_tensor(labels) or labels.dim() != 1:
        got = f"{labels.dtype} of shape {tuple(labels.shape)}" if torch.is_tensor(labels) else shown(labels)
        raise GenieError(f"{name} must be a 1-D tensor of class indices (N,), got {got}: "
                         "convert with torch.as_tensor(labels).flatten()")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise GenieError(f"{name} must be integer class indices, got {labels.dtype} of shape {tuple(labels.shape)}: "
                         "convert with labels.long()")
    return labels


def merged_config(cls, config, overrides: dict, caller: str):
    """``cls(**fields of config, **overrides)`` (``cls`` a dataclass of settings, e.g.
    ``ReconConfig``), not yet validated: ``config`` must be a ``cls`` or None and every key of
    ``overrides`` one of its fields, else a GenieError naming them (not a TypeError)."""
    import dataclasses

    if config is not None and not isinstance(config, cls):
        raise GenieError(f"{caller}()'s config must be a {cls.__name__} or None, got {shown(config)}")
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(overrides) - set(names))
    if unknown:
        raise GenieError(f"{caller}() got unknown setting(s) {', '.join(unknown)}; the settings of {cls.__name__} "
                         f"are {', '.join(names)}")
    base = {name: getattr(config, name) for name in names} if config is not None else {}
    return cls(**{**base, **overrides})


def check_options(values: dict, names: Optional[Sequence[str]] = None, prefix: str = "--",
                  none_allowed: Sequence[str] = ()) -> dict:
    """The numeric settings of ``values`` (``{dest: value}``, e.g. ``vars(RunConfig)``) checked
    against :data:`OPTION_RANGES` and returned in canonical form (``{dest: int, float, word or
    tuple}``): each named option (default: every one present) must be in its range; None only
    for those in ``none_allowed`` (their "not given"). Messages name the setting as ``prefix +
    name`` with dashes (``--seed``)."""
    checked = {}
    for dest in names if names is not None else [n for n in OPTION_RANGES if n in values]:
        value = values.get(dest)
        if value is None and dest in none_allowed:
            checked[dest] = None
            continue
        option = prefix + dest.replace("_", "-") if prefix == "--" else prefix + dest
        allowed = OPTION_RANGES[dest]
        if dest in LIST_OPTIONS:
            if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
                raise GenieError(f"{option} must be a list of values, each {allowed.describe()}, got {shown(value)}")
            checked[dest] = tuple(allowed.check(item, f"every value of {option}") for item in value)
        else:
            checked[dest] = allowed.check(value, option)
    return checked


class NumberOption:
    """An argparse ``type`` converting an option's text by its :class:`Range`: numbers of the
    right kind in range pass, anything else stops parsing with one line naming the option.
    ``many``: numbers separated by commas (a tuple)."""

    def __init__(self, option: str, allowed: Range, many: bool = False):
        self.option, self.range, self.many = option, allowed, many
        self.__name__ = "int" if allowed.kind is int else "float"  # argparse's fallback messages

    def __call__(self, text: str):
        try:
            if not self.many:
                return self.range.parse(text, self.option)
            if not text.strip():
                raise GenieError(f"{self.option} is empty: give at least one value, each "
                                 f"{self.range.describe()}, separated by commas (e.g. 2,3,4,8)")
            values = []
            for item in text.split(","):
                try:
                    values.append(self.range.parse(item, self.option))
                except GenieError:
                    raise GenieError(f"{self.option} must be values separated by commas, each "
                                     f"{self.range.describe()}, got {item.strip()!r} in {text!r}") from None
            return tuple(values)
        except GenieError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    def __repr__(self) -> str:
        return f"NumberOption({self.option!r}, {self.range.describe()!r})"


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are a :class:`GenieError` (one line, exit status 2 through
    :func:`genie.errors.exit_status`) instead of a usage block and ``SystemExit``."""

    def error(self, message: str):
        match = re.fullmatch(r"argument ([^:]+): (.*)", message, re.S)
        if match and match.group(2).startswith(tuple(f"{o} " for o in match.group(1).split("/"))):
            message = match.group(2)  # our own message already names the option
        else:
            message += f" (see {self.prog} --help)"
        raise GenieError(" ".join(message.split()))


def apply_option_ranges(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Give every option of ``parser`` and its sub-parsers whose dest is in
    :data:`OPTION_RANGES` a :class:`NumberOption` type; returns ``parser``."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                apply_option_ranges(sub)
        elif action.dest in OPTION_RANGES and action.option_strings:
            action.type = NumberOption(action.option_strings[0], OPTION_RANGES[action.dest],
                                       many=action.dest in LIST_OPTIONS)
    return parser
