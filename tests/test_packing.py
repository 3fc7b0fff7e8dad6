"""Token packing (``streambatch.packing``): documents in stream order packed into fixed-length sequences."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from streambatch.errors import StateError
from streambatch.packing import Pack, Packer, batch_nbytes, batch_views
from streambatch.ragged import Ragged, RowSlices

PAD = 7  # also a real token: documents draw tokens from 0..9
Batch = dict[str, np.ndarray]


def _docs(lengths: list[int], seed: int) -> tuple[Ragged, np.ndarray]:
    """Documents of these lengths (tokens 0..9, so PAD occurs) and distinct shuffled row ids."""
    rng = np.random.default_rng(seed)
    docs = Ragged.from_rows([rng.integers(0, 10, n, dtype=np.int32) for n in lengths], np.int32)
    return docs, rng.permutation(10 * len(lengths) + 1)[:len(lengths)].astype(np.int64) + 100


def _run(p: Packer, docs: Ragged, rows: np.ndarray, cuts: list[int]) -> tuple[list[Batch], list[dict[str, Any]]]:
    """Feed ``docs`` in chunks cut at ``cuts``; every batch and the state after each."""
    out: list[Batch] = []
    states: list[dict[str, Any]] = []
    bounds = [0, *sorted(c for c in set(cuts) if 0 < c < len(docs)), len(docs)]
    for a, b in zip(bounds, bounds[1:]):
        p.feed(docs[a:b], rows[a:b])  # a slice: offsets do not start at 0
        for batch in p.batches():
            out.append(batch)
            states.append(json.loads(json.dumps(p.state())))
    p.finish()
    for batch in p.batches():
        out.append(batch)
        states.append(json.loads(json.dumps(p.state())))
    return out, states


def _reference(docs: Ragged, rows: np.ndarray, seq_len: int, batch: int, drop_last: bool) -> list[Batch]:
    """The packing, token by token in plain Python."""
    tok = [int(t) for i in range(len(docs)) for t in docs.row(i)]
    pos = [j for i in range(len(docs)) for j in range(len(docs.row(i)))]
    doc = [int(rows[i]) for i in range(len(docs)) for _ in docs.row(i)]
    per = seq_len * batch
    n = len(tok) // per * per if drop_last else len(tok)
    out = []
    for a in range(0, n, per):
        t, p, d = tok[a:a + per], pos[a:a + per], doc[a:a + per]
        pad = -len(t) % seq_len
        t, p, d = t + [PAD] * pad, p + [0] * pad, d + [-1] * pad
        shape = (len(t) // seq_len, seq_len)
        out.append({"tokens": np.array(t, np.int32).reshape(shape), "position_ids": np.array(p).reshape(shape),
                    "document_ids": np.array(d).reshape(shape)})
    return out


def _same(a: list[Batch], b: list[Batch]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        for k in ("tokens", "position_ids", "document_ids"):
            assert x[k].dtype == y[k].dtype and np.array_equal(x[k], y[k]), k


lengths_st = st.lists(st.one_of(st.integers(0, 12), st.integers(0, 80)), max_size=40)
shape_st = st.tuples(st.integers(1, 9), st.integers(1, 4))  # seq_len, batch_size


@settings(max_examples=150, deadline=None)
@given(lengths_st, shape_st, st.lists(st.integers(0, 40), max_size=8), st.booleans(), st.integers(0, 99))
def test_packing_matches_a_token_by_token_reference(lengths, shape, cuts, drop_last, seed) -> None:
    docs, rows = _docs(lengths, seed)
    seq_len, batch = shape
    got, _ = _run(Packer(seq_len, batch, pad_id=PAD, drop_last=drop_last), docs, rows, cuts)
    _same(got, _reference(docs, rows, seq_len, batch, drop_last))


@settings(max_examples=150, deadline=None)
@given(lengths_st, shape_st, st.lists(st.integers(0, 40), max_size=8), st.integers(0, 99))
def test_every_token_once_contiguous_in_order_with_true_positions(lengths, shape, cuts, seed) -> None:
    docs, rows = _docs(lengths, seed)
    seq_len, batch = shape
    got, _ = _run(Packer(seq_len, batch, pad_id=PAD), docs, rows, cuts)
    seqs = [(s["tokens"][i], s["position_ids"][i], s["document_ids"][i]) for s in got for i in range(len(s["tokens"]))]
    assert all(len(s["tokens"]) == batch for s in got[:-1])  # only the last batch may be short
    delivered: dict[int, list[int]] = {}
    spans: dict[int, list[int]] = {}
    for k, (t, p, d) in enumerate(seqs):
        real = d >= 0
        if not real.all():  # padding: only at the end of the very last sequence
            assert k == len(seqs) - 1 and not real[real.argmin():].any()
            assert (t[~real] == PAD).all() and (p[~real] == 0).all()
        ids = d[real]
        change = np.flatnonzero(np.diff(ids)) + 1
        runs = np.split(np.arange(ids.size), change)
        assert len({int(ids[r[0]]) for r in runs}) == len(runs)  # each document contiguous in a sequence
        for r in runs:
            doc = int(ids[r[0]])
            assert np.array_equal(p[r], np.arange(p[r[0]], p[r[0]] + r.size))  # counting up by one
            assert p[r[0]] == len(delivered.get(doc, []))  # true position in the document
            delivered.setdefault(doc, []).extend(t[r].tolist())
            spans.setdefault(doc, []).append(k)
    expect = {int(rows[i]): docs.row(i).tolist() for i in range(len(docs)) if len(docs.row(i))}
    assert delivered == expect  # every token exactly once, in order
    assert all(s == list(range(s[0], s[0] + len(s))) for s in spans.values())  # consecutive sequences


@settings(max_examples=100, deadline=None)
@given(lengths_st, shape_st, st.lists(st.integers(0, 40), max_size=8), st.lists(st.integers(0, 40), max_size=20),
       st.integers(0, 99))
@example([0, 1, 0, 1], (1, 3), [], [2], 0)  # empty documents at the head of a later chunk (found by CI)
def test_how_the_stream_is_chunked_does_not_change_the_output(lengths, shape, cuts_a, cuts_b, seed) -> None:
    docs, rows = _docs(lengths, seed)
    a, states_a = _run(Packer(*shape, pad_id=PAD), docs, rows, cuts_a)
    b, states_b = _run(Packer(*shape, pad_id=PAD), docs, rows, cuts_b)
    _same(a, b)
    assert states_a == states_b


def _scattered(docs: Ragged, seed: int) -> RowSlices:
    """The same documents as slices of a larger buffer, in a shuffled order with gaps between them
    (as a window holds them): what a packed stream's row batches are."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(docs))
    values = np.full(int(docs.offsets[-1]) + 5 * len(docs) + 5, -1, np.int32)
    starts = np.zeros(len(docs), np.int64)
    at = int(rng.integers(0, 5))
    for i in order.tolist():
        row = docs.row(i)
        starts[i] = at
        values[at:at + len(row)] = row
        at += len(row) + int(rng.integers(0, 5))
    return RowSlices(values, starts, starts + docs.lengths)


