"""Conversions whose source or target is a URL: download a source, check and upload a target.

A remote target is converted locally, then uploaded, data files first and the manifest last:
readers look for the manifest, so a dataset that failed half-way is never taken for a complete
one.  An object store has no atomic rename, so ``overwrite`` removes the old objects first,
and only where a streambatch dataset (a prefix whose manifest loads) or nothing is stored.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

from .._target import check_not_input, not_replaceable
from ..errors import InputError, StreambatchError, TargetExistsError
from ..io.remote import RemoteFiles, RemoteRoot, fs_of, is_url
from ..manifest import MANIFEST_NAME, Manifest
from ..storage import load_manifest

__all__ = ["convert_remote", "check_target", "upload_dataset", "download"]


def convert_remote(src: Any, dst: Any, fmt: str, overwrite: bool, opts: dict[str, Any],
                   local: Callable[..., Manifest | dict[str, Any]], work: Path | None = None) -> Manifest | dict[str, Any]:
    """``local(src, dst, fmt, overwrite=, **opts)`` (``convert``) where ``src`` or ``dst`` is a URL:
    a remote source is downloaded into a temporary folder first (``work``, created and removed,
    by default one in the system's temporary folder); a remote target is checked
    before anything is converted, converted locally, then uploaded (:func:`upload_dataset`).
    Raises what ``local`` raises, ``TargetExistsError`` for a remote target it may not replace."""
    if is_url(dst):
        if is_url(src):
            check_not_input(src, dst, {str(src).rstrip("/")}, {str(dst).rstrip("/")}, "/")
        check_target(str(dst), overwrite)  # fail before converting anything
    if work is None:
        work = Path(tempfile.mkdtemp(prefix="streambatch-convert-"))
    else:
        work.mkdir(parents=True)
    try:
        if is_url(src):
            src = download(str(src), work / "src")
        if not is_url(dst):
            return local(src, dst, fmt, overwrite=overwrite, **opts)
        result = local(src, work / "out", fmt, overwrite=True, **opts)
        assert isinstance(result, Manifest)
        upload_dataset(work / "out", str(dst), overwrite)
        return dataclasses.replace(result, root=RemoteRoot(str(dst)))  # type: ignore[arg-type]
    finally:
        shutil.rmtree(work, ignore_errors=True)


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
