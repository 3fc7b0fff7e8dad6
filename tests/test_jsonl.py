"""JSON Lines by row range (``sources/jsonl.py``): chunks cut after line breaks, each parsed on
its own with the file's schema, give the rows a full read gives, whatever the lines look like."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streambatch.errors import InputError
from streambatch.ragged import Ragged
from streambatch.sources import Source, detect_format, jsonl, open_source


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


def _check_every_range(source: Source, full: dict[str, list[object]]) -> None:
    """Any rows ``start`` to ``stop`` of ``source``, in pieces of any size: exactly those rows of
    ``full`` (a read of every row, by column)."""
    n, names = source.rows, tuple(full)

    @settings(max_examples=60, deadline=None)
    @given(st.integers(0, n), st.integers(0, n), st.integers(1, 60))
    def check(a: int, b: int, max_rows: int) -> None:
        start, stop = min(a, b), max(a, b)
        pieces = list(source.pieces(max_rows, names, start, stop))
        assert all(0 < len(p["id"]) <= max_rows for p in pieces)
        for name in names:
            assert _rows(pieces, name) == full[name][start:stop]

    check()


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
    _check_every_range(source, full)


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


def split_lines(src: Path, folder: Path, names: tuple[str, ...], cuts: tuple[int, ...]) -> Path:
    """The lines of ``src`` into the files ``names`` of a new ``folder``, cut before the lines
    ``cuts`` (from 0); the files are written last to first, so that only their names give their order."""
    folder.mkdir()
    lines = src.read_bytes().splitlines(keepends=True)
    bounds = (0, *cuts, len(lines))
    for name, lo, hi in reversed(list(zip(names, bounds, bounds[1:]))):
        (folder / name).write_bytes(b"".join(lines[lo:hi]))
    return folder


def _awkward_folder(tmp_path: Path, n: int) -> tuple[Path, Path]:
    """An awkward file (``write_awkward_jsonl``, no final line break) and a folder of its lines in
    three files, whose name order is the rows' order (one .ndjson; the first and last without a
    final line break), beside stray files that are not JSON Lines."""
    src = write_awkward_jsonl(tmp_path / "all.jsonl", n, "")
    folder = split_lines(src, tmp_path / "folder", ("part-10.jsonl", "part-11.ndjson", "part-9.jsonl"),
                         (n // 3, 2 * n // 3))
    first = folder / "part-10.jsonl"
    first.write_bytes(first.read_bytes().rstrip(b"\r\n"))
    for stray in ("_SUCCESS", "notes.txt", "part-10.jsonl.crc"):
        (folder / stray).write_text("not JSON\n")
    return src, folder


def test_a_folder_reads_as_its_files_one_after_another(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A folder of JSON Lines files (files of no input format ignored, as in a Parquet folder): the
    rows and types of the files in name order, those of one file of their lines; any rows ``start`` to ``stop``,
    across files, read by the chunks holding them, are exactly those rows."""
    monkeypatch.setattr(jsonl, "CHUNK_BYTES", 512)
    n = 400
    src, folder = _awkward_folder(tmp_path, n)
    one, source = open_source(src), open_source(folder)
    assert source.format == "jsonl" and source.rows == n and source.random_access
    assert source.index.names == ("part-10.jsonl", "part-11.ndjson", "part-9.jsonl") and len(source.index.lines) > 50
    assert source.columns == one.columns
    names = tuple(c.name for c in source.columns)
    full = {name: _rows(list(source.pieces(n)), name) for name in names}
    assert full == {name: _rows(list(one.pieces(n)), name) for name in names} and full["id"] == list(range(n))
    _check_every_range(source, full)


@pytest.mark.parametrize("block,bad,message", [(1 << 20, {"x": "oops"}, "Column(/x) changed from number to string"),
                                               (4096, {"x": "oops"}, "Column(/x) changed from number to string"),
                                               (4096, {"z": 1.5}, "unexpected field")])
