"""The in-memory ragged rows (``streambatch.ragged.Ragged``) and ragged column kinds in the schema."""

from __future__ import annotations

import numpy as np
import pytest

from streambatch.errors import ManifestError
from streambatch.ragged import Ragged
from streambatch.schema import Column, parse_column


def _rows(seed: int, n: int, long: bool) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    top = 400 if long else 9
    return [rng.integers(0, 1000, rng.integers(0, top), dtype=np.int32) for _ in range(n)]


@pytest.mark.parametrize("long", [False, True])
def test_take_slice_concat_keep_every_row(long: bool) -> None:
    rows = _rows(1, 50, long)
    r = Ragged.from_rows(rows, np.int32)
    assert len(r) == 50 and r.lengths.tolist() == [len(x) for x in rows]
    order = np.random.default_rng(2).permutation(50)
    t = r.take(order)
    assert all(np.array_equal(t.row(i), rows[k]) for i, k in enumerate(order.tolist()))
    s = r[7:31]
    assert len(s) == 24 and np.array_equal(s.row(0), rows[7]) and s.compact().offsets[0] == 0
    c = Ragged.concat([r[30:], r[:30]])
    assert [c.row(i).tolist() for i in range(50)] == [x.tolist() for x in rows[30:] + rows[:30]]


def test_bytes_rows_and_bad_offsets() -> None:
    r = Ragged.from_rows([b"ab", b"", b"xyz" * 50], np.uint8)
    assert r.row(2).tobytes() == b"xyz" * 50 and r.nbytes == 152 + 8 * 4
    with pytest.raises(ValueError, match="int64"):
        Ragged(np.zeros(3), np.array([0, 3], np.int32))
    with pytest.raises(TypeError, match="contiguous"):
        r[::2]


def test_ragged_kinds_in_the_schema() -> None:
    col = parse_column({"name": "tokens", "dtype": "int32", "shape": [], "kind": "list"}, "c", set())
    assert col.ragged and col.item_nbytes == 4 and col.to_json()["kind"] == "list"
    with pytest.raises(TypeError, match="no fixed size"):
        col.row_nbytes
    assert Column("x", "float32", (3,)).row_nbytes == 12
    with pytest.raises(ManifestError, match="uint8"):
        parse_column({"name": "s", "dtype": "int32", "shape": [], "kind": "string"}, "c", set())
    with pytest.raises(ManifestError, match="not supported"):
        parse_column({"name": "s", "dtype": "int32", "shape": [], "kind": "tree"}, "c", set())
