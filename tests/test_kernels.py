"""The loader's byte loops (``streambatch._kernels``): the C module's and the numpy/Python versions
give the same bytes, and the C module refuses arguments out of bounds instead of touching memory
it was not given."""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streambatch import _kernels
from streambatch.io.checksum import _native_crc32c, checksum_fn

native = pytest.mark.skipif(not _kernels.NATIVE, reason="streambatch._native was not built")


@st.composite
def _ranges(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Source offsets, sizes and non-overlapping destination offsets (some empty ranges, some at
    odd places), and the destination's size."""
    sizes = np.array(draw(st.lists(st.integers(0, 300), min_size=0, max_size=30)), np.int64)
    src_at = np.array([draw(st.integers(0, 700)) for _ in sizes], np.int64)
    gaps = np.array([draw(st.integers(0, 9)) for _ in sizes], np.int64)
    dst_at = np.cumsum(gaps + sizes) - sizes
    return src_at, sizes, dst_at, int((gaps + sizes).sum()) + 3


@settings(max_examples=80, deadline=None)
@given(_ranges())
def test_copy_ranges_copies_what_the_numpy_loop_copies(r: tuple[np.ndarray, np.ndarray, np.ndarray, int]) -> None:
    src_at, sizes, dst_at, n = r
    src = np.random.default_rng(0).integers(0, 256, 1000, dtype=np.uint8)
    got, want = np.zeros(n, np.uint8), np.zeros(n, np.uint8)
    _kernels.copy_ranges(src, src_at, sizes, got, dst_at)
    _kernels.numpy_copy_ranges(src, src_at, sizes, want, dst_at)
    assert np.array_equal(got, want)
    for s, z, d in zip(src_at.tolist(), sizes.tolist(), dst_at.tolist()):
        assert np.array_equal(got[d:d + z], src[s:s + z])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 50), st.integers(0, 20)), max_size=20), st.sampled_from([1, 3]))
def test_gather_is_the_slices_one_after_another(slices: list[tuple[int, int]], width: int) -> None:
    values = np.arange(70 * width, dtype=np.int32).reshape(70, width) if width > 1 else np.arange(70, dtype=np.int32)
    starts = np.array([a for a, _ in slices], np.int64)
    stops = np.array([a + n for a, n in slices], np.int64)
    got = _kernels.gather(values, starts, stops, int((stops - starts).sum()))
    want = np.concatenate([values[a:a + n] for a, n in slices]) if slices else values[:0]
    assert got.dtype == values.dtype and got.shape == want.shape and np.array_equal(got, want)
    strided = values[::2]  # not contiguous: numpy's way, the same rows
    s2, e2 = starts // 2, np.minimum(stops // 2, len(strided))
    e2 = np.maximum(e2, s2)
    want2 = np.concatenate([strided[a:b] for a, b in zip(s2, e2)]) if slices else strided[:0]
    assert np.array_equal(_kernels.gather(strided, s2, e2, int((e2 - s2).sum())), want2)


@pytest.mark.parametrize("chunk", [1, 7, 4096, 16_144, 1 << 20])
def test_crc_chunks_gives_each_chunks_crc32c(chunk: int) -> None:
    fn = _native_crc32c()
    if fn is None:
        pytest.skip("google_crc32c's library was not found")
    import ctypes

    data = np.random.default_rng(chunk).integers(0, 256, 100_003, dtype=np.uint8)
    got = _kernels.crc_chunks(fn, ctypes.cast(fn, ctypes.c_void_p).value, data, chunk)
    one = checksum_fn("crc32c")
    want = [one(data[i:i + chunk]) for i in range(0, data.nbytes, chunk)]
    assert got.tolist() == want == _kernels.numpy_crc_chunks(fn, data, chunk).tolist()


