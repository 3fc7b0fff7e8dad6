"""Variable-length columns end to end: token lists, strings and bytes from Parquet files written by
pyarrow, converted (into Parquet and Zarr), verified and served exactly once per epoch (ranks,
DataLoader workers, resume), within the memory budget, as nested tensors, padded tensors, strings
and bytes."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import streambatch
from streambatch import StreamDataset
from streambatch.errors import DataError
from streambatch.storage import load_manifest, read_all, verify_dataset


def _docs(n: int, seed: int, heavy: bool = True) -> tuple[list[np.ndarray], np.ndarray]:
    """``n`` token documents (lengths mostly 0-40, 1% of them 100x the median) and sorted labels."""
    rng = np.random.default_rng(seed)
    lens = rng.integers(0, 40, n)
    if heavy:
        lens[rng.random(n) < 0.01] = 2000
    docs = [rng.integers(0, 50_000, k, dtype=np.int32) for k in lens]
    return docs, np.sort(rng.integers(0, 10, n))


def _write_input(path: Path, docs: list[np.ndarray], labels: np.ndarray) -> None:
    table = pa.table({
        "tokens": pa.array([d.tolist() for d in docs], pa.list_(pa.int32())),
        "text": pa.array([f"doc {i} é" for i in range(len(docs))], pa.string()),
        "blob": pa.array([bytes([i % 256]) * (i % 7) for i in range(len(docs))], pa.binary()),
        "label": pa.array(labels, pa.int64()),
    })
    pq.write_table(table, path, row_group_size=700)


@pytest.fixture(scope="module", params=["parquet", "zarr"])
def varlen(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
           ) -> tuple[Path, list[np.ndarray], np.ndarray]:
    root = tmp_path_factory.mktemp("varlen")
    docs, labels = _docs(3000, 1)
    _write_input(root / "in.parquet", docs, labels)
    fmt = None if request.param == "zarr" else request.param  # Zarr: the default, for ragged inputs too
    streambatch.convert(root / "in.parquet", root / "ds", fmt, label="label", unit_bytes="8KiB", progress=False)
    return root / "ds", docs, labels


def _epoch(ds: StreamDataset, docs: list[np.ndarray], labels: np.ndarray) -> np.ndarray:
    """Serve an epoch, check every row's values against the input; the row ids in order."""
    rows = []
    for b in ds:
        idx = b["_row"].numpy()
        tokens = b["tokens"]
        if not ds.manifest.column("tokens").ragged:  # every document of one length: a fixed-shape column
            assert np.array_equal(tokens.numpy(), np.stack([docs[i] for i in idx]))
        elif ds.collate.get("tokens") == "pad":
            for k, i in enumerate(idx):
                n = int(b["tokens_len"][k])
                assert n == len(docs[i]) and np.array_equal(tokens[k, :n].numpy(), docs[i])
                assert not tokens[k, n:].any()
        else:
            assert tokens.is_nested and tokens.layout == torch.jagged
            for t, i in zip(tokens.unbind(), idx):
                assert np.array_equal(t.numpy(), docs[i])
        assert b["text"] == [f"doc {i} é" for i in idx]
        assert b["blob"] == [bytes([i % 256]) * (i % 7) for i in idx]
        assert np.array_equal(b["label"].numpy(), labels[idx])
        rows.append(idx)
    return np.concatenate(rows)


