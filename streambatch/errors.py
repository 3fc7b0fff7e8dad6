"""The project's error types: one small tree, every message names the file, column or row.

    StreambatchError
    ├── InputError        bad source data given to ``convert`` (also a ``ValueError``)
    ├── ManifestError     a dataset's manifest is missing, unreadable or inconsistent
    ├── DataError         a stored unit is missing, truncated or fails its checksum
    ├── StateError        a resume state that does not fit the dataset or the loader
    ├── TargetExistsError the conversion target exists and may not be replaced
    └── WriteError        ``convert`` could not write (disk full, file too large, ...)
"""

from __future__ import annotations

__all__ = [
    "StreambatchError",
    "InputError",
    "ManifestError",
    "DataError",
    "StateError",
    "TargetExistsError",
    "WriteError",
]


class StreambatchError(Exception):
    """Base class of every error streambatch raises on purpose."""


class InputError(StreambatchError, ValueError):
    """The source of a conversion is missing, empty or holds data streambatch cannot store."""


class ManifestError(StreambatchError, ValueError):
    """A dataset's manifest is missing, not JSON, of an unknown version or inconsistent."""


class DataError(StreambatchError, OSError):
    """A stored shuffle unit is missing, truncated or does not match its checksum."""


class StateError(StreambatchError, ValueError):
    """A resume state belongs to another dataset, seed or format version."""


class TargetExistsError(StreambatchError, FileExistsError):
    """The conversion target exists and ``overwrite`` was not asked for, or it appeared during the
    conversion, or it holds the input or something ``overwrite`` may not replace."""


class WriteError(StreambatchError, OSError):
    """``convert`` could not write the dataset (disk full, file size limit, permissions).

    ``errno`` is the operating system's error number; nothing was left at the target and
    the temporary folder was removed.
    """