@native
@pytest.mark.parametrize("which", ["folding", "crc32 instruction"])
def test_streambatchs_own_crc32c_gives_google_crc32cs_values(which: str) -> None:
    """The C module's CRC-32C functions (``crc32c_addresses``) against google_crc32c: every length
    up to 1,100 bytes (the folding path starts at 512, then 256 bytes a step, and tails of 0-255
    bytes), longer buffers to 70,000, at every alignment, continuing from random states; and the
    checksum module takes the fastest this CPU runs."""
    import google_crc32c

    from streambatch.io import checksum

    addresses = _kernels.crc32c_addresses()
    address = addresses[["folding", "crc32 instruction"].index(which)]
    if not address:
        pytest.skip(f"this CPU has no {which} path")
    fn = checksum._EXTEND(address)
    rng = np.random.default_rng(5)
    data = rng.integers(0, 256, 70_100, dtype=np.uint8)
    lengths = list(range(1101)) + rng.integers(1101, 70_000, 200).tolist()
    for n in lengths:
        at, state = int(rng.integers(0, 64)), int(rng.integers(0, 1 << 32))
        view = data[at:at + n]
        assert fn(state, view.ctypes.data, n) == google_crc32c.extend(state, view.tobytes()), (n, at)
    best = next(a for a in addresses if a)
    assert ctypes.cast(checksum._native_crc32c(), ctypes.c_void_p).value == best


def test_without_streambatchs_crc32c_google_crc32cs_library_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the C module has no CRC-32C for this CPU (another architecture, or not built), the
    checksum module falls back to the library inside google_crc32c's wheel, with the same values."""
    import google_crc32c

    from streambatch.io import checksum

    monkeypatch.setattr(checksum, "crc32c_addresses", lambda: ())
    fn = checksum._native_crc32c.__wrapped__()
    assert fn is not None and not isinstance(fn, checksum._EXTEND)
    data = np.random.default_rng(6).integers(0, 256, 5000, dtype=np.uint8)
    assert fn(7, data.ctypes.data, data.nbytes) == google_crc32c.extend(7, data.tobytes())


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5000), st.integers(0, 3000)), max_size=20))
def test_crc_ranges_gives_each_ranges_crc32c_and_refuses_ranges_outside(ranges: list[tuple[int, int]]) -> None:
    fn = _native_crc32c()
    if fn is None:
        pytest.skip("google_crc32c's library was not found")
    import ctypes

    address = ctypes.cast(fn, ctypes.c_void_p).value
    data = np.random.default_rng(len(ranges)).integers(0, 256, 8000, dtype=np.uint8)
    starts = np.array([a for a, _ in ranges], np.int64)
    sizes = np.array([n for _, n in ranges], np.int64)
    one = checksum_fn("crc32c")
    want = [one(data[a:a + n]) if n else 0 for a, n in ranges]
    assert _kernels.crc_ranges(fn, address, data, starts, sizes).tolist() == want
    assert _kernels.numpy_crc_ranges(fn, data, starts, sizes).tolist() == want
    with pytest.raises(IndexError):
        _kernels.crc_ranges(fn, address, data, np.array([7990], np.int64), np.array([11], np.int64))


@st.composite
def _stream(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int, int]:
    """Documents (some empty) placed anywhere in a values buffer, their row ids, and a token range."""
    lengths = draw(st.lists(st.integers(0, 40), min_size=1, max_size=12))
    cum = np.zeros(len(lengths) + 1, np.int64)
    np.cumsum(lengths, out=cum[1:])
    values = np.random.default_rng(len(lengths)).integers(0, 1000, 600, dtype=np.int32)
    starts = np.array([draw(st.integers(0, 600 - n)) for n in lengths], np.int64)
    rows = np.array(draw(st.permutations(range(100, 100 + len(lengths)))), np.int64)
    at = draw(st.integers(0, int(cum[-1])))
    count = draw(st.integers(0, int(cum[-1]) - at))
    return values, starts, cum, rows, at, count


@settings(max_examples=150, deadline=None)
@given(_stream())
def test_pack_writes_what_the_token_by_token_packing_writes(s: tuple) -> None:
    values, starts, cum, rows, at, count = s
    tokens = [int(values[st_ + i]) for st_, n in zip(starts.tolist(), np.diff(cum).tolist()) for i in range(n)]
    places = [i for n in np.diff(cum).tolist() for i in range(n)]
    ids = [int(r) for r, n in zip(rows.tolist(), np.diff(cum).tolist()) for _ in range(n)]
    ramp = np.arange(max(1, count), dtype=np.int64)
    for fn in (_kernels.pack, _kernels.numpy_pack):
        tok, pos, doc = np.full(count, -5, np.int32), np.full(count, -5, np.int64), np.full(count, -5, np.int64)
        fn(values, starts, cum, rows, at, count, tok, pos, doc, ramp)
        assert tok.tolist() == tokens[at:at + count]
        assert pos.tolist() == places[at:at + count]
        assert doc.tolist() == ids[at:at + count]