@settings(max_examples=100, deadline=None)
@given(lengths_st, shape_st, st.lists(st.integers(0, 40), max_size=8), st.booleans(), st.integers(0, 99))
def test_documents_fed_as_slices_of_a_window_pack_as_copies_do(lengths, shape, cuts, drop_last, seed) -> None:
    docs, rows = _docs(lengths, seed)
    want, want_states = _run(Packer(*shape, pad_id=PAD, drop_last=drop_last), docs, rows, cuts)
    slices = _scattered(docs, seed)
    p = Packer(*shape, pad_id=PAD, drop_last=drop_last)
    got, states = [], []
    bounds = [0, *sorted(c for c in set(cuts) if 0 < c < len(docs)), len(docs)]
    for a, b in zip(bounds, bounds[1:]):
        p.feed(slices[a:b], rows[a:b])
        while rows_ready := p.rows_ready():
            out = batch_views(np.empty(batch_nbytes(rows_ready, shape[0], np.int32), np.uint8), rows_ready, shape[0],
                              np.int32)
            p.write_batch(out)
            got.append(out)
            states.append(p.state())
        p.detach()
        slices.values[:] = -2  # the window's buffer reused: what the packer kept must be its own copy
        slices = _scattered(docs, seed)
    p.finish()
    got += list(p.batches())
    _same(got, want)
    assert states == want_states[:len(states)]


