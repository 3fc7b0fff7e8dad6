"""Per-feature statistics of wide columns: a checksummed file beside a small manifest.

Rows of millions of values made the manifest hundreds of megabytes (the statistics were JSON
lists) and every process that opened the dataset paid for it.  Wide columns now keep them in
``_stats/*.npy``, read (and checked) only when normalisation or ``verify`` asks.
"""

from __future__ import annotations

import json
import re
import shutil
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import streambatch
from streambatch import DataError, InputError, ManifestError
from streambatch.cli import main as cli_main
from streambatch.manifest import MANIFEST_NAME

from conftest import flip_byte, write_manifest


def _wide_src(folder: Path, rows: int = 257, seed: int = 0) -> dict[str, np.ndarray]:
    """id, x float32[3000] (a constant feature, one far from zero) and m float64[40, 30]."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((rows, 3000)) * rng.uniform(0.1, 5, 3000) + rng.uniform(-3, 3, 3000)).astype(np.float32)
    x[:, 7] = 2.5
    x[:, 11] += 1000
    data = {"id": np.arange(rows, dtype=np.int64), "x": x, "m": rng.standard_normal((rows, 40, 30))}
    folder.mkdir(parents=True)
    for k, v in data.items():
        np.save(folder / f"{k}.npy", v)
    return data


def _batches(path: Any, **kw: Any) -> list[dict[str, torch.Tensor]]:
    ds = streambatch.StreamDataset(path, batch_size=32, memory_budget="16MiB", return_index=True, seed=1,
                                   normalize=True, **kw)
    return list(ds)


def _same(a: list[dict[str, torch.Tensor]], b: list[dict[str, torch.Tensor]]) -> bool:
    return len(a) == len(b) and all(x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
                                    for x, y in zip(a, b))


@pytest.fixture(scope="module")
def wide(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    root = tmp_path_factory.mktemp("wide")
    data = _wide_src(root / "src")
    streambatch.convert(root / "src", root / "d.zarr", unit_rows=10, progress=False)
    return root / "d.zarr", data


@pytest.fixture(scope="module")
def two_million(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """3 rows x float32[2,000,000] as an .npy file (24 MB)."""
    x = np.random.default_rng(5).standard_normal((3, 2_000_000), dtype=np.float32)
    path = tmp_path_factory.mktemp("two-million") / "wide.npy"
    np.save(path, x)
    return path, x


def test_rows_of_two_million_values_keep_the_manifest_under_1mb(two_million, tmp_path: Path) -> None:
    """The statistics were 156 MB of JSON in the manifest; now in their file, exact, with a summary
    inline."""
    src, x = two_million
    m = streambatch.convert(src, tmp_path / "d.zarr", progress=False)
    assert (tmp_path / "d.zarr" / MANIFEST_NAME).stat().st_size < 1_000_000
    st = streambatch.load_manifest(tmp_path / "d.zarr").feature_stats("wide")
    x64 = x.astype(np.float64)
    for key, ref in (("mean", x64.mean(0)), ("std", x64.std(0)), ("min", x64.min(0)), ("max", x64.max(0))):
        assert st[key].shape == (2_000_000,) and st[key].dtype == np.float64
        np.testing.assert_allclose(st[key], ref, rtol=1e-12, atol=1e-12, err_msg=key)
    summary = m.stats_files["wide"]
    assert summary["count"] == 3 and summary["min"] == float(x.min()) and summary["max"] == float(x.max())
    assert summary["mean"] == pytest.approx(float(x64.mean()), rel=1e-12)
    assert summary["std"] == pytest.approx(float(x64.std()), rel=1e-12)


def test_too_little_memory_for_wide_rows_is_refused_naming_the_least_that_fits(two_million, tmp_path: Path) -> None:
    """The statistics of 2,000,000 values (80 MB) and a few 8 MB rows cannot fit in 4 MiB: refused
    before anything is read or written, naming a budget that then works."""
    src, _ = two_million
    with pytest.raises(InputError, match=r"--memory 4\.0 MiB is too small for rows of 7\.6 MiB .*give at least") as e:
        streambatch.convert(src, tmp_path / "d.zarr", memory="4MiB", progress=False)
    assert "\n" not in str(e.value) and not (tmp_path / "d.zarr").exists()
    least = re.search(r"give at least (\d+MiB)", str(e.value)).group(1)
    assert streambatch.convert(src, tmp_path / "d.zarr", memory=least, progress=False).rows == 3


def test_normalize_on_wide_columns_equals_numpy_per_feature_standardisation(wide) -> None:
    path, data = wide
    m = streambatch.load_manifest(path)
    assert set(m.stats_files) == {"x", "m"} and set(m.stats) == {"id"}
    for name in ("x", "m"):
        raw = data[name].astype(np.float64)
        st = m.feature_stats(name)
        np.testing.assert_allclose(st["mean"], raw.mean(0), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(st["std"], raw.std(0), rtol=1e-12, atol=1e-12)
        assert st["min"].shape == data[name].shape[1:]
    got = _batches(path)
    rows = torch.cat([b["_row"] for b in got]).numpy()
    assert np.array_equal(np.sort(rows), np.arange(len(data["id"])))
    for name in ("x", "m"):
        raw = data[name].astype(np.float64)
        std = raw.std(0)
        want = (raw - raw.mean(0)) / np.where(std > 0, std, 1)
        served = torch.cat([b[name] for b in got]).numpy()
        np.testing.assert_allclose(served, want[rows], rtol=1e-4, atol=2e-5, err_msg=name)
    assert np.all(torch.cat([b["x"] for b in got]).numpy()[:, 7] == 0)  # the constant feature: centred only


def _inline_copy(path: Path, dst: Path) -> Path:
    """``path`` as a dataset written before statistics files: every column's lists in the manifest."""
    shutil.copytree(path, dst)
    doc = json.loads((dst / MANIFEST_NAME).read_text())
    doc.pop("checksum")  # nor had manifests a checksum of their own then
    for name, entry in doc.pop("stats_files").items():
        arr = np.load(dst / entry["path"], allow_pickle=False)
        doc["stats"][name] = {"count": entry["count"], **{
            k: [float(v) if np.isfinite(v) else None for v in arr[i].reshape(-1)]
            for i, k in enumerate(("mean", "std", "min", "max"))}}
    shutil.rmtree(dst / "_stats")
    (dst / MANIFEST_NAME).write_text(json.dumps(doc))
    return dst


