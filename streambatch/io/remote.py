"""Datasets in object storage or behind HTTP: ``s3://``, ``gs://``, ``https://`` ... via fsspec.

::

    reader thread --read_into(file, offset, buf)--> RemoteFiles --cache hit?--> local disk cache
                                                          \\--miss--> fs.cat_file(path, a, b)
                                                                   transient failures retried
                                                                   with backoff

The loader reads the byte range of each unit it needs (several requests in flight: one per
reader thread); Parquet files are read through a file object that turns pyarrow's reads
into the same ranged requests.  Credentials and endpoints come from the standard places
(environment variables such as ``AWS_ENDPOINT_URL``, config files, or ``storage_options``
given by the caller), never from the manifest.  fsspec and the filesystem package for the
protocol (s3fs, gcsfs, aiohttp for http) are needed only when a URL is used.

Only transient failures are retried (a refused or dropped connection, a timeout, a short read,
an HTTP 5xx or 429 answer).  A permanent one (a missing object, no permission, another 4xx)
raises ``DataError`` naming the object at once, and anything else (a ``TypeError`` from bad
``storage_options``, a bug) is raised at once with its own type.
"""

from __future__ import annotations

import errno
import hashlib
import io
import math
import os
import sys
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._sizes import parse_size
from ..errors import DataError, ManifestError

__all__ = ["is_url", "RemoteRoot", "RemoteOptions", "RemoteFiles", "RangeFile", "fs_of"]


def is_url(path: Any) -> bool:
    """True for ``scheme://...`` strings other than ``file://``."""
    s = str(path)
    return "://" in s and not s.startswith("file://")


class RemoteRoot:
    """The root of a remote dataset; ``root / "x/c/0/0"`` gives the object's URL."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")

    def __truediv__(self, rel: str) -> str:
        return f"{self.url}/{rel}"

    def __str__(self) -> str:
        return self.url

    def __repr__(self) -> str:
        return f"RemoteRoot({self.url!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RemoteRoot) and other.url == self.url

    def __hash__(self) -> int:
        return hash(self.url)

    @property
    def name(self) -> str:
        return self.url.rsplit("/", 1)[-1]


def fs_of(url: str, storage_options: dict[str, Any] | None) -> tuple[Any, str]:
    """fsspec's file system for ``url`` and the path on it; ``ManifestError`` if none can open it."""
    try:
        import fsspec
    except ImportError:  # pragma: no cover - fsspec comes with torch
        raise ManifestError(f"{url}: reading URLs needs fsspec: pip install fsspec") from None
    try:
        return fsspec.core.url_to_fs(url, **(storage_options or {}))
    except (ImportError, ValueError) as e:
        raise ManifestError(f"{url}: cannot open this URL ({e}); for s3:// install s3fs, for gs:// gcsfs, "
                            "for http(s):// aiohttp") from None


@dataclass(frozen=True)
class RemoteOptions:
    """How a dataset at a URL is read (``StreamDataset(url, remote=RemoteOptions(...))``).

    Args:
        storage_options: fsspec options (endpoint, anonymous access, ...); credentials come
            from the environment and config files.
        cache_dir: keep the byte ranges read in this folder, so later epochs read locally;
            ``None`` for no cache.
        cache_bytes: the cache's size bound (``"1GiB"``, an int); least recently used ranges are evicted.
        retries: attempts after the first for a transient failure.
        backoff: seconds before the first retry; doubled each time (with jitter).

    Raises:
        ValueError: ``retries`` or ``backoff`` is negative, or ``cache_bytes`` is not a size.
    """

    storage_options: dict[str, Any] | None = field(default=None, hash=False)
    cache_dir: str | os.PathLike[str] | None = None
    cache_bytes: int | str = "1GiB"
    retries: int = 5
    backoff: float = 0.2

    def __post_init__(self) -> None:
        if self.storage_options is not None:
            object.__setattr__(self, "storage_options", dict(self.storage_options))
        object.__setattr__(self, "cache_bytes", parse_size(self.cache_bytes, "cache_bytes"))
        if isinstance(self.retries, bool) or not isinstance(self.retries, int) or self.retries < 0:
            raise ValueError(f"retries must be an integer >= 0, got {self.retries!r}")
        if not isinstance(self.backoff, (int, float)) or not math.isfinite(self.backoff) or self.backoff < 0:
            raise ValueError(f"backoff must be a number of seconds >= 0, got {self.backoff!r}")

    def open(self, url: str) -> RemoteFiles:
        """The ``RemoteFiles`` of the dataset at ``url`` read with these options."""
        return RemoteFiles(url, retries=self.retries, backoff=self.backoff, cache_dir=self.cache_dir,
                           cache_bytes=int(self.cache_bytes), storage_options=self.storage_options)


