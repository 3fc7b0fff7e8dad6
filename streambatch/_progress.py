"""Progress bars on stderr (tqdm), drawn only where stderr is a terminal unless asked.

tqdm is imported only when a bar is drawn: its import takes ~0.1 s, a tenth of a small
conversion, and a quiet run (``-q``, or stderr not a terminal) needs none of it.
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["progress_bar"]


class _Quiet:
    """The bar where none is drawn."""

    def update(self, n: int = 1) -> None:
        pass

    def __enter__(self) -> _Quiet:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def progress_bar(total: int, desc: str, enabled: bool | None = None, unit: str = " rows") -> Any:
    """``with progress_bar(rows, "convert x") as bar: bar.update(n)``: a tqdm bar of rows (or
    ``unit``) on stderr; ``enabled`` ``None`` draws it when stderr is a terminal."""
    if not (sys.stderr.isatty() if enabled is None else enabled):
        return _Quiet()
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, unit_scale=unit == " rows", file=sys.stderr)
