"""Our hand-written zarr.json documents equal what zarr-python writes for the same array."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr
from zarr.codecs import BloscCodec, ZstdCodec

from streambatch.storage._zarr_meta import array_document, group_document

COMPRESSORS = {"none": None, "lz4": BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"), "zstd": ZstdCodec(level=3)}


@pytest.mark.parametrize("dtype", ["bool", "int8", "uint8", "int16", "int32", "int64", "uint64", "float16",
                                   "float32", "float64"])
@pytest.mark.parametrize("codec", sorted(COMPRESSORS))
def test_array_document_matches_zarr_python(tmp_path, dtype, codec):
    g = zarr.open_group(str(tmp_path), mode="w")
    g.create_array("a", shape=(1000, 3), dtype=dtype, chunks=(10, 3), shards=(100, 3),
                   compressors=COMPRESSORS[codec], fill_value=0, attributes={"k": 1})
    want = json.loads((tmp_path / "a" / "zarr.json").read_text())
    assert array_document(dtype, np.dtype(dtype).itemsize, (3,), 1000, 10, 100, codec, {"k": 1}) == want
    assert json.loads((tmp_path / "zarr.json").read_text()) == group_document()