def test_convert_records_ragged_columns(varlen: tuple[Path, list[np.ndarray], np.ndarray]) -> None:
    path, docs, labels = varlen
    m = load_manifest(path)
    assert m.storage in ("parquet", "zarr")
    assert [(c.name, c.kind, c.dtype) for c in m.columns] == [
        ("tokens", "list", "int32"), ("text", "string", "uint8"), ("blob", "bytes", "uint8"), ("label", "fixed", "int64")]
    lengths = np.array([len(d) for d in docs])
    st_ = m.stats["tokens"]
    assert st_["count"] == len(docs) and st_["lengths"]["max"] == lengths.max()
    assert st_["lengths"]["min"] == lengths.min() and st_["lengths"]["mean"] == pytest.approx(lengths.mean())
    assert st_["lengths"]["p50"] == pytest.approx(np.percentile(lengths, 50), abs=1)
    assert st_["max_row"] == int(lengths.argmax()) and st_["max_row_nbytes"] == 4 * lengths.max()
    units = m.layout["ragged_nbytes"]["tokens"]
    assert units.sum() == 4 * lengths.sum() and m.decoded_nbytes > units.sum()
    data = read_all(m, verify=True)
    assert all(np.array_equal(data["tokens"].row(i), docs[i]) for i in range(len(docs)))
    assert bytes(data["text"].values).decode() == "".join(f"doc {i} é" for i in range(len(docs)))
    verify_dataset(m)
    if m.storage == "zarr":  # tests/test_zarr_ragged.py reads it with zarr-python
        return
    # readable without streambatch: pyarrow sees plain lists and strings
    t = pq.read_table(path / m.files[0])
    assert t.column("tokens").type == pa.large_list(pa.field("element", pa.int32(), nullable=False))
    assert t.column("text")[0].as_py() == "doc 0 é"


@pytest.mark.parametrize("collate", [None, {"tokens": "pad"}])
def test_every_row_exactly_once_each_epoch(varlen: tuple[Path, list[np.ndarray], np.ndarray],
                                           collate: dict[str, str] | None) -> None:
    path, docs, labels = varlen
    # a padded batch holding a 2000-token document is [64, 2000]: 640 KB with its mask, counted in the budget
    budget = "2MiB" if collate else "600KiB"
    ds = StreamDataset(path, batch_size=64, memory_budget=budget, collate=collate, return_index=True)
    orders = []
    for epoch in range(2):
        ds.set_epoch(epoch)
        rows = _epoch(ds, docs, labels)
        assert np.array_equal(np.sort(rows), np.arange(len(docs)))
        assert ds.last_peak_accounted_bytes <= ds.memory_budget
        orders.append(rows)
    assert not np.array_equal(orders[0], orders[1])


def test_ranks_and_resume(varlen: tuple[Path, list[np.ndarray], np.ndarray]) -> None:
    path, docs, labels = varlen
    parts = []
    for rank in range(2):
        ds = StreamDataset(path, batch_size=50, memory_budget="600KiB", rank=rank, world_size=2, return_index=True,
                           drop_last=True)
        parts.append(_epoch(ds, docs, labels))
    assert len(np.intersect1d(parts[0], parts[1])) == 0 and len(parts[0]) == len(parts[1])
    ds = StreamDataset(path, batch_size=50, memory_budget="600KiB", return_index=True)
    it = iter(ds)
    first = np.concatenate([next(it)["_row"].numpy() for _ in range(17)])
    state = ds.state_dict()
    del it
    again = StreamDataset(path, batch_size=50, memory_budget="600KiB", return_index=True)
    again.load_state_dict(state)
    rest = _epoch(again, docs, labels)
    assert np.array_equal(np.sort(np.concatenate([first, rest])), np.arange(len(docs)))


def test_dataloader_workers(varlen: tuple[Path, list[np.ndarray], np.ndarray]) -> None:
    path, docs, labels = varlen
    ds = StreamDataset(path, batch_size=64, memory_budget="1MiB", return_index=True)
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2, persistent_workers=True)
    for epoch in range(2):
        ds.set_epoch(epoch)
        rows = []
        for b in loader:
            for t, i in zip(b["tokens"].unbind(), b["_row"].tolist()):
                assert np.array_equal(t.numpy(), docs[i])
            rows.append(b["_row"].numpy())
        assert np.array_equal(np.sort(np.concatenate(rows)), np.arange(len(docs)))


