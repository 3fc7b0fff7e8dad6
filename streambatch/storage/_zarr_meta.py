"""Zarr v3 metadata documents (``zarr.json``) written without importing zarr-python.

Importing zarr costs 0.5-1 s, which dominated the conversion of small datasets; the
documents are plain JSON, and a test checks them against what zarr-python itself writes.
"""

from __future__ import annotations

from typing import Any

__all__ = ["group_document", "array_document"]


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
