"""An image folder (torchvision's ImageFolder layout): ``SRC/<class name>/<image files>``.

Columns ``image`` (kind ``bytes``: each file's bytes as they are, never decoded or re-encoded)
and ``label`` (int64: the class's index, classes sorted by name as torchvision sorts them; the
names in the column's ``meta``, a category).  Rows in class order, then by file name.  Image
files are those ending in one of ``IMAGE_EXTENSIONS`` (any case); other files are ignored, as
torchvision ignores them, and so are hidden (dot) files and folders.  Unlike torchvision, a
folder inside a class folder is an error rather than searched: its images would otherwise be
labelled by the class folder above it (a ``train/`` beside ``val/`` would become a class).
Files are listed (and their sizes taken) at open; any row range is read with plain file reads,
from several threads at once.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..errors import InputError
from ..manifest import MANIFEST_NAME
from ..ragged import Ragged
from ..schema import Column
from ._columns import select
from ._hive import is_hive
from .base import ReadOptions, Source

__all__ = ["ImageFolderSource", "IMAGE_EXTENSIONS"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")
"""The file endings (compared in lower case) of the images of a class folder."""


def _visible(entry: os.DirEntry[str]) -> bool:
    return not entry.name.startswith(".")


def _is_image(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


class ImageFolderSource(Source):
    """The images of a folder of class folders, with random access by row."""

    name = "imagefolder"
    detect_rank = 2  # after every other format: only a folder no other format claims

    def __init__(self, path: Path, classes: list[str], files: list[str], sizes: np.ndarray, labels: np.ndarray,
                 keep: tuple[str, ...] | None) -> None:
        meta = {"type": "category", "categories": classes, "ordered": False}
        by_name = {"image": Column("image", "uint8", (), kind="bytes"), "label": Column("label", "int64", (), meta=meta)}
        cols = tuple(by_name[n] for n in select(list(by_name), keep, str(path)))
        super().__init__(path, cols, len(files))
        self._files, self._sizes, self._labels = files, sizes, labels

    @classmethod
    def claims_folder(cls, path: Path, kinds: set[str]) -> bool:
        """A folder with no data files of its own, no manifest and no ``key=value`` folder, one of
        whose folders holds an image file."""
        if kinds or (path / MANIFEST_NAME).exists() or is_hive(path):
            return False
        with os.scandir(path) as top:
            folders = [e.path for e in top if _visible(e) and e.is_dir()]
        for f in sorted(folders):
            with os.scandir(f) as inner:
                if any(_visible(e) and _is_image(e.name) and not e.is_dir() for e in inner):
                    return True
        return False

    @classmethod
    def open(cls, path: Path, keep: tuple[str, ...] | None, opts: ReadOptions) -> ImageFolderSource:
        if not path.is_dir():
            raise InputError(f"{path}: an image folder input is a folder of class folders "
                             "(SRC/<class name>/<image files>)")
        try:
            with os.scandir(path) as top:
                classes = sorted(e.name for e in top if _visible(e) and e.is_dir())
        except OSError as e:
            raise InputError(f"{path}: cannot list: {e.strerror or e}") from None
        if not classes:
            raise InputError(f"{path}: holds no class folders (expected SRC/<class name>/<image files>)")
        files: list[str] = []
        sizes: list[int] = []
        counts = []
        for c in classes:
            found = _images(path / c)
            files += [f"{c}/{name}" for name, _ in found]
            sizes += [size for _, size in found]
            counts.append(len(found))
        labels = np.repeat(np.arange(len(classes), dtype=np.int64), counts)
        return cls(path, classes, files, np.asarray(sizes, np.int64), labels, keep)

    @property
    def random_access(self) -> bool:
        return True

    def _ragged_nbytes(self, names: tuple[str, ...]) -> int:
        return int(self._sizes.sum()) + 8 * (self.rows + 1)  # exact: the file sizes, and the offsets

    def _read(self, max_rows: int, names: tuple[str, ...]) -> Iterator[dict[str, Any]]:
        return self._read_range(max_rows, names, 0, self.rows)

    def _read_range(self, max_rows: int, names: tuple[str, ...], start: int, stop: int) -> Iterator[dict[str, Any]]:
        for lo in range(start, stop, max_rows):
            hi = min(stop, lo + max_rows)
            yield {n: self._labels[lo:hi].copy() if n == "label" else self._bytes(lo, hi) for n in names}

    def _bytes(self, lo: int, hi: int) -> Ragged:
        """The bytes of the files of rows ``lo`` to ``hi``, read into one buffer."""
        offsets = np.zeros(hi - lo + 1, np.int64)
        np.cumsum(self._sizes[lo:hi], out=offsets[1:])
        values = np.empty(int(offsets[-1]), np.uint8)
        view = memoryview(values)
        for i, rel in enumerate(self._files[lo:hi]):
            _read_file(self.path / rel, view[offsets[i]:offsets[i + 1]])
        return Ragged(values, offsets)


def _images(folder: Path) -> list[tuple[str, int]]:
    """The image files of class folder ``folder`` (name, size in bytes), sorted by name;
    ``InputError`` for none, a folder inside it, or a file that cannot be read."""
    found = []
    try:
        with os.scandir(folder) as entries:
            for e in entries:
                if not _visible(e):
                    continue
                if e.is_dir():
                    raise InputError(f"{e.path}: a folder inside class folder {folder.name!r}; an image folder "
                                     "input is SRC/<class name>/<image files>, one level of folders")
                if _is_image(e.name):
                    found.append((e.name, _size(e)))
    except OSError as e:
        raise InputError(f"{folder}: cannot list: {e.strerror or e}") from None
    if not found:
        raise InputError(f"{folder}: class folder holds no image files ({', '.join(IMAGE_EXTENSIONS)})")
    found.sort()
    return found


def _size(entry: os.DirEntry[str]) -> int:
    """The size of the image file ``entry`` (a link is followed); ``InputError`` naming it if it
    cannot be read or is not a plain file."""
    try:
        st = entry.stat()
    except OSError as e:
        raise InputError(f"{entry.path}: cannot read: {e.strerror or e}") from None
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"{entry.path}: not a regular file")
    return int(st.st_size)


def _read_file(path: Path, into: memoryview) -> None:
    """Exactly ``len(into)`` bytes, the whole of file ``path``, into ``into``; ``InputError`` naming
    the file if it cannot be read or its size changed since the folder was listed."""
    try:
        with open(path, "rb", buffering=0) as f:
            got = 0
            while got < len(into):
                n = f.readinto(into[got:])
                if not n:
                    break
                got += n
            if got < len(into) or f.read(1):
                raise InputError(f"{path}: changed since the image folder was opened (size is no longer "
                                 f"{len(into)} bytes)")
    except OSError as e:
        raise InputError(f"{path}: cannot read: {e.strerror or e}") from None
