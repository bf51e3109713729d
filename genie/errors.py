"""Exceptions raised by genie for bad input.

Every error says what is wrong and what to do about it. They derive from
``ValueError`` (or ``FileNotFoundError``) so callers that already catch those keep working;
the command line prints them without a traceback.
"""


class GenieError(ValueError):
    """Bad input or configuration; the message says what to change."""


class AssetError(GenieError):
    """A weight or data file is missing, cannot be downloaded, or fails its checksum."""


class ChecksumError(AssetError):
    """A file's sha256 does not match the published one."""