@settings(max_examples=60, deadline=None)
@given(lengths_st, shape_st, st.lists(st.integers(0, 40), max_size=6), st.booleans(), st.integers(0, 99))
def test_a_state_at_every_batch_boundary_resumes_exactly_the_rest(lengths, shape, cuts, drop_last, seed) -> None:
    docs, rows = _docs(lengths, seed)
    whole, states = _run(Packer(*shape, pad_id=PAD, drop_last=drop_last), docs, rows, cuts)
    for i, state in enumerate(states):
        assert state["batches"] == i + 1
        k = state["index"]
        assert state["row"] == (int(rows[k]) if state["done"] else None)
        assert 0 <= state["done"] < (len(docs.row(k)) if state["done"] else 1)
        resumed = Packer(*shape, pad_id=PAD, drop_last=drop_last, start=state)
        rest, _ = _run(resumed, docs[k:], rows[k:], [c - k for c in cuts])
        _same(rest, whole[i + 1:])


@settings(max_examples=60, deadline=None)
@given(lengths_st, shape_st, st.lists(st.integers(0, 40), max_size=6), st.integers(1, 5), st.integers(0, 99))
def test_batches_written_in_groups_equal_batches_written_one_by_one(lengths, shape, cuts, group, seed) -> None:
    """``write_batches(out, n)`` (what the loader does for small batches) writes the tokens and
    gives the states that ``n`` calls of ``write_batch`` do, whatever the chunking."""
    docs, rows = _docs(lengths, seed)
    whole, states = _run(Packer(*shape, pad_id=PAD), docs, rows, cuts)
    p, got, got_states = Packer(*shape, pad_id=PAD), [], []
    bounds = [0, *sorted(c for c in set(cuts) if 0 < c < len(docs)), len(docs)]
    for a, b in zip(bounds, bounds[1:]):
        p.feed(docs[a:b], rows[a:b])
        while (n := min(group, p.full_batches())) > 0:
            big = batch_views(np.empty(n * batch_nbytes(shape[1], shape[0], np.int32), np.uint8),
                              n * shape[1], shape[0], np.int32)
            got_states += p.write_batches(big, n)
            got += [{k: v[i * shape[1]:(i + 1) * shape[1]] for k, v in big.items()} for i in range(n)]
            assert p.state() == got_states[-1]
    with pytest.raises(ValueError, match="full batches asked"):
        p.write_batches(big if got else {}, p.full_batches() + 1)
    p.finish()
    for batch in p.batches():
        got.append(batch)
        got_states.append(p.state())
    _same(got, whole)
    assert got_states == states


def test_drop_last_drops_only_what_follows_the_last_full_batch() -> None:
    docs, rows = _docs([5, 40, 0, 3, 17, 2], 1)  # 67 tokens; batches of 2 x 8 = 16
    kept, _ = _run(Packer(8, 2, pad_id=PAD, drop_last=True), docs, rows, [2, 3])
    full, _ = _run(Packer(8, 2, pad_id=PAD), docs, rows, [])
    assert len(kept) == 4 and all(b["tokens"].shape == (2, 8) and (b["document_ids"] >= 0).all() for b in kept)
    _same(kept, full[:4])
    assert full[-1]["tokens"].shape == (1, 8) and (full[-1]["document_ids"][0] >= 0).sum() == 3


def test_a_document_of_many_sequences_spans_them_in_order_across_batches() -> None:
    docs, rows = _docs([3, 1000, 2], 2)
    got, states = _run(Packer(16, 3, pad_id=PAD), docs, rows, [])
    d = np.concatenate([b["document_ids"].reshape(-1) for b in got])
    p = np.concatenate([b["position_ids"].reshape(-1) for b in got])
    assert np.array_equal(d[3:1003], np.full(1000, rows[1])) and np.array_equal(p[3:1003], np.arange(1000))
    assert states[0] == {"index": 1, "row": int(rows[1]), "done": 45, "batches": 1}
    assert np.array_equal(np.concatenate([b["tokens"].reshape(-1) for b in got])[3:1003], docs.row(1))


@pytest.mark.parametrize("lengths", [[], [0], [0, 0, 0], [1] * 10])
def test_empty_streams_empty_documents_and_seq_len_1(lengths: list[int]) -> None:
    docs, rows = _docs(lengths, 3)
    got, states = _run(Packer(1, 4, pad_id=PAD), docs, rows, [1, 2])
    _same(got, _reference(docs, rows, 1, 4, False))
    assert sum(b["tokens"].size for b in got) == sum(lengths)
    p = Packer(1, 4)
    _run(p, docs, rows, [])
    assert p.state() == {"index": len(lengths) if sum(lengths) else 0, "row": None, "done": 0, "batches": len(got)}


