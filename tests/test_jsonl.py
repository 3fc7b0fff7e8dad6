"""JSON Lines by row range (``sources/jsonl.py``): chunks cut after line breaks, each parsed on
its own with the file's schema, give the rows a full read gives, whatever the lines look like."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streambatch.errors import InputError
from streambatch.ragged import Ragged
from streambatch.sources import jsonl, open_source


def write_awkward_jsonl(path: Path, n: int, end: str = "\n\n") -> Path:
    """``n`` records as JSON Lines written by hand: LF and CRLF line ends, blank and
    whitespace-only lines (a run of 600 in the middle), two records on one line, unicode text
    raw and escaped (some empty), a list and a list of lists of numbers, lists of varying
    length (some empty); ``end`` after the last record (``""``: no final line break)."""
    out = []
    for i in range(n):
        rec = {"id": i, "x": round(i * 0.37 - 50, 3), "y": i * 10 // n, "v": [i % 7, -i, 0.5 * i],
               "m": [[i, i + 1], [i + 2, -i]], "s": "é✓"[: i % 3] + "ß" * (i % 4), "t": list(range(i % 6))}
        sep = "\r\n" if i % 5 == 0 else "\n"
        sep += "\n" * (i % 11 == 3) + "  \t \n" * (i % 13 == 4) + "\n" * 600 * (i == n // 2)
        out.append(json.dumps(rec, ensure_ascii=i % 2 == 0) + (" " if i % 17 == 6 else sep))
    out[-1] = out[-1].rstrip(" \r\n") + end
    path.write_text("".join(out), encoding="utf-8")
    return path


def _rows(pieces: list[dict[str, np.ndarray]], name: str) -> list[object]:
    out: list[object] = []
    for p in pieces:
        col = p[name]
        out += [col.row(k).tobytes() for k in range(len(col))] if isinstance(col, Ragged) else col.tolist()
    return out


@pytest.mark.parametrize("end", ["\n\n", ""])
def test_every_row_range_is_the_rows_of_a_full_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    end: str) -> None:
    """Any rows ``start`` to ``stop``, in pieces of any size, read by the chunks holding them (of
    ~512 bytes here, some of blank lines only): exactly those rows of a read of the whole file."""
    monkeypatch.setattr(jsonl, "CHUNK_BYTES", 512)
    n = 400
    source = open_source(write_awkward_jsonl(tmp_path / "a.jsonl", n, end))
    assert source.rows == n and source.random_access and len(source.index.lines) > 50
    assert 0 in np.diff(source.index.rows)  # a chunk of blank lines
    names = tuple(c.name for c in source.columns)
    full = {name: _rows(list(source.pieces(n)), name) for name in names}
    assert full["id"] == list(range(n)) and full["s"][1] == "éß".encode()

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(st.integers(0, n), st.integers(0, n), st.integers(1, 60))
    def check(a: int, b: int, max_rows: int) -> None:
        start, stop = min(a, b), max(a, b)
        pieces = list(source.pieces(max_rows, names, start, stop))
        assert all(0 < len(p["id"]) <= max_rows for p in pieces)
        for name in names:
            assert _rows(pieces, name) == full[name][start:stop]

    check()


def _damage_last_record(path: Path) -> int:
    """Make the last record's ``id`` invalid JSON, keeping the file's size and times; return its line (from 1)."""
    stat = path.stat()
    data = bytearray(path.read_bytes())
    at = data.rindex(b'"id": ') + 6
    data[at:at + 1] = b"q"
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    return data[:at].count(b"\n") + 1


def test_a_source_opened_from_its_spec_reads_only_the_chunks_of_its_rows(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A conversion's part opens the file again from the ``SourceSpec``: it takes the first
    open's index instead of reading the whole file (a damaged last chunk goes unseen until a
    range reads it, and then names its line); a plain open reads every chunk and names it too."""
    monkeypatch.setattr(jsonl, "CHUNK_BYTES", 1024)
    monkeypatch.setattr(jsonl, "BLOCK_BYTES", 4096)  # the schema from the first 4 KiB: the damage is beyond
    src = write_awkward_jsonl(tmp_path / "a.jsonl", 2000)
    source = open_source(src)
    assert source.spec is not None and source.spec.index is source.index
    line = _damage_last_record(src)
    again = open_source(**vars(source.spec))
    assert again.rows == 2000
    assert _rows(list(again.pieces(64, ("id",), 10, 300)), "id") == list(range(10, 300))
    with pytest.raises(InputError, match=rf"a\.jsonl: line {line}: cannot parse JSONL: JSON parse error: "
                                         r"Invalid value\.$"):
        list(again.pieces(64, ("id",), 1990))
    with pytest.raises(InputError, match=rf"a\.jsonl: line {line}: cannot parse JSONL"):
        open_source(src)


def test_a_file_changed_since_its_first_open_is_refused(tmp_path: Path) -> None:
    """A part opening a file that grew (or was rewritten) since the conversion indexed it: a
    one-line ``InputError`` naming it, not rows from the wrong places."""
    src = write_awkward_jsonl(tmp_path / "a.jsonl", 100)
    spec = open_source(src).spec
    assert spec is not None
    with open(src, "a") as f:
        f.write('{"id": 100, "x": 1.0, "y": 9, "v": [1, 2, 3.5], "m": [[1, 2], [3, 4]], "s": "", "t": []}\n')
    with pytest.raises(InputError, match=r"a\.jsonl: changed since it was opened \(\d+ bytes then, \d+ now"):
        open_source(**vars(spec))


def test_a_bad_line_beyond_the_first_block_is_named_by_its_line(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A string where the first block had numbers, far into the file: the pass at open names
    the line (from 1), not a row within a block of pyarrow's."""
    monkeypatch.setattr(jsonl, "BLOCK_BYTES", 4096)
    lines = [json.dumps({"id": i, "x": i * 0.5}) for i in range(3000)]
    lines[2345] = json.dumps({"id": 2345, "x": "oops"})
    (tmp_path / "a.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match=r"a\.jsonl: line 2346: cannot parse JSONL: JSON parse error: "
                                         r"Column\(/x\) changed from number to string$"):
        open_source(tmp_path / "a.jsonl")


def test_a_compressed_file_is_read_in_order(tmp_path: Path) -> None:
    """``--from jsonl`` of a .jsonl.gz: pyarrow decompresses it; read in order, the same rows."""
    import gzip

    src = write_awkward_jsonl(tmp_path / "a.jsonl", 300)
    (tmp_path / "a.jsonl.gz").write_bytes(gzip.compress(src.read_bytes()))
    plain, packed = open_source(src), open_source(tmp_path / "a.jsonl.gz", "jsonl")
    assert plain.random_access and not packed.random_access and packed.index is None
    assert packed.in_order == "a compressed JSON Lines file is read in order"
    for name in ("id", "v", "m", "s", "t"):
        assert _rows(list(packed.pieces(50)), name) == _rows(list(plain.pieces(50)), name)