@pytest.mark.parametrize("fmt", ["parquet", "zarr"])
def test_heavy_rows_stay_in_budget_and_a_huge_row_is_named(tmp_path: Path, fmt: str) -> None:
    docs, labels = _docs(2000, 2)
    docs[1234] = np.arange(300_000, dtype=np.int32)  # 1.2 MB: one row larger than the budget
    _write_input(tmp_path / "in.parquet", docs, labels)
    streambatch.convert(tmp_path / "in.parquet", tmp_path / "ds", fmt, unit_bytes="8KiB", progress=False)
    with pytest.raises(ValueError, match="row 1234 of column 'tokens' holds 1200000 bytes"):
        StreamDataset(tmp_path / "ds", memory_budget="1MiB")
    ds = StreamDataset(tmp_path / "ds", batch_size=32, memory_budget="4MiB", return_index=True, columns=["tokens"])
    seen = [b["_row"].numpy() for b in ds]
    assert np.array_equal(np.sort(np.concatenate(seen)), np.arange(2000))
    assert ds.last_peak_accounted_bytes <= ds.memory_budget


def test_padded_batches_count_their_padding_in_the_budget(tmp_path: Path) -> None:
    # 1% of the documents hold 2000 tokens, the rest 0-40: most padded batches of 64 rows are
    # [64, 2000] int32 (512 KB) where their values take ~13 KB; the batches read ahead must be
    # counted by the padded bytes, or they hold several times the budget
    docs, labels = _docs(3000, 5)
    _write_input(tmp_path / "in.parquet", docs, labels)
    streambatch.convert(tmp_path / "in.parquet", tmp_path / "ds", unit_bytes="8KiB", progress=False)
    ds = StreamDataset(tmp_path / "ds", batch_size=64, memory_budget="2MiB", collate={"tokens": "pad"},
                       columns=["tokens"], return_index=True)
    seen, biggest = [], 0
    tracemalloc.start()  # numpy's (and so these tensors') buffers are traced, from every thread
    try:
        for b in ds:
            biggest = max(biggest, b["tokens"].nbytes)
            seen.append(b["_row"].numpy().copy())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert np.array_equal(np.sort(np.concatenate(seen)), np.arange(len(docs)))
    assert biggest == 64 * 2000 * 4
    # the loader's budget, plus the batch the consumer holds and the one it just dropped
    assert peak <= ds.memory_budget + 2 * biggest + 256 * 1024
    assert ds.last_peak_accounted_bytes <= ds.memory_budget


def test_refusals_name_the_column(tmp_path: Path, varlen: tuple[Path, list[np.ndarray], np.ndarray]) -> None:
    docs, labels = _docs(50, 3)
    _write_input(tmp_path / "in.parquet", docs, labels)
    with pytest.raises(ValueError, match="column 'tokens' holds rows of varying length.*--format parquet or zarr"):
        streambatch.convert(tmp_path / "in.parquet", tmp_path / "z", format="arrow", progress=False)
    with pytest.raises(ValueError, match="--shuffle does not take columns of varying length"):
        streambatch.convert(tmp_path / "in.parquet", tmp_path / "s", shuffle=1, progress=False)
    assert not (tmp_path / "z").exists() and not (tmp_path / "s").exists()
    path = varlen[0]
    with pytest.raises(ValueError, match="collate: 'text' is not a selected column of varying-length numbers"):
        StreamDataset(path, collate={"text": "pad"})
    with pytest.raises(ValueError, match="must be one of nested, pad, list"):
        StreamDataset(path, collate={"tokens": "zip"})
    with pytest.raises(ValueError, match="only fixed-size columns are normalised"):
        StreamDataset(path, normalize=["tokens"])


def test_a_damaged_unit_is_named(tmp_path: Path) -> None:
    docs, labels = _docs(400, 4, heavy=False)
    _write_input(tmp_path / "in.parquet", docs, labels)
    m = streambatch.convert(tmp_path / "in.parquet", tmp_path / "ds", "parquet", unit_bytes="4KiB", progress=False)
    unit = 3  # (Zarr: tests/test_zarr_ragged.py)
    f = tmp_path / "ds" / m.files[int(m.layout["file"][unit])]
    raw = bytearray(f.read_bytes())
    raw[int(m.layout["offset"][unit]) + 40] ^= 0xFF
    f.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=f"unit {unit}"):
        for _ in StreamDataset(tmp_path / "ds", batch_size=16, memory_budget="256KiB"):
            pass


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(1, 400), top=st.sampled_from([0, 1, 5, 300]), batch=st.integers(1, 70),
       seed=st.integers(0, 2**16), unit=st.sampled_from(["512B", "4KiB"]),
       fmt=st.sampled_from(["parquet", "zarr"]), codec=st.sampled_from(["none", "zstd"]))
