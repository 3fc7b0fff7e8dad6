"""Zarr v3 metadata documents (``zarr.json``) written without importing zarr-python.

Importing zarr costs 0.5-1 s, which dominated the conversion of small datasets; the
documents are plain JSON, and a test checks them against what zarr-python itself writes.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from .._fields import int_array
from ..errors import ManifestError
from ..schema import Column

__all__ = ["group_document", "array_document", "metadata_documents", "ragged_documents", "chunk_key",
           "shard_index", "chunk_locations", "compressor", "EMPTY"]

EMPTY = np.uint64(2**64 - 1)  # a shard index entry of an inner chunk that is not stored


def group_document(attributes: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"attributes": attributes or {}, "zarr_format": 3, "node_type": "group"}


def _codec(codec: str, itemsize: int) -> list[dict[str, Any]]:
    if codec == "lz4":
        return [{"name": "blosc", "configuration": {"typesize": itemsize, "cname": "lz4", "clevel": 5,
                                                    "shuffle": "shuffle", "blocksize": 0}}]
    if codec == "zstd":
        return [{"name": "zstd", "configuration": {"level": 3, "checksum": False}}]
    return []


def compressor(codec: str, itemsize: int) -> Any:
    """The numcodecs codec of ``codec`` (None for ``"none"``), as in :func:`array_document`."""
    import numcodecs

    if codec == "lz4":
        return numcodecs.Blosc(cname="lz4", clevel=5, shuffle=numcodecs.Blosc.SHUFFLE, typesize=itemsize)
    if codec == "zstd":
        return numcodecs.Zstd(level=3)
    return None


def array_document(dtype: str, itemsize: int, shape: tuple[int, ...], rows: int, unit_rows: int, shard_rows: int,
                   codec: str, attributes: dict[str, Any]) -> dict[str, Any]:
    """A sharded array: rows along axis 0, shards of ``shard_rows``, inner chunks of ``unit_rows``."""
    fill: Any = False if dtype == "bool" else (0.0 if dtype.startswith("float") else 0)
    little = {"name": "bytes", "configuration": {"endian": "little"}}
    inner = [little] if dtype not in ("bool", "int8", "uint8") else [{"name": "bytes"}]  # 1-byte: no endian
    return {
        "shape": [rows, *shape],
        "data_type": dtype,
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [shard_rows, *shape]}},
        "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
        "fill_value": fill,
        "codecs": [{
            "name": "sharding_indexed",
            "configuration": {
                "chunk_shape": [unit_rows, *shape],
                "codecs": inner + _codec(codec, itemsize),
                "index_codecs": [little, {"name": "crc32c"}],
                "index_location": "end",
            },
        }],
        "attributes": attributes,
        "zarr_format": 3,
        "node_type": "array",
        "storage_transformers": [],
    }


def chunk_key(col: Column, shard: int, part: str | None = None) -> str:
    """The shard file of ``col`` holding shard ``shard`` (Zarr's default chunk key encoding); of
    a ragged column, of its array ``part`` (``"values"``, of the column's element shape, or
    ``"offsets"``)."""
    dims = 0 if part == "offsets" else len(col.shape)
    return "/".join([col.name, *([part] if part else []), "c", str(shard)] + ["0"] * dims)


def shard_index(entries: list[tuple[int, int]], per_shard: int) -> bytes:
    """The end of a shard file: (offset, size) of each inner chunk, ``EMPTY`` for those not
    stored, then the index's CRC-32C."""
    import google_crc32c

    index = np.full((per_shard, 2), EMPTY, dtype="<u8")
    index[: len(entries)] = np.asarray(entries, dtype="<u8").reshape(-1, 2)
    raw = index.tobytes()
    return raw + google_crc32c.value(raw).to_bytes(4, "little")


def chunk_locations(loc: Any, n: int, n_files: int, chunk_bytes: int, codec: str | None, where: str
                    ) -> dict[str, NDArray[np.int64]]:
    """The manifest's record of ``n`` inner chunks of ``chunk_bytes`` decoded bytes (``file``,
    ``offset``, ``size`` and ``crc32`` of each) as int64 arrays; ``ManifestError`` unless every
    entry is an in-range integer (an uncompressed chunk is exactly its decoded size)."""
    if not isinstance(loc, dict):
        raise ManifestError(f"{where}: missing")
    lo, hi = (chunk_bytes, chunk_bytes) if codec == "none" else (1, max(chunk_bytes + (1 << 16), 2 * chunk_bytes))
    return {
        "file": int_array(loc.get("file"), n, f"{where}.file", hi=max(0, n_files - 1)),
        "offset": int_array(loc.get("offset"), n, f"{where}.offset", hi=1 << 50),
        "size": int_array(loc.get("size"), n, f"{where}.size", lo=lo, hi=hi),
        "crc32": int_array(loc.get("crc32"), n, f"{where}.crc32", hi=2**32 - 1),
    }


def metadata_documents(columns: tuple[Column, ...], rows: int, unit_rows: int, shard_rows: int, codec: str
                       ) -> list[tuple[str, dict[str, Any]]]:
    """The ``zarr.json`` documents of a dataset, by path: the group's, then each fixed column's
    array (a ragged column's are written at the end: :func:`ragged_documents`)."""
    return [("zarr.json", group_document())] + [
        (f"{c.name}/zarr.json", array_document(c.dtype, c.np_dtype.itemsize, c.shape, rows, unit_rows, shard_rows,
                                               codec, {"streambatch": {"column": c.to_json()}}))
        for c in columns if not c.ragged]


def ragged_documents(col: Column, rows: int, unit_rows: int, shard_rows: int, n_values: int, chunk: int,
                     per_shard: int, codec: str) -> list[tuple[str, dict[str, Any]]]:
    """The ``zarr.json`` documents of ragged column ``col``: a group holding ``offsets`` (int64,
    ``rows + 1``, inner chunks of a unit's rows) and ``values`` (``n_values`` of the column's
    dtype and element shape, inner chunks of ``chunk`` values, ``per_shard`` a shard).  Row ``i``
    is ``values[offsets[i]:offsets[i + 1]]``."""
    attrs = {"streambatch": {"column": col.to_json(), "rows": "values[offsets[i]:offsets[i + 1]]"}}
    return [(f"{col.name}/zarr.json", group_document(attrs)),
            (f"{col.name}/offsets/zarr.json",
             array_document("int64", 8, (), rows + 1, unit_rows, shard_rows, codec, {})),
            (f"{col.name}/values/zarr.json",
             array_document(col.dtype, col.np_dtype.itemsize, col.shape, n_values, chunk, chunk * per_shard,
                            codec, {}))]