@native
@settings(max_examples=60, deadline=None)
@given(_ranges(), st.integers(1, 3))
def test_copy_from_copies_each_range_from_its_own_source(r: tuple[np.ndarray, np.ndarray, np.ndarray, int],
                                                         k: int) -> None:
    src_at, sizes, dst_at, n = r
    srcs = [np.random.default_rng(i).integers(0, 256, 1000, dtype=np.uint8) for i in range(k)]
    which = np.arange(len(sizes), dtype=np.int64) % k
    got, want = np.zeros(n, np.uint8), np.zeros(n, np.uint8)
    assert _kernels.copy_from(srcs, which, src_at, sizes, got, dst_at) == -1
    assert _kernels.numpy_copy_from(srcs, which, src_at, sizes, want, dst_at) == -1
    assert np.array_equal(got, want)
    for w, s, z, d in zip(which.tolist(), src_at.tolist(), sizes.tolist(), dst_at.tolist()):
        assert np.array_equal(got[d:d + z], srcs[w][s:s + z])


@native
def test_copy_from_refuses_ranges_outside_its_sources() -> None:
    srcs, dst, one = [np.zeros(100, np.uint8), np.zeros(10, np.uint8)], np.zeros(100, np.uint8), np.ones(1, np.int64)
    for fn in (_kernels.copy_from, _kernels.numpy_copy_from):
        with pytest.raises(IndexError):
            fn(srcs, one, one * 5, one * 10, dst, one * 0)  # 10 bytes from 5 of the 10-byte source
        with pytest.raises(IndexError):
            fn(srcs, one * 2, one * 0, one, dst, one * 0)  # a third source: there are two
        with pytest.raises(IndexError):
            fn(srcs, one * 0, one * 0, one * 20, dst, one * 90)  # past the output's end


_TRUNCATED = """
import mmap, os, sys
import numpy as np
from streambatch import _kernels
path = sys.argv[1]
fd = os.open(path, os.O_RDONLY)
m = mmap.mmap(fd, 0, prot=mmap.PROT_READ)
i = lambda *v: np.array(v, np.int64)
out = np.zeros(30, np.uint8)
print(_kernels.copy_from([m], i(0, 0, 0), i(0, 5000, 9000), i(10, 10, 10), out, i(0, 10, 20)), flush=True)
os.truncate(path, 4096)
print(_kernels.copy_from([m], i(0, 0, 0), i(0, 5000, 9000), i(10, 10, 10), out, i(0, 10, 20)), flush=True)
print(bytes(out[:10]) == bytes(range(10)), flush=True)
if len(sys.argv) > 2:
    print(m[9000], flush=True)  # outside a copy: the SIGBUS ends the process, as without streambatch
"""


@native
@pytest.mark.parametrize("outside", [False, True])
def test_copy_from_a_file_cut_short_since_it_was_mapped_stops_there_not_the_process(tmp_path: Path,
                                                                                    outside: bool) -> None:
    """A mapped file truncated under the copy raises SIGBUS; the copy returns the range it stopped at
    (the first past the new end) and the process goes on.  A SIGBUS outside a copy still ends it."""
    import signal
    import subprocess
    import sys

    (tmp_path / "f").write_bytes(bytes(range(256)) * 64)  # 16 KiB
    args = [sys.executable, "-X", "faulthandler", "-c", _TRUNCATED, str(tmp_path / "f"), *(["outside"] if outside else [])]
    r = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert r.stdout.split()[:3] == ["-1", "1", "True"], r.stdout + r.stderr
    if outside:
        assert r.returncode == -signal.SIGBUS and "Bus error" in r.stderr  # faulthandler's report, then the end
    else:
        assert r.returncode == 0, r.stderr