def test_exactly_once_property(tmp_path_factory: pytest.TempPathFactory, n: int, top: int, batch: int, seed: int,
                               unit: str, fmt: str, codec: str) -> None:
    root = tmp_path_factory.mktemp("prop")
    rng = np.random.default_rng(seed)
    docs = [rng.integers(0, 9, rng.integers(0, top + 1), dtype=np.int32) for _ in range(n)]
    _write_input(root / "in.parquet", docs, np.zeros(n, np.int64))
    streambatch.convert(root / "in.parquet", root / "ds", fmt, unit_bytes=unit, codec=codec, progress=False)
    ds = StreamDataset(root / "ds", batch_size=batch, memory_budget="2MiB", return_index=True, seed=seed)
    rows = _epoch(ds, docs, np.zeros(n, np.int64))
    assert np.array_equal(np.sort(rows), np.arange(n))


def test_elastic_resume_under_two_ranks(varlen: tuple[Path, list[np.ndarray], np.ndarray]) -> None:
    path, docs, labels = varlen
    ds = StreamDataset(path, batch_size=40, memory_budget="600KiB", return_index=True)
    it = iter(ds)
    head = np.concatenate([next(it)["_row"].numpy() for _ in range(23)])
    state = ds.state_dict()
    del it
    rest = []
    for rank in range(2):
        part = StreamDataset(path, batch_size=40, memory_budget="600KiB", return_index=True, rank=rank,
                             world_size=2)
        part.load_state_dict(state)
        rest.append(_epoch(part, docs, labels))
    served = np.concatenate([head, *rest])
    assert set(served.tolist()) == set(range(len(docs)))  # every row; the ranks' padding may repeat a few
    assert len(served) - len(docs) < 2


def test_ragged_inputs_get_small_units_by_default(tmp_path: Path) -> None:
    docs, labels = _docs(3000, 6, heavy=False)
    _write_input(tmp_path / "in.parquet", docs, labels)
    m = streambatch.convert(tmp_path / "in.parquet", tmp_path / "ds", progress=False)
    per_row = m.decoded_nbytes / m.rows
    # 64 KiB units (load-time pieces do not split them), not the 256 KiB of fixed-size rows
    assert 0.5 * 65536 < int(m.unit_rows[0]) * per_row < 2 * 65536


