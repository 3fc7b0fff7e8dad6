#!/usr/bin/env python
"""Generate the benchmark datasets of ``BENCHMARKS.md`` as folders of ``.npy`` files.

Usage::

    python tools/make_datasets.py tab  data/tab                 # 2,000,000 rows, ~1.05 GB
    python tools/make_datasets.py img  data/img  --scale 4      # 400,000 rows, ~4.9 GB
    python tools/make_datasets.py learn data/learn --rows 50000 # + data/learn/test/

Every dataset is one ``.npy`` file per column, label-sorted (all label-0 rows first, then label 1,
...), the worst case for a chunk-by-chunk shuffle:

=======  ==========  ==========================================================================
kind     rows        columns
=======  ==========  ==========================================================================
tab      2,000,000   id int64 0..N-1, x float32[128] standard normal, y int64 0..9
img        100,000   id int64, x uint8[3,64,64] uniform random, y int64 0..9
tabz     2,000,000   as tab, x quantised to multiples of 1/8 in [-4, 4] (compressible)
imgz       100,000   as img, x smooth (bilinear 9x9 grid), quantised to steps of 8 (compressible)
learn      200,000   id, x float32[32] = mean[y] + N(0, 1) noise, y 0..9; plus ``test/`` split
=======  ==========  ==========================================================================

For tab, img, tabz and imgz, ``x`` does not depend on the label. ``learn`` has learnable
structure for the training benchmark: a softmax regression reaches well above chance (about 74%
test accuracy against 10% chance; the same model fed in label-sorted order gets about 43%). Its
held-out split, ``rows // 5`` rows (at least 10), is written to ``OUT_DIR/test/`` with the same
columns and the same class means.

Generation streams: rows are produced in units of :data:`UNIT_ROWS`, each from its own random
generator ``np.random.default_rng((seed, kind, split, unit))``, and written in blocks of about
64 MiB through ``np.lib.format.open_memmap``, so memory stays small for any ``--scale`` and the
bytes do not depend on the block size. Files are written under a hidden ``.partial`` name and
renamed into place at the end. This script needs numpy only; it does not import streambatch.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "KINDS",
    "NUM_CLASSES",
    "UNIT_ROWS",
    "DatasetKind",
    "dataset_rows",
    "labels_for",
    "main",
    "make_dataset",
]

NUM_CLASSES = 10
UNIT_ROWS = 1024
"""Rows drawn from one random generator; blocks are whole multiples of it."""
_BLOCK_BYTES = 64 * 2**20
_LEARN_SEPARATION = 0.4
"""Scale of the ``learn`` class means (per feature); with unit noise about 74% is reachable."""
_TRAIN, _TEST, _MEANS = 0, 1, 2


@dataclass(frozen=True)
class DatasetKind:
    """One dataset flavour: default rows, the ``x`` row shape and dtype, and a stable code."""

    name: str
    code: int
    rows: int
    x_shape: tuple[int, ...]
    x_dtype: str
    description: str

    @property
    def row_bytes(self) -> int:
        """Bytes of one row over all three columns (id, x, y)."""
        return 16 + int(np.prod(self.x_shape)) * np.dtype(self.x_dtype).itemsize


KINDS: dict[str, DatasetKind] = {
    "tab": DatasetKind("tab", 1, 2_000_000, (128,), "float32", "x standard normal"),
    "img": DatasetKind("img", 2, 100_000, (3, 64, 64), "uint8", "x uniform random bytes"),
    "tabz": DatasetKind("tabz", 3, 2_000_000, (128,), "float32", "x quantised to 1/8 in [-4,4]"),
    "imgz": DatasetKind("imgz", 4, 100_000, (3, 64, 64), "uint8", "x smooth, steps of 8"),
    "learn": DatasetKind("learn", 5, 200_000, (32,), "float32", "x = class mean + N(0,1)"),
}


def dataset_rows(kind: str, scale: float = 1.0, rows: int | None = None) -> int:
    """Number of rows for ``kind``: ``rows`` if given, else the default times ``scale``.

    Raises:
        ValueError: unknown kind, or a row count / scale that is not positive.
    """
    spec = _spec(kind)
    if rows is not None:
        if rows < 1:
            raise ValueError(f"rows must be at least 1, got {rows}")
        return int(rows)
    if not scale > 0:
        raise ValueError(f"scale must be positive, got {scale}")
    return max(1, round(spec.rows * scale))


def labels_for(start: int, stop: int, n: int) -> NDArray[np.int64]:
    """Labels of rows ``start..stop-1`` of a label-sorted dataset of ``n`` rows.

    ``label = floor(index * NUM_CLASSES / n)``: equal classes (sizes differ by at most one),
    sorted ascending, the same rule SHUFFLE.md uses for its worst case.
    """
    return np.arange(start, stop, dtype=np.int64) * NUM_CLASSES // n


def make_dataset(
    kind: str,
    out_dir: str | os.PathLike[str],
    scale: float = 1.0,
    rows: int | None = None,
    seed: int = 0,
    *,
    block_rows: int | None = None,
) -> Path:
    """Write dataset ``kind`` as ``id.npy``, ``x.npy``, ``y.npy`` under ``out_dir``; return it.

    Args:
        kind: one of :data:`KINDS` (``tab``, ``img``, ``tabz``, ``imgz``, ``learn``).
        out_dir: folder to write; created if missing, existing column files are replaced.
        scale: multiplies the default row count (ignored when ``rows`` is given).
        rows: exact row count, overriding ``scale``.
        seed: random seed; the same arguments always give the same bytes.
        block_rows: rows written per block (rounded up to a multiple of :data:`UNIT_ROWS`);
            default about 64 MiB per block. Changes memory use only, never the data.

    Returns:
        ``Path(out_dir)``. ``learn`` also writes its held-out split to ``out_dir/test/``.

    Raises:
        ValueError: unknown kind, bad ``rows`` / ``scale`` / ``block_rows``.
        OSError: not enough free disk space for the dataset (checked before writing).
    """
    spec = _spec(kind)
    n = dataset_rows(kind, scale, rows)
    out = Path(out_dir)
    splits = [(out, n, _TRAIN)]
    if kind == "learn":
        splits.append((out / "test", max(NUM_CLASSES, n // 5), _TEST))
    out.mkdir(parents=True, exist_ok=True)
    need = sum(m for _, m, _ in splits) * spec.row_bytes
    free = shutil.disk_usage(out).free
    if need > free:
        raise OSError(
            f"{out}: dataset {kind} needs {need / 1e9:.2f} GB but only {free / 1e9:.2f} GB is free;"
            " pick another folder or a smaller --scale"
        )
    if block_rows is None:
        units = max(1, _BLOCK_BYTES // (UNIT_ROWS * spec.row_bytes))
    else:
        if block_rows < 1:
            raise ValueError(f"block_rows must be at least 1, got {block_rows}")
        units = -(-block_rows // UNIT_ROWS)
    for folder, m, split in splits:
        folder.mkdir(parents=True, exist_ok=True)
        _write_split(spec, folder, m, seed, split, units * UNIT_ROWS)
    return out


def _spec(kind: str) -> DatasetKind:
    try:
        return KINDS[kind]
    except KeyError:
        raise ValueError(f"unknown dataset kind {kind!r}; choose one of {sorted(KINDS)}") from None


def _write_split(
    spec: DatasetKind, folder: Path, n: int, seed: int, split: int, block_rows: int
) -> None:
    """Write one split of ``n`` rows block by block, then rename the files into place."""
    shapes = {"id": ((n,), np.int64), "x": ((n, *spec.x_shape), spec.x_dtype), "y": ((n,), np.int64)}
    partial = {name: folder / f".{name}.npy.partial" for name in shapes}
    for name, (shape, dtype) in shapes.items():
        mm = np.lib.format.open_memmap(partial[name], mode="w+", dtype=dtype, shape=shape)
        del mm  # header + sparse file; blocks below re-open it so mapped pages never pile up
    make_x = _X_MAKERS[spec.name]
    means = _learn_means(seed) if spec.name == "learn" else None
    for start in range(0, n, block_rows):
        stop = min(start + block_rows, n)
        y = labels_for(start, stop, n)
        x = np.empty((stop - start, *spec.x_shape), dtype=spec.x_dtype)
        for u0 in range(start, stop, UNIT_ROWS):
            u1 = min(u0 + UNIT_ROWS, stop)
            rng = np.random.default_rng((seed, spec.code, split, u0 // UNIT_ROWS))
            x[u0 - start : u1 - start] = make_x(rng, y[u0 - start : u1 - start], means)
        block = {"id": np.arange(start, stop, dtype=np.int64), "x": x, "y": y}
        for name, values in block.items():
            mm = np.lib.format.open_memmap(partial[name], mode="r+")
            mm[start:stop] = values
            mm.flush()
            del mm
    for name, path in partial.items():
        os.replace(path, folder / f"{name}.npy")


def _learn_means(seed: int) -> NDArray[np.float32]:
    """Class means of ``learn``, shared by its train and test splits."""
    rng = np.random.default_rng((seed, KINDS["learn"].code, _MEANS, 0))
    shape = (NUM_CLASSES, *KINDS["learn"].x_shape)
    return (rng.standard_normal(shape) * _LEARN_SEPARATION).astype(np.float32)


def _x_tab(rng: np.random.Generator, y: NDArray[np.int64], means: object) -> NDArray[np.float32]:
    return rng.standard_normal((len(y), 128), dtype=np.float32)


def _x_tabz(rng: np.random.Generator, y: NDArray[np.int64], means: object) -> NDArray[np.float32]:
    x = rng.standard_normal((len(y), 128), dtype=np.float32)
    return (np.clip(np.round(x * 8), -32, 32) / 8).astype(np.float32)


def _x_img(rng: np.random.Generator, y: NDArray[np.int64], means: object) -> NDArray[np.uint8]:
    return rng.integers(0, 256, size=(len(y), 3, 64, 64), dtype=np.uint8)


def _bilinear_matrix(out: int = 64, grid: int = 9) -> NDArray[np.float32]:
    """``(out, grid)`` matrix interpolating ``grid`` knots linearly onto ``out`` pixels."""
    t = np.linspace(0, grid - 1, out, dtype=np.float64)
    lo = np.minimum(np.floor(t).astype(np.int64), grid - 2)
    frac = t - lo
    w = np.zeros((out, grid), dtype=np.float64)
    w[np.arange(out), lo] = 1 - frac
    w[np.arange(out), lo + 1] += frac
    return w.astype(np.float32)


_BILINEAR = _bilinear_matrix()


def _x_imgz(rng: np.random.Generator, y: NDArray[np.int64], means: object) -> NDArray[np.uint8]:
    n = len(y)
    knots = rng.uniform(0, 255, size=(n * 3 * 9, 9)).astype(np.float32).reshape(n, 3 * 9, 9)
    out = np.empty((n, 3, 64, 64), dtype=np.uint8)
    step = 128  # images per pass: keeps the float32 intermediates near 6 MB each
    for i in range(0, n, step):
        k = knots[i : i + step].reshape(-1, 9)
        m = len(k) // 27
        # Two plain GEMMs (much faster than many small batched matmuls): W @ knots @ W.T.
        cols = (k @ _BILINEAR.T).reshape(m * 3, 9, 64).transpose(0, 2, 1).reshape(-1, 9)
        smooth = (cols @ _BILINEAR.T).reshape(m, 3, 64, 64).transpose(0, 1, 3, 2)
        out[i : i + step] = np.clip(np.round(smooth / 8), 0, 31) * 8  # 0, 8, ..., 248
    return out


def _x_learn(
    rng: np.random.Generator, y: NDArray[np.int64], means: object
) -> NDArray[np.float32]:
    assert isinstance(means, np.ndarray)
    noise = rng.standard_normal((len(y), means.shape[1]), dtype=np.float32)
    return means[y] + noise


_X_MAKERS: dict[str, Callable[[np.random.Generator, NDArray[np.int64], object], NDArray]] = {
    "tab": _x_tab,
    "img": _x_img,
    "tabz": _x_tabz,
    "imgz": _x_imgz,
    "learn": _x_learn,
}


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; prints one summary line, returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="make_datasets.py",
        description="Write a label-sorted benchmark dataset as a folder of .npy files.",
        epilog="example: python tools/make_datasets.py tab data/tab --scale 16",
    )
    parser.add_argument("kind", choices=sorted(KINDS))
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the default rows")
    parser.add_argument("--rows", type=int, default=None, help="exact rows (overrides --scale)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    try:
        out = make_dataset(args.kind, args.out_dir, args.scale, args.rows, args.seed)
    except (ValueError, OSError) as exc:
        print(f"make_datasets.py: error: {exc}", file=sys.stderr)
        return 2
    seconds = time.perf_counter() - t0
    spec = KINDS[args.kind]
    n = dataset_rows(args.kind, args.scale, args.rows)
    nbytes = sum(p.stat().st_size for p in out.rglob("*.npy"))
    shape = ",".join(map(str, spec.x_shape))
    extra = f" + test/ {max(NUM_CLASSES, n // 5):,} rows" if args.kind == "learn" else ""
    print(
        f"{args.kind}: {n:,} rows{extra} (id int64, x {spec.x_dtype}[{shape}], y int64 0..9,"
        f" label-sorted, seed {args.seed}) -> {out}: {nbytes / 1e9:.3f} GB in {seconds:.1f} s"
        f" ({nbytes / 1e6 / max(seconds, 1e-9):.0f} MB/s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
