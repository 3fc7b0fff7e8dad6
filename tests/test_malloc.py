"""Iterating a dataset caps glibc's mmap threshold (loader/malloc.py), so a freed buffer of a few
MiB goes back to the system instead of staying in the heap; a threshold the user set stays.
Each case runs in a fresh process, since the cap is per process and for good."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import streambatch

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's allocator only")

_CHILD = """
import sys, numpy as np, psutil
from streambatch import StreamDataset
if sys.argv[1] == "iterate":
    for _ in StreamDataset(sys.argv[2], batch_size=64):
        pass
rss = lambda: psutil.Process().memory_info().rss
big = np.ones(16 << 20, np.uint8)  # mapped, and freed: glibc's own threshold rises to its size
del big
buf = np.ones(6 << 20, np.uint8)  # below that size: from the heap, unless the threshold is capped
before = rss()
del buf
print((before - rss()) >> 20)
"""


def _env(env: dict[str, str] | None) -> dict[str, str]:
    """This process's environment with ``env``, and no allocator setting but those (dask sets
    ``MALLOC_TRIM_THRESHOLD_`` in the environment of a process that started a cluster)."""
    return {**{k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}, **(env or {})}


def _returned_mib(ds: Path, mode: str, env: dict[str, str] | None = None) -> int:
    """MiB the child's RSS drops when it frees a 6 MiB buffer, after ``mode`` (iterate or not)."""
    out = subprocess.run([sys.executable, "-c", _CHILD, mode, str(ds)], capture_output=True, text=True, timeout=120,
                         env=_env(env), check=True)
    return int(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("malloc")
    np.save(root / "x.npy", np.arange(40_000, dtype=np.float32).reshape(-1, 4))
    return Path(streambatch.convert(root / "x.npy", root / "ds", progress=False).root)


def test_a_freed_buffer_of_a_few_mib_is_returned_once_a_dataset_was_iterated(dataset: Path) -> None:
    # glibc alone keeps it in the heap (returns 0 MiB here), unless the heap's top happens to be
    # past its trim threshold: a flaky control, so only the capped case is asserted
    assert _returned_mib(dataset, "iterate") >= 5


def test_a_threshold_set_in_the_environment_is_left_alone(dataset: Path) -> None:
    keep = {"MALLOC_MMAP_THRESHOLD_": str(64 << 20), "MALLOC_TRIM_THRESHOLD_": str(64 << 20)}  # heap, kept
    assert _returned_mib(dataset, "iterate", keep) == 0
