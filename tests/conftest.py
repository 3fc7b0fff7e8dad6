"""Shared fixtures: every test checks that it leaves no streambatch thread behind."""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from streambatch.loader.pool import THREAD_PREFIX
from streambatch.manifest import MANIFEST_NAME


# Put first in the script of a child process that a test stops with SIGINT.  A process that a
# non-interactive shell starts in the background (`cmd &`, as some CI runners do) inherits SIGINT
# as ignored, and Python then leaves it ignored, so Ctrl-C would never reach the code under test;
# a user at a terminal always has Python's handler, which this restores.
SIGINT_HANDLER = "import signal; signal.signal(signal.SIGINT, signal.default_int_handler)\n"


def interrupt_epochs(dataset_args: str) -> tuple[int, str, float]:
    """Run a child that loops over ``StreamDataset(<dataset_args>)`` epochs (each batch through a
    10 ms transform), Ctrl-C it after its first batch: (exit code, output, seconds to exit).  It
    exits 0 and prints "interrupted []" when no streambatch thread outlived the KeyboardInterrupt."""
    import subprocess
    import sys
    import textwrap

    script = SIGINT_HANDLER + textwrap.dedent(f"""
        import sys, threading, time
        import streambatch
        ds = streambatch.StreamDataset({dataset_args}, transform=lambda b: (time.sleep(0.01), b)[1])
        try:
            while True:
                for b in ds:
                    print("batch", flush=True)
        except KeyboardInterrupt:
            left = [t.name for t in threading.enumerate() if t.name.startswith("streambatch-")]
            print("interrupted", left, flush=True)
            sys.exit(3 if left else 0)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "batch"
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    return proc.returncode, out, time.monotonic() - t0


def streambatch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(THREAD_PREFIX) and t.is_alive()]


@pytest.fixture(autouse=True)
def no_thread_leak():
    """Fail a test that leaves a streambatch thread running.  The grace, 10 s, is for a thread
    that a test set free at its end (a released hanging read) on a loaded machine; threads that
    close() joined are gone at once."""
    before = set(streambatch_threads())
    yield
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline:
        left = [t for t in streambatch_threads() if t not in before]
        if not left:
            return
        time.sleep(0.02)
    pytest.fail(f"threads leaked: {[t.name for t in left]}")


def write_sorted_npy(folder: Path, rows: int, width: int = 4, n_labels: int = 10, seed: int = 0) -> Path:
    """A small label-sorted dataset as a folder of .npy columns: id, x float32[width], y."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    np.save(folder / "id.npy", np.arange(rows, dtype=np.int64))
    np.save(folder / "x.npy", rng.standard_normal((rows, width)).astype(np.float32))
    np.save(folder / "y.npy", (np.arange(rows, dtype=np.int64) * n_labels) // rows)
    return folder


def fail_batched_checks_of(monkeypatch: pytest.MonkeyPatch, reader: Any, units: set[int]) -> None:
    """A test that makes ``reader.read_into`` fail (or hang) for ``units`` fails their checks in
    the first epoch's batches too: ``check_units`` answers False for a batch holding one, as its
    C read does when a unit cannot be read or does not match, and each unit of that batch is then
    checked alone through ``read_into``, which raises (or hangs) naming it."""
    batch = reader.check_units

    def failing(self: Any, batch_units: np.ndarray, *args: Any) -> Any:
        return False if units & set(batch_units.tolist()) else batch(self, batch_units, *args)

    monkeypatch.setattr(reader, "check_units", failing)


def flip_byte(path: Path, offset: int, mask: int = 0xFF) -> None:
    """Corrupt one byte of ``path`` in place (XOR with ``mask``)."""
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ mask]))


