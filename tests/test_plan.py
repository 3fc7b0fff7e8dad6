"""Property tests of the pure planner: permutations, disjoint covering shares, determinism."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streambatch.plan import (
    Phase,
    EpochPlan,
    next_worker,
    plan_epoch,
    split_consumed,
    split_units,
    window_rows_for,
    worker_batch_counts,
)
from streambatch._pieces import storage_order
from streambatch.quality import design_effect, epoch_pair, global_order


def served(plan: EpochPlan, unit_rows: np.ndarray) -> list[np.ndarray]:
    """The global row ids of each batch a plan serves, in order (windows of this worker)."""
    starts = np.concatenate([[0], np.cumsum(unit_rows)[:-1]])
    out = []
    for j in plan.windows.tolist():
        rows = plan.window_row_ids(j, starts)
        assert rows.size == plan.window_size(j)
        order = rows[plan.window_perm(j)]
        bs = plan.batch_size
        for b in range(plan.window_batches(j)):
            out.append(order[b * bs:(b + 1) * bs])
    return out


def dataloader_order(per_worker: list[list[np.ndarray]]) -> list[np.ndarray]:
    """Round-robin over workers, skipping exhausted ones: what a DataLoader yields."""
    out, i = [], 0
    while any(i < len(w) for w in per_worker):
        out.extend(w[i] for w in per_worker if i < len(w))
        i += 1
    return out


unit_sizes = st.lists(st.integers(1, 40), min_size=1, max_size=40)


@settings(max_examples=150, deadline=None)
@given(sizes=unit_sizes, batch=st.integers(1, 17), win=st.integers(1, 120), world=st.integers(1, 4),
       workers=st.integers(1, 3), seed=st.integers(0, 2**32), epoch=st.integers(0, 5), drop_last=st.booleans(),
       shuffle=st.booleans(), piece=st.integers(0, 12))
def test_every_share_is_a_permutation_and_ranks_cover_the_data(sizes, batch, win, world, workers, seed, epoch,
                                                               drop_last, shuffle, piece):
    """For units cut into pieces of any size too (``piece_rows``; 0: whole units)."""
    ur = np.asarray(sizes, np.int64)
    n = int(ur.sum())
    if drop_last and n < world:
        with pytest.raises(ValueError):
            plan_epoch(ur, seed=seed, epoch=epoch, batch_size=batch, window_rows=win, world_size=world,
                       drop_last=True)
        return
    per_rank = []
    counts = []
    for r in range(world):
        worker_batches = []
        for w in range(workers):
            p = plan_epoch(ur, seed=seed, epoch=epoch, batch_size=batch, window_rows=win, rank=r,
                           world_size=world, worker=w, num_workers=workers, shuffle=shuffle, drop_last=drop_last,
                           piece_rows=piece)
            worker_batches.append(served(p, ur))
            if piece:  # no piece is longer than asked, and none crosses a unit (plan pieces are unit rows)
                lengths = p.pieces.lengths()
                assert (p.pieces.hi <= ur[p.pieces.unit]).all() and (p.pieces.lo >= 0).all()
                assert (lengths >= 1).all()
            assert len(worker_batches[-1]) == p.n_batches
        rank_rows = np.concatenate([b for wb in worker_batches for b in wb]) if any(worker_batches) else np.array([])
        per_rank.append(rank_rows)
        counts.append(sum(len(wb) for wb in worker_batches))
        # Every worker's batches are full except at most one short batch per rank.
        sizes_served = [len(b) for wb in worker_batches for b in wb]
        assert sum(s != batch for s in sizes_served) <= (0 if drop_last else 1)
    # The same number of batches on every rank, and it does not depend on the worker count.
    assert len(set(counts)) == 1
    one = plan_epoch(ur, seed=seed, epoch=epoch, batch_size=batch, window_rows=win, world_size=world,
                     shuffle=shuffle, drop_last=drop_last, piece_rows=piece)
    assert counts[0] == one.n_batches
    allrows = np.concatenate(per_rank).astype(np.int64)
    if drop_last:
        # No row twice; dropped rows are fewer than world*batch + world.
        assert np.unique(allrows).size == allrows.size
        assert n - allrows.size < world * batch + world
    else:
        # Every row at least once; duplicates only from wrap padding (fewer than world).
        assert set(allrows.tolist()) == set(range(n))
        assert allrows.size - n < world
        if world == 1:
            assert np.array_equal(np.sort(allrows), np.arange(n))


@settings(max_examples=60, deadline=None)
@given(sizes=unit_sizes, batch=st.integers(1, 9), win=st.integers(1, 60), seed=st.integers(0, 1000),
       epoch=st.integers(0, 1000), workers=st.integers(1, 3), piece=st.integers(0, 8))
def test_plan_is_deterministic_and_a_function_of_seed_and_epoch(sizes, batch, win, seed, epoch, workers, piece):
    ur = np.asarray(sizes, np.int64)
    kw = dict(batch_size=batch, window_rows=win, num_workers=workers, piece_rows=piece)
    a = [served(plan_epoch(ur, seed=seed, epoch=epoch, worker=w, **kw), ur) for w in range(workers)]
    b = [served(plan_epoch(ur, seed=seed, epoch=epoch, worker=w, **kw), ur) for w in range(workers)]
    for x, y in zip(dataloader_order(a), dataloader_order(b)):
        assert np.array_equal(x, y)


def test_seed_and_epoch_are_not_interchangeable():
    ur = np.full(200, 50, np.int64)
    kw = dict(batch_size=32, window_rows=2048)
    a = np.concatenate(served(plan_epoch(ur, seed=0, epoch=1, **kw), ur))
    b = np.concatenate(served(plan_epoch(ur, seed=1, epoch=0, **kw), ur))
    assert not np.array_equal(a, b)


def test_epochs_differ_by_the_shuffle_md_thresholds():
    ur = np.full(1000, 100, np.int64)  # N = 100k, M = 1000
    n, m, b = 100_000, 1000, 256
    kw = dict(seed=3, batch_size=b, window_rows=256 * 40)
    e0 = np.concatenate(served(plan_epoch(ur, epoch=0, **kw), ur))
    e1 = np.concatenate(served(plan_epoch(ur, epoch=1, **kw), ur))
    pair = epoch_pair(e0, e1, b)
    assert abs(pair["epoch_spearman"]) < 4 / np.sqrt(m - 1)
    k_rows = 256 * 40
    assert pair["cobatch_recur"] < 2 * (b - 1) / (min(k_rows, n) - 1)
    assert abs(global_order(e0)["spearman"]) < 4 / np.sqrt(m - 1)


def test_window_mixing_matches_the_tumbling_window_bound():
    # s-bar within [0.95, 1.10] x (C-1)/(KC-1) for K <= M/2 (SHUFFLE.md correctness checks).
    c, m, k, b = 100, 800, 40, 100
    ur = np.full(m, c, np.int64)
    order = np.concatenate(served(plan_epoch(ur, seed=1, epoch=0, batch_size=b, window_rows=k * c, ramp=0), ur))
    s = design_effect(order, ur, b)["s_mean"]
    ideal = (c - 1) / (k * c - 1)
    assert 0.95 * ideal <= s <= 1.10 * ideal


def test_no_shuffle_serves_storage_order():
    ur = np.array([3, 5, 2, 7], np.int64)
    p = plan_epoch(ur, seed=0, epoch=0, batch_size=4, window_rows=8, shuffle=False)
    assert np.array_equal(np.concatenate(served(p, ur)), np.arange(17))


def test_plan_memory_is_o_units_not_o_rows():
    ur = np.full(1000, 1_000_000, np.int64)  # 10^9 rows
    p = plan_epoch(ur, seed=0, epoch=0, batch_size=256, window_rows=256 * 4000)
    pc = p.pieces
    arrays = [pc.unit, pc.lo, pc.hi, pc.keep_ptr, pc.keep, pc.pad, p.win_seg, p.win_start, p.windows]
    assert sum(a.nbytes for a in arrays) < 200 * 1000 * 8


@settings(max_examples=80, deadline=None)
@given(counts=st.lists(st.integers(0, 12), min_size=1, max_size=5), data=st.data())
def test_split_consumed_replays_round_robin(counts, data):
    consumed = data.draw(st.integers(0, sum(counts)))
    seq = dataloader_order([[np.array([w])] * c for w, c in enumerate(counts)])
    expect = [0] * len(counts)
    for x in seq[:consumed]:
        expect[int(x[0])] += 1
    assert split_consumed(counts, consumed) == expect
    if consumed < len(seq):
        # Rotating the workers so the next one becomes worker 0 continues the same order.
        s = next_worker(counts, consumed)
        assert int(seq[consumed][0]) == s
        taken = split_consumed(counts, consumed)
        rotated = [(s + i) % len(counts) for i in range(len(counts))]
        rest = dataloader_order([[np.array([w])] * (counts[w] - taken[w]) for w in rotated])
        assert [int(x[0]) for x in rest] == [int(x[0]) for x in seq[consumed:]]


def test_worker_batch_counts_sum_to_the_rank_total():
    ur = np.full(37, 29, np.int64)
    p = plan_epoch(ur, seed=0, epoch=0, batch_size=16, window_rows=64, num_workers=3)
    assert sum(worker_batch_counts(p)) == plan_epoch(ur, seed=0, epoch=0, batch_size=16, window_rows=64).n_batches


def test_window_rows_is_a_whole_number_of_batches_within_the_bytes():
    assert window_rows_for(10_000, 10, 64, 10**6) == 960
    assert window_rows_for(10, 10, 64, 10**6) == 64  # at least one batch
    assert window_rows_for(10**9, 10, 64, 1000) == 1024  # never more than the data (rounded up)


@pytest.mark.parametrize("kwargs", [dict(batch_size=0), dict(rank=2, world_size=2), dict(worker=1, num_workers=1),
                                    dict(seed=-1)])
def test_bad_arguments_raise(kwargs):
    base = dict(seed=0, epoch=0, batch_size=4, window_rows=8)
    base.update(kwargs)
    with pytest.raises(ValueError):
        plan_epoch(np.array([5, 5]), **base)


def test_the_epoch_starts_with_a_ramp_of_smaller_windows():
    ur = np.full(100, 100, np.int64)
    p = plan_epoch(ur, seed=0, epoch=0, batch_size=10, window_rows=800)
    assert [p.window_size(j) for j in range(5)] == [100, 200, 400, 800, 800]
    assert p.win_start[-1] == 10_000
    flat = plan_epoch(ur, seed=0, epoch=0, batch_size=10, window_rows=800, ramp=0)
    assert [flat.window_size(j) for j in range(3)] == [800, 800, 800]


def rank_batches(ur, history, **kw):
    """Every rank's batches in DataLoader order for one phase (list per rank)."""
    out = []
    for r in range(kw["world_size"]):
        per_worker = [served(plan_epoch(ur, rank=r, worker=w, history=history, **kw), ur)
                      for w in range(kw["num_workers"])]
        out.append(dataloader_order(per_worker))
    return out


