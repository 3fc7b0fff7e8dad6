"""Parquet input: a file, a folder of files with the same columns, or a Hive-partitioned folder
(``key=value/`` directories, ``_hive``).  Random access by row group: a range opens the files
it reads, so ranges may be read from several threads.  Row groups are decoded by pyarrow
(a tensor stored as FixedSizeBinary, as streambatch writes it, comes out as the rows' bytes).  A
streambatch dataset in Parquet is read through its manifest (``dataset``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator


from ..errors import InputError
from ._batches import BatchSource, numbered
from ._hive import Hive, hive_layout, is_hive, own_columns, with_partitions
from .base import ReadOptions

__all__ = ["ParquetSource"]


class ParquetSource(BatchSource):
    """Parquet files read by row groups, with their Hive partition keys as columns."""

    name = "parquet"
    extensions = (".parquet", ".pq")
    ranged = True

    def __init__(self, path: Path, files: list[Path], handles: list[Any], hive: Hive | None) -> None:
        super().__init__(path)
        self._files, self._handles, self._hive = files, handles, hive
        self._file_rows = [h.metadata.num_rows for h in handles]

    @classmethod
    def claims_folder(cls, path: Path, kinds: set[str]) -> bool:
        return kinds == {"parquet"} or (not kinds and is_hive(path))

    @classmethod
    def open(cls, path: Path, keep: tuple[str, ...] | None, opts: ReadOptions) -> ParquetSource:
        import pyarrow.parquet as pq

        hive = hive_layout(path) if path.is_dir() else None
        files = hive.files if hive else [path] if path.is_file() else sorted(
            p for p in path.iterdir() if p.suffix.lower() in (".parquet", ".pq"))
        if not files:
            raise InputError(f"{path}: folder holds no Parquet files")
        handles = []
        for f in files:
            try:
                handles.append(pq.ParquetFile(f))
            except Exception as e:  # pyarrow raises ArrowInvalid / OSError
                raise InputError(f"{f}: not a readable Parquet file ({e})") from None
        source = cls(path, files, handles, hive)
        biggest = max((h.metadata.row_group(i).num_rows for h in handles for i in range(h.metadata.num_row_groups)),
                      default=1)
        source._setup(source._schema(), sum(source._file_rows), keep, opts, hive.columns if hive else None,
                      max(1, biggest))
        return source

    def _schema(self) -> Any:
        """The files' common Arrow schema, with the partition keys; ``InputError`` where a file differs."""
        import pyarrow as pa

        files, hive = self._files, self._hive
        schema = self._handles[0].schema_arrow
        for f, h in zip(files[1:], self._handles[1:]):
            if h.schema_arrow.names != schema.names:
                raise InputError(f"{f}: columns {h.schema_arrow.names} differ from {files[0].name}'s {schema.names}")
            for a, b in zip(schema, h.schema_arrow):
                # categoricals: files with more categories have wider codes; the values must agree
                if a.type != b.type and not (pa.types.is_dictionary(a.type) and pa.types.is_dictionary(b.type)
                                             and a.type.value_type == b.type.value_type):
                    raise InputError(f"{f}: column {b.name!r} is {b.type}, {files[0].name} has {a.type}")
        if hive:
            both = [k for k in hive.columns if k in schema.names]
            if both:
                raise InputError(f"{files[0]}: column {both[0]!r} is also a partition key of {self.path}")
            schema = pa.schema([*schema, *(pa.field(k, pa.from_numpy_dtype(c.np_dtype))
                                           for k, c in hive.columns.items())])
        return schema

    def _read_groups(self, fi: int, h: Any, group: list[int], names: tuple[str, ...]) -> Iterator[Any]:
        """Row groups ``group`` of file ``fi``, with its partition keys among ``names``."""
        hive = self._hive
        own = own_columns(hive, names)
        for b in _named(self._files[fi], group, lambda: h.read_row_groups(group, columns=list(own),
                                                                          use_threads=False).to_batches()):
            yield with_partitions(b, hive, fi, names)

    def _streamed(self, fi: int, h: Any, i: int, max_rows: int, names: tuple[str, ...]) -> Iterator[Any]:
        """Row group ``i`` of file ``fi`` in batches of ``max_rows``, with its partition keys."""
        own = list(own_columns(self._hive, names))
        for b in _named(self._files[fi], [i], lambda: h.iter_batches(batch_size=max_rows, row_groups=[i],
                                                                     use_threads=False, columns=own)):
            yield with_partitions(b, self._hive, fi, names)

    def _batches_from(self, max_rows: int, names: tuple[str, ...], start: int) -> Iterator[tuple[int, Any]]:
        """(first row, batch) from the row group holding row ``start`` on.  Each call opens the
        files it reads (ranges are read from several threads); files before ``start`` are skipped
        by their row counts."""
        import pyarrow.parquet as pq

        row = 0
        for fi, (f, n_file) in enumerate(zip(self._files, self._file_rows)):
            if row + n_file <= start:
                row += n_file
                continue
            h = pq.ParquetFile(f)
            meta = h.metadata
            # Whole row groups, as many as fit in max_rows at a time: iter_batches over many small
            # row groups (such as streambatch's own) is slow (docs/PERFORMANCE.md, "Parquet input read in place").
            group: list[int] = []
            group_row = row
            taken = 0
            for i in range(meta.num_row_groups):
                n = meta.row_group(i).num_rows
                if row + n <= start:
                    row += n
                    group_row = row
                    continue
                if group and taken + n > max_rows:
                    yield from numbered(self._read_groups(fi, h, group, names), group_row, names[0])
                    group, taken, group_row = [], 0, row
                if n > max_rows:  # one big row group: stream it in pieces
                    yield from numbered(self._streamed(fi, h, i, max_rows, names), row, names[0])
                    row += n
                    group_row = row
                    continue
                group.append(i)
                taken += n
                row += n
            if group:
                yield from numbered(self._read_groups(fi, h, group, names), group_row, names[0])

    def _batches(self, max_rows: int, names: tuple[str, ...]) -> Iterator[Any]:
        for _, b in self._batches_from(max_rows, names, 0):
            yield b

    def _first_batch(self, names: tuple[str, ...]) -> Any:
        return next(self._handles[0].iter_batches(batch_size=1024, columns=list(names), use_threads=False), None)

    def close(self) -> None:
        for h in self._handles:
            h.close()


def _named(path: Path, groups: list[int], read: Callable[[], Any]) -> Iterator[Any]:
    """The batches ``read()`` gives, pyarrow's errors for a damaged file (several lines, no file
    name) as one-line ``InputError``s naming the file and the row groups."""
    try:
        yield from read()
    except (OSError, ValueError) as e:  # ArrowInvalid is a ValueError, ArrowIOError an OSError
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        where = f"row group {groups[0]}" if len(groups) == 1 else f"row groups {groups[0]}-{groups[-1]}"
        raise InputError(f"{path}: cannot read {where}: {first}") from None
