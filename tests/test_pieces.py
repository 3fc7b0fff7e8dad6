"""Shuffle pieces sized at load time: quality at any budget, exactly once, checksums once an epoch.

Real conversions of label-sorted data (every storage format), iterated by ``StreamDataset``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
import pytest

import streambatch
from streambatch import quality
from streambatch.errors import DataError
from streambatch.loader.sums import PieceSums, SharedSums
from streambatch.storage import FORMATS

from conftest import column_range, flip_byte, unit_range, write_sorted_npy

ROWS = 24_000
WIDTH = 30  # x float32[30] + id + y: 136-byte rows, units of 256 rows (94 units)
ROW_BYTES = 4 * WIDTH + 16
BATCH = 64


@pytest.fixture(scope="module")
def datasets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pieces")
    src = write_sorted_npy(root / "src", ROWS, width=WIDTH)
    out = {}
    for name, kw in {"zarr": {}, "parquet": {"format": "parquet"}, "arrow": {"format": "arrow"},
                     "zarr-lz4": {"codec": "lz4"}}.items():
        out[name] = root / name
        streambatch.convert(src, out[name], label="y", unit_bytes=256 * ROW_BYTES, **kw)
    return out


def epoch(ds: streambatch.StreamDataset) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ids, ys, xs = [], [], []
    for b in ds:
        ids.append(b["id"].numpy())
        ys.append(b["y"].numpy())
        xs.append(b["x"].numpy())
    return np.concatenate(ids), np.concatenate(ys), np.concatenate(xs)


def every_unit_once_an_epoch(ds: streambatch.StreamDataset, seen: list[int]) -> None:
    """Two epochs, each every row once, and ``seen`` (units a patched reader recorded) every unit once."""
    for e in range(2):
        seen.clear()
        ds.set_epoch(e)
        ids, _, _ = epoch(ds)
        assert np.array_equal(np.sort(ids), np.arange(ROWS))
        assert sorted(seen) == list(range(ds.manifest.n_units))


@pytest.mark.parametrize("fraction", [4, 16, 64])
def test_quality_at_any_budget_follows_the_prediction(datasets: dict[str, Path], fraction: int) -> None:
    """At 1/4, 1/16 and 1/64 of the data, label-sorted, no pre-shuffle: every row once, deff at
    most 1.25 and within 10% of what ``describe()`` predicted, pieces smaller than units."""
    ds = streambatch.StreamDataset(datasets["zarr"], batch_size=BATCH, memory_budget=ROWS * ROW_BYTES // fraction)
    d = ds.describe()
    assert d["pieces_split_units"] and d["piece_rows"] < d["unit_rows"]
    ids, ys, xs = epoch(ds)
    assert np.array_equal(np.sort(ids), np.arange(ROWS))
    deff = quality.design_effect(ids, ds.manifest.unit_rows, BATCH)["deff"]
    assert deff <= 1.25 and abs(deff - d["predicted_deff"]) <= 0.1 * d["predicted_deff"], (deff, d)
    assert np.array_equal(ys, (ids * 10) // ROWS)  # rows stay whole: every column from the same row


def test_whole_units_where_they_mix_well_enough(datasets: dict[str, Path]) -> None:
    ds = streambatch.StreamDataset(datasets["zarr"], batch_size=BATCH, memory_budget=10 * ROWS * ROW_BYTES)
    d = ds.describe()
    assert not d["pieces_split_units"] and d["piece_rows"] == pytest.approx(d["unit_rows"])


@pytest.mark.parametrize("name", ["parquet", "arrow"])
def test_every_format_that_reads_rows_alone_serves_pieces_exactly(datasets: dict[str, Path], name: str) -> None:
    """Parquet (in place) and Arrow read pieces too: the same rows, values and order as Zarr."""
    budget = ROWS * ROW_BYTES // 16
    ref = streambatch.StreamDataset(datasets["zarr"], batch_size=BATCH, memory_budget=budget)
    ds = streambatch.StreamDataset(datasets[name], batch_size=BATCH, memory_budget=budget)
    assert ds.describe()["piece_rows"] == ref.describe()["piece_rows"] < 256
    for a, b in zip(epoch(ref), epoch(ds)):
        np.testing.assert_array_equal(a, b)


def test_compressed_units_are_read_whole_and_decoded_once_an_epoch(datasets: dict[str, Path],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """lz4 units cannot be read by rows: pieces are whole units, and each is read (decoded)
    exactly once an epoch, also where a window boundary cuts it in two (WholeUnits)."""
    reader = FORMATS["zarr"].reader_class
    original = reader.read_into
    reads: list[int] = []

    def counting(self: Any, unit: int, lo: int, hi: int, out: Any) -> None:
        assert (lo, hi) == (0, int(self.manifest.unit_rows[unit])), "a part of a compressed unit decoded"
        reads.append(unit)
        original(self, unit, lo, hi, out)

    monkeypatch.setattr(reader, "read_into", counting)
    ds = streambatch.StreamDataset(datasets["zarr-lz4"], batch_size=BATCH, memory_budget=ROWS * ROW_BYTES // 16)
    d = ds.describe()
    assert not d["pieces_split_units"]
    plan = ds.plan()
    cut = {int(u) for j in plan.windows.tolist() for u, lo, hi, _ in plan.window_pieces(j)
           if (lo, hi) != (0, int(ds.manifest.unit_rows[u]))}
    assert cut, "no unit is cut by a window boundary: the test would prove nothing"
    every_unit_once_an_epoch(ds, reads)


def test_checksums_are_checked_once_per_unit_then_per_piece(datasets: dict[str, Path],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """With pieces, a unit's checksum is checked at its first piece of the first epoch (the whole
    unit), then its other pieces read only their rows: each unit is checked exactly once.  That
    check leaves each piece's CRC-32C, so the next epoch reads no unit whole but where a window
    boundary cut one of its pieces, and still serves every row once."""
    reader = FORMATS["zarr"].reader_class
    original = reader.read_into
    checked: list[int] = []

    def counting(self: Any, unit: int, lo: int, hi: int, out: Any) -> None:
        if self.verify:
            assert (lo, hi) == (0, int(self.manifest.unit_rows[unit]))  # checks cover the whole unit
            checked.append(unit)
        original(self, unit, lo, hi, out)

    batch = reader.check_units

    def counting_batch(self: Any, units: np.ndarray, pieces: np.ndarray, bufs: Any, sums: Any) -> Any:
        done = batch(self, units, pieces, bufs, sums)  # several units checked whole in one go
        checked.extend(units.tolist() if done else [])
        return done

    monkeypatch.setattr(reader, "read_into", counting)
    monkeypatch.setattr(reader, "check_units", counting_batch)
    ds = streambatch.StreamDataset(datasets["zarr"], batch_size=BATCH, memory_budget=ROWS * ROW_BYTES // 16)
    ids, _, _ = epoch(ds)
    assert np.array_equal(np.sort(ids), np.arange(ROWS))
    assert sorted(checked) == list(range(ds.manifest.n_units))
    checked.clear()
    ds.set_epoch(1)
    ids, _, _ = epoch(ds)
    assert np.array_equal(np.sort(ids), np.arange(ROWS))
    cut, rows = ds._sizing().layout(1).piece_rows, ds.manifest.unit_rows
    plan = ds.plan(epoch=1)
    split = {int(u) for j in plan.windows.tolist() for u, lo, hi, _ in plan.window_pieces(j)
             if lo % cut or (hi % cut and hi != rows[u])}
    assert len(checked) == len(set(checked)) and set(checked) <= split
    assert len(checked) < ds.manifest.n_units // 4


@pytest.mark.parametrize("fmt", ["zarr", "parquet", "arrow"])
@pytest.mark.parametrize("piece_rows", [None, 0])
def test_later_epochs_read_the_pieces_whose_sums_are_known_in_one_call(datasets: dict[str, Path],
                                                                       monkeypatch: pytest.MonkeyPatch,
                                                                       piece_rows: int | None, fmt: str) -> None:
    """Once the sums are known, every piece of whole parts is read and checked by the reader's one C
    call a read task (``read_known_pieces``), all columns at once; only the pieces a window
    boundary cut go the careful way, and every row is served once.  Whole units (``piece_rows=0``,
    or where units mix well enough) are pieces of their own: none is read and checked unit by unit.
    Parquet's columns stored plain take the same path as Zarr's and Arrow's."""
    ds = streambatch.StreamDataset(datasets[fmt], batch_size=BATCH, memory_budget=ROWS * ROW_BYTES // 16,
                                   piece_rows=piece_rows)
    epoch(ds)
    reader = FORMATS[fmt].reader_class
    known, summed = reader.read_known_pieces, reader.read_pieces_summed
    taken: list[int] = []
    careful: list[int] = []

    def counting_known(self: Any, pieces: np.ndarray, bufs: Any, sums: Any) -> Any:
        done = known(self, pieces, bufs, sums)
        taken.append(-1 if done is None else int(done.sum()))
        return done

    def counting_summed(self: Any, pieces: np.ndarray, bufs: Any, where: Any, crc: Any) -> Any:
        careful.append(len(pieces))
        return summed(self, pieces, bufs, where, crc)

    one_by_one = reader.read_into
    checked: list[int] = []

    def counting_checks(self: Any, unit: int, lo: int, hi: int, out: Any) -> None:
        if self.verify:
            checked.append(unit)
        one_by_one(self, unit, lo, hi, out)

    monkeypatch.setattr(reader, "read_known_pieces", counting_known)
    monkeypatch.setattr(reader, "read_pieces_summed", counting_summed)
    monkeypatch.setattr(reader, "read_into", counting_checks)
    ds.set_epoch(1)
    ids, _, _ = epoch(ds)
    assert np.array_equal(np.sort(ids), np.arange(ROWS))
    rows = ds.manifest.unit_rows
    cut = ds._sizing().layout(1).piece_rows or int(rows.max())
    plan = ds.plan(epoch=1)
    pieces = np.concatenate([plan.window_table(j)[0] for j in plan.windows.tolist()])
    whole = ~((pieces[:, 1] % cut != 0) | ((pieces[:, 2] % cut != 0) & (pieces[:, 2] != rows[pieces[:, 0]])))
    assert taken and min(taken) >= 0 and sum(taken) == int(whole.sum()) > 0
    assert sum(careful) == 0
    assert len(checked) <= int((~whole).sum())  # only units a window boundary cut are read whole again