@settings(max_examples=120, deadline=None)
@given(sizes=unit_sizes, batch=st.integers(1, 9), data=st.data(), seed=st.integers(0, 99), shuffle=st.booleans(),
       piece=st.integers(0, 6))
def test_elastic_resume_delivers_exactly_the_rest(sizes, batch, data, seed, shuffle, piece):
    """Stop every rank after S batches under one layout; resume under others: the complement, once.
    The epoch keeps its first phase's piece size (``Phase.piece_rows``), whatever later phases ask."""
    ur = np.asarray(sizes, np.int64)
    n = int(ur.sum())
    history: list[Phase] = []
    delivered: list[np.ndarray] = []
    for _ in range(data.draw(st.integers(1, 3))):
        layout = dict(world_size=data.draw(st.integers(1, 4)), num_workers=data.draw(st.integers(1, 3)),
                      window_rows=data.draw(st.integers(1, 50)))
        kw = dict(seed=seed, epoch=1, batch_size=batch, shuffle=shuffle, piece_rows=piece, **layout)
        ranks = rank_batches(ur, history, **kw)
        counts = {len(b) for b in ranks}
        assert len(counts) == 1  # the same number of batches on every rank
        stop = data.draw(st.integers(0, counts.pop()))
        delivered += [b for rb in ranks for b in rb[:stop]]
        history.append(Phase(layout["world_size"], layout["num_workers"], layout["window_rows"], stop, piece))
    # The final phase runs to the end.
    layout = dict(world_size=data.draw(st.integers(1, 4)), num_workers=data.draw(st.integers(1, 3)),
                  window_rows=data.draw(st.integers(1, 50)))
    kw = dict(seed=seed, epoch=1, batch_size=batch, shuffle=shuffle, piece_rows=data.draw(st.integers(0, 6)), **layout)
    before = np.concatenate(delivered) if delivered else np.zeros(0, np.int64)
    plan0 = plan_epoch(ur, history=history, **{k: v for k, v in kw.items()})
    rest = [b for rb in (rank_batches(ur, history, **kw) if plan0.rank_rows else []) for b in rb]
    after = np.concatenate(rest) if rest else np.zeros(0, np.int64)
    union = set(before.tolist()) | set(after.tolist())
    assert union == set(range(n))
    # Nothing delivered before comes again, and the rest repeats rows only as padding.
    assert not set(after.tolist()) & set(before.tolist())
    assert after.size - np.unique(after).size < layout["world_size"]


