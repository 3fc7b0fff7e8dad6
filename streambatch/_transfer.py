"""Conversions whose source or target is a URL: download a source, check and upload a target.

A remote target is converted locally, then uploaded, data files first and the manifest last:
readers look for the manifest, so a dataset that failed half-way is never taken for a complete
one.  An object store has no atomic rename, so ``overwrite`` removes the old objects first,
and only where a streambatch dataset (a prefix whose manifest loads) or nothing is stored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ._target import not_replaceable
from .errors import InputError, StreambatchError, TargetExistsError
from .io.remote import RemoteFiles, fs_of
from .manifest import MANIFEST_NAME
from .storage import load_manifest

__all__ = ["check_target", "upload_dataset", "download"]


def check_target(url: str, overwrite: bool, storage_options: dict[str, Any] | None = None) -> None:
    """Refuse to write at ``url`` unless nothing is stored there, or ``overwrite`` is given and
    a streambatch dataset (a prefix whose manifest loads) is.

    Raises:
        TargetExistsError: something is stored at ``url`` and ``overwrite`` is false, or it is
            an object or a prefix without a valid manifest.
    """
    fs, base = fs_of(url, storage_options)
    base = base.rstrip("/")
    if not fs.exists(base) or (fs.isdir(base) and not fs.ls(base)):
        return
    if not overwrite:
        raise TargetExistsError(f"{url}: already exists; pass --overwrite to replace it")
    if not fs.isdir(base):
        raise not_replaceable(url, "is a file, not a streambatch dataset")
    try:
        load_manifest(url, RemoteFiles(url, retries=2, storage_options=storage_options))
    except StreambatchError as e:
        raise not_replaceable(url, "holds objects but is not a streambatch dataset", e) from None


def upload_dataset(local: Path, url: str, overwrite: bool, storage_options: dict[str, Any] | None = None) -> None:
    """Upload a finished dataset folder to ``url``: data files first, the manifest last.

    Readers look for the manifest, so a dataset that failed half-way is never taken for a
    complete one; the data files of a failed upload are removed (best effort).  With
    ``overwrite`` the old objects are removed first (an object store has no atomic rename), and
    only after :func:`check_target` found a streambatch dataset there (or nothing).
    """
    check_target(url, overwrite, storage_options)
    fs, base = fs_of(url, storage_options)
    base = base.rstrip("/")
    if fs.exists(base):
        fs.rm(base, recursive=True)
    files = sorted(p for p in local.rglob("*") if p.is_file() and p.name != MANIFEST_NAME)
    try:
        for p in files:
            fs.put_file(str(p), f"{base}/{p.relative_to(local).as_posix()}")
        fs.put_file(str(local / MANIFEST_NAME), f"{base}/{MANIFEST_NAME}")
    except BaseException:
        try:
            fs.rm(base, recursive=True)
        except Exception:  # noqa: BLE001 - keep the upload's own error
            pass
        raise


def download(url: str, dest: Path, storage_options: dict[str, Any] | None = None) -> Path:
    """Copy a remote source (a file or a folder) into the folder ``dest``; return the local path."""
    fs, path = fs_of(url, storage_options)
    dest.mkdir(parents=True, exist_ok=True)
    local = dest / path.rstrip("/").rsplit("/", 1)[-1]
    try:
        if fs.isdir(path):
            fs.get(path.rstrip("/") + "/", str(local), recursive=True)
        else:
            fs.get_file(path, str(local))
    except FileNotFoundError:
        raise InputError(f"{url}: no such file or folder") from None
    return local
