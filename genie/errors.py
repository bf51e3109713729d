"""Exceptions raised by genie for bad input.

Every error says what is wrong and what to do about it. They derive from
``ValueError`` (or ``FileNotFoundError``) so callers that already catch those keep working;
the command line prints them without a traceback.
"""


def shown(value, limit: int = 80) -> str:
    """``value`` for an error message: a tensor or array as its kind and shape (its repr can run
    to pages), anything else (0-d arrays and tensors, numpy scalars too) as its repr, cut at
    ``limit`` characters."""
    shape = getattr(value, "shape", None)
    # a 0-d array or tensor (np.int64(4), tensor(4)) is short: its repr says kind and value
    if shape is not None and tuple(shape) != () and not isinstance(value, (int, float, str)):
        return f"a {type(value).__name__} of shape {tuple(shape)}"
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class GenieError(ValueError):
    """Bad input or configuration; the message says what to change."""


class AssetError(GenieError):
    """A weight or data file is missing, cannot be downloaded, or fails its checksum."""


class ChecksumError(AssetError):
    """A file's sha256 does not match the published one."""


def exit_status(prog: str, action) -> int:
    """Run ``action()`` (a command returning its exit status) for the command line: a
    :class:`GenieError` prints ``prog: error: <message>`` and gives 2, an interrupt prints
    ``prog: interrupted`` and gives 130; neither shows a traceback."""
    import sys

    try:
        return action()
    except GenieError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