# --------------------------------------------------------------------------- pieces

def test_split_units_cuts_every_unit_into_pieces_of_at_most_p_rows():
    ur = np.asarray([10, 3, 7, 1], np.int64)
    p = split_units(ur, 4)
    assert p.unit.tolist() == [0, 0, 0, 1, 2, 2, 3]
    assert list(zip(p.lo.tolist(), p.hi.tolist())) == [(0, 4), (4, 8), (8, 10), (0, 3), (0, 4), (4, 7), (0, 1)]
    whole = split_units(ur, 0)
    assert whole.unit.tolist() == [0, 1, 2, 3] and whole.hi.tolist() == ur.tolist()
    assert split_units(ur, 10).n == 4  # as large as the largest unit: whole units


def test_whole_unit_pieces_plan_as_before_pieces_existed():
    """piece_rows 0, or at least the largest unit, is the plan of whole units (old resume states)."""
    ur = np.asarray([50] * 30 + [17], np.int64)
    kw = dict(seed=3, epoch=2, batch_size=16, window_rows=160)
    a, b = plan_epoch(ur, **kw), plan_epoch(ur, piece_rows=50, **kw)
    assert np.array_equal(np.concatenate(served(a, ur)), np.concatenate(served(b, ur)))
    assert a.pieces.n == b.pieces.n