def write_manifest(folder: Path, doc: object) -> None:
    """Write ``doc`` as ``folder``'s manifest, sealed as streambatch seals it (last field
    ``"checksum": "crc32c:XXXXXXXX"``, the CRC-32C of the compact JSON before it; anything but a
    JSON object as plain JSON), so that a test editing a manifest on purpose still reaches the
    check it was written for rather than the checksum's."""
    import google_crc32c

    if not isinstance(doc, dict):
        (folder / MANIFEST_NAME).write_text(json.dumps(doc))
        return
    body = json.dumps({k: v for k, v in doc.items() if k != "checksum"}, separators=(",", ":")).encode()
    head = body[:-1] + (b"," if len(body) > 2 else b"")
    (folder / MANIFEST_NAME).write_bytes(head + b'"checksum":"crc32c:%08x"}' % google_crc32c.value(head))


@pytest.fixture
def sorted_npy(tmp_path: Path) -> Path:
    return write_sorted_npy(tmp_path / "src", 5003)


def unit_range(m: Any, unit: int, column: str) -> tuple[Path, int, int]:
    """(file, offset, size) of the stored bytes of ``unit`` that hold ``column``: a Zarr inner
    chunk of that column, or the whole row group / record batch of formats that store a unit's
    columns together."""
    lay = m.layout
    loc = lay["columns"][column] if "columns" in lay else lay
    return m.path_of(int(loc["file"][unit])), int(loc["offset"][unit]), int(loc["size"][unit])


def column_range(m: Any, unit: int, column: str) -> tuple[Path, int, int]:
    """(file, offset, size) of the bytes of ``column`` in ``unit`` alone: the Zarr chunk, the
    column's values in an Arrow record batch (``layout.values``), or the column chunk of a Parquet
    row group (from the file's footer)."""
    path, off, size = unit_range(m, unit, column)
    lay = m.layout
    if "columns" in lay:
        return path, off, size
    if "values_crc32" in lay:
        c = m.column(column)
        values = int(m.unit_rows[unit]) * c.row_items
        nbytes = -(-values // 8) if c.dtype == "bool" else values * c.np_dtype.itemsize
        return path, off + int(lay["values"][column][unit]), nbytes
    import pyarrow.parquet as pq

    meta = pq.ParquetFile(path).metadata.row_group(int(lay["row_group"][unit]))
    j = [meta.column(i).path_in_schema.split(".")[0] for i in range(meta.num_columns)].index(column)
    chunk = meta.column(j)
    return path, chunk.dictionary_page_offset or chunk.data_page_offset, chunk.total_compressed_size


def arrow_column_numpy(field: Any, arr: Any) -> np.ndarray:
    """A column of a file streambatch wrote, read with pyarrow and numpy alone (as the README
    shows): a ``FixedSizeBinary`` tensor through ``np.frombuffer`` with the dtype and shape of its
    field metadata, a ``FixedSizeList`` one flattened and reshaped, a scalar as it is."""
    import pyarrow as pa

    meta = field.metadata or {}
    if pa.types.is_fixed_size_binary(field.type):
        shape = json.loads(meta[b"streambatch.shape"])
        dtype = np.dtype(meta[b"streambatch.dtype"].decode())
        values = np.frombuffer(arr.buffers()[1], dtype, count=len(arr) * int(np.prod(shape)),
                               offset=arr.offset * field.type.byte_width)
        return values.reshape(len(arr), *shape)
    if pa.types.is_fixed_size_list(field.type):
        shape = json.loads(meta[b"streambatch.shape"])
        return arr.flatten().to_numpy(zero_copy_only=False).reshape(len(arr), *shape)
    return arr.to_numpy(zero_copy_only=False)


@pytest.fixture(params=["native", "numpy"])
def kernels(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Runs a test with the C module's byte loops and again with their numpy/Python versions
    (``streambatch._kernels``: what an install without a C compiler uses)."""
    from streambatch import _kernels

    if request.param == "native" and not _kernels.NATIVE:
        pytest.skip("streambatch._native was not built")
    monkeypatch.setattr(_kernels, "NATIVE", request.param == "native")
    return str(request.param)
