"""JSON Lines input: one JSON object a line, its keys the columns."""

from __future__ import annotations

from typing import Any

from ._text import BLOCK_BYTES, TextSource

__all__ = ["JsonlSource"]


class JsonlSource(TextSource):
    """A JSON Lines file (``.jsonl`` or ``.ndjson``)."""

    name = "jsonl"
    extensions = (".jsonl", ".ndjson")

    def _reader(self) -> Any:
        import pyarrow.json as pjson

        return pjson.open_json(str(self.path), read_options=pjson.ReadOptions(block_size=BLOCK_BYTES))