def test_batches_in_flight_count_once_against_the_share_kept_for_batches(
        varlen: tuple[Path, list[np.ndarray], np.ndarray]) -> None:
    """A ragged window is read ahead when it fits beside the window being served and the share
    of the budget kept for batches ahead; batches already assembled count towards that share, not
    on top of it (counted twice, a window read ahead had waited while the batches it could have
    sat beside were in flight: 0.54 s of a packed 1 GB epoch, docs/PERFORMANCE.md)."""
    from collections import deque

    from streambatch.loader.prefetch import Prefetcher
    from streambatch.storage import open_reader

    ds = StreamDataset(varlen[0], batch_size=8, memory_budget="1MiB")
    reader = open_reader(ds.manifest)
    pf = Prefetcher(reader, ds.plan(), ds.columns, ds.manifest.unit_start, threads=1, budget_bytes=1 << 40,
                    batches_ahead=4)
    try:
        held = deque([pf._start_window(0)])
        assert pf._window_fits(1, deque())  # alone, it fits: its bytes are now known
        need, reserve = pf._window_need[1], pf.batches_ahead * pf.batch_nbytes
        pf.budget_bytes = held[0].nbytes + need + reserve  # the two windows and the share, exactly
        assert pf._window_fits(1, held)
        pf._acquire(reserve // 2)  # batches assembled from window 0: inside the share
        assert pf._window_fits(1, held)
        pf._acquire(reserve // 2 + 1)  # more than the share in flight: no room for window 1 yet
        assert not pf._window_fits(1, held)
    finally:
        pf.close()
        reader.close()


def test_a_padded_batch_holding_the_longest_row_fits_beside_the_windows(tmp_path: Path) -> None:
    """With ``collate="pad"``, the windows leave room for a batch padded to the longest row (the
    manifest's statistics): such a batch is served, not refused mid-epoch, and a budget too small
    for it is refused before anything is read, saying what a padded batch may hold."""
    docs, labels = _docs(4000, 9)
    docs[1234] = np.arange(20_000, dtype=np.int32)  # 80 kB: a padded batch of 64 rows holding it is 6.4 MB
    _write_input(tmp_path / "in.parquet", docs, labels)
    streambatch.convert(tmp_path / "in.parquet", tmp_path / "ds", unit_bytes="8KiB", progress=False)
    for seed in (0, 1):  # at 9 MiB the windows used to leave 6.4 MB free: these orders were refused mid-epoch
        ds = StreamDataset(tmp_path / "ds", batch_size=64, memory_budget="9MiB", collate={"tokens": "pad"},
                           columns=["tokens"], return_index=True, seed=seed)
        seen, widest = [], 0
        for b in ds:
            widest = max(widest, b["tokens"].shape[1])
            seen.append(b["_row"].numpy())
        assert widest == 20_000
        assert np.array_equal(np.sort(np.concatenate(seen)), np.arange(len(docs)))
        assert ds.last_peak_accounted_bytes <= ds.memory_budget
    with pytest.raises(ValueError, match=r"8388608 bytes is too small .*padded to the longest row, a batch may "
                                         r"hold 6400000 bytes"):
        StreamDataset(tmp_path / "ds", batch_size=64, memory_budget="8MiB", collate={"tokens": "pad"},
                      columns=["tokens"])


def test_windows_are_sized_so_that_two_fit_beside_each_other(varlen: tuple[Path, list[np.ndarray], np.ndarray],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A ragged window holds the bytes of the units it draws, which vary around its rows' share
    (heavy tails: 1% of rows 50x the median).  Windows are sized below that share by
    ``WINDOW_SPREAD_SDS`` standard deviations of a window's bytes, so that the next window fits
    beside the one being served and is read meanwhile (sized at the share, about half the pairs
    did not, and the consumer waited for each such window's reads: docs/PERFORMANCE.md)."""
    from streambatch.loader import sizing
    from streambatch.loader.rows import window_nbytes

    def pairs_fitting(ds: StreamDataset) -> float:
        lay, plan = ds._sizing().layout(0), ds.plan()
        room = lay.budget - lay.outside - lay.ahead * ds.batch_size * ds.row_nbytes
        need = [window_nbytes(ds.manifest, ds.columns, plan.window_table(j)[0], plan.window_rows)
                for j in plan.windows.tolist()]
        assert len(need) > 20
        return float(np.mean([a + b <= room for a, b in zip(need, need[1:])]))

    path = varlen[0]
    spread = pairs_fitting(StreamDataset(path, batch_size=8, memory_budget="96KiB", columns=["tokens"]))
    monkeypatch.setattr(sizing, "WINDOW_SPREAD_SDS", 0.0)
    at_share = pairs_fitting(StreamDataset(path, batch_size=8, memory_budget="96KiB", columns=["tokens"]))
    assert spread >= 0.95 and at_share < 0.9


def test_a_budget_too_small_is_refused_with_the_least_budget_that_fits(
        varlen: tuple[Path, list[np.ndarray], np.ndarray]) -> None:
    """The refusal of a budget too small for two windows of a batch names the least budget that
    is taken (with ragged columns the room kept outside the accounting grows with the budget:
    the advice used to be computed at the refused budget, and could be below it)."""
    import re

    path = varlen[0]
    for asked in (20_000, 48 << 10):
        with pytest.raises(ValueError, match=f"memory_budget {asked} bytes is too small") as e:
            StreamDataset(path, batch_size=8, memory_budget=asked, columns=["tokens"])
        least = int(re.search(r"give at least (\d+) bytes", str(e.value)).group(1))
        assert least > asked
        StreamDataset(path, batch_size=8, memory_budget=least, columns=["tokens"])  # taken
        with pytest.raises(ValueError, match="too small"):
            StreamDataset(path, batch_size=8, memory_budget=least - 1, columns=["tokens"])
