"""streambatch: shuffled epochs over datasets larger than RAM, in bounded memory, for PyTorch."""

from __future__ import annotations

from typing import Any

from .convert import convert
from .decode import Image
from .errors import (
    DataError,
    InputError,
    ManifestError,
    StateError,
    StreambatchError,
    TargetExistsError,
    WriteError,
)
from .io.remote import RemoteOptions
from .manifest import Manifest
from .packing import Pack
from .schema import Column
from .storage import load_manifest

from ._version import __version__
__all__ = [
    "convert",
    "load_manifest",
    "Manifest",
    "Column",
    "StreamDataset",
    "Pack",
    "RemoteOptions",
    "Image",
    "StreambatchError",
    "InputError",
    "ManifestError",
    "DataError",
    "StateError",
    "TargetExistsError",
    "WriteError",
    "__version__",
]


def __getattr__(name: str) -> Any:
    # torch is imported only where tensors are made, so `streambatch convert` starts fast.
    if name == "StreamDataset":
        from .dataset import StreamDataset

        return StreamDataset
    raise AttributeError(f"module 'streambatch' has no attribute {name!r}")
