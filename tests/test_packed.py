"""Packed token batches from a StreamDataset (``pack=streambatch.Pack(...)``): every token of every
document exactly once per epoch, each document's tokens contiguous and in order with true
positions, across DataLoader workers, ranks and a resume at any batch."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import streambatch
from streambatch import Pack, StreamDataset
from streambatch.errors import StateError

SEQ, BATCH = 64, 4


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[np.ndarray]]:
    root = tmp_path_factory.mktemp("packed")
    rng = np.random.default_rng(5)
    lengths = rng.integers(0, 60, 1200)
    lengths[rng.random(1200) < 0.02] = 700  # documents of many sequences
    docs = [rng.integers(1, 30_000, n, dtype=np.int32) for n in lengths]
    pq.write_table(pa.table({"tokens": pa.array([d.tolist() for d in docs], pa.list_(pa.int32()))}),
                   root / "docs.parquet", row_group_size=300)
    streambatch.convert(root / "docs.parquet", root / "ds", unit_bytes="4KiB", progress=False)
    return root / "ds", docs


def _collect(batches: list[dict[str, torch.Tensor]]) -> dict[int, list[tuple[int, int]]]:
    """Per document id, its (position, token) pairs in the order served; checks shapes and padding."""
    got: dict[int, list[tuple[int, int]]] = {}
    for b in batches:
        tok, pos, doc = (b[k].numpy() for k in ("tokens", "position_ids", "document_ids"))
        assert tok.shape[1] == SEQ and tok.shape == pos.shape == doc.shape and tok.shape[0] <= BATCH
        for t, p, d in zip(tok.reshape(-1).tolist(), pos.reshape(-1).tolist(), doc.reshape(-1).tolist()):
            if d < 0:
                assert t == 0 and p == 0
            else:
                got.setdefault(d, []).append((p, t))
    return got


def _check_exactly_once(got: dict[int, list[tuple[int, int]]], docs: list[np.ndarray]) -> None:
    want = {i for i, d in enumerate(docs) if len(d)}
    assert set(got) == want
    for i, pairs in got.items():  # in order, positions 0.. without a gap: contiguous and complete
        assert pairs == list(enumerate(docs[i].tolist()))


def test_every_token_once_in_order(corpus: tuple[Path, list[np.ndarray]], kernels: str) -> None:
    path, docs = corpus
    ds = StreamDataset(path, batch_size=BATCH, memory_budget="512KiB", pack=Pack("tokens", seq_len=SEQ))
    first = list(ds)
    _check_exactly_once(_collect(first), docs)
    padded = np.concatenate([b["document_ids"].numpy().reshape(-1) for b in first]) < 0
    assert not padded[:-SEQ].any()  # padding only in the last sequence
    ds.set_epoch(1)
    second = list(ds)
    assert not torch.equal(first[0]["document_ids"], second[0]["document_ids"])
    drop = StreamDataset(path, batch_size=BATCH, memory_budget="512KiB", pack=Pack("tokens", seq_len=SEQ),
                         drop_last=True)
    kept = list(drop)
    assert len(kept) == sum(len(d) for d in docs) // (SEQ * BATCH)
    assert all(b["tokens"].shape == (BATCH, SEQ) and (b["document_ids"] >= 0).all() for b in kept)


def test_a_packed_epoch_holds_no_more_than_its_budget(tmp_path: Path) -> None:
    """The budget keeps room for what is held outside its accounting (the documents the packer
    still writes from, the batch the consumer holds); a finished window's buffers are gone before
    the next window's are allocated.  So numpy's buffers, traced from every thread, stay within the
    budget (before: 5.5 MB under 4 MiB)."""
    rng = np.random.default_rng(7)
    lengths = np.minimum(rng.lognormal(np.log(60), 1.2, 12_000).astype(np.int64), 6000)  # 5.8 MB of tokens
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    pq.write_table(pa.table({"tokens": pa.LargeListArray.from_arrays(
        offsets, rng.integers(1, 30_000, int(offsets[-1]), dtype=np.int32))}), tmp_path / "docs.parquet")
    streambatch.convert(tmp_path / "docs.parquet", tmp_path / "ds", unit_bytes="16KiB", progress=False)
    ds = StreamDataset(tmp_path / "ds", batch_size=8, memory_budget="4MiB", pack=Pack("tokens", seq_len=1024))
    for _ in ds:  # the first epoch imports what serving needs: not the loader's memory
        pass
    tokens = 0
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        for b in ds:
            tokens += int((b["document_ids"] >= 0).sum())
        peak = tracemalloc.get_traced_memory()[1] - start
    finally:
        tracemalloc.stop()
    assert tokens == int(offsets[-1])
    assert peak <= ds.memory_budget
    assert ds.last_peak_accounted_bytes <= ds.memory_budget * 3 // 4  # a quarter kept for the rest


@pytest.mark.parametrize("stop", [1, 13, 40])
def test_resume_at_a_batch_serves_exactly_the_rest(corpus: tuple[Path, list[np.ndarray]], stop: int) -> None:
    path, docs = corpus
    whole = list(StreamDataset(path, batch_size=BATCH, memory_budget="512KiB", pack=Pack("tokens", seq_len=SEQ)))
    ds = StreamDataset(path, batch_size=BATCH, memory_budget="512KiB", pack=Pack("tokens", seq_len=SEQ))
    head = []
    for b in ds:
        head.append(b)
        if len(head) == stop:
            break
    state = ds.state_dict()
    again = StreamDataset(path, batch_size=BATCH, memory_budget="512KiB", pack=Pack("tokens", seq_len=SEQ))
    again.load_state_dict(state)
    rest = list(again)
    assert len(head) + len(rest) == len(whole)
    for a, b in zip(head + rest, whole):
        assert all(torch.equal(a[k], b[k]) for k in ("tokens", "position_ids", "document_ids"))
    other = StreamDataset(path, batch_size=BATCH, memory_budget="512KiB", pack=Pack("tokens", seq_len=SEQ),
                          rank=0, world_size=2)  # another layout: the saved plan cannot continue
    with pytest.raises(StateError, match="packed epoch resumes in one process with the memory budget"):
        other.load_state_dict(state)
    older = {**state, "pack": state["pack"][:3]}  # saved before the row batch size was recorded
    with pytest.raises(StateError, match=r"state was saved with pack=\['tokens', 64, 0\]"):
        again.load_state_dict(older)


def test_workers_and_ranks_share_the_documents(corpus: tuple[Path, list[np.ndarray]]) -> None:
    path, docs = corpus
    ds = StreamDataset(path, batch_size=BATCH, memory_budget="1MiB", pack=Pack("tokens", seq_len=SEQ))
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2)
    _check_exactly_once(_collect(list(loader)), docs)
    with pytest.raises(StateError, match="packed batches resume only when served in this process"):
        ds.state_dict(batches=3)
    assert len(docs) % 2 == 0  # ranks' shares are then disjoint and complete (no padding rows)
    got: dict[int, list[tuple[int, int]]] = {}
    for rank in range(2):
        part = StreamDataset(path, batch_size=BATCH, memory_budget="512KiB", pack=Pack("tokens", seq_len=SEQ),
                             rank=rank, world_size=2)
        mine = _collect(list(part))
        assert not set(mine) & set(got)
        got.update(mine)
    _check_exactly_once(got, docs)


def test_pack_options_are_checked(corpus: tuple[Path, list[np.ndarray]]) -> None:
    path, _ = corpus
    with pytest.raises(ValueError, match="pack: 'words' is not a selected column of token lists"):
        StreamDataset(path, pack=Pack("words", seq_len=8))
    with pytest.raises(TypeError, match="pack must be a streambatch.Pack"):
        StreamDataset(path, pack=("tokens", 8))
    with pytest.raises(ValueError, match=r"pad_id \d+ does not fit column .tokens."):
        StreamDataset(path, pack=Pack("tokens", seq_len=8, pad_id=2**40))


def test_a_group_buffer_is_handed_out_again_only_once_nothing_refers_to_it() -> None:
    from streambatch.loader.packed import Recycled

    r = Recycled(2)
    a = r.take(1000)
    first = a.ctypes.data
    a[:] = 1
    batch = torch.from_numpy(a[:16].view(np.int64)).split(1)[1]  # what a batch holds of it
    del a
    b = r.take(1000)
    assert b.ctypes.data != first  # held through the batch: another buffer (kept too)
    second = b.ctypes.data
    del b
    assert r.take(1000).ctypes.data == second  # nothing refers to the second: handed out again
    assert int(batch) == int(np.ones(8, np.uint8).view(np.int64)[0])  # the batch's bytes untouched
    c = r.take(1000)  # the first still held, the second free again (the array above is gone)
    assert c.ctypes.data == second
    del batch
    assert r.take(1000).ctypes.data == first  # the batch is gone: the first is free
    assert r.take(999).ctypes.data not in (first, second)  # another size: a new one


def test_batches_dropped_as_they_are_served_keep_their_tokens(corpus: tuple[Path, list[np.ndarray]]) -> None:
    # a consumer that keeps copies and lets the batches go: their group buffers are written again
    path, docs = corpus
    ds = StreamDataset(path, batch_size=BATCH, memory_budget="512KiB", pack=Pack("tokens", seq_len=SEQ))
    copies = [{k: v.clone() for k, v in b.items()} for b in ds]
    _check_exactly_once(_collect(copies), docs)