def test_a_bad_line_in_a_folder_is_named_by_its_file_and_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              block: int, bad: dict[str, object],
                                                              message: str) -> None:
    """A line of the second file that the types do not take (a string where numbers are; beyond
    the first block, a key the types lack): its file and its line there (from 1), whether the
    types are settled by a first block holding it (the lines before it, of both files, parse
    together; those up to it do not) or by one before it (its chunk does not parse with them)."""
    monkeypatch.setattr(jsonl, "BLOCK_BYTES", block)
    lines = [json.dumps({"id": i, "x": i * 0.5}) for i in range(1500)]
    lines[1234] = json.dumps({"id": 1234, **({"x": 1.0} if "z" in bad else {}), **bad})
    split_lines(_write_lines(tmp_path / "all.jsonl", lines), tmp_path / "folder", ("a.jsonl", "b.jsonl"), (1000,))
    with pytest.raises(InputError) as e:
        open_source(tmp_path / "folder")
    bad_file = tmp_path / "folder" / "b.jsonl"
    assert str(e.value) == f"{bad_file}: line 235: cannot parse JSONL: JSON parse error: {message}"


def _write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def test_what_a_folder_cannot_hold_is_refused_by_name(tmp_path: Path) -> None:
    """A folder without JSON Lines files (read with ``--from jsonl``), JSON Lines beside another
    format's files (detected), a file gone or added since the folder was indexed: one-line
    ``InputError``s naming the folder and the file."""
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("{}\n")
    with pytest.raises(InputError, match=r"empty: folder holds no JSON Lines files \(\.jsonl, \.ndjson, compressed"):
        open_source(empty, "jsonl")
    mixed = split_lines(write_awkward_jsonl(tmp_path / "all.jsonl", 30), tmp_path / "mixed", ("a.jsonl", "b.jsonl"),
                        (10,))
    np.save(mixed / "c.npy", np.arange(30))
    with pytest.raises(InputError, match=r"mixed: holds files of several input formats \(a\.jsonl, c\.npy\); keep one "
                                         r"format in the folder \(--from npy, parquet or jsonl reads only"):
        open_source(mixed)
    spec = open_source(mixed, "jsonl").spec
    assert spec is not None and spec.index.names == ("a.jsonl", "b.jsonl")
    (mixed / "b.jsonl").rename(mixed / "d.jsonl")
    with pytest.raises(InputError, match=r"mixed: b\.jsonl is gone since it was opened; convert it again$"):
        open_source(**vars(spec))
    (mixed / "b.jsonl").write_bytes((mixed / "d.jsonl").read_bytes())
    with pytest.raises(InputError, match=r"mixed: d\.jsonl appeared since it was opened; convert it again$"):
        open_source(**vars(spec))
    (mixed / "d.jsonl").rename(mixed / "e.jsonl.gz")  # not read in order instead
    with pytest.raises(InputError, match=r"mixed: e\.jsonl\.gz appeared since it was opened; convert it again$"):
        open_source(**vars(spec))


def test_a_folder_with_a_compressed_file_is_read_in_order(tmp_path: Path) -> None:
    """A folder holding a compressed JSON Lines file (detected, if it holds only such files):
    read in order, as a whole, the rows of the plain files; why names the file."""
    import gzip

    src, folder = _awkward_folder(tmp_path, 300)
    packed = tmp_path / "packed"
    packed.mkdir()
    for p in folder.glob("part-*"):
        shutil.copy(p, packed / p.name)
    (packed / "part-11.ndjson.gz").write_bytes(gzip.compress((packed / "part-11.ndjson").read_bytes()))
    (packed / "part-11.ndjson").unlink()
    plain, source = open_source(folder), open_source(packed)
    assert source.rows == 300 and not source.random_access and source.index is None
    assert source.in_order == "part-11.ndjson.gz is compressed: a compressed JSON Lines file is read in order"
    for name in ("id", "v", "m", "s", "t"):
        assert _rows(list(source.pieces(50)), name) == _rows(list(plain.pieces(50)), name)
    for p in packed.glob("*.jsonl"):
        p.unlink()
    assert detect_format(packed) == "jsonl" and open_source(packed).rows == open_source(folder / "part-11.ndjson").rows