def test_pieces_mix_a_small_window_as_well_as_the_prediction_says():
    """Label-sorted units of 500 rows, windows of 2,048 rows (four units): whole units give a
    design effect near (B-1)/K; pieces of 8 rows bring it near 1, as ``predict_deff`` says."""
    from streambatch.quality import predict_deff

    ur = np.full(400, 500, np.int64)
    kw = dict(seed=0, epoch=0, batch_size=64, window_rows=2048, ramp=0)
    whole = design_effect(np.concatenate(served(plan_epoch(ur, **kw), ur)), ur, 64)["deff"]
    small = design_effect(np.concatenate(served(plan_epoch(ur, piece_rows=8, **kw), ur)), ur, 64)["deff"]
    assert whole > 10 and small < 1.3
    predicted = predict_deff(8, 2048 / 8, 400 * 500 // 8, 64)
    assert abs(small - predicted) / predicted < 0.1


def test_pieces_of_one_unit_side_by_side_in_a_window_are_read_as_one():
    ur = np.full(4, 100, np.int64)
    p = plan_epoch(ur, seed=0, epoch=0, batch_size=10, window_rows=400, piece_rows=5, shuffle=False)
    assert p.pieces.n == 4  # storage order: each unit's 20 pieces coalesce into one read
    q = plan_epoch(ur, seed=0, epoch=0, batch_size=10, window_rows=400, piece_rows=5)
    assert q.pieces.n == 4  # shuffled, but one window holds every piece: sorted, then coalesced


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 40), st.integers(0, 9)), max_size=200))
def test_storage_order_on_one_key_is_lexsorts(rows: list[tuple[int, int, int]]) -> None:
    """Pieces sorted by window, unit and first row, ties (a window's padding copies) kept in
    place: the one-key sort gives exactly ``np.lexsort``'s order, and so does its fallback."""
    arr = np.asarray(sorted(rows, key=lambda r: r[0]) or np.zeros((0, 3)), np.int64).reshape(-1, 3)
    window, unit, lo = arr[:, 0], arr[:, 1], arr[:, 2]
    want = np.lexsort((lo, unit, window))
    assert np.array_equal(storage_order(window, unit, lo, 10), want)
    assert np.array_equal(storage_order(window, unit, lo, 10, one_key=False), want)