def test_a_dataset_with_inline_statistics_normalises_as_before(wide, tmp_path: Path) -> None:
    path, _ = wide
    old = _inline_copy(path, tmp_path / "old.zarr")
    m_old, m_new = streambatch.load_manifest(old), streambatch.load_manifest(path)
    assert not m_old.stats_files and set(m_old.stats) == {"id", "x", "m"}
    for name in ("x", "m"):
        for key, arr in m_old.feature_stats(name).items():
            assert np.array_equal(arr, m_new.feature_stats(name)[key]), (name, key)
    assert _same(_batches(old), _batches(path))


@pytest.mark.parametrize("where", ["header", "data", "truncated", "missing"])
def test_a_damaged_statistics_file_is_a_data_error_naming_it(wide, tmp_path: Path, capsys, where: str) -> None:
    path, _ = wide
    ds = shutil.copytree(path, tmp_path / "d.zarr")
    rel = streambatch.load_manifest(ds).stats_files["x"]["path"]
    f = ds / rel
    if where == "header":
        flip_byte(f, 20, 0x01)
    elif where == "data":
        flip_byte(f, f.stat().st_size - 1000, 0x01)
    elif where == "truncated":
        with open(f, "r+b") as fh:
            fh.truncate(f.stat().st_size - 8)
    else:
        f.unlink()
    name = re.escape(str(f))
    with pytest.raises(DataError, match=name) as e:
        streambatch.StreamDataset(ds, normalize=["x"])
    assert "\n" not in str(e.value)
    with pytest.raises(DataError, match=name):
        streambatch.load_manifest(ds).feature_stats("x")
    streambatch.StreamDataset(ds, normalize=["m"])  # the other column's file is intact
    capsys.readouterr()
    assert cli_main(["verify", str(ds)]) == 1
    err = capsys.readouterr().err
    assert "FAILED" in err and f"file {rel}:" in err and len(err.splitlines()) == 1, err
    assert cli_main(["info", str(ds)]) == 0  # the summary is in the manifest: the file is not read
    assert f"per feature in {rel}" in capsys.readouterr().out


@pytest.mark.parametrize("edit, message", [
    (lambda e: e.update(path="../../etc/passwd"), "leaves the dataset folder"),
    (lambda e: e.update(size=1 << 40), "'size' must be an integer"),
    (lambda e: e.update(crc32c=-1), "'crc32c' must be an integer"),
    (lambda e: e.update(mean="big"), "'mean' must be numbers"),
    (lambda e: e.pop("std"), "'std' must be numbers"),
])
def test_a_malformed_statistics_file_entry_is_a_manifest_error(wide, tmp_path: Path, edit, message) -> None:
    path, _ = wide
    ds = shutil.copytree(path, tmp_path / "d.zarr")
    doc = json.loads((ds / MANIFEST_NAME).read_text())
    edit(doc["stats_files"]["x"])
    write_manifest(ds, doc)
    with pytest.raises(ManifestError, match=f"stats_files of column 'x': .*{re.escape(message)}"):
        streambatch.load_manifest(ds)


def test_statistics_files_are_read_over_http(wide, tmp_path: Path) -> None:
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
    from range_server import RangeServer

    path, _ = wide
    srv = RangeServer(path.parent)
    t = threading.Thread(target=srv.serve_forever, name="test-http", daemon=True)
    t.start()
    try:
        url = f"{srv.url}/{path.name}"
        assert streambatch.load_manifest(url).stats_files
        assert _same(_batches(url, remote=streambatch.RemoteOptions(retries=1, backoff=0.01)), _batches(path))
    finally:
        srv.shutdown()
        srv.server_close()


def test_a_shuffle_of_wide_rows_reads_buckets_larger_than_their_share_row_by_row(tmp_path: Path) -> None:
    """Rows of 6 KB under a 64 KiB budget: ~300 buckets of 0.7 rows on average, so some draw two or
    more rows, more than half the budget left beside the statistics; those are read row by row in
    their shuffled order instead of whole.  Every row arrives once, intact."""
    rng = np.random.default_rng(4)
    rows = 200
    src = tmp_path / "src"
    src.mkdir()
    x = rng.standard_normal((rows, 1500)).astype(np.float32)
    np.save(src / "id.npy", np.arange(rows, dtype=np.int64))
    np.save(src / "x.npy", x)
    m = streambatch.convert(src, tmp_path / "d.zarr", shuffle=7, memory="64KiB", unit_rows=16, progress=False)
    ids = np.concatenate([b["id"].numpy() for b in streambatch.StreamDataset(m.root, batch_size=50, shuffle=False)])
    assert sorted(ids) == list(range(rows)) and not np.array_equal(ids, np.arange(rows))
    got = np.concatenate([b["x"].numpy() for b in streambatch.StreamDataset(m.root, batch_size=50, shuffle=False)])
    assert np.array_equal(got, x[ids])
