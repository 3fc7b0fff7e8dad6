"""Bytes in and out: checksums, byte ranges of local files, and files at a URL.

Nothing here knows what a dataset or a manifest is; the layers above (manifest, storage
formats) say which files and byte ranges they need.
"""

from __future__ import annotations

__all__: list[str] = []
