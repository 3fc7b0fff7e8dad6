"""Zarr v3 metadata documents (``zarr.json``) written without importing zarr-python.

Importing zarr costs 0.5-1 s, which dominated the conversion of small datasets; the
documents are plain JSON, and a test checks them against what zarr-python itself writes.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..schema import Column

__all__ = ["group_document", "array_document", "metadata_documents", "chunk_key", "EMPTY"]

EMPTY = np.uint64(2**64 - 1)  # a shard index entry of an inner chunk that is not stored


def group_document() -> dict[str, Any]:
    return {"attributes": {}, "zarr_format": 3, "node_type": "group"}


def _codec(codec: str, itemsize: int) -> list[dict[str, Any]]:
    if codec == "lz4":
        return [{"name": "blosc", "configuration": {"typesize": itemsize, "cname": "lz4", "clevel": 5,
                                                    "shuffle": "shuffle", "blocksize": 0}}]
    if codec == "zstd":
        return [{"name": "zstd", "configuration": {"level": 3, "checksum": False}}]
    return []


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


def chunk_key(col: Column, shard: int) -> str:
    """The shard file of ``col`` holding shard ``shard`` (Zarr's default chunk key encoding)."""
    return "/".join([col.name, "c", str(shard)] + ["0"] * len(col.shape))


def metadata_documents(columns: tuple[Column, ...], rows: int, unit_rows: int, shard_rows: int, codec: str
                       ) -> list[tuple[str, dict[str, Any]]]:
    """The ``zarr.json`` documents of a dataset, by path: the group's, then each column's array."""
    return [("zarr.json", group_document())] + [
        (f"{c.name}/zarr.json", array_document(c.dtype, c.np_dtype.itemsize, c.shape, rows, unit_rows, shard_rows,
                                               codec, {"streambatch": {"column": c.to_json()}})) for c in columns]