def test_the_c_module_refuses_ranges_outside_its_buffers() -> None:
    from streambatch import _native

    src, dst = np.zeros(100, np.uint8), np.zeros(100, np.uint8)
    one = np.ones(1, np.int64)
    with pytest.raises(IndexError, match="range 0"):
        _native.copy_ranges(src, one * 90, one * 20, dst, one * 0)  # past the source's end
    with pytest.raises(IndexError, match="range 0"):
        _native.copy_ranges(src, one * 0, one * 20, dst, one * 85)  # past the output's end
    _native.copy_ranges(src, one * 500, one * 0, dst, one * 500)  # an empty range may point anywhere
    values, cum, rows = np.zeros(10, np.int32), np.array([0, 8], np.int64), np.array([3], np.int64)
    tok, pos, doc = np.zeros(8, np.int32), np.zeros(8, np.int64), np.zeros(8, np.int64)
    with pytest.raises(ValueError, match="document 0"):  # its 8 tokens from 5 pass the 10 values
        _native.pack(values.view(np.uint8), 4, np.array([5], np.int64), cum, rows, 0, 8, tok.view(np.uint8), pos, doc)
    with pytest.raises(ValueError, match="tokens"):  # more tokens than the documents hold
        _native.pack(values.view(np.uint8), 4, np.array([0], np.int64), cum, rows, 4, 5, tok.view(np.uint8), pos, doc)
    with pytest.raises(ValueError, match="pos"):  # an output too small
        _native.pack(values.view(np.uint8), 4, np.array([0], np.int64), cum, rows, 0, 8, tok.view(np.uint8), pos[:4],
                     doc)
    with pytest.raises(IndexError, match="range 0"):
        _native.pread_ranges(one * 0, one * 0, one * 50, dst, one * 60)
    with pytest.raises(IndexError, match="range 0"):
        _native.pread_ranges(one * 0, one * 0, one * 50, dst, one * 60, 1, np.zeros(1, np.uint32))
    with pytest.raises(ValueError, match="4 bytes a range"):
        _native.pread_ranges(one * 0, one * 0, one * 50, dst, one * 0, 1, np.zeros(0, np.uint32))


def test_pread_ranges_reads_the_ranges_and_names_the_first_it_cannot(tmp_path: Path) -> None:
    data = np.random.default_rng(1).integers(0, 256, 5000, dtype=np.uint8)
    (tmp_path / "f").write_bytes(data.tobytes())
    fd = os.open(tmp_path / "f", os.O_RDONLY)
    try:
        offs, sizes = np.array([4000, 0, 1234, 4999], np.int64), np.array([1000, 10, 0, 1], np.int64)
        at = np.array([0, 1000, 1010, 1010], np.int64)
        fds = np.full(4, fd, np.int64)
        for fn in (_kernels.pread_ranges, _kernels.python_pread_ranges):
            out = np.zeros(1011, np.uint8)
            assert fn(fds, offs, sizes, out, at) == -1
            assert np.array_equal(out[:1000], data[4000:]) and np.array_equal(out[1000:1010], data[:10])
            assert out[1010] == data[4999]
            # the third range passes the file's end: it is the one named, the ones before it read
            out = np.zeros(1011, np.uint8)
            bad = np.array([10, 20, 4990, 0], np.int64)
            assert fn(fds, bad, np.array([10, 10, 20, 1], np.int64), out, np.array([0, 10, 20, 40], np.int64)) == 2
            assert np.array_equal(out[:10], data[10:20])
    finally:
        os.close(fd)
    closed = np.full(1, fd, np.int64)  # a descriptor no longer open
    assert _kernels.pread_ranges(closed, np.zeros(1, np.int64), np.ones(1, np.int64), np.zeros(1, np.uint8),
                                 np.zeros(1, np.int64)) == 0


