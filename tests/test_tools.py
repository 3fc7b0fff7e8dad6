"""Tests of the maintainer tools: ``tools/make_datasets.py``, ``benchmarks/_common.py`` and the
smoke paths of ``benchmarks/bench_gpu.py``, ``benchmarks/bench_scaling.py`` and
``benchmarks/bench_quality.py``'s fractions of the data.

Neither folder is a package, so both modules are loaded from their file paths.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


md = _load("_tools_make_datasets", ROOT / "tools" / "make_datasets.py")
bc = _load("_benchmarks_common", ROOT / "benchmarks" / "_common.py")

ROWS = 1100  # more than one generation unit (1024 rows), so unit boundaries are exercised


def _columns(folder: Path) -> dict[str, np.ndarray]:
    return {name: np.load(folder / f"{name}.npy") for name in ("id", "x", "y")}


def _check_split(folder: Path, n: int, spec: object) -> dict[str, np.ndarray]:
    cols = _columns(folder)
    assert sorted(p.name for p in folder.glob("*.npy")) == ["id.npy", "x.npy", "y.npy"]
    assert not list(folder.glob(".*partial")), "temporary files left behind"
    assert cols["id"].dtype == np.int64 and cols["y"].dtype == np.int64
    np.testing.assert_array_equal(cols["id"], np.arange(n))
    assert cols["x"].dtype == np.dtype(spec.x_dtype)  # type: ignore[attr-defined]
    assert cols["x"].shape == (n, *spec.x_shape)  # type: ignore[attr-defined]
    y = cols["y"]
    assert y.shape == (n,)
    assert np.all(np.diff(y) >= 0), "y must be label-sorted"
    counts = np.bincount(y, minlength=10)
    assert len(counts) == 10 and counts.min() >= 1
    assert counts.max() - counts.min() <= 1, counts
    return cols


@pytest.mark.parametrize("kind", sorted(md.KINDS))
def test_make_dataset_layout(tmp_path: Path, kind: str) -> None:
    spec = md.KINDS[kind]
    out = md.make_dataset(kind, tmp_path / kind, rows=ROWS, seed=1)
    assert out == tmp_path / kind
    cols = _check_split(out, ROWS, spec)
    if kind == "learn":
        _check_split(out / "test", ROWS // 5, spec)
    else:
        assert not (out / "test").exists()
    x = cols["x"]
    if kind == "tab":
        assert abs(float(x.mean())) < 0.02 and abs(float(x.std()) - 1) < 0.02
        # x carries no label information: every class mean is ~0
        class_means = np.stack([x[cols["y"] == c].mean() for c in range(10)])
        assert np.abs(class_means).max() < 0.05
    elif kind == "img":
        assert x.min() == 0 and x.max() == 255 and abs(float(x.mean()) - 127.5) < 1
    elif kind == "tabz":
        assert np.all(x * 8 == np.round(x * 8)) and x.min() >= -4 and x.max() <= 4
        assert len(np.unique(x)) > 30
    elif kind == "imgz":
        levels = np.flatnonzero(np.bincount(x.ravel(), minlength=256))
        assert np.all(levels % 8 == 0) and len(levels) > 20


def test_compressible_variants_compress(tmp_path: Path) -> None:
    def ratio(kind: str) -> float:
        x = np.load(md.make_dataset(kind, tmp_path / kind, rows=200) / "x.npy")
        return x.nbytes / len(zlib.compress(x.tobytes(), 1))

    assert ratio("tab") < 1.15 and ratio("img") < 1.05
    assert ratio("tabz") > 2.5 and ratio("imgz") > 2


def test_same_seed_same_bytes_any_block_size(tmp_path: Path) -> None:
    a = _columns(md.make_dataset("tab", tmp_path / "a", rows=3000, seed=5))
    b = _columns(md.make_dataset("tab", tmp_path / "b", rows=3000, seed=5, block_rows=1000))
    c = _columns(md.make_dataset("tab", tmp_path / "c", rows=3000, seed=6))
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])
    assert not np.array_equal(a["x"], c["x"])
    # rewriting a folder replaces its files
    md.make_dataset("tab", tmp_path / "a", rows=100, seed=5)
    assert np.load(tmp_path / "a" / "x.npy").shape == (100, 128)


def test_learn_is_learnable(tmp_path: Path) -> None:
    out = md.make_dataset("learn", tmp_path / "learn", rows=5000)
    train, test = _columns(out), _columns(out / "test")
    means = np.stack([train["x"][train["y"] == c].mean(axis=0) for c in range(10)])
    dist = ((test["x"][:, None, :] - means[None]) ** 2).sum(axis=-1)
    accuracy = float((dist.argmin(axis=1) == test["y"]).mean())
    assert accuracy > 0.6, accuracy  # chance is 0.1; the Bayes rate is about 0.74


def test_dataset_rows_and_errors(tmp_path: Path) -> None:
    assert md.dataset_rows("tab") == 2_000_000
    assert md.dataset_rows("img", scale=16) == 1_600_000
    assert md.dataset_rows("tab", scale=0.5, rows=7) == 7
    with pytest.raises(ValueError, match="unknown dataset kind"):
        md.make_dataset("nope", tmp_path)
    with pytest.raises(ValueError, match="rows"):
        md.make_dataset("tab", tmp_path, rows=0)
    with pytest.raises(ValueError, match="scale"):
        md.make_dataset("tab", tmp_path, scale=-1)


def test_cli(tmp_path: Path) -> None:
    script = str(ROOT / "tools" / "make_datasets.py")
    out = tmp_path / "cli"
    done = subprocess.run(
        [sys.executable, script, "img", str(out), "--rows", "40", "--seed", "3"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("img: 40 rows") and str(out) in lines[0]
    expected = _columns(md.make_dataset("img", tmp_path / "lib", rows=40, seed=3))
    for name, values in _columns(out).items():
        np.testing.assert_array_equal(values, expected[name])
    bad = subprocess.run(
        [sys.executable, script, "tab", str(out), "--rows", "0"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert bad.returncode == 2 and "rows must be at least 1" in bad.stderr


def test_profile_read_paths_times_every_path(tmp_path: Path) -> None:
    import streambatch as sb

    src = md.make_dataset("tab", tmp_path / "src", rows=3000, seed=1)
    store = tmp_path / "tab.zarr"
    sb.convert(src, store, unit_rows=100)
    done = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "profile_read_paths.py"), str(store), "--units", "20",
         "--window-mib", "0.5"],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 0, done.stderr
    rows = {line[:28].strip(): line[28:].split() for line in done.stdout.splitlines()}
    assert list(rows) == ["pread", "pread into window", "pread + copy into window", "mmap per unit",
                          "whole-file map + DONTNEED", "whole-file map"]
    for figures in rows.values():
        assert figures[-1] == "GB/s" and len(figures) == 4 and all(float(f) > 0 for f in figures[:3])


# --- benchmarks/_common.py ------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return md.make_dataset("tab", tmp_path_factory.mktemp("tiny"), rows=1000, seed=2)


def test_ram_limit(tiny: Path) -> None:
    cols = bc.load_columns(tiny)
    rec = bc.ram_limit(cols, batch_size=64, seed=3, keep_ids=True)
    ids = rec.pop("ids")
    assert rec["samples"] == 1000 and rec["batches"] == 16  # ceil(1000 / 64)
    assert bc.check_complete(ids, 1000) == {"missing": 0, "duplicated": 0, "foreign": 0}
    assert not np.array_equal(ids, np.arange(1000)), "served in stored order: not shuffled"
    np.testing.assert_array_equal(ids, np.random.default_rng(3).permutation(1000))
    assert rec["x_sum"] == pytest.approx(cols["x"].sum(dtype=np.float64), rel=1e-9)
    assert rec["bytes"] == 1000 * (8 + 128 * 4 + 8)
    assert rec["samples_per_s"] > 0 and rec["mb_per_s"] > 0 and 0 <= rec["first_batch_s"]
    json.dumps(rec)  # without ids the record is JSON-ready
    again = bc.ram_limit(cols, batch_size=64, seed=3, keep_ids=True)
    np.testing.assert_array_equal(again["ids"], ids)
    with pytest.raises(ValueError, match="equal length"):
        bc.ram_limit({"x": cols["x"], "id": cols["id"][:10]})


def test_naive_loader(tiny: Path) -> None:
    x = np.load(tiny / "x.npy")
    rec = bc.naive_loader(tiny, batch_size=100, seed=4, keep_ids=True)
    assert rec["samples"] == 1000 and rec["batches"] == 10 and rec["complete"] is True
    assert bc.check_complete(rec["ids"], 1000)["missing"] == 0
    assert not np.array_equal(rec["ids"], np.arange(1000))
    assert rec["x_sum"] == pytest.approx(x.sum(dtype=np.float64), rel=1e-9)
    part = bc.naive_loader(tiny, batch_size=100, seed=4, max_batches=3, keep_ids=True)
    assert part["samples"] == 300 and part["complete"] is False
    np.testing.assert_array_equal(part["ids"], rec["ids"][:300])
    workers = bc.naive_loader(tiny, batch_size=100, seed=4, num_workers=2, keep_ids=True)
    np.testing.assert_array_equal(workers["ids"], rec["ids"])
    with pytest.raises(FileNotFoundError, match="x.npy"):
        bc.naive_loader(tiny.parent / "missing")


def test_consume() -> None:
    closed: list[bool] = []

    def batches() -> Iterator[dict[str, torch.Tensor]]:
        try:
            for i in range(5):
                ids = torch.arange(4 * i, 4 * i + 4)
                yield {"x": torch.full((4, 2), float(i), dtype=torch.float16), "id": ids}
        finally:
            closed.append(True)

    res = bc.consume(batches())
    assert res["samples"] == 20 and res["batches"] == 5
    assert res["x_sum"] == 8 * (0 + 1 + 2 + 3 + 4)
    np.testing.assert_array_equal(res["ids"], np.arange(20))
    assert res["ids"].dtype == np.int64
    assert 0 <= res["first_batch_s"] <= res["seconds"]
    part = bc.consume(batches(), max_batches=2)
    assert part["samples"] == 8 and closed == [True, True], "iterator not closed early"
    empty = bc.consume([])
    assert empty["samples"] == 0 and empty["ids"].shape == (0,)
    with pytest.raises(KeyError):
        bc.consume([{"id": torch.arange(3)}])


def _two_more_samples(mem: Any) -> None:
    """Wait until the sampling thread has taken a whole sample from now on (60 s at most)."""
    seen = mem.samples
    deadline = time.monotonic() + 60
    while mem.samples < seen + 2 and time.monotonic() < deadline:
        time.sleep(0.005)


def test_peak_rss_sees_this_process_and_children() -> None:
    with bc.PeakRSS() as mem:
        block = np.ones(64 * 2**20, dtype=np.uint8)  # 64 MiB, every page written
        _two_more_samples(mem)
        grown = mem.peak - mem.start
        del block
    assert grown >= 56 * 2**20, "background samples missed the allocation"
    assert not any(t.name == "PeakRSS" for t in threading.enumerate()), "thread not joined"
    # the child holds 96 MiB until the thread has sampled it (its stdin closes)
    code = "import sys; b = b'1' * (96 << 20); print('held', flush=True); sys.stdin.read()"
    for children in (True, False):  # children=False: this process alone (no scan of the machine's processes)
        with bc.PeakRSS(children=children) as mem:
            child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True)
            try:
                assert child.stdout is not None and child.stdout.readline().strip() == "held"
                _two_more_samples(mem)
                child.communicate("", timeout=60)
            finally:
                if child.poll() is None:
                    child.kill()
                    child.wait()
        assert child.returncode == 0
        if children:
            assert mem.peak - mem.start >= 80 * 2**20, "child process memory not counted"
        else:
            assert mem.peak - mem.start < 40 * 2**20, "children counted with children=False"
    with pytest.raises(RuntimeError), bc.PeakRSS() as twice:
        twice.__enter__()


def test_peak_rss_of_scans_children_only_for_dataloader_workers() -> None:
    """An in-process loader's epochs are sampled without the scan of the machine's processes
    (it costs a GIL-bound loader ~12%); a DataLoader with workers has its children counted."""
    data = list(range(4))
    for batches, children in ((iter(data), False), (torch.utils.data.DataLoader(data, num_workers=0), False),
                              (torch.utils.data.DataLoader(data, num_workers=2), True)):
        mem = bc.peak_rss_of(batches, interval=0.5)
        assert mem.children is children and mem.interval == 0.5


def test_records_and_helpers(tmp_path: Path, tiny: Path) -> None:
    path = bc.write_record("unit", {"samples_per_s": np.float64(2.5), "n": np.int64(3)}, tmp_path)
    bc.write_record("unit", {"samples_per_s": 1.0}, tmp_path)
    lines = [json.loads(s) for s in path.read_text().splitlines()]
    assert [r["samples_per_s"] for r in lines] == [2.5, 1.0] and lines[0]["n"] == 3
    assert lines[0]["benchmark"] == "unit" and "timestamp" in lines[0]
    assert lines[0]["machine"]["numpy"] == np.__version__ and lines[0]["machine"]["cpu_count"]
    with pytest.raises(TypeError, match="JSON"):
        bc.write_record("unit", {"ids": np.arange(5000)}, tmp_path)

    values = iter([3.0, 1.0, 2.0])
    median, runs = bc.median_of(lambda: {"samples_per_s": next(values)}, repeats=3)
    assert median == {"samples_per_s": 2.0} and len(runs) == 3

    assert bc.check_complete(np.array([0, 2, 2, 2, 7]), 4) == {
        "missing": 2, "duplicated": 2, "foreign": 1,
    }
    size = sum(p.stat().st_size for p in tiny.glob("*.npy"))
    assert bc.evict(tiny) == {"files": 3, "bytes": size}
    assert bc.sequential_read(tiny)["bytes"] == size
    copied = bc.copy_file(tiny / "x.npy", tmp_path / "x.npy")
    assert copied["bytes"] == (tmp_path / "x.npy").stat().st_size > 0
    assert "| a | b |" in bc.format_table([{"a": 1.23456, "b": None}], ["a", "b"])


# --- benchmarks/bench_gpu.py and bench_scaling.py ---------------------------------------------


def test_bench_gpu_quick_on_cpu(tmp_path: Path) -> None:
    """The GPU benchmark's smoke path (CUDA ignored): the device= rows and every legacy variant run,
    are correct and recorded."""
    records = tmp_path / "records"
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_gpu.py"), "--quick", "--cpu", "--repeats", "1",
         "--datasets", "tab", "--legacy", "--workers", "0,2", "--data", str(tmp_path / "data"),
         "--records", str(records), "--no-report"],
        capture_output=True, text=True, timeout=120, check=False, cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "SKIPPING the GPU parts" in done.stdout
    lines = [json.loads(s) for s in (records / "gpu.jsonl").read_text().splitlines()]
    assert len({r["run_id"] for r in lines}) == 1
    variants = {r["variant"]: r for r in lines if r["role"] == "variant"}
    assert set(variants) == {"cpu", "pin_copy", "step_alone", "serial", "async", "overlap", "dl_w0",
                             "cpu_after", "dl_w2"}
    for key, rec in variants.items():
        assert rec["benchmark"] == "gpu" and rec["quick"] is True and rec["cuda"] is False, key
        assert rec["samples_per_s"] > 0 and rec["correct"] is True, key
        assert rec["machine"]["cpu_count"] and rec["dataset"] == "tab", key
        if key != "step_alone":
            assert rec["missing"] == 0 and rec["duplicated"] == 0 and rec["samples"] == rec["rows"], key
    assert all(variants[k]["order_equal_cpu"] for k in ("pin_copy", "serial", "async", "overlap", "dl_w0"))
    assert variants["cpu"]["vs_cpu"] == 1.0 and variants["step_alone"]["step_width"] > 0
    assert variants["overlap"]["time_vs_max_load_step"] > 0
    [summary] = [r for r in lines if r["role"] == "summary"]
    assert summary["all_correct"] is True and summary["workers"] == [0, 2]
    device = {r["variant"]: r for r in lines if r["role"] == "device"}
    assert set(device) == {"load_alone", "device", "step_long", "step_short"}
    assert all(r["correct"] and r["dataset"] == "tab" and r["order_equal_cpu"] for r in device.values())
    assert device["device"]["copy_gb_per_s"] > 0 and device["device"]["copy_vs_pinned"] is None  # no CUDA
    assert device["step_long"]["step_s"] > device["step_short"]["step_s"]
    [dsum] = [r for r in lines if r["role"] == "device_summary"]
    assert set(dsum["targets"]) == {"copy", "long", "short"} and dsum["targets"]["copy"] is None

    gpu = _load("_benchmarks_bench_gpu", ROOT / "benchmarks" / "bench_gpu.py")
    text = gpu.render(lines)
    assert "no CUDA" in text and "**holds**" in text and "--quick smoke run" in text
    assert "the device= path" in text and "targets copy n/a" in text


def test_bench_quality_fractions_plan_like_the_full_loader_and_judge_from_the_figures(tmp_path: Path) -> None:
    """The quality benchmark at 1/16 of a label-sorted tab dataset: the id+y loader it iterates plans
    the same windows and pieces as the full-column loader (load-time pieces, and whole units with
    piece_rows=0), and the section's verdicts follow the measured figures."""
    bq = _load("_benchmarks_bench_quality", ROOT / "benchmarks" / "bench_quality.py")
    qf = sys.modules["_quality_fractions"]
    rows = 20_000
    path = bq.ensure_store(bq.ensure_npy(tmp_path / "npy", rows), tmp_path / "tab.zarr", rows, bq.DEFAULT_UNIT, None)
    recs = []
    for pieces, tag in ((None, qf.PIECES), (0, qf.WHOLE)):
        rec = bq.measure(path, rows * 528 // 16, 1, piece_rows=pieces)
        assert rec["window_match"] and rec["piece_match"] and rec["plan_match"], rec
        assert rec["piece_rows_explicit"] is None and rec["ids_missing"] == rec["ids_duplicated"] == 0
        recs.append({**rec, "kind": "fraction", "fraction": 16, "pieces": tag, "config": tag})
    after, whole = recs
    assert after["pieces_split_units"] and 1 <= after["piece_rows_cut"] < after["unit_rows"]
    assert not whole["pieces_split_units"] and whole["piece_rows_cut"] == 0
    assert after["deff"] < whole["deff"] / 3
    verdicts = [line.split(":")[0] for line in qf.targets(recs)]
    assert verdicts[:3] == ["holds" if ok else "FAILS" for ok in (
        after["deff"] <= 1.25, after["kl_ratio"] <= 1.3, abs(after["predicted_deff"] / after["deff"] - 1) <= 0.1)]
    worse = [{**after, "deff": 2 * after["predicted_deff"], "kl_ratio": 2.0}, whole]
    assert [line.split(":")[0] for line in qf.targets(worse)][:3] == ["FAILS"] * 3
    assert "| 20,000 | 1/16 (" in qf.render(recs)


def test_bench_scaling_lists() -> None:
    scaling = _load("_benchmarks_bench_scaling", ROOT / "benchmarks" / "bench_scaling.py")
    assert scaling.int_list("1,2, 4,8,16", 1) == [1, 2, 4, 8, 16]
    assert scaling.int_list("", 0) == []
    with pytest.raises(argparse.ArgumentTypeError, match="integers"):
        scaling.int_list("1,x", 1)
    with pytest.raises(argparse.ArgumentTypeError, match=">= 1"):
        scaling.int_list("0,2", 1)
    assert scaling.thread_counts(16) == [1, 2, 4, 8, 16] and scaling.thread_counts(2) == [1, 2, 4]


def test_bench_contention_pairs_epochs_and_restores_torch_threads(tmp_path: Path) -> None:
    """The contention benchmark's measurement on a tiny img dataset: one ratio per adjacent
    (ram-limit, streambatch) pair, the median of them reported, torch's threads restored."""
    cont = _load("_benchmarks_bench_contention", ROOT / "benchmarks" / "bench_contention.py")
    bt = sys.modules["bench_throughput"]
    assert cont.thread_list("2, 1") == [2, 1]
    for bad in ("0", "x", ""):
        with pytest.raises(argparse.ArgumentTypeError):
            cont.thread_list(bad)
    rows = bt.rows_for("img", True)
    npy = bt.ensure_npy(tmp_path, "img", rows)
    store = bt.ensure_store(npy, tmp_path / "img.parquet", "parquet", "none", rows)
    columns = cont._common.load_columns(npy)
    threads = torch.get_num_threads()
    rec = cont.measure("img", "parquet", "none", store, columns, bt.budget_for("img", True), 3, 1)
    assert torch.get_num_threads() == threads
    assert rec["torch_threads"] == 1 and rec["rows"] == rows
    pairs = [s / r for s, r in zip(rec["samples_per_s_all"], rec["ram_limit_all"])]
    assert rec["vs_ram_paired_all"] == pytest.approx(pairs) and len(pairs) == 3
    assert rec["vs_ram_paired"] == pytest.approx(sorted(pairs)[1])
    assert rec["alone_samples_per_s"] > 0 and rec["consumer_samples_per_s"] > 0
    assert rec["omp_wait_policy"] == cont.wait_policy()
    text = cont.render([{**rec, "torch_default_threads": 1, "quick": True, "repeats": 3, "command": "c"},
                        {**rec, "torch_threads": 2, "omp_wait_policy": "passive", "torch_default_threads": 1}])
    assert f"| img | parquet | none | 1 (default) | {cont.wait_policy()} |" in text and "--quick smoke run" in text
    assert "| img | parquet | none | 2 | passive |" in text


def test_bench_contention_wait_policies_and_child_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    """The passive rows' child gets this run's options, its own policy and threads, and the run id."""
    cont = _load("_benchmarks_bench_contention", ROOT / "benchmarks" / "bench_contention.py")
    assert cont.policy_list("passive, default,passive") == ["passive", "default"]
    for bad in ("", "spin", "default,active"):
        with pytest.raises(argparse.ArgumentTypeError):
            cont.policy_list(bad)
    argv = ["--quick", "--torch-threads", "2,1", "--repeats=5", "--wait-policies=default,passive", "--datasets", "img"]
    assert cont.child_argv(argv, "RUN", [2]) == [
        "--quick", "--repeats=5", "--datasets", "img",
        "--wait-policies", "passive", "--torch-threads", "2", "--run-id", "RUN", "--no-report"]
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    assert cont.wait_policy() == "default"
    monkeypatch.setenv("OMP_WAIT_POLICY", " PASSIVE ")
    assert cont.wait_policy() == "passive"


def test_varlen_benchmark_rows_baseline_and_quality(tmp_path: Path) -> None:
    """The benchmarks' varlen dataset: labels sorted by the rule the quality metrics assume, the 99th
    percentile of lengths far above the median; the in-RAM baseline and the loader serve every
    document once with its length and label; the quality rows carry the prediction and the
    loader's refusal of a budget too small for batches of 256 documents."""
    _load("_benchmarks_bench_throughput", ROOT / "benchmarks" / "bench_throughput.py")
    import _varlen
    import _varlen_budget

    from streambatch import StreamDataset

    src, dst = _varlen.ensure(tmp_path, quick=True)
    docs, labels = _varlen.read_rows(src)
    lengths = docs.lengths
    assert np.array_equal(labels, np.arange(len(docs)) * 10 // len(docs))
    assert np.percentile(lengths, 99) >= 50 * np.median(lengths)
    ram = _varlen.consume(_varlen.in_ram_batches(docs, labels, 0, "nested"), lengths)
    sb = _varlen.consume(StreamDataset(dst, batch_size=256, memory_budget="8MiB", return_index=True), lengths)
    for r in (ram, sb):
        assert r["wrong_lengths"] == r["wrong_labels"] == 0 and r["tokens"] == int(lengths.sum())
        assert np.array_equal(np.sort(r["ids"]), np.arange(len(docs)))
    recs: list[dict[str, Any]] = []
    _varlen_budget.quality_run(tmp_path, True, 1, lambda g, c, rec: recs.append(rec), fractions=(2, 64))
    good, small = recs
    assert good["ids_missing"] == good["ids_duplicated"] == good["wrong_labels"] == 0 and good["deff"] > 1
    assert not good["pieces_split_units"] and good["predicted_deff"] > 1
    assert "is too small for batches of 256 rows" in small["refused"]
    text = _varlen_budget.render_quality(recs, 9 / 512)
    assert "| 1/2 (" in text and "refused: " in text


def test_bench_throughput_measures_every_registered_format_and_reduced_datasets(tmp_path: Path) -> None:
    """The throughput benchmark takes its formats from the storage registry (every format
    uncompressed on tab and img, the default format with lz4 on tab too), and ``--fraction``
    scales rows and budget into a folder of its own."""
    from streambatch.storage import DEFAULT_FORMAT, FORMATS

    bt = _load("_benchmarks_bench_throughput", ROOT / "benchmarks" / "bench_throughput.py")
    for kind in ("tab", "img"):
        assert [f for k, f, c in bt.CONFIGS if k == kind and c == "none"] == list(FORMATS)
    assert [(f, c) for k, f, c in bt.CONFIGS if c != "none"] == [(DEFAULT_FORMAT, "lz4")]
    assert bt.rows_for("tab", False, 0.25) == bt.FULL_ROWS["tab"] // 4
    assert bt.budget_for("tab", False, 0.25) == bt.BUDGET // 4 and bt.budget_for("tab", False) == bt.BUDGET
    assert bt.data_root(tmp_path, False, 0.25) == tmp_path / "fraction-0.25" and bt.data_root(tmp_path, False) == tmp_path


def test_bench_training_trains_both_models_on_pieces_and_whole_units(tmp_path: Path) -> None:
    """The training benchmark's quick path: softmax regression and the BatchNorm MLP each on every
    feed, complete epochs, the 1/8 feed in load-time pieces beside the same budget in whole units,
    and a report with one target line per model."""
    records = tmp_path / "records"
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_training.py"), "--quick", "--epochs", "1",
         "--schedules", "constant", "--data", str(tmp_path / "data"), "--records", str(records), "--no-report"],
        capture_output=True, text=True, timeout=300, check=False, cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    lines = [json.loads(s) for s in (records / "training.jsonl").read_text().splitlines()]
    bt = _load("_benchmarks_bench_training", ROOT / "benchmarks" / "bench_training.py")
    runs = {(r["model_kind"], r["feed"]): r for r in lines}
    assert set(runs) == {(m, f) for m in bt.MODELS for f in bt.FEEDS} and len(lines) == len(runs)
    assert all(r["epoch0_missing"] == 0 and r["epoch0_duplicated"] == 0 for r in lines)
    for model in bt.MODELS:
        pieces, whole = runs[model, "streambatch 1/8"], runs[model, "streambatch 1/8, whole units"]
        assert pieces["budget_bytes"] == whole["budget_bytes"] < runs[model, "streambatch"]["budget_bytes"]
        assert pieces["pieces_split_units"] and pieces["piece_rows"] < pieces["unit_rows"]
        assert not whole["pieces_split_units"] and pieces["deff"] < whole["deff"]
    assert isinstance(bt.make_model("mlp", 32)[1], torch.nn.BatchNorm1d)
    text = bt.render(lines)
    for model in bt.MODELS:
        assert f"- {model}, constant lr: streambatch " in text
        assert text.count(f"| {model} | constant |") == len(bt.FEEDS)
    assert "whole units" in text and "piece rows" in text


# --- benchmarks/bench_ceiling.py and the touching consumer ----------------------------------------
def test_touch_consumer_reads_every_tensor_and_counts_process_cpu() -> None:
    """``consume(touch=True)`` adds one element of every tensor (not the sum of x) and reports the
    process CPU and wall time of the epoch."""
    batches = [{"x": torch.full((4, 3), 2.0), "y": torch.tensor([5, 0, 0, 0]), "id": torch.arange(4) + 4 * i}
               for i in range(3)]
    res = bc.consume(iter(batches), touch=True)
    assert res["x_sum"] == 3 * (2.0 + 5) + (0 + 4 + 8)  # x[0, 0] + y[0] + id[0] of each batch
    assert list(res["ids"]) == list(range(12)) and res["cpu_seconds"] >= 0 and res["wall_seconds"] >= res["seconds"]
    assert bc.consume(iter(batches))["x_sum"] == 3 * 24.0


def test_bench_ceiling_ipc_path_serves_every_row_once_through_two_workers() -> None:
    """The DataLoader IPC ceiling's batches (a template copied, ids set) cross two real worker
    processes: every id once, each batch with the template's values, in one shared block."""
    bce = _load("_benchmarks_bench_ceiling", ROOT / "benchmarks" / "bench_ceiling.py")
    template = {"x": torch.arange(256 * 3, dtype=torch.float32).reshape(256, 3)}
    got = list(torch.utils.data.DataLoader(bce.Prebuilt(template, 1000), batch_size=None, num_workers=2))
    ids = np.concatenate([b["id"].numpy() for b in got])
    assert sorted(ids.tolist()) == list(range(1000)) and len(got) == 4
    assert all(torch.equal(b["x"], template["x"][:len(b["id"])]) for b in got)
    assert all(len({t.untyped_storage().data_ptr() for t in b.values()}) == 1 for b in got)  # one block a batch


def _each_row_once(got: list[dict[str, Any]], columns: dict[str, np.ndarray]) -> None:
    """A ceiling path's epoch of the 3,000-row ``tab``: every row once, over several windows, and
    each of ``columns`` (the source's) the row's bytes."""
    ids = np.concatenate([b["id"].numpy() for b in got])
    assert sorted(ids.tolist()) == list(range(3000)) and len(got) > 3000 // 256  # several windows
    for name, values in columns.items():
        assert all(np.array_equal(b[name].numpy(), values[b["id"].numpy()]) for b in got)


@pytest.mark.parametrize("threads", [1, 2])
def test_bench_ceiling_design_paths_serve_every_row_once_with_its_bytes(tmp_path: Path, threads: int) -> None:
    """The ceiling's design paths (units or pieces read with preadv into window buffers, gathered
    by np.take, 1 or 2 threads) serve every row of a real Zarr dataset once, with its stored bytes."""
    import streambatch as sb

    bce = _load("_benchmarks_bench_ceiling", ROOT / "benchmarks" / "bench_ceiling.py")
    npy = md.make_dataset("tab", tmp_path / "npy", rows=3000, seed=2)
    sb.convert(npy, tmp_path / "t.zarr", label="y", codec="none", unit_bytes=64 * 528)
    x = np.load(npy / "x.npy")
    store = bce.Store(tmp_path / "t.zarr")
    try:
        assert store.m.n_units > 10
        for piece in (0, 7):
            sets = [store.buffers(500 + int(store.m.unit_rows.max())) for _ in range(2)]
            _each_row_once(list(bce.design_path(store, piece, 500, threads, sets, seed=3)), {"x": x})
    finally:
        store.close()


def _sharded_tab(tmp_path: Path) -> tuple[Any, Any, np.ndarray, np.ndarray]:
    """bench_ceiling, the ``Store`` of a real uncompressed Zarr ``tab`` dataset of 3,000 rows whose
    columns lie in several shard files, and its ``x`` and ``y``."""
    import streambatch as sb

    bce = _load("_benchmarks_bench_ceiling", ROOT / "benchmarks" / "bench_ceiling.py")
    npy = md.make_dataset("tab", tmp_path / "npy", rows=3000, seed=2)
    sb.convert(npy, tmp_path / "t.zarr", label="y", codec="none", unit_bytes=64 * 528, shard_bytes=256 * 1024)
    store = bce.Store(tmp_path / "t.zarr")
    assert len(set(store.file["x"].tolist())) > 1  # rows come from several files
    return bce, store, np.load(npy / "x.npy"), np.load(npy / "y.npy")


@pytest.mark.parametrize("threads", [1, 2])
def test_bench_ceiling_mapped_path_serves_every_row_once_with_its_bytes(tmp_path: Path, threads: int) -> None:
    """The ceiling's one-copy path (batches gathered straight from the memory-mapped shard files,
    1 or 2 threads) serves every row of a real Zarr dataset of several shard files once, with its
    stored bytes."""
    bce, store, x, y = _sharded_tab(tmp_path)
    try:
        mapped = bce.Mapped(store)
        for piece, native in ((0, False), (7, False), (7, True)):  # numpy gathers per file, or a C copy per column
            _each_row_once(list(bce.mapped_path(store, mapped, piece, 500, threads, seed=3, native=native)),
                           {"x": x, "y": y})
        assert mapped.peak_file_mib > 0  # the mapped pages were sampled at the windows' ends
    finally:
        store.close()


@pytest.mark.parametrize("threads", [1, 2])
def test_bench_ceiling_direct_path_serves_every_row_once_with_its_bytes(tmp_path: Path, threads: int,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The ceiling's one-copy path without mappings (large rows read row by row into the batches,
    the small columns by pieces into a window buffer, 1 or 2 threads) serves every row of a real
    Zarr dataset of several shard files once, with its stored bytes."""
    bce, store, x, y = _sharded_tab(tmp_path)
    monkeypatch.setattr(bce, "DIRECT_BYTES", 256)  # tab's 512-byte rows of x count as large here
    try:
        for piece in (0, 7):
            sets = [store.buffers(500 + int(store.m.unit_rows.max())) for _ in range(2)]
            _each_row_once(list(bce.direct_path(store, piece, 500, threads, sets, seed=3)), {"x": x, "y": y})
    finally:
        store.close()
