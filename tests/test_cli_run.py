"""`streambatch bench` and `streambatch demo` on small real datasets."""

from __future__ import annotations

import json

import streambatch
from streambatch.cli import main

from conftest import write_sorted_npy


def test_bench_json_reports_every_epoch_with_quality_and_baselines(tmp_path, capsys):
    src = write_sorted_npy(tmp_path / "src", 20_000, width=8)
    streambatch.convert(src, tmp_path / "d.zarr", unit_rows=100, label="y")
    rc = main(["bench", str(tmp_path / "d.zarr"), "--memory-budget", "400KiB", "--epochs", "2",
               "--compare", "naive,ram", "--json"])
    assert rc == 0
    rep = json.loads(capsys.readouterr().out)
    assert len(rep["epochs"]) == 2
    for e in rep["epochs"]:
        assert e["missing"] == 0 and e["duplicated"] == 0 and e["samples"] == 20_000
        assert e["samples_per_s"] > 0 and e["first_batch_s"] > 0 and e["peak_rss_bytes"] > 0
        assert 1 <= e["deff"] < 256 and e["label_kl_ratio"] > 0
        # The order served agrees with the prediction made before reading (10%).
        assert abs(e["deff"] / rep["describe"]["predicted_deff"] - 1) < 0.10
    assert rep["ram"]["samples_per_s"] > 0 and rep["naive"]["samples_per_s"] > 0


def test_bench_rejects_an_unknown_baseline(tmp_path, capsys):
    src = write_sorted_npy(tmp_path / "src", 1000)
    streambatch.convert(src, tmp_path / "d.zarr")
    assert main(["bench", str(tmp_path / "d.zarr"), "--compare", "fast"]) == 2
    assert "unknown baseline" in capsys.readouterr().err


def test_demo_runs_end_to_end_and_prints_the_comparison(tmp_path, capsys):
    assert main(["demo", "--rows", "30000", "--memory-budget", "4MiB", "--dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "x the in-RAM shuffle's speed" in out and "naive" in out and "deff" in out
    assert "missing 0, duplicated 0" in out


def test_bench_measures_a_dataset_of_one_unit(tmp_path, capsys):
    streambatch.convert(write_sorted_npy(tmp_path / "src", 1000), tmp_path / "d.zarr", label="y")
    assert streambatch.load_manifest(tmp_path / "d.zarr").n_units == 1
    assert main(["bench", str(tmp_path / "d.zarr"), "--batch-size", "16", "--memory-budget", "1MiB",
                 "--epochs", "1", "--json"]) == 0
    e = json.loads(capsys.readouterr().out)["epochs"][0]
    assert e["missing"] == 0 and e["duplicated"] == 0 and e["samples"] == 1000
    assert e["deff"] != e["deff"] and e["label_kl_ratio"] > 0  # deff undefined for one unit: NaN, not an error
