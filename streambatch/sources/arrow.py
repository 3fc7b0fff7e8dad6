"""Arrow IPC input (Feather v2 files, or the stream format): record batches read in order."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from ..errors import InputError
from ._batches import BatchSource
from .base import ReadOptions

__all__ = ["ArrowSource"]


class ArrowSource(BatchSource):
    """An Arrow IPC file (memory-mapped, batch by batch) or stream (read whole, as pyarrow must).
    A folder of Arrow files is an input only as a streambatch dataset (``dataset``)."""

    name = "arrow"
    extensions = (".arrow", ".feather", ".ipc")

    @classmethod
    def claims_folder(cls, path: Path, kinds: set[str]) -> bool:
        return kinds == {"arrow"}

    def __init__(self, path: Path, reader: Any) -> None:
        super().__init__(path)
        self._reader = reader  # a RecordBatchFileReader, or the Table of a stream

    @classmethod
    def open(cls, path: Path, keep: tuple[str, ...] | None, opts: ReadOptions) -> ArrowSource:
        import pyarrow as pa

        if path.is_dir():  # open_source found no dataset here
            raise InputError(f"{path}: a folder of Arrow files is read only as a streambatch dataset, and it has no "
                             "valid manifest; convert one Arrow file at a time")
        try:
            source = pa.memory_map(str(path), "r")
            try:
                reader = pa.ipc.open_file(source)
            except pa.ArrowInvalid:
                source = pa.memory_map(str(path), "r")
                reader = pa.ipc.open_stream(source).read_all()
        except Exception as e:  # pyarrow raises ArrowInvalid / OSError
            raise InputError(f"{path}: not a readable Arrow IPC / Feather file ({e})") from None
        out = cls(path, reader)
        if isinstance(reader, pa.Table):
            out._setup(reader.schema, reader.num_rows, keep, opts)
        else:
            out._setup(reader.schema, sum(reader.get_batch(i).num_rows for i in range(reader.num_record_batches)),
                       keep, opts)
        return out

    def _batches(self, max_rows: int, names: tuple[str, ...]) -> Iterator[Any]:
        import pyarrow as pa

        r = self._reader
        if isinstance(r, pa.Table):
            yield from r.select(list(names)).to_batches(max_chunksize=max_rows)
            return
        for i in range(r.num_record_batches):
            yield r.get_batch(i).select(list(names))

    def _first_batch(self, names: tuple[str, ...]) -> Any:
        import pyarrow as pa

        r = self._reader
        if isinstance(r, pa.Table):
            return r.slice(0, 1024)
        return r.get_batch(0) if r.num_record_batches else None
