"""Real torch.distributed process groups (gloo, several processes via torchrun) over a StreamDataset."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import streambatch

from conftest import write_sorted_npy

ROWS = 1200  # divisible by 2 and 3: no padding, so every sample exactly once per epoch
WORKER = Path(__file__).with_name("_ddp_worker.py")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ddp")
    src = write_sorted_npy(root / "src", ROWS)
    return streambatch.convert(src, root / "d.zarr", unit_rows=37).root


def torchrun(nproc: int, dataset: Path, out: Path, *extra: str, timeout: float = 120) -> list:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           str(WORKER), "--data", str(dataset), "--out", str(out), *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.parametrize("nproc,num_workers", [(2, 0), (3, 1)])
def test_ddp_training_sees_every_sample_once_per_epoch_with_equal_steps(dataset, tmp_path, nproc, num_workers):
    ranks = torchrun(nproc, dataset, tmp_path / "out.json", "--epochs", "2", "--num-workers", str(num_workers))
    assert len(ranks) == nproc
    for e in range(2):
        steps = {r[e]["steps"] for r in ranks}
        assert len(steps) == 1  # every rank took the same number of steps (else DDP would hang)
        ids = np.concatenate([r[e]["ids"] for r in ranks])
        assert np.array_equal(np.sort(ids), np.arange(ROWS))
        per_rank = [set(r[e]["ids"]) for r in ranks]
        assert sum(len(s) for s in per_rank) == ROWS  # disjoint
    # Epochs differ.
    assert ranks[0][0]["ids"] != ranks[0][1]["ids"]


def test_three_rank_run_resumed_on_two_ranks_gets_exactly_the_complement(dataset, tmp_path):
    first = torchrun(3, dataset, tmp_path / "a.json", "--stop-after", "5", "--epochs", "1")
    delivered = np.concatenate([r[0]["ids"] for r in first])
    assert delivered.size == 3 * 5 * 16 and np.unique(delivered).size == delivered.size
    states = [json.loads((tmp_path / f"a.json.state{r}").read_text()) for r in range(3)]
    assert all({k: v for k, v in s.items() if k != "rank"} == {k: v for k, v in states[0].items() if k != "rank"}
               for s in states)
    rest = torchrun(2, dataset, tmp_path / "b.json", "--state-in", str(tmp_path / "a.json.state0"),
                    "--epochs", "2", "--num-workers", "1")
    resumed = np.concatenate([r[0]["ids"] for r in rest])
    assert len({r[0]["steps"] for r in rest}) == 1
    assert np.array_equal(np.sort(np.concatenate([delivered, resumed])), np.arange(ROWS))
    # The next epoch is planned for the new world size: every sample once across the 2 ranks.
    nxt = np.concatenate([r[1]["ids"] for r in rest])
    assert np.array_equal(np.sort(nxt), np.arange(ROWS))
    assert rest[0][1]["epoch"] == states[0]["epoch"] + 1
