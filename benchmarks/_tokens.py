"""Token documents for the packing benchmarks: heavy-tailed lengths, a Parquet file, an in-RAM packing.

* :func:`doc_lengths`: document lengths drawn from a lognormal whose 99th percentile is
  ``tail`` (100) times its median, deterministic by seed;
* :func:`write_token_parquet`: a Parquet file with one ``large_list<int32>`` column ``tokens``
  holding about ``total_tokens`` tokens (1 GB of int32 = 268M tokens at full size), row groups
  of about 64 MiB, deterministic by seed (so ``streambatch convert`` can take it later);
* :func:`read_token_parquet`: that column back as a ``Ragged`` (no copy of the values);
* :func:`pack_in_ram`: the baseline packing: every document in a random order, concatenated in
  RAM at once, cut into sequences of ``seq_len`` and batches of ``batch_size``, with the same
  ``position_ids`` and ``document_ids`` as ``streambatch.packing`` (each batch new arrays).

Not a test module; pytest never collects it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from numpy.typing import NDArray

from streambatch.ragged import Ragged

__all__ = ["doc_lengths", "write_token_parquet", "read_token_parquet", "pack_in_ram"]

VOCAB = 50_257
_Z99 = 2.3263478740408408  # the standard normal's 99th percentile


def doc_lengths(total_tokens: int, seed: int, median: int = 256, tail: float = 100.0,
                cap: int = 2**20) -> NDArray[np.int64]:
    """Lognormal lengths (median ``median``, 99th percentile ``tail * median``, at most ``cap``, at
    least 1) summing to about ``total_tokens`` (the last is cut to hit it exactly)."""
    rng = np.random.default_rng(seed)
    sigma = np.log(tail) / _Z99
    mean = median * np.exp(sigma**2 / 2)
    out: list[NDArray[np.int64]] = []
    have = 0
    while have < total_tokens:
        n = max(16, int((total_tokens - have) / mean * 1.1))
        part = np.clip(np.rint(median * np.exp(sigma * rng.standard_normal(n))), 1, cap).astype(np.int64)
        out.append(part)
        have += int(part.sum())
    lengths = np.concatenate(out)
    cum = np.cumsum(lengths)
    k = int(np.searchsorted(cum, total_tokens))  # the document that reaches total_tokens
    lengths = lengths[:k + 1]
    lengths[k] -= int(cum[k]) - total_tokens
    return lengths[lengths > 0]


def write_token_parquet(path: str | Path, total_tokens: int, seed: int, median: int = 256,
                        group_bytes: int = 64 * 2**20, classes: int = 0, cap: int = 2**20) -> Path:
    """Write the documents of :func:`doc_lengths` (tokens uniform in ``[0, VOCAB)``, at most ``cap``
    a document) to ``path``; with ``classes`` > 0 also an int64 column ``label`` sorted ascending,
    ``label = row * classes // rows`` (the rule of ``tools/make_datasets.labels_for`` and of
    ``streambatch.quality``'s label-sorted worst case), lengths independent of the label."""
    path = Path(path)
    lengths = doc_lengths(total_tokens, seed, median, cap=cap)
    rng = np.random.default_rng(seed + 1)
    cum = np.concatenate([[0], np.cumsum(lengths)])
    fields = [pa.field("tokens", pa.large_list(pa.int32()), nullable=False)]
    schema = pa.schema(fields + ([pa.field("label", pa.int64(), nullable=False)] if classes else []))
    per_group = group_bytes // 4
    tmp = path.with_name(path.name + ".tmp")
    with pq.ParquetWriter(tmp, schema, compression="none") as w:
        a = 0
        while a < lengths.size:
            b = max(a + 1, int(np.searchsorted(cum, cum[a] + per_group, "right")) - 1)
            b = min(b, lengths.size)
            values = rng.integers(0, VOCAB, int(cum[b] - cum[a]), dtype=np.int32)
            lists = pa.LargeListArray.from_arrays(pa.array(cum[a:b + 1] - cum[a], pa.int64()), pa.array(values))
            cols = {"tokens": lists}
            if classes:
                cols["label"] = pa.array(np.arange(a, b, dtype=np.int64) * classes // lengths.size)
            w.write_table(pa.table(cols, schema=schema))
            a = b
    tmp.replace(path)
    return path


def read_token_parquet(path: str | Path) -> Ragged:
    """Column ``tokens`` of ``path`` as one ``Ragged`` (row groups combined)."""
    col = pq.read_table(path, columns=["tokens"]).column("tokens").combine_chunks()
    offsets = np.frombuffer(col.buffers()[1], np.int64)[col.offset:col.offset + len(col) + 1]
    values = col.values.to_numpy(zero_copy_only=True)
    return Ragged(values, offsets.copy()) if offsets[0] == 0 else Ragged(values, offsets - offsets[0])


def pack_in_ram(docs: Ragged, order: NDArray[np.int64], seq_len: int,
                batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    """Batches of ``docs`` taken in ``order``, concatenated and cut into sequences, all in RAM.

    The epoch's tokens are gathered at once (one ``take``); each batch is then a slice of them,
    its ``position_ids`` and ``document_ids`` made by ``np.repeat`` over the documents it
    overlaps; the last sequence is padded with 0 (ids -1, positions 0)."""
    tokens = docs.take(order)
    cum, values = tokens.offsets, tokens.values
    per, total = seq_len * batch_size, int(cum[-1])
    ramp = np.arange(per, dtype=np.int64)
    for a in range(0, total, per):
        b = min(a + per, total)
        first, stop = int(np.searchsorted(cum, a, "right")) - 1, int(np.searchsorted(cum, b, "left"))
        spans = np.diff(cum[first:stop + 1])
        spans[0] -= a - cum[first]
        spans[-1] -= cum[stop] - b
        rows = -(-(b - a) // seq_len)
        tok = np.zeros(rows * seq_len, values.dtype)
        pos = np.zeros(rows * seq_len, np.int64)
        ids = np.full(rows * seq_len, -1, np.int64)
        tok[:b - a] = values[a:b]
        np.subtract(ramp[:b - a], np.repeat(cum[first:stop] - a, spans), out=pos[:b - a])
        ids[:b - a] = np.repeat(order[first:stop], spans)
        yield {"tokens": tok.reshape(rows, seq_len), "position_ids": pos.reshape(rows, seq_len),
               "document_ids": ids.reshape(rows, seq_len)}
