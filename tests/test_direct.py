"""Large rows read straight into the batches (loader/direct.py): the same batches as the window
path, exactly once, through DataLoader workers and resumes, and checked row by row.

Real uncompressed Zarr and Arrow IPC datasets whose ``x`` rows are 4 KiB (float32[1024]), iterated
by ``StreamDataset`` (every test runs on both); the window path is the same dataset with
``DIRECT_ROW_BYTES`` out of reach.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import streambatch
from streambatch import _kernels
from streambatch.errors import DataError
from streambatch.loader import direct, sizing
from streambatch.storage import FORMATS

from conftest import column_range, flip_byte, write_sorted_npy

ROWS = 3000
WIDTH = 1024  # x float32[1024]: 4 KiB rows, read row by row
ROW_BYTES = 4 * WIDTH + 16
BUDGET = ROWS * ROW_BYTES // 8
BATCH = 64

pytestmark = pytest.mark.skipif(not _kernels.NATIVE, reason="the direct path needs streambatch._native")


@pytest.fixture(scope="module", params=["zarr", "arrow"])
def source(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    root = tmp_path_factory.mktemp("direct")
    src = write_sorted_npy(root / "src", ROWS, width=WIDTH)
    path = root / f"ds.{request.param}"
    streambatch.convert(src, path, label="y", unit_bytes=24 * ROW_BYTES, codec="none", progress=False,
                        format=request.param)
    return path, np.load(src / "x.npy")


@pytest.fixture
def copy(source: tuple[Path, np.ndarray], tmp_path: Path) -> Path:
    shutil.copytree(source[0], tmp_path / source[0].name)
    return tmp_path / source[0].name


def make(path: Path, **kw: Any) -> streambatch.StreamDataset:
    return streambatch.StreamDataset(path, **{"batch_size": BATCH, "memory_budget": BUDGET, "seed": 5, **kw})


def batches(ds: streambatch.StreamDataset, epoch: int) -> list[dict[str, np.ndarray]]:
    ds.set_epoch(epoch)
    return [{k: v.numpy().copy() for k, v in b.items()} for b in ds]


def window_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(direct, "DIRECT_ROW_BYTES", 1 << 40)


def assert_same(a: list[dict[str, np.ndarray]], b: list[dict[str, np.ndarray]]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert list(x) == list(y)  # the columns in the dataset's order
        assert all(np.array_equal(x[k], y[k]) for k in x)


@pytest.mark.parametrize("verify", [True, False])
def test_direct_columns_serve_the_window_paths_batches(source: tuple[Path, np.ndarray], verify: bool,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Under the same plan (windows of as many rows as the window path's), the same order and
    the same bytes: only how the large rows travel differs.  The windows then hold the small
    columns and the rows' places only."""
    path, x = source
    monkeypatch.setattr(sizing, "DIRECT_WINDOW_FACTOR", 1)
    ds = make(path, verify=verify)
    assert ds.describe()["direct_columns"] == ["x"]
    got = [batches(ds, e) for e in range(3)]
    peak = ds.last_peak_accounted_bytes
    for e in got:
        ids = np.concatenate([b["id"] for b in e])
        assert np.array_equal(np.sort(ids), np.arange(ROWS))
        assert all(np.array_equal(b["x"], x[b["id"]]) for b in e)
    window_path(monkeypatch)
    ds = make(path, verify=verify)
    assert ds.describe()["direct_columns"] == []
    for e, want in enumerate(got):
        assert_same(batches(ds, e), want)
    assert peak <= BUDGET and ds.last_peak_accounted_bytes <= BUDGET