@pytest.mark.parametrize("normalize", [False, True])
def test_a_task_gathers_the_rows_of_all_its_batches_in_one_call(datasets: dict[str, Path],
                                                                monkeypatch: pytest.MonkeyPatch, normalize: bool) -> None:
    """Batch assembly gathers every plain column, and the row ids, of all a task's batches in one
    call (``take_rows``: one release of the interpreter lock, not one per column and batch); a
    normalised column is gathered apart.  Every batch holds the rows its ids name."""
    from streambatch.loader import batches

    real, calls = batches.take_rows, []

    def counting(srcs: list[np.ndarray], idx_list: list[np.ndarray], dsts: list[list[np.ndarray]]) -> None:
        calls.append((len(srcs), len(idx_list)))
        real(srcs, idx_list, dsts)

    monkeypatch.setattr(batches, "take_rows", counting)
    ds = streambatch.StreamDataset(datasets["zarr"], batch_size=BATCH, memory_budget=ROWS * ROW_BYTES // 4,
                                   return_index=True, normalize=["x"] if normalize else False)
    served = list(ds)
    assert sum(n for _, n in calls) == len(served) and len(calls) < len(served) / 2
    assert {k for k, _ in calls} == {3 if normalize else 4}  # id, y, the row ids (and x unless normalised)
    src = datasets["zarr"].parent / "src"
    x, y = np.load(src / "x.npy"), np.load(src / "y.npy")
    rows = np.concatenate([b["_row"].numpy() for b in served])
    assert np.array_equal(np.sort(rows), np.arange(ROWS))
    for b in served:
        r = b["_row"].numpy()
        assert np.array_equal(b["id"].numpy(), r) and np.array_equal(b["y"].numpy(), y[r])
        want = x[r] if not normalize else (x[r] - ds.normalize["x"][0]) * ds.normalize["x"][1]
        assert np.allclose(b["x"].numpy(), want, rtol=1e-6, atol=1e-6)