def test_write_batch_fills_one_given_buffer_and_fed_buffers_may_be_reused_after_batches() -> None:
    docs, rows = _docs([30, 7, 50, 2, 11], 4)
    expect, _ = _run(Packer(8, 2, pad_id=PAD), docs, rows, [])
    p = Packer(8, 2, pad_id=PAD)
    values = docs.values.copy()
    p.feed(Ragged(values, docs.offsets), rows)
    buf = np.zeros(batch_nbytes(2, 8, np.int32) + 8, np.uint8)
    out = batch_views(buf[8:], 2, 8, np.int32)
    got = []
    while n := p.write_batch(out):
        got.append({k: v[:n].copy() for k, v in out.items()})
        if len(got) == 3:
            break
    assert all(np.shares_memory(v, buf) for v in out.values())
    rest = list(p.batches())  # exhausted: the packer copies what it still needs
    values[:] = -1  # the caller reuses its buffer
    p.finish()
    _same(got + rest + list(p.batches()), expect)
    assert len(got + rest) == 6 and (buf[:8] == 0).all()


def test_bad_arguments_states_and_inputs_get_one_line_errors() -> None:
    for kwargs, err, match in [({"column": "", "seq_len": 8}, ValueError, "column is empty"),
                               ({"column": 3, "seq_len": 8}, TypeError, "column name"),
                               ({"column": "t", "seq_len": 0}, ValueError, "seq_len must be >= 1"),
                               ({"column": "t", "seq_len": 2.5}, TypeError, "seq_len must be an integer"),
                               ({"column": "t", "seq_len": True}, TypeError, "seq_len must be an integer"),
                               ({"column": "t", "seq_len": 8, "pad_id": None}, TypeError, "pad_id")]:
        with pytest.raises(err, match=match):
            Pack(**kwargs)
    pack = Pack("tokens", seq_len=np.int64(4), pad_id=-1)
    assert pack.seq_len == 4 and type(pack.seq_len) is int
    with pytest.raises(ValueError, match="pad_id -1 does not fit column 'tokens' of dtype uint16"):
        pack.packer(2, np.uint16)
    with pytest.raises(ValueError, match="not numbers"):
        pack.check_dtype("U4")
    docs, rows = _docs([5, 6, 7], 5)
    p = pack.packer(2, np.int32)
    with pytest.raises(TypeError, match="dtype int64, the packer packs int32"):
        p.feed(Ragged(docs.values.astype(np.int64), docs.offsets), rows)
    with pytest.raises(ValueError, match="3 documents need 3 integer row ids"):
        p.feed(docs, rows[:2])
    p.feed(docs, rows)
    with pytest.raises(ValueError, match="lacks 'document_ids'"):
        p.write_batch({"tokens": np.zeros((2, 4), np.int32), "position_ids": np.zeros((2, 4), np.int64)})
    with pytest.raises(ValueError, match=r"'tokens' must be a C-contiguous int32 array of at least 2 x 4 items, got int32 \(2, 3\)"):
        p.write_batch({k: np.zeros((2, 3), np.int32 if k == "tokens" else np.int64) for k in ("tokens", "position_ids", "document_ids")})
    p.finish()
    with pytest.raises(ValueError, match="after finish"):
        p.feed(docs, rows)


def test_a_resume_state_that_does_not_fit_the_stream_is_refused() -> None:
    docs, rows = _docs([5, 6, 7], 6)
    start = {"index": 1, "row": int(rows[1]), "done": 2, "batches": 1}
    with pytest.raises(StateError, match=f"expected row {rows[1]} at position 1 of the stream, the loader fed row {rows[2]}"):
        Packer(4, 1, start=start).feed(docs[2:], rows[2:])
    with pytest.raises(StateError, match=f"row {rows[1]} has 6 tokens, the state says 6 were delivered"):
        Packer(4, 1, start={**start, "done": 6}).feed(docs[1:], rows[1:])
    for bad in [{"index": 1}, {**start, "done": -1}, {**start, "row": "x"}, {**start, "row": None}, [1, 2]]:
        with pytest.raises(StateError, match="packing resume state"):
            Packer(4, 1, start=bad)  # type: ignore[arg-type]
    p = Packer(4, 1, start=start)
    assert p.state() == start  # nothing fed yet: the same position