_PERMANENT = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)
# OSError numbers that another attempt cannot fix (s3fs turns S3 error codes into these)
_PERMANENT_ERRNO = {errno.EINVAL, errno.EPERM, errno.EACCES, errno.ENOENT, errno.ENOSYS, errno.EISDIR,
                    errno.ENOTDIR, errno.ENAMETOOLONG, errno.EMSGSIZE, errno.EEXIST, errno.ENOTEMPTY,
                    getattr(errno, "EREMCHG", errno.ENOENT)}
# Transport failures of the HTTP clients under fsspec that are not OSErrors: (module, class names)
_TRANSPORT = (("aiohttp", ("ClientConnectionError", "ClientPayloadError")),
              ("botocore.exceptions", ("HTTPClientError", "ConnectionError", "IncompleteReadError")),
              ("http.client", ("IncompleteRead", "BadStatusLine")),
              ("urllib3.exceptions", ("ProtocolError", "TimeoutError")))


class _ShortRead(OSError):
    """A ranged read that returned fewer bytes than asked for (retried)."""


def _http_status(e: BaseException) -> int | None:
    """The HTTP status a client library attached to ``e`` (or, for fsspec's and s3fs's translated
    errors, to its cause), if any."""
    for err, attrs in ((e, ("status", "status_code", "code")), (e.__cause__, ("status",))):
        for attr in attrs:
            value = getattr(err, attr, None)
            if isinstance(value, int) and not isinstance(value, bool) and 100 <= value <= 599:
                return value
        meta = getattr(err, "response", None)  # botocore's ClientError, under s3fs's translation
        if isinstance(meta, dict):
            value = meta.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if isinstance(value, int):
                return value
    return None


def _transport_error(e: BaseException) -> bool:
    """A dropped connection or a cut-off body, as the HTTP client libraries under fsspec raise them."""
    for module, names in _TRANSPORT:
        mod = sys.modules.get(module)  # only a library that is loaded can have raised it
        if mod is not None and isinstance(e, tuple(getattr(mod, n) for n in names if hasattr(mod, n))):
            return True
    return False


def _failure_kind(e: Exception) -> str:
    """``"transient"`` (worth another attempt), ``"permanent"`` (an I/O error that another attempt
    cannot fix: missing, forbidden, a 4xx answer) or ``"bug"`` (anything else: raise it as it is)."""
    if isinstance(e, (ConnectionError, TimeoutError, _ShortRead)) or _transport_error(e):
        return "transient"
    status = _http_status(e)
    if status is not None and status >= 400:
        return "transient" if status in (408, 429) or (status >= 500 and status != 501) else "permanent"
    if isinstance(e, _PERMANENT):
        return "permanent"
    if isinstance(e, OSError):
        return "permanent" if e.errno in _PERMANENT_ERRNO else "transient"
    return "bug"


