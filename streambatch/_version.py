"""The package version, in a module of its own so that writers can stamp files with it
without importing the package (whose ``__init__`` imports the converter)."""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