def test_pread_summed_reads_and_sums_each_range_or_names_the_first_it_cannot(tmp_path: Path) -> None:
    from streambatch.io.checksum import native_crc32c

    crc = native_crc32c()
    if crc is None:
        pytest.skip("no native CRC-32C")
    data = np.random.default_rng(2).integers(0, 256, 9000, dtype=np.uint8)
    (tmp_path / "f").write_bytes(data.tobytes())
    fd = os.open(tmp_path / "f", os.O_RDONLY)
    try:
        fds = np.full(4, fd, np.int64)
        offs, sizes = np.array([8000, 0, 123, 4000], np.int64), np.array([1000, 4096, 0, 7], np.int64)
        at = np.array([0, 1000, 5096, 5096], np.int64)
        for fn in (_kernels.pread_summed, lambda f, _a, *r: _kernels.python_pread_summed(f, *r)):
            out = np.zeros(5103, np.uint8)
            failed, sums = fn(crc[0], crc[1], fds, offs, sizes, out, at)
            assert failed == -1
            for o, z, d, got in zip(offs.tolist(), sizes.tolist(), at.tolist(), sums.tolist()):
                assert np.array_equal(out[d:d + z], data[o:o + z])
                assert got == (checksum_fn("crc32c")(data[o:o + z].tobytes()) if z else 0)
            # the second range passes the file's end: it is named, the first is read and summed
            failed, sums = fn(crc[0], crc[1], fds[:2], np.array([0, 8990], np.int64), np.array([10, 20], np.int64),
                              out, np.array([0, 10], np.int64))
            assert failed == 1 and sums[0] == checksum_fn("crc32c")(data[:10].tobytes())
            # ranges that follow each other in the file and in the output (read as one run by the
            # C module): each still summed alone; a run cut short names its first range not read whole
            offs, sizes = np.array([8700, 8800, 8800, 8850], np.int64), np.array([100, 0, 50, 200], np.int64)
            at = np.array([0, 100, 100, 150], np.int64)
            out = np.zeros(350, np.uint8)
            failed, sums = fn(crc[0], crc[1], fds, offs, sizes, out, at)
            assert failed == 3 and np.array_equal(out[:150], data[8700:8850])
            assert sums.tolist()[:3] == [checksum_fn("crc32c")(data[8700:8800].tobytes()), 0,
                                         checksum_fn("crc32c")(data[8800:8850].tobytes())]
            offs[3], out[:] = 8850, 0  # the same run within the file: read whole
            sizes[3] = 150
            failed, sums = fn(crc[0], crc[1], fds, offs, sizes, out, at)
            assert failed == -1 and np.array_equal(out[:300], data[8700:9000])
            assert sums[3] == checksum_fn("crc32c")(data[8850:9000].tobytes())
    finally:
        os.close(fd)


@pytest.mark.parametrize("scratch_bytes", [64, 300, 1 << 16])
def test_pread_ranges_reads_near_ranges_as_spans_through_the_scratch(tmp_path: Path, scratch_bytes: int) -> None:
    """Ranges of a file in order, a few bytes apart, read as spans into a scratch buffer (as many
    as it holds): the same bytes and sums as range by range; a span cut short by the file's end
    names its first range not read whole, the ones before it read and summed."""
    from streambatch.io.checksum import native_crc32c

    crc = native_crc32c()
    data = np.random.default_rng(3).integers(0, 256, 2000, dtype=np.uint8)
    (tmp_path / "f").write_bytes(data.tobytes())
    (tmp_path / "g").write_bytes(data[::-1].tobytes())
    fd, gd = os.open(tmp_path / "f", os.O_RDONLY), os.open(tmp_path / "g", os.O_RDONLY)
    try:
        offs = np.array([0, 24, 40, 40, 100, 1500, 1530, 10, 20], np.int64)
        sizes = np.array([16, 8, 0, 30, 50, 20, 16, 5, 5], np.int64)
        fds = np.array([fd] * 7 + [gd] * 2, np.int64)
        at = np.cumsum(sizes) - sizes
        expect = np.concatenate([(data if f == fd else data[::-1])[o:o + z] for f, o, z in zip(fds, offs, sizes)])
        scratch = np.zeros(scratch_bytes, np.uint8)
        out = np.zeros(int(sizes.sum()), np.uint8)
        assert _kernels.pread_ranges(fds, offs, sizes, out, at, 64, scratch) == -1
        assert np.array_equal(out, expect)
        if crc is not None:
            out[:] = 0
            failed, sums = _kernels.pread_summed(*crc, fds, offs, sizes, out, at, 64, scratch)
            assert failed == -1 and np.array_equal(out, expect)
            assert sums.tolist() == [checksum_fn("crc32c")(expect[a:a + z].tobytes()) if z else 0
                                     for a, z in zip(at.tolist(), sizes.tolist())]
        # the seventh range passes the file's end (in one span with the sixth): named, with the
        # ranges before it read
        offs[5], offs[6], out[:] = 1970, 1992, 0
        assert _kernels.pread_ranges(fds, offs, sizes, out, at, 64, scratch) == 6
        assert np.array_equal(out[:int(at[5])], expect[:int(at[5])])
        assert np.array_equal(out[int(at[5]):int(at[6])], data[1970:1990])
    finally:
        os.close(fd)
        os.close(gd)