def test_windows_of_direct_columns_hold_more_rows_and_mix_better(source: tuple[Path, np.ndarray],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A window holds 48 bytes a row instead of 4 KiB: it takes DIRECT_WINDOW_FACTOR times the
    window path's rows (within the budget), so fewer windows an epoch and a lower design effect,
    measured on the label-sorted rows as predicted."""
    from streambatch import quality

    path, x = source
    ds = make(path)
    d = ds.describe()
    window_path(monkeypatch)
    w = make(path).describe()
    assert d["window_rows"] == min(sizing.DIRECT_WINDOW_FACTOR * w["window_rows"], -(-ROWS // BATCH) * BATCH)
    assert d["window_rows"] > w["window_rows"] and d["predicted_deff"] <= w["predicted_deff"]
    monkeypatch.undo()
    got = batches(ds, 1)
    assert all(np.array_equal(b["x"], x[b["id"]]) for b in got)
    ids = np.concatenate([b["id"] for b in got])
    assert np.array_equal(np.sort(ids), np.arange(ROWS))
    deff = quality.design_effect(ids, ds.manifest.unit_rows, BATCH)["deff"]
    assert deff <= 1.25 and abs(deff - d["predicted_deff"]) <= 0.1 * d["predicted_deff"], (deff, d)


@pytest.mark.parametrize("verify", [True, False])
def test_a_direct_column_alone_is_served_without_window_buffers(source: tuple[Path, np.ndarray],
                                                                verify: bool) -> None:
    """Only ``x`` selected: a window has no buffer to read into, only the rows' places."""
    path, x = source
    ds = make(path, columns=["x"], verify=verify, return_index=True)
    for e in range(2):
        got = batches(ds, e)
        rows = np.concatenate([b["_row"] for b in got])
        assert np.array_equal(np.sort(rows), np.arange(ROWS))
        assert all(list(b) == ["x", "_row"] and np.array_equal(b["x"], x[b["_row"]]) for b in got)


def test_the_device_path_serves_the_same_batches(source: tuple[Path, np.ndarray],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """``device="cpu"``: rows read straight into the device path's reused host buffers."""
    path, _ = source
    monkeypatch.setattr(sizing, "DIRECT_WINDOW_FACTOR", 1)  # the window path's plan
    got = [batches(make(path, device="cpu", memory_budget=4 * BUDGET), e) for e in range(2)]
    window_path(monkeypatch)
    ds = make(path, device="cpu", memory_budget=4 * BUDGET)
    for e, want in enumerate(got):
        assert_same(batches(ds, e), want)


def test_a_budget_too_small_for_windows_of_whole_rows_serves_direct_columns(
        source: tuple[Path, np.ndarray], monkeypatch: pytest.MonkeyPatch) -> None:
    """A window of direct columns holds 48 bytes a row: the least budget counts that, not whole
    rows, so a budget the window path refuses (naming its least budget) serves every row once."""
    import re

    path, x = source
    window_path(monkeypatch)
    budget = 7 * BATCH * ROW_BYTES // 2  # two batches ahead leave less than a batch of whole rows a window
    with pytest.raises(ValueError, match="too small") as refused:
        make(path, memory_budget=budget)
    least = int(re.search(r"give at least (\d+) bytes", str(refused.value)).group(1))
    monkeypatch.undo()
    ds = make(path, memory_budget=budget)
    assert budget < least
    got = batches(ds, 0)
    assert np.array_equal(np.sort(np.concatenate([b["id"] for b in got])), np.arange(ROWS))
    assert all(np.array_equal(b["x"], x[b["id"]]) for b in got)
    assert ds.last_peak_accounted_bytes <= budget
    with pytest.raises(ValueError, match=r"give at least (\d+) bytes") as small:
        make(path, memory_budget=3 * BATCH * ROW_BYTES // 2)
    assert int(re.search(r"give at least (\d+) bytes", str(small.value)).group(1)) < least


def test_through_dataloader_workers_every_row_once(source: tuple[Path, np.ndarray]) -> None:
    path, x = source
    ds = make(path, memory_budget=2 * BUDGET)  # each worker gets half
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2, persistent_workers=True)
    for e in range(2):
        ds.set_epoch(e)
        got = list(loader)
        ids = np.concatenate([b["id"].numpy() for b in got])
        assert np.array_equal(np.sort(ids), np.arange(ROWS))
        assert all(np.array_equal(b["x"].numpy(), x[b["id"].numpy()]) for b in got)
    del loader


def test_resume_serves_exactly_the_rest(source: tuple[Path, np.ndarray]) -> None:
    path, _ = source
    full = batches(make(path), 2)
    ds = make(path)
    ds.set_epoch(2)
    it = iter(ds)
    head = [next(it) for _ in range(17)]
    state = json.loads(json.dumps(ds.state_dict()))
    del it, head
    fresh = make(path)
    fresh.load_state_dict(state)
    assert_same([{k: v.numpy() for k, v in b.items()} for b in fresh], full[17:])


def test_elastic_resume_under_two_ranks_serves_every_row(source: tuple[Path, np.ndarray]) -> None:
    """Resumed under another world size, the rest of the epoch comes from windows some of whose
    pieces were partly served: their direct rows are the rows kept."""
    path, x = source
    ds = make(path)
    it = iter(ds)
    head = np.concatenate([next(it)["id"].numpy() for _ in range(11)])
    state = ds.state_dict()
    del it
    rest = []
    for rank in range(2):
        part = make(path, rank=rank, world_size=2)
        part.load_state_dict(state)
        for b in part:
            assert np.array_equal(b["x"].numpy(), x[b["id"].numpy()])
            rest.append(b["id"].numpy())
    served = np.concatenate([head, *rest])
    assert set(served.tolist()) == set(range(ROWS)) and len(served) - ROWS < 2


def test_a_unit_damaged_before_the_first_epoch_is_an_error_before_any_of_its_rows(copy: Path) -> None:
    m = make(copy).manifest
    f, off, size = column_range(m, 9, "x")
    flip_byte(f, off + size // 3)
    seen = []
    with pytest.raises(DataError, match=r"column 'x', unit 9, .*checksum mismatch"):
        for b in make(copy):
            seen.append(b["id"].numpy())
    served = np.concatenate(seen) if seen else np.zeros(0, np.int64)
    start = int(m.unit_start[9])
    assert not ((served >= start) & (served < start + int(m.unit_rows[9]))).any(), "a row of the damaged unit"


def test_a_row_damaged_after_its_unit_was_checked_is_an_error_and_never_served(copy: Path) -> None:
    """The first epoch leaves each row's sum; in the next a row is checked as it is read, and the
    damaged one makes its unit be read and checked again, which names it."""
    ds = make(copy)
    batches(ds, 0)
    m = ds.manifest
    f, off, size = column_range(m, 4, "x")
    flip_byte(f, off + 5 * 4 * WIDTH + 17)  # row 5 of unit 4
    row = int(m.unit_start[4]) + 5
    seen = []
    ds.set_epoch(1)
    with pytest.raises(DataError, match=r"column 'x', unit 4, .*checksum mismatch"):
        for b in ds:
            seen.append(b["id"].numpy())
    assert row not in set(np.concatenate(seen).tolist()) if seen else True


def test_a_row_sum_that_is_wrong_while_the_row_is_right_is_taken_again(source: tuple[Path, np.ndarray]) -> None:
    path, x = source
    ds = make(path)
    batches(ds, 0)
    sums = ds._direct_sums[0]
    right = int(sums.sums["x"][123])
    sums.sums["x"][123] ^= 1
    got = batches(ds, 1)
    assert np.array_equal(np.sort(np.concatenate([b["id"] for b in got])), np.arange(ROWS))
    assert int(sums.sums["x"][123]) == right


def test_a_row_read_otherwise_than_its_checked_unit_is_an_error(source: tuple[Path, np.ndarray],
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A row whose bytes differ from its sum while its unit passes its check (a read that went
    wrong once) is an error naming the column, unit and row, not a served row."""
    path, _ = source
    ds = make(path)
    batches(ds, 0)
    original = direct.pread_summed
    target = int(ds.manifest.unit_start[6]) + 2  # row 2 of unit 6

    def flipping(fn: Any, address: int, fds: np.ndarray, offsets: np.ndarray, sizes: np.ndarray, dst: np.ndarray,
                 at: np.ndarray) -> tuple[int, np.ndarray]:
        failed, sums = original(fn, address, fds, offsets, sizes, dst, at)
        x_file, x_off, _ = column_range(ds.manifest, 6, "x")
        for k, off in enumerate(offsets.tolist()):
            if off == x_off + 2 * 4 * WIDTH and os.path.samefile(f"/proc/self/fd/{int(fds[k])}", x_file):
                dst[int(at[k])] ^= 1
                sums[k] = _kernels.crc_ranges(fn, address, dst, at[k:k + 1], sizes[k:k + 1])[0]
        return failed, sums

    monkeypatch.setattr(direct, "pread_summed", flipping)
    ds.set_epoch(1)
    with pytest.raises(DataError, match=r"column 'x', unit 6, .*: row 2 differs from what the unit held"):
        for b in ds:
            assert target not in b["id"].numpy()


def test_a_file_cut_short_is_an_error_naming_it(copy: Path) -> None:
    ds = make(copy, verify=False)
    batches(ds, 0)
    f, off, size = column_range(ds.manifest, int(ds.manifest.n_units) - 1, "x")
    os.truncate(f, off + size // 2)
    rel = f.relative_to(copy).as_posix()
    # (an Arrow unit's columns share its record batch: the first column cut short is named)
    with pytest.raises(DataError, match=rf"column '\w+', unit \d+, file {rel}: file truncated"):
        batches(ds, 1)


def test_released_sums_make_the_next_epoch_check_its_units_again(source: tuple[Path, np.ndarray],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    path, _ = source
    checked: list[int] = []
    original = direct.DirectRows._check_unit

    def counting(self: Any, unit: int) -> None:
        checked.append(unit)
        original(self, unit)

    monkeypatch.setattr(direct.DirectRows, "_check_unit", counting)
    reader = FORMATS["zarr"].reader_class
    batch = reader.check_units

    def counting_batch(self: Any, units: np.ndarray, pieces: np.ndarray, bufs: Any, sums: Any) -> Any:
        done = batch(self, units, pieces, bufs, sums)  # several units checked in one go (Zarr)
        checked.extend(units.tolist() if done and "x" in bufs else [])  # the direct column's checks
        return done

    monkeypatch.setattr(reader, "check_units", counting_batch)
    ds = make(path)
    batches(ds, 0)
    n_units = int(ds.manifest.n_units)
    assert sorted(checked) == list(range(n_units))  # every unit once in the first epoch
    checked.clear()
    batches(ds, 1)
    assert checked == []  # every row's sum known: no unit read whole
    ds.release_buffers()
    batches(ds, 2)
    assert sorted(checked) == list(range(n_units))


def test_the_units_a_window_checks_are_hinted_whole_before_their_checks(source: tuple[Path, np.ndarray],
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A window whose direct rows' units are not checked yet first hints those whole units of the
    direct columns (one task, queued before the checks: a cold disk reads them in large requests),
    and later epochs, whose sums are known, hint no whole unit."""
    from streambatch.loader.pool import Pool

    events: list[tuple[str, Any]] = []
    submit = Pool.submit

    def recording(self: Any, prio: int, fn: Any, args: Any, where: Any) -> Any:
        events.append((str(where), args))
        return submit(self, prio, fn, args, where)

    monkeypatch.setattr(Pool, "submit", recording)
    ds = make(source[0])
    rows = ds.manifest.unit_rows
    batches(ds, 0)
    hints = [k for k, (w, _) in enumerate(events) if w.startswith("while hinting the units window")]
    checks = [k for k, (w, _) in enumerate(events) if w.startswith("while checking units")]
    assert hints and checks and hints[0] < checks[0]
    table, names = events[hints[0]][1]
    assert names == list(ds.describe()["direct_columns"])
    assert (table[:, 1] == 0).all() and np.array_equal(table[:, 2], rows[table[:, 0]])
    hinted = set(table[:, 0].tolist())
    first_window = [k for k in checks if k > hints[0] and (not hints[1:] or k < hints[1])]
    assert {u for k in first_window for u in events[k][1][0].tolist()} == hinted
    events.clear()
    batches(ds, 1)
    assert not any(w.startswith("while hinting the units window") for w, _ in events)