def test_a_window_hints_whole_the_units_it_will_check(datasets: dict[str, Path],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Read-ahead hints: in the first epoch a window's pieces belong to units read whole by their
    check, so the hints ask for those whole units (a cold disk reads them in large requests);
    once their sums are known, only the pieces."""
    reader = FORMATS["zarr"].reader_class
    original = reader.advise
    asked: list[np.ndarray] = []

    def recording(self: Any, pieces: Any, names: list[str]) -> None:
        asked.append(np.array(pieces, np.int64).reshape(-1, 4))
        original(self, pieces, names)

    monkeypatch.setattr(reader, "advise", recording)
    ds = streambatch.StreamDataset(datasets["zarr"], batch_size=BATCH, memory_budget=ROWS * ROW_BYTES // 16)
    rows = ds.manifest.unit_rows
    ids, _, _ = epoch(ds)
    assert np.array_equal(np.sort(ids), np.arange(ROWS))
    whole = {tuple(r) for r in np.concatenate(asked)[:, :3].tolist()}
    units = np.unique(ds.plan().window_table(0)[0][:, 0])  # before any check of the epoch: all whole
    assert {(u, 0, int(rows[u])) for u in units.tolist()} <= whole
    asked.clear()
    ds.set_epoch(1)
    epoch(ds)
    plan = ds.plan(epoch=1)
    in_order = lambda t: t[np.lexsort(t.T[::-1])]  # noqa: E731 - windows are hinted by two threads
    assert np.array_equal(in_order(np.concatenate(asked)),
                          in_order(np.concatenate([plan.window_table(j)[0] for j in plan.windows.tolist()])))


def test_parquet_hints_each_pieces_rows_not_whole_row_groups(datasets: dict[str, Path],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Cold Parquet: once the sums are known, a window's read-ahead hints ask for each piece's
    rows of each column, the bytes its reads take, inside the unit's row group; a piece that is a
    whole unit asks for the unit's row group.  (Whole row groups for pieces of a quarter of a
    unit made a cold disk read four times what was served.)"""
    from streambatch.io.files import ByteRanges

    original, asked = ByteRanges.advise, []

    def recording(self: Any, fis: np.ndarray, starts: np.ndarray, sizes: np.ndarray, where: Any) -> None:
        asked.append(np.stack([np.asarray(fis), np.asarray(starts), np.asarray(sizes)], axis=1))
        original(self, fis, starts, sizes, where)

    ds = streambatch.StreamDataset(datasets["parquet"], batch_size=BATCH, memory_budget=ROWS * ROW_BYTES // 16)
    epoch(ds)  # the first epoch checks the units whole and keeps their sums
    monkeypatch.setattr(ByteRanges, "advise", recording)
    ds.set_epoch(1)
    ids, _, _ = epoch(ds)
    assert np.array_equal(np.sort(ids), np.arange(ROWS))
    plan, lay = ds.plan(epoch=1), ds.manifest.layout
    pieces = np.concatenate([plan.window_table(j)[0] for j in plan.windows.tolist()])
    whole = (pieces[:, 1] == 0) & (pieces[:, 2] == ds.manifest.unit_rows[pieces[:, 0]])
    assert (~whole).sum() > len(pieces) // 2
    hinted = np.concatenate(asked)
    group = np.asarray(lay["size"], np.int64)
    rows_bytes = ((pieces[~whole, 2] - pieces[~whole, 1]) * ROW_BYTES).sum()
    assert hinted[:, 2].sum() == rows_bytes + group[pieces[whole, 0]].sum()
    starts, files = np.asarray(lay["offset"], np.int64), np.asarray(lay["file"], np.int64)
    assert all(((starts <= a) & (a + n <= starts + group) & (files == f)).any() for f, a, n in hinted.tolist())


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_fresh_dataloader_workers_keep_the_sums_for_the_next_epochs(datasets: dict[str, Path], tmp_path: Path,
                                                                     context: str) -> None:
    """DataLoader workers that live one epoch (torch's default) leave the pieces' sums in memory
    that the dataset shares with them (forked or spawned), so the next epoch's workers read
    pieces alone; every row is still served once an epoch.  Units checked whole are logged
    (forked workers) to a file; the sums are read back in the main process."""
    from torch.utils.data import DataLoader

    if not SharedSums.available():
        pytest.skip("no memfd on this system: each process keeps its own sums")
    log = tmp_path / "checked"
    reader = FORMATS["zarr"].reader_class
    original = reader.read_into

    def logging(self: Any, unit: int, lo: int, hi: int, out: Any) -> None:
        if self.verify:
            with open(log, "a") as f:
                f.write(f"{unit}\n")
        original(self, unit, lo, hi, out)

    batch = reader.check_units

    def logging_batch(self: Any, units: np.ndarray, pieces: np.ndarray, bufs: Any, sums: Any) -> Any:
        done = batch(self, units, pieces, bufs, sums)  # several units checked whole in one go
        if done:
            with open(log, "a") as f:
                f.write("".join(f"{u}\n" for u in units.tolist()))
        return done

    ds = streambatch.StreamDataset(datasets["zarr"], batch_size=BATCH, memory_budget=ROWS * ROW_BYTES // 16)
    names = tuple(c.name for c in ds.columns)
    checked = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(reader, "read_into", logging)
        mp.setattr(reader, "check_units", logging_batch)
        for e in range(2):
            log.write_text("")
            ds.set_epoch(e)
            dl = DataLoader(ds, batch_size=None, num_workers=2, multiprocessing_context=context)
            ids = np.concatenate([b["id"].numpy() for b in dl])
            assert np.array_equal(np.sort(ids), np.arange(ROWS))
            checked.append(len(log.read_text().split()))
            cut = ds._sizing().layout(2).piece_rows
            assert cut and PieceSums(ds.manifest.unit_rows, cut, names, ds._shared_sums).known.all()
    if context == "fork":  # the patched reader runs in the workers
        assert checked[0] >= ds.manifest.n_units and checked[1] < ds.manifest.n_units // 4, checked
    ds.release_buffers()
    assert not PieceSums(ds.manifest.unit_rows, cut, names, ds._shared_sums).known.any()


def test_shared_sums_keep_one_region_per_piece_layout(tmp_path: Path) -> None:
    """Each piece layout (cut, columns) gets its own region of the shared file, found again by
    any process holding the file (here: a second object over the same descriptor); a region
    another layout appends later does not move it or touch its sums, and a full directory gives
    private sums instead of none."""
    import os

    if not SharedSums.available():
        pytest.skip("no memfd on this system")
    shared = SharedSums()
    rows = np.array([100, 100, 37], np.int64)
    a = PieceSums(rows, 10, ("x", "y"), shared)
    if a.crc is None:
        pytest.skip("no native CRC-32C: nothing is kept")
    a.sums["y"][:] = np.arange(len(a.known), dtype=np.uint32) + 7
    a.known[:] = True
    b = PieceSums(rows, 16, ("x", "y"), shared)  # another cut: a region of its own
    assert not b.known.any()
    other = SharedSums(os.dup(shared.fd))
    again = PieceSums(rows, 10, ("x", "y"), other)
    assert again.known.all() and np.array_equal(again.sums["y"], a.sums["y"]) and not again.sums["x"].any()
    for cut in range(20, 20 + 200):  # fill the directory: later layouts keep their sums privately
        last = PieceSums(rows, cut, ("x",), shared)
    last.known[:] = True
    assert PieceSums(rows, 10, ("x", "y"), shared).known.all()
    assert not PieceSums(rows, 219, ("x",), other).known.any()


@pytest.mark.parametrize(("name", "piece_rows"), [("zarr", None), ("zarr", 0), ("arrow", 0), ("parquet", None),
                                                  ("parquet", 0)])
def test_a_piece_damaged_after_its_unit_was_checked_is_an_error(datasets: dict[str, Path], tmp_path: Path,
                                                                kernels: str, name: str, piece_rows: int | None) -> None:
    """A byte flipped once the first epoch has checked every unit: the next epoch checks each
    piece against the sum its unit's check left, and the damaged piece's window fails, naming the
    unit (read whole again to say what is wrong); no row of that piece is served.  Whole units
    (``piece_rows=0``) are pieces of their own, checked the same way."""
    import shutil

    path = tmp_path / "d"
    shutil.copytree(datasets[name], path)
    ds = streambatch.StreamDataset(path, batch_size=BATCH, memory_budget=ROWS * ROW_BYTES // 16,
                                   piece_rows=piece_rows)
    epoch(ds)
    m = ds.manifest
    f, off, size = column_range(m, 7, "x")
    if "values" in m.layout:  # Arrow, Parquet stored plain: the unit's values of x, row after row
        f, base, _ = unit_range(m, 7, "x")
        off, size = base + int(m.layout["values"]["x"][7]), int(m.unit_rows[7]) * 4 * WIDTH
    flip_byte(f, off + size // 2)
    row = int(m.unit_start[7]) + (size // 2) // (4 * WIDTH)
    ds.set_epoch(1)
    seen = []
    with pytest.raises(DataError, match=r"unit 7, .*checksum mismatch"):
        for b in ds:
            seen.append(b["id"].numpy())
    assert row not in set(np.concatenate(seen).tolist()) if seen else True


def test_a_sum_that_is_wrong_while_its_rows_are_right_is_taken_again(datasets: dict[str, Path]) -> None:
    """A kept sum that does not match rows that are right (one not written yet by another
    process, or altered here): the piece's unit is read whole and checked, the rows equal the
    unit's, so they are served and the unit's sums are taken again."""
    ds = streambatch.StreamDataset(datasets["zarr"], batch_size=BATCH, memory_budget=ROWS * ROW_BYTES // 16)
    epoch(ds)
    sums = ds._sums[0]
    k = int(sums.first[3])
    right = int(sums.sums["y"][k])
    sums.sums["y"][k] ^= 1
    ds.set_epoch(1)
    ids, _, _ = epoch(ds)
    assert np.array_equal(np.sort(ids), np.arange(ROWS))
    assert int(sums.sums["y"][k]) == right


def test_rows_that_read_otherwise_than_their_checked_unit_are_an_error(datasets: dict[str, Path],
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows of a piece read alone that differ from its sum, in a unit whose checksums pass and
    whose bytes are not those rows (a read that went wrong once), are an error naming the
    column, unit and rows, not served rows."""
    ds = streambatch.StreamDataset(datasets["zarr"], batch_size=BATCH, memory_budget=ROWS * ROW_BYTES // 16)
    epoch(ds)
    reader = FORMATS["zarr"].reader_class
    original, original_summed, original_known = reader.read_pieces, reader.read_pieces_summed, reader.read_known_pieces

    def flip(self: Any, pieces: np.ndarray, bufs: Any) -> NDArray[np.bool_]:
        hit = (pieces[:, 0] == 3) & (not self.verify)
        for at in pieces[hit, 3].tolist():
            bufs["x"][at].view(np.uint8)[0] ^= 1
        return hit

    def flipping(self: Any, pieces: np.ndarray, bufs: Any, where: Any) -> bool:
        done = original(self, pieces, bufs, where)
        flip(self, pieces, bufs)
        return done

    def flipping_summed(self: Any, pieces: np.ndarray, bufs: Any, where: Any, crc: Any) -> Any:
        sums = original_summed(self, pieces, bufs, where, crc)  # as a read gone wrong: bytes and sums differ
        if sums is not None:
            sums["x"][flip(self, pieces, bufs)] ^= 1
        return sums

    def known_misread(self: Any, pieces: np.ndarray, bufs: Any, sums: Any) -> Any:
        done = original_known(self, pieces, bufs, sums)  # unit 3's pieces as if their sums differed
        if done is not None:
            done[np.argmax(pieces[:, 0] == 3) if (pieces[:, 0] == 3).any() else len(done):] = False
        return done

    monkeypatch.setattr(reader, "read_pieces", flipping)
    monkeypatch.setattr(reader, "read_pieces_summed", flipping_summed)
    monkeypatch.setattr(reader, "read_known_pieces", known_misread)
    ds.set_epoch(1)
    with pytest.raises(DataError, match=r"column 'x', unit 3: rows \d+:\d+ differ from what the unit held"):
        epoch(ds)


def test_the_first_epochs_batched_checks_match_the_unit_by_unit_ones(datasets: dict[str, Path], tmp_path: Path) -> None:
    """``check_units`` (the first epoch's checks, several units per C call): the pieces' rows land
    in the window buffers and each unit's part sums are those the unit-by-unit check records;
    a damaged unit among them makes it answer False before any unit's sums are flagged known."""
    import shutil

    from streambatch.loader.sums import PieceSums

    path = tmp_path / "d"
    shutil.copytree(datasets["zarr"], path)
    m = streambatch.StreamDataset(path, batch_size=BATCH).manifest
    names, cut = ("id", "x", "y"), 7
    reader = FORMATS["zarr"].reader_class(m, verify=True)
    try:
        units = np.array([1, 2, 5, 9, 10, 30], np.int64)
        rows = m.unit_rows[units]
        pieces = np.array([[u, lo, lo + 5, 10 * k] for k, (u, lo) in enumerate(zip(units.tolist(), [0, 7, 3, 0, 14, 20]))],
                          np.int64)
        bufs = {n: np.zeros((70, *m.column(n).shape), m.column(n).np_dtype) for n in names}
        batched, alone = PieceSums(m.unit_rows, cut, names), PieceSums(m.unit_rows, cut, names)
        assert reader.check_units(units, pieces, bufs, batched) is True
        for (u, lo, hi, at), n in ((p, n) for p in pieces.tolist() for n in names):
            want = {c: np.empty((int(m.unit_rows[u]), *m.column(c).shape), m.column(c).np_dtype) for c in names}
            reader.read_into(u, 0, int(m.unit_rows[u]), want)
            assert np.array_equal(bufs[n][at:at + hi - lo], want[n][lo:hi])
            alone.record(u, want)
        assert np.array_equal(batched.known, alone.known) and batched.known.sum() == (-(-rows // cut)).sum()
        assert all(np.array_equal(batched.sums[n], alone.sums[n]) for n in names)

        f, off, size = unit_range(m, 9, "x")
        flip_byte(f, off + size // 3)
        fresh = PieceSums(m.unit_rows, cut, names)
        assert reader.check_units(units, pieces, bufs, fresh) is False
        assert not fresh.known.any()
    finally:
        reader.close()


def test_a_damaged_unit_fails_at_its_first_piece(datasets: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    path = tmp_path / "d"
    shutil.copytree(datasets["zarr"], path)
    m = streambatch.StreamDataset(path, batch_size=BATCH).manifest
    f, off, size = unit_range(m, 5, "x")
    flip_byte(f, off + size - 3)
    ds = streambatch.StreamDataset(path, batch_size=BATCH, memory_budget=ROWS * ROW_BYTES // 16)
    assert ds.describe()["pieces_split_units"]
    seen = []
    with pytest.raises(DataError, match=r"unit 5, .*checksum mismatch"):
        for b in ds:
            seen.append(b["id"].numpy())
    served = np.concatenate(seen) if seen else np.zeros(0, np.int64)
    start = int(m.unit_start[5])
    assert not ((served >= start) & (served < start + int(m.unit_rows[5]))).any(), "a row of the damaged unit"


def test_resume_under_another_budget_keeps_the_epoch_piece_size(datasets: dict[str, Path]) -> None:
    """A state records the epoch's piece size; resumed under another budget (other windows and
    pieces) the rest of the epoch is exactly the rows not yet served."""
    small = ROWS * ROW_BYTES // 64
    ds = streambatch.StreamDataset(datasets["zarr"], batch_size=BATCH, memory_budget=small, seed=5)
    first = []
    for i, b in enumerate(ds):
        first.append(b["id"].numpy())
        if i == 40:
            break
    state = ds.state_dict()
    assert state["phases"][-1]["piece_rows"] == ds.describe()["piece_rows"]
    other = streambatch.StreamDataset(datasets["zarr"], batch_size=BATCH, memory_budget=small * 8, seed=5)
    assert other.describe()["piece_rows"] != ds.describe()["piece_rows"]
    other.load_state_dict(state)
    rest, _, _ = epoch(other)
    got = np.concatenate(first + [rest])
    assert np.array_equal(np.sort(got), np.arange(ROWS))


def test_a_state_saved_before_pieces_resumes_with_whole_units(datasets: dict[str, Path]) -> None:
    """States without ``piece_rows`` (saved by earlier versions) are plans of whole units."""
    budget = ROWS * ROW_BYTES // 16
    ds = streambatch.StreamDataset(datasets["zarr"], batch_size=BATCH, memory_budget=budget, seed=2)
    lay = ds._sizing().layout(1)
    state = {"version": 1, **ds._identity(), "epoch": 0, "batches": 10,
             "phases": [{"world_size": 1, "num_workers": 1, "window_rows": lay.window_rows, "batches": 10}]}
    ds.load_state_dict(state)
    rest, _, _ = epoch(ds)
    whole = ds.plan(window_rows=lay.window_rows, piece_rows=0)
    starts = ds.manifest.unit_start
    want = np.concatenate([plan_rows[perm] for plan_rows, perm in (
        (whole.window_row_ids(j, starts), whole.window_perm(j)) for j in whole.windows.tolist())])
    np.testing.assert_array_equal(rest, want[10 * BATCH:])


@pytest.mark.parametrize(("rows", "window_fraction"), [(2_000_000, 2), (2_000_000, 4), (200_000, 4), (200_000, 32)])
def test_pieces_are_equal_and_mix_as_predicted_at_any_window(rows: int, window_fraction: int) -> None:
    """The chosen pieces cut every unit evenly (never 495 + 1 rows), and the served order's deff
    is within 10% of the prediction made from them, whatever share of the data a window holds."""
    from streambatch.loader.sizing import Sizing
    from streambatch.plan import plan_epoch

    unit, batch, row_bytes = 496, 256, 528
    ur = np.full(-(-rows // unit), unit, np.int64)
    ur[-1] = rows - unit * (len(ur) - 1)
    budget = rows * row_bytes // window_fraction
    s = Sizing(budget, batch, row_bytes, rows, 1, False, None, False, "d", unit, len(ur), True, 1.0)
    lay = s.layout(1)
    p = lay.piece_rows
    assert p, "label-sorted data at this budget needs pieces"
    k = -(-unit // p)
    assert unit - (k - 1) * p >= p - k, (p, k)  # the unit's last piece about as long as the others
    plan = plan_epoch(ur, seed=0, epoch=0, batch_size=batch, window_rows=lay.window_rows, piece_rows=p)
    starts = np.concatenate([[0], np.cumsum(ur)[:-1]])
    order = np.concatenate([plan.window_row_ids(j, starts)[plan.window_perm(j)] for j in plan.windows.tolist()])
    measured = quality.design_effect(order, ur, batch)["deff"]
    predicted = s.epoch_deff(p, lay.window_rows)
    assert measured <= 1.25 and abs(measured - predicted) <= 0.1 * predicted, (p, measured, predicted)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_read_ranges_puts_every_range_at_its_place(tmp_path: Path, seed: int, kernels: str) -> None:
    """Many small ranges of two real files, in file order, near and far apart (so some are read
    as one span and scattered, some alone), to arbitrary places of the destination: each lands
    exactly where asked (scattered by the C module and without it), and a range past a file's
    end is a DataError naming it."""
    from types import SimpleNamespace

    from streambatch.io.files import ByteRanges

    rng = np.random.default_rng(seed)
    data = [rng.integers(0, 256, 300_000, dtype=np.uint8) for _ in range(2)]
    for i, d in enumerate(data):
        d.tofile(tmp_path / f"f{i}")
    files = SimpleNamespace(root=tmp_path, files=["f0", "f1"], path_of=lambda i: tmp_path / f"f{i}")
    fis, starts, sizes = [], [], []
    for fi in (0, 1):
        pos = 0
        while True:
            pos += int(rng.choice([0, 8, 64, 4096, 40_000]))
            size = int(rng.choice([8, 24, 512, 8192]))
            if pos + size > data[fi].size:
                break
            fis.append(fi), starts.append(pos), sizes.append(size)
            pos += size
    sizes_a = np.asarray(sizes, np.int64)
    order = rng.permutation(len(sizes))  # destinations in any order, not back to back
    at = (np.cumsum(sizes_a[order]) - sizes_a[order] + 8 * np.arange(len(order)))[np.argsort(order)]
    dst = np.zeros(int((at + sizes_a).max()), np.uint8)
    r = ByteRanges(files)
    r.read_ranges(np.asarray(fis, np.int64), np.asarray(starts, np.int64), sizes_a, dst, at, lambda k: f"range {k}")
    for k, (fi, s, n) in enumerate(zip(fis, starts, sizes)):
        np.testing.assert_array_equal(dst[at[k]:at[k] + n], data[fi][s:s + n], err_msg=f"range {k}")
    with pytest.raises(DataError, match="range 1"):
        r.read_ranges(np.asarray([0, 0], np.int64), np.asarray([0, 299_990], np.int64), np.asarray([8, 16], np.int64),
                      dst, np.asarray([0, 8], np.int64), lambda k: f"range {k}")
    r.close()


def test_describe_states_what_the_plan_costs(datasets: dict[str, Path]) -> None:
    """The plan's memory lives outside the budget, so describe() states it: within 30% of what
    making and holding the plan takes (tracemalloc); whole units cost a fraction of that."""
    import tracemalloc

    stated = {}
    for pieces in (None, 0):
        ds = streambatch.StreamDataset(datasets["zarr"], batch_size=BATCH, memory_budget=ROWS * ROW_BYTES // 64,
                                       piece_rows=pieces)
        d = stated[pieces] = ds.describe()
        tracemalloc.start()
        try:
            plan = ds.plan()
            held, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert plan.pieces.n > 0
        if pieces is None:  # thousands of pieces: the per-piece costs dominate the fixed ones
            assert abs(d["plan_peak_bytes"] - peak) <= 0.3 * peak, (d["plan_peak_bytes"], peak)
            assert abs(d["plan_bytes"] - held) <= 0.3 * held, (d["plan_bytes"], held)
    assert stated[0]["plan_peak_bytes"] * 5 < stated[None]["plan_peak_bytes"]