def test_read_checked_reads_checks_and_copies_or_names_the_first_bad_chunk(tmp_path: Path) -> None:
    from streambatch.io.checksum import native_crc32c

    native = native_crc32c()
    if native is None:
        pytest.skip("google_crc32c's library was not found")
    chunk = 100
    data = np.random.default_rng(2).integers(0, 256, 1000, dtype=np.uint8)
    (tmp_path / "f").write_bytes(data.tobytes())
    one = checksum_fn("crc32c")
    sums = np.array([one(data[i:i + chunk]) for i in range(0, 1000, chunk)], np.int64)
    fd = os.open(tmp_path / "f", os.O_RDONLY)
    try:
        ids = np.array([3, 4, 5, 8, 0], np.int64)  # 3-5 follow each other in the file: one read
        fds, offs = np.full(5, fd, np.int64), ids * chunk
        src, size, dst = np.array([50, 220, 400], np.int64), np.array([120, 0, 100], np.int64), np.array(
            [0, 500, 120], np.int64)
        for fn in (_kernels.read_checked, lambda f, a, *rest: _kernels.python_read_checked(f, *rest)):
            buf, out = np.zeros(5 * chunk, np.uint8), np.zeros(300, np.uint8)
            assert fn(*native, fds, offs, chunk, sums[ids], buf, src, size, out, dst) == -1
            assert np.array_equal(buf, np.concatenate([data[i * chunk:(i + 1) * chunk] for i in ids]))
            assert np.array_equal(out[:120], buf[50:170]) and np.array_equal(out[120:220], buf[400:500])
            wrong = sums[ids].copy()
            wrong[3] ^= 1  # the fourth chunk's checksum does not match: named, nothing copied
            out = np.zeros(300, np.uint8)
            assert fn(*native, fds, offs, chunk, wrong, buf, src, size, out, dst) == 3 and not out.any()
            past = offs.copy()
            past[1] = 950  # the second chunk passes the file's end
            assert fn(*native, fds, past, chunk, sums[ids], buf, src, size, out, dst) == 1
    finally:
        os.close(fd)


@native
def test_slot_view_marks_its_flag_free_in_c_when_the_last_view_goes() -> None:
    """``slot_view``: views of the owner's bytes; the flag byte goes to 0 only when the last array
    over it is gone, never while one lives, and a view refused for its bounds never touches it."""
    owner = bytearray(4096)
    owner[10] = owner[11] = 1
    arr = np.frombuffer(_kernels.slot_view(owner, 100, 50, 10), np.uint8)
    arr[:] = 7
    assert owner[100:150] == bytearray([7] * 50) and owner[150] == 0
    part = arr[3:5]
    del arr
    assert owner[10] == 1  # a view of it still lives
    del part
    assert owner[10] == 0 and owner[11] == 1
    for offset, length, flag in ((4090, 10, 11), (-1, 10, 11), (0, 10, 4096)):
        with pytest.raises(IndexError, match="outside the owner's 4096 bytes"):
            _kernels.slot_view(owner, offset, length, flag)
    assert owner[11] == 1
    with pytest.raises(BufferError):
        _kernels.slot_view(bytes(16), 0, 4, 0)  # read-only bytes: no writable view


def test_slot_view_is_none_without_the_c_module(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_kernels, "NATIVE", False)
    assert _kernels.slot_view(bytearray(16), 0, 4, 0) is None


