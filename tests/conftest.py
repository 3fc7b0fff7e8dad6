"""Shared fixtures: every test checks that it leaves no streambatch thread behind."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from streambatch._prefetch import THREAD_PREFIX


# Put first in the script of a child process that a test stops with SIGINT.  A process that a
# non-interactive shell starts in the background (`cmd &`, as some CI runners do) inherits SIGINT
# as ignored, and Python then leaves it ignored, so Ctrl-C would never reach the code under test;
# a user at a terminal always has Python's handler, which this restores.
SIGINT_HANDLER = "import signal; signal.signal(signal.SIGINT, signal.default_int_handler)\n"


def streambatch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(THREAD_PREFIX) and t.is_alive()]


@pytest.fixture(autouse=True)
def no_thread_leak():
    """Fail a test that leaves a streambatch thread running.  The grace, 10 s, is for a thread
    that a test set free at its end (a released hanging read) on a loaded machine; threads that
    close() joined are gone at once."""
    before = set(streambatch_threads())
    yield
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline:
        left = [t for t in streambatch_threads() if t not in before]
        if not left:
            return
        time.sleep(0.02)
    pytest.fail(f"threads leaked: {[t.name for t in left]}")


def write_sorted_npy(folder: Path, rows: int, width: int = 4, n_labels: int = 10, seed: int = 0) -> Path:
    """A small label-sorted dataset as a folder of .npy columns: id, x float32[width], y."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    np.save(folder / "id.npy", np.arange(rows, dtype=np.int64))
    np.save(folder / "x.npy", rng.standard_normal((rows, width)).astype(np.float32))
    np.save(folder / "y.npy", (np.arange(rows, dtype=np.int64) * n_labels) // rows)
    return folder


def flip_byte(path: Path, offset: int, mask: int = 0xFF) -> None:
    """Corrupt one byte of ``path`` in place (XOR with ``mask``)."""
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ mask]))


@pytest.fixture
def sorted_npy(tmp_path: Path) -> Path:
    return write_sorted_npy(tmp_path / "src", 5003)