class RemoteFiles:
    """Ranged reads of the files of one remote dataset, with retries and an optional disk cache.

    Args:
        url: the dataset's root URL.
        retries: attempts after the first for a transient error (a refused or dropped
            connection, a timeout, a short read, a 5xx answer).
        backoff: seconds before the first retry; doubled each time (with jitter).
        cache_dir: a folder for a local copy of the ranges read; ``None`` for no cache.
        cache_bytes: the cache's size bound; least recently used ranges are evicted.
        storage_options: passed to fsspec (endpoint, anonymous access, ...).

    Thread-safe: reader threads call ``read`` concurrently, so that many requests are in flight.
    """

    def __init__(self, url: str, *, retries: int = 5, backoff: float = 0.2, cache_dir: str | os.PathLike[str] | None = None,
                 cache_bytes: int | None = None, storage_options: dict[str, Any] | None = None) -> None:
        self.url = url.rstrip("/")
        self.fs, self.base = fs_of(self.url, storage_options)
        self.retries, self.backoff = max(0, retries), max(0.0, backoff)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.cache_bytes = cache_bytes if cache_bytes is not None else (1 << 30)
        self._lock = threading.Lock()
        self._sizes: dict[str, int] = {}
        self._cached: OrderedDict[str, int] = OrderedDict()
        self._cached_total = 0
        self.requests = 0
        self.retried = 0
        if self.cache_dir is not None:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            for p in sorted(self.cache_dir.glob("*.bin"), key=lambda q: q.stat().st_mtime):
                self._cached[p.name] = p.stat().st_size
                self._cached_total += p.stat().st_size

    def _path(self, rel: str) -> str:
        return f"{self.base.rstrip('/')}/{rel}"

    def _retrying(self, what: str, fn: Any, check: Any = None) -> Any:
        delay = self.backoff
        for attempt in range(self.retries + 1):
            try:
                with self._lock:
                    self.requests += 1
                out = fn()
                if check is not None:
                    check(out)
                return out
            except Exception as e:  # noqa: BLE001 - sorted by _failure_kind: only transient ones are retried
                kind = _failure_kind(e)
                if kind == "bug":
                    e.add_note(f"while reading {self.url}/{what}")
                    raise
                if kind == "permanent":
                    raise DataError(f"{self.url}/{what}: {type(e).__name__}: {e}") from None
                if attempt == self.retries:
                    raise DataError(f"{self.url}/{what}: failed after {attempt + 1} attempts: "
                                    f"{type(e).__name__}: {e}") from e
                with self._lock:
                    self.retried += 1
                time.sleep(delay * (1 + 0.25 * (hash((what, attempt, time.monotonic())) % 4)))
                delay *= 2
        raise AssertionError("unreachable")

    def size(self, rel: str) -> int:
        """The size of file ``rel`` in bytes (asked once)."""
        got = self._sizes.get(rel)
        if got is None:
            got = int(self._retrying(rel, lambda: self.fs.size(self._path(rel))))
            self._sizes[rel] = got
        return got

    def cat(self, rel: str) -> bytes:
        """The whole file ``rel``."""
        return bytes(self._retrying(rel, lambda: self.fs.cat_file(self._path(rel))))

    def read(self, rel: str, offset: int, size: int) -> bytes:
        """``size`` bytes of ``rel`` at ``offset``; ``DataError`` once the retries are spent."""
        if size == 0:
            return b""
        key = hashlib.sha1(f"{rel}\0{offset}\0{size}".encode()).hexdigest() + ".bin"
        if self.cache_dir is not None:
            hit = self._cache_get(key, size)
            if hit is not None:
                return hit

        def check(data: bytes) -> None:
            if len(data) != size:
                raise _ShortRead(f"short read: {len(data)} of {size} bytes")

        data = self._retrying(f"{rel} (bytes {offset}..{offset + size})",
                              lambda: self.fs.cat_file(self._path(rel), start=offset, end=offset + size), check)
        if self.cache_dir is not None:
            self._cache_put(key, data)
        return bytes(data)

    def _cache_get(self, key: str, size: int) -> bytes | None:
        assert self.cache_dir is not None
        with self._lock:
            if key not in self._cached:
                return None
            self._cached.move_to_end(key)
        try:
            data = (self.cache_dir / key).read_bytes()
        except OSError:
            return None
        return data if len(data) == size else None

    def _cache_put(self, key: str, data: bytes) -> None:
        assert self.cache_dir is not None
        if len(data) > self.cache_bytes:
            return
        tmp = self.cache_dir / f".{key}.{threading.get_ident()}.tmp"
        tmp.write_bytes(data)
        os.replace(tmp, self.cache_dir / key)
        evict = []
        with self._lock:
            if key not in self._cached:
                self._cached_total += len(data)
            self._cached[key] = len(data)
            self._cached.move_to_end(key)
            while self._cached_total > self.cache_bytes and self._cached:
                old, n = self._cached.popitem(last=False)
                self._cached_total -= n
                evict.append(old)
        for old in evict:
            (self.cache_dir / old).unlink(missing_ok=True)

    @property
    def cached_bytes(self) -> int:
        return self._cached_total


class RangeFile(io.RawIOBase):
    """A read-only, seekable file object over one remote file, for pyarrow's Parquet reader."""

    def __init__(self, files: RemoteFiles, rel: str) -> None:
        super().__init__()
        self.files, self.rel = files, rel
        self._size = files.size(rel)
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buf: Any) -> int:
        mv = memoryview(buf).cast("B")
        n = max(0, min(len(mv), self._size - self._pos))
        if n:
            mv[:n] = self.files.read(self.rel, self._pos, n)
            self._pos += n
        return n

    def size(self) -> int:
        return self._size
