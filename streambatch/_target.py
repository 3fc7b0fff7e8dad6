"""Where ``convert`` may write, and how the finished dataset takes the target's place.

::

    start:  check_target(src, dst, overwrite)      refuse before anything is read or written
    end:    install(tmp, dst, overwrite)           tmp --rename, never replacing--> dst
                                                   or, with overwrite: re-check dst, then
                                                   tmp <--atomic exchange--> dst, remove tmp

``--overwrite`` replaces only what ``convert`` makes: a streambatch dataset (a folder whose
manifest loads) or an empty folder, and never a target that holds the input or lies inside
it.  The final step uses Linux's ``renameat2``: ``RENAME_NOREPLACE`` so that a target that
appeared during the conversion (another conversion's result, even an empty folder) is never
replaced, and ``RENAME_EXCHANGE`` so that an overwritten target is always one complete
dataset.  Elsewhere (or on a file system without them) a plain ``rename`` follows an
existence check: it still never replaces a file or a non-empty folder, and an overwritten
target is missing between two renames.
"""

from __future__ import annotations

import ctypes
import errno
import os
import secrets
import shutil
import sys
from pathlib import Path
from typing import Any, Callable

from .errors import InputError, StreambatchError, TargetExistsError

__all__ = ["check_target", "check_not_input", "check_replaceable", "contains", "install", "rename_noreplace",
           "exchange", "temp_name", "not_replaceable"]

_AT_FDCWD = -100
_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2
_UNSUPPORTED = {errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP}
_libc_renameat2: Any = None


def temp_name(target: Path) -> Path:
    """A fresh temporary path beside ``target`` that ``convert.clean_stale_temp`` recognises."""
    return target.parent / f".{target.name}.sbtmp-{os.getpid()}-{secrets.token_hex(4)}"


def _renameat2() -> Callable[..., int] | None:
    """glibc's ``renameat2`` (2.28 and later), or ``None`` off Linux or without it."""
    global _libc_renameat2
    if _libc_renameat2 is None:
        fn: Any = False
        if sys.platform.startswith("linux"):
            try:
                fn = ctypes.CDLL(None, use_errno=True).renameat2
                fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
                fn.restype = ctypes.c_int
            except (OSError, AttributeError):
                fn = False
        _libc_renameat2 = fn
    return _libc_renameat2 or None


def _rename2(src: Path, dst: Path, flags: int) -> bool:
    """``renameat2(src, dst, flags)``; False where the system or file system lacks it."""
    fn = _renameat2()
    if fn is None:
        return False
    if fn(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags) == 0:
        return True
    err = ctypes.get_errno()
    if err in _UNSUPPORTED:
        return False
    raise OSError(err, os.strerror(err), str(src), None, str(dst))


def rename_noreplace(src: Path, dst: Path) -> None:
    """Rename ``src`` to ``dst`` unless something (even an empty folder) is at ``dst``.

    Raises ``FileExistsError`` when ``dst`` exists.  Atomic with ``renameat2``; otherwise an
    existence check and a ``rename``, which POSIX refuses onto a file or a non-empty folder.
    """
    try:
        if _rename2(src, dst, _RENAME_NOREPLACE):
            return
        if os.path.lexists(dst):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(dst))
        os.rename(src, dst)
    except OSError as e:
        if e.errno in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(dst)) from None
        raise


def exchange(a: Path, b: Path) -> bool:
    """Swap ``a`` and ``b`` atomically; False where ``RENAME_EXCHANGE`` is not available.

    Raises ``FileNotFoundError`` when either is missing.
    """
    return _rename2(a, b, _RENAME_EXCHANGE)


def contains(outer: str, inner: str, sep: str = os.sep) -> bool:
    """True when path or URL ``inner`` is ``outer`` or lies inside it (both already normalised)."""
    outer = outer.rstrip(sep) or sep
    return inner == outer or inner.startswith(outer if outer.endswith(sep) else outer + sep)