def test_an_epoch_keeps_its_first_phase_piece_size():
    ur = np.full(20, 30, np.int64)
    history = [Phase(1, 1, 60, 3, piece_rows=4)]
    a = plan_epoch(ur, seed=1, epoch=0, batch_size=10, window_rows=60, history=history, piece_rows=0)
    b = plan_epoch(ur, seed=1, epoch=0, batch_size=10, window_rows=60, history=history, piece_rows=4)
    assert np.array_equal(np.concatenate(served(a, ur)), np.concatenate(served(b, ur)))
    with pytest.raises(ValueError, match="piece_rows"):
        plan_epoch(ur, seed=1, epoch=0, batch_size=10, window_rows=60, piece_rows=-1)


@settings(max_examples=80, deadline=None)
@given(st.lists(st.integers(1, 40), min_size=1, max_size=12), st.integers(0, 50), st.integers(0, 10**6))
def test_global_rows_of_a_piece_range_are_its_pieces_rows_in_order(unit_rows: list[int], piece_rows: int,
                                                                   seed: int) -> None:
    """``Pieces.global_rows`` (a window's row ids, computed without a step per piece) equals the
    rows of each piece plus its unit's first row, concatenated: dense pieces, sparse ones (rows
    left out after a resume) and pieces of units served out of order, for any range of pieces."""
    from streambatch._pieces import Pieces, rows_to_pieces, without_rows
    from streambatch.plan import split_units

    rng = np.random.default_rng(seed)
    rows = np.asarray(unit_rows, np.int64)
    start = np.concatenate([[0], np.cumsum(rows)[:-1]]).astype(np.int64)
    dense = split_units(rows, piece_rows)
    drop = np.sort(rng.choice(int(rows.sum()), size=min(3, int(rows.sum())), replace=False)).astype(np.int64)
    units = rng.integers(0, len(rows), 5)
    picked = rows_to_pieces(units, np.asarray([rng.integers(0, rows[u]) for u in units], np.int64))
    pieces = Pieces.concat([without_rows(dense, drop, start), picked])
    pieces = pieces.take(rng.permutation(pieces.n))
    a, b = sorted(rng.integers(0, pieces.n + 1, 2).tolist())
    want = [start[pieces.unit[i]] + pieces.rows(i) for i in range(a, b)]
    got = pieces.global_rows(a, b, start)
    assert got.dtype == np.int64
    assert np.array_equal(got, np.concatenate(want) if want else np.zeros(0, np.int64))
