"""The temporary folder a conversion writes into (``.NAME.sbtmp-PID-XXXX`` beside the target),
the removal of those left by dead processes, and write errors that name the target."""

from __future__ import annotations

import os
import re
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ..errors import StreambatchError, WriteError

__all__ = ["writing", "clean_stale_temp"]

_TMP_RE = re.compile(r"^\.(?P<name>.+)\.sbtmp-(?P<pid>\d+)-[0-9a-f]+$")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_temp(target: Path) -> list[Path]:
    """Remove temporary folders of earlier conversions to ``target`` whose process is gone."""
    removed = []
    parent = target.parent
    if not parent.is_dir():
        return removed
    for p in parent.iterdir():
        m = _TMP_RE.match(p.name)
        if m and m.group("name") == target.name and not _pid_alive(int(m.group("pid"))):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


@contextmanager
def writing(target: Path) -> Iterator[None]:
    """Turn an ``OSError`` of a write (disk full, file too large) into a ``WriteError`` naming ``target``."""
    try:
        yield
    except OSError as e:
        if isinstance(e, StreambatchError):
            raise
        what = e.strerror or str(e) or type(e).__name__
        err = WriteError(f"{target}: cannot write the dataset: {what}"
                         f"{f' ({e.filename})' if e.filename else ''}; the target was left as it was "
                         "and temporary files were removed")
        err.errno = e.errno
        raise err from e