def _forms(p: str | os.PathLike[str]) -> set[str]:
    """The path as written (absolute, ``..`` removed) and with every symlink resolved."""
    return {os.path.abspath(p), str(Path(p).resolve())}


def not_replaceable(where: object, what: str, why: BaseException | None = None) -> TargetExistsError:
    """The error for a target that ``overwrite`` may not replace; ``why``: what failed to load."""
    because = f" ({str(why).splitlines()[0] if str(why) else type(why).__name__})" if why is not None else ""
    return TargetExistsError(f"{where}: {what}{because}; --overwrite replaces only a streambatch dataset "
                             "or an empty folder")


def check_not_input(src: Any, target: Any, srcs: set[str], targets: set[str], sep: str = os.sep) -> None:
    """Refuse a target that holds the input or lies inside it, given normalised forms of both.

    Raises:
        TargetExistsError: the target is the input or a folder holding it.
        InputError: the target lies inside the input folder.
    """
    for s in srcs:
        for t in targets:
            if contains(t, s, sep):
                raise TargetExistsError(f"{target}: holds the input {src}; convert into another folder "
                                        "(--overwrite never replaces the input)")
            if contains(s, t, sep):
                raise InputError(f"{target}: lies inside the input {src}; the dataset would become part of its "
                                 "own input; choose a target outside it")


def check_target(src: str | os.PathLike[str], target: Path, overwrite: bool) -> None:
    """Refuse a target that holds or lies inside the input, or exists and may not be replaced.

    Raises:
        TargetExistsError: ``target`` exists and ``overwrite`` is false, or it holds the input,
            or (with ``overwrite``) it is not a streambatch dataset or an empty folder.
        InputError: ``target`` lies inside the input folder.
    """
    check_not_input(src, target, _forms(src), _forms(target))
    if os.path.lexists(target):
        if not overwrite:
            raise TargetExistsError(f"{target}: already exists; pass --overwrite to replace it")
        check_replaceable(target)


def check_replaceable(target: Path) -> None:
    """``TargetExistsError`` unless ``target`` is missing, an empty folder or a streambatch dataset."""
    from .storage import load_manifest

    if target.is_symlink():
        raise not_replaceable(target, "is a symbolic link")
    if not target.exists():
        return
    if not target.is_dir():
        raise not_replaceable(target, "is a file, not a streambatch dataset")
    try:
        if not any(target.iterdir()):
            return
        load_manifest(target)
    except (StreambatchError, OSError) as e:
        raise not_replaceable(target, "holds files but is not a streambatch dataset", e) from None


def install(tmp: Path, target: Path, overwrite: bool) -> None:
    """Move the finished dataset ``tmp`` to ``target``, never replacing what appeared meanwhile.

    With ``overwrite``, a target that is (still) a streambatch dataset or an empty folder is
    exchanged with ``tmp`` atomically and then removed; ``target`` is one complete dataset
    throughout.

    Raises:
        TargetExistsError: ``target`` appeared during the conversion and ``overwrite`` is
            false, or it is no longer replaceable.
    """
    moved_aside: list[Path] = []
    try:
        for _ in range(16):  # each retry means another process replaced the target meanwhile
            try:
                rename_noreplace(tmp, target)
                return
            except FileExistsError:
                if not overwrite:
                    raise TargetExistsError(f"{target}: appeared while converting (another conversion?); "
                                            "it was kept and this conversion's result discarded") from None
            check_replaceable(target)
            try:
                if exchange(tmp, target):
                    shutil.rmtree(tmp, ignore_errors=True)  # the old dataset, now at the temporary name
                    return
                # No RENAME_EXCHANGE here: move the old one aside; the next round moves the new one in.
                old = temp_name(target)
                os.rename(target, old)
                moved_aside.append(old)
            except FileNotFoundError:  # another process moved it meanwhile: try again
                continue
        raise TargetExistsError(f"{target}: replaced by other processes again and again; try again")
    finally:
        for old in moved_aside:
            shutil.rmtree(old, ignore_errors=True)
