"""The README's code examples run, and its two commands are the ones CI uses."""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_python_examples_run(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README, re.S)
    assert blocks
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "data" / "train.npz", x=rng.standard_normal((3000, 8)).astype(np.float32),
             y=np.repeat(np.arange(10), 300))
    for code in blocks:
        with warnings.catch_warnings():  # torchdata's StatefulDataLoader calls torch's deprecated set_vital
            warnings.filterwarnings("ignore", message=".*set_vital.*is deprecated", category=UserWarning)
            exec(compile(code, "README.md", "exec"), {})
    assert (tmp_path / "train.zarr" / "_streambatch.json").exists()


def test_the_two_commands_are_the_ones_ci_runs():
    cmds = re.findall(r"^    (bash tools/setup.sh && .*)$", README, re.M)
    assert cmds == ["bash tools/setup.sh && .venv/bin/streambatch demo",
                    "bash tools/setup.sh && .venv/bin/python -m pytest"]
    ci = (ROOT / ".ci" / "run").read_text()
    assert "bash tools/setup.sh" in ci and ".venv/bin/python -m pytest" in ci and ".venv/bin/streambatch demo" in ci
    assert os.access(ROOT / "tools" / "setup.sh", os.R_OK)