class _Units:
    """Two columns of rows (3 and 40 bytes) in one file each, units of 5-13 rows, their parts of
    ``cut`` rows summed as ``PieceSums`` sums them: for ``pread_known``."""

    def __init__(self, tmp_path: Path, cut: int = 3) -> None:
        from streambatch.io.checksum import native_crc32c

        rng = np.random.default_rng(9)
        self.cut, self.crc = cut, native_crc32c()
        self.unit_rows = rng.integers(5, 14, 7).astype(np.int64)
        starts = np.concatenate([[0], np.cumsum(self.unit_rows)]).astype(np.int64)
        self.first = np.concatenate([[0], np.cumsum(-(-self.unit_rows // cut))]).astype(np.int64)
        self.known = np.ones(int(self.first[-1]), bool)
        self.rb, self.data, self.fds, self.offsets, self.sums = [3, 40], [], [], [], []
        for c, rb in enumerate(self.rb):
            data = rng.integers(0, 256, (int(starts[-1]), rb), dtype=np.uint8)
            (tmp_path / f"c{c}").write_bytes(b"\0" * 64 + data.tobytes())
            self.data.append(data)
            self.fds.append(np.full(len(self.unit_rows), os.open(tmp_path / f"c{c}", os.O_RDONLY), np.int64))
            self.offsets.append(64 + starts[:-1] * rb)
            self.sums.append(np.array([checksum_fn("crc32c")(data[starts[u] + r:starts[u] + min(r + cut, n)].tobytes())
                                       for u, n in enumerate(self.unit_rows.tolist()) for r in range(0, n, cut)],
                                      np.uint32))
        self.starts = starts

    def read(self, pieces: np.ndarray, rows: int = 80) -> tuple[np.ndarray, list[np.ndarray]]:
        bufs = [np.zeros((rows, rb), np.uint8) for rb in self.rb]
        cols = [(self.fds[c], self.offsets[c], rb, bufs[c].reshape(-1), self.sums[c]) for c, rb in enumerate(self.rb)]
        done = _kernels.pread_known(pieces, self.cut, self.unit_rows, self.first, self.known, cols, self.crc[1],
                                    64, np.zeros(4096, np.uint8))
        assert done is not None
        return done, bufs

    def rows_of(self, c: int, u: int, lo: int, hi: int) -> np.ndarray:
        return self.data[c][self.starts[u] + lo:self.starts[u] + hi]

    def close(self) -> None:
        for fds in self.fds:
            os.close(int(fds[0]))


@native
def test_pread_known_reads_and_checks_the_pieces_whose_sums_are_known(tmp_path: Path) -> None:
    """Pieces of whole parts whose sums are known are read into place, every column, and marked
    done; a piece cut inside a part, one with a part whose sum is not known, or one outside its
    unit or the buffers, is left to the caller untouched."""
    u = _Units(tmp_path)
    if u.crc is None:
        pytest.skip("no native CRC-32C")
    try:
        last = int(u.unit_rows[2])
        pieces = np.array([[0, 0, 3, 0], [0, 3, 6, 3],
                           [1, 1, 3, 6],  # cut inside a part
                           [2, 3, last, 8], [4, 0, 3, 30],  # to the unit's end; whole parts
                           [5, 0, 3, 40],  # a part whose sum is not known
                           [6, 0, 99, 50], [3, 3, 6, 79], [9, 0, 3, 60]],  # past the unit, the buffers; no unit 9
                          np.int64)
        u.known[int(u.first[5])] = False  # unit 5's first part: not known
        done, bufs = u.read(pieces)
        assert done.tolist() == [True, True, False, True, True, False, False, False, False]
        for (unit, lo, hi, at), ok in zip(pieces.tolist(), done.tolist()):
            for c in range(2):
                if ok:
                    assert np.array_equal(bufs[c][at:at + hi - lo], u.rows_of(c, unit, lo, hi))
                elif unit in (1, 5):
                    assert not bufs[c][at:at + hi - lo].any()
    finally:
        u.close()


@native
def test_pread_known_stops_at_the_first_piece_whose_sum_differs_or_read_comes_short(tmp_path: Path) -> None:
    """A part whose bytes do not match its sum, in any column, leaves its piece and every later
    one to the caller (done before it); so does a part the file's end cuts short."""
    u = _Units(tmp_path)
    if u.crc is None:
        pytest.skip("no native CRC-32C")
    try:
        pieces = np.array([[0, 0, 3, 0], [1, 0, 3, 3], [2, 0, 3, 6], [3, 0, 3, 9], [4, 0, 3, 12]], np.int64)
        u.sums[1][int(u.first[2])] ^= 1  # the second column's sum of unit 2's first part
        assert u.read(pieces)[0].tolist() == [True, True, False, False, False]
        u.sums[1][int(u.first[2])] ^= 1
        u.sums[0][int(u.first[4])] ^= 1  # the first column's, of the last piece
        assert u.read(pieces)[0].tolist() == [True, True, True, True, False]
        u.sums[0][int(u.first[4])] ^= 1
        assert u.read(pieces)[0].all()
        os.truncate(tmp_path / "c1", 64 + int(u.starts[3]) * 40 + 50)  # unit 3's rows of c1 end mid-row 1
        done, bufs = u.read(pieces)
        assert done.tolist() == [True, True, True, False, False]
        assert np.array_equal(bufs[1][6:9], u.rows_of(1, 2, 0, 3))
    finally:
        u.close()


@native
def test_pread_known_refuses_columns_it_cannot_use(tmp_path: Path) -> None:
    u = _Units(tmp_path)
    if u.crc is None:
        pytest.skip("no native CRC-32C")
    try:
        pieces = np.array([[0, 0, 3, 0]], np.int64)
        buf = np.zeros(300, np.uint8)
        for cols, error in (([(u.fds[0], u.offsets[0], 3, buf)], TypeError),  # four items, not five
                            ([(u.fds[0], u.offsets[0], 0, buf, u.sums[0])], ValueError),  # rows of 0 bytes
                            ([(u.fds[0], u.offsets[0], 3, buf, u.sums[0][:2])], ValueError),  # a sum short
                            ([(u.fds[0][:3], u.offsets[0], 3, buf, u.sums[0])], ValueError)):  # a unit's fd short
            with pytest.raises(error):
                _kernels.pread_known(pieces, u.cut, u.unit_rows, u.first, u.known, cols, u.crc[1], 64,
                                     np.zeros(64, np.uint8))
    finally:
        u.close()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 40), min_size=0, max_size=5), st.sampled_from([(), (3,), (2, 5)]),
       st.sampled_from(["<f4", "<i8", "u1", "S3"]))
def test_take_rows_gathers_what_numpys_take_gathers(counts: list[int], shape: tuple[int, ...], dtype: str) -> None:
    """Every array's rows at each batch's indices into that batch's arrays, as ``take`` would:
    several arrays (one of int64 row ids beside the columns), rows of 1 to 120 bytes."""
    rng = np.random.default_rng(len(counts))
    rows = 50
    srcs = [rng.integers(0, 256, rows * int(np.prod(shape)) * np.dtype(dtype).itemsize, dtype=np.uint8)
            .view(dtype).reshape(rows, *shape), np.arange(rows, dtype=np.int64) * 7]
    idx_list = [rng.integers(0, rows, c).astype(np.int64) for c in counts]
    got = [[np.zeros((c, *s.shape[1:]), s.dtype) for s in srcs] for c in counts]
    want = [[np.zeros((c, *s.shape[1:]), s.dtype) for s in srcs] for c in counts]
    _kernels.take_rows(srcs, idx_list, got)
    _kernels.numpy_take_rows(srcs, idx_list, want)
    for idx, g, w in zip(idx_list, got, want):
        for src, a, b in zip(srcs, g, w):
            assert a.tobytes() == b.tobytes() == src[idx].tobytes()  # (random bytes: NaNs among the floats)


@native
def test_take_rows_refuses_indices_and_outputs_outside_its_buffers() -> None:
    from streambatch import _native

    src, ids = np.zeros((10, 4), np.float32), np.arange(12, dtype=np.int64)
    rb, bounds = np.array([16, 8], np.int64), np.array([0, 2], np.int64)
    out = [np.zeros((2, 4), np.float32), np.zeros(2, np.int64)]
    with pytest.raises(IndexError, match="index 1 is row 10 of 10"):  # ids has 12 rows, src 10: 10 is outside
        _native.take_rows([src, ids], rb, np.array([3, 10], np.int64), bounds, out)
    with pytest.raises(IndexError, match="index 0 is row -1"):
        _native.take_rows([src, ids], rb, np.array([-1, 0], np.int64), bounds, out)
    with pytest.raises(IndexError, match="batch 0, source 1"):  # 2 rows of 8 bytes into 8 bytes
        _native.take_rows([src, ids], rb, np.array([0, 1], np.int64), bounds, [out[0], out[1][:1]])
    with pytest.raises(IndexError, match="batch 0's rows"):  # bounds past the indices
        _native.take_rows([src, ids], rb, np.array([0, 1], np.int64), np.array([0, 3], np.int64), out)
    with pytest.raises(ValueError, match="2 sources need 2 row sizes"):
        _native.take_rows([src, ids], rb, np.array([0, 1], np.int64), bounds, out[:1])
    _native.take_rows([src, ids], rb, np.array([9, 0], np.int64), bounds, out)
    assert out[1].tolist() == [9, 0]
