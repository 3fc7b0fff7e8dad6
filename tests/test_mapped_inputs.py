"""Inputs that map onto numeric columns: nulls (``--fill`` / ``--drop-nulls``), pandas
categoricals, timestamps and durations, CSV with another delimiter, Hive-partitioned Parquet.

Every input is made the way users make it (pandas ``to_parquet`` / ``to_feather`` /
``to_csv``, pyarrow ``write_dataset``, numpy ``save``), converted through the CLI or the Python
API, and the stored values are read back (``read_all`` and the loader) and compared with what
pandas or numpy say they are; the manifest's column ``meta`` and counts are checked too.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

import streambatch
from conftest import write_manifest
from streambatch.cli import main
from streambatch.errors import InputError, ManifestError
from streambatch.manifest import MANIFEST_NAME, Manifest
from streambatch.storage import load_manifest
from streambatch.sources import open_source
from streambatch.storage import read_all

ROOT = Path(streambatch.__file__).resolve().parents[1]  # the streambatch under test


def cli(capsys: pytest.CaptureFixture[str], *argv: Any) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def stored(dst: Path) -> dict[str, np.ndarray]:
    return read_all(load_manifest(dst))


def meta(dst: Path) -> dict[str, Any]:
    return {c.name: c.meta for c in load_manifest(dst).columns}


def loaded(dst: Path) -> dict[str, np.ndarray]:
    """Every row through the loader (unshuffled), concatenated."""
    ds = streambatch.StreamDataset(dst, batch_size=7, shuffle=False, threads=1)
    batches = list(ds)
    return {k: np.concatenate([np.asarray(b[k]) for b in batches]) for k in batches[0]}


# --------------------------------------------------------------------------- nulls


def _nullable_frame(rows: int = 300) -> pd.DataFrame:
    """pandas nullable dtypes with nulls: Int64, Float64 (and a NaN float, which pandas writes as
    a null), boolean; ``ok`` has none."""
    rng = np.random.default_rng(0)
    holes = lambda every, at: [i % every == at for i in range(rows)]  # noqa: E731
    return pd.DataFrame({
        "ok": np.arange(rows, dtype=np.int64),
        "i": pd.array(np.where(holes(7, 3), None, rng.integers(-50, 50, rows)), dtype="Int64"),
        "f": pd.array(np.where(holes(11, 5), np.nan, rng.standard_normal(rows)), dtype="float64"),
        "b": pd.array(np.where(holes(13, 0), None, rng.random(rows) < 0.5), dtype="boolean"),
    })


def _write(df: pd.DataFrame, d: Path, how: str) -> Path:
    if how == "parquet":
        df.to_parquet(d / "in.parquet", row_group_size=64)
        return d / "in.parquet"
    if how == "feather":
        df.to_feather(d / "in.feather")
        return d / "in.feather"
    if how == "csv":  # empty fields for nulls
        df.to_csv(d / "in.csv", index=False)
        return d / "in.csv"
    path = d / "in.jsonl"
    df.to_json(path, orient="records", lines=True, double_precision=15)
    return path


@pytest.mark.parametrize("how", ["parquet", "feather", "csv", "jsonl"])
def test_a_null_is_an_error_naming_file_column_row_and_both_options(tmp_path: Path, how: str,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    src = _write(_nullable_frame(), tmp_path, how)
    code, out, err = cli(capsys, "convert", src, tmp_path / "ds", "-q", "--columns", "ok", "i")
    assert code == 2 and out == ""
    assert err.count("\n") == 1
    assert src.name in err and "column 'i'" in err and "row 3" in err
    assert "--fill i=VALUE" in err and "--drop-nulls" in err
    assert not (tmp_path / "ds").exists()


@pytest.mark.parametrize("how", ["parquet", "feather", "csv", "jsonl"])
def test_fill_puts_the_value_in_place_of_nulls_and_counts_them(tmp_path: Path, how: str,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    df = _nullable_frame()
    src = _write(df, tmp_path, how)
    code, out, err = cli(capsys, "convert", src, tmp_path / "ds", "-q", "--fill", "i=-1", "--fill", "f=nan",
                         "--fill", "b=true", "--unit-rows", "50")
    assert code == 0, err
    got = stored(tmp_path / "ds")
    np.testing.assert_array_equal(got["ok"], df["ok"].to_numpy())
    np.testing.assert_array_equal(got["i"], df["i"].fillna(-1).to_numpy(np.int64))
    np.testing.assert_allclose(got["f"], df["f"].to_numpy(np.float64), rtol=1e-12)  # NaN for nulls; text: 15 digits
    np.testing.assert_array_equal(got["b"], df["b"].fillna(True).to_numpy(bool))
    counts = {"i": int(df["i"].isna().sum()), "f": int(df["f"].isna().sum()), "b": int(df["b"].isna().sum())}
    m = load_manifest(tmp_path / "ds")
    assert m.source["filled"] == counts and m.rows == len(df)
    assert m.options["fill"] == {"i": -1, "f": "nan", "b": True}
    for name, n in counts.items():
        assert f"filled {n:,} null(s) in column {name!r}" in out


@pytest.mark.parametrize("out", ["zarr", "parquet"])
@pytest.mark.parametrize("shuffle", [None, 3])
def test_drop_nulls_leaves_out_rows_with_a_null_and_counts_them(tmp_path: Path, out: str, shuffle: int | None) -> None:
    """Rows with a null in a kept column without --fill are dropped, whatever the row groups;
    the rows of a column with --fill are kept and filled."""
    df = _nullable_frame(1000)
    src = _write(df, tmp_path, "parquet")
    m = streambatch.convert(src, tmp_path / "ds", out, drop_nulls=True, fill={"b": False}, unit_rows=64,
                            shard_bytes="2KiB", threads=2, shuffle=shuffle, progress=False)
    assert isinstance(m, Manifest)
    keep = df.dropna(subset=["i", "f"])
    assert m.rows == len(keep) and m.source["dropped_rows"] == len(df) - len(keep)
    assert m.source["filled"] == {"b": int(keep["b"].isna().sum())}
    got = stored(tmp_path / "ds")
    order = np.argsort(got["ok"]) if shuffle is not None else np.arange(len(keep))
    np.testing.assert_array_equal(got["ok"][order], keep["ok"].to_numpy())
    np.testing.assert_array_equal(got["i"][order], keep["i"].to_numpy(np.int64))
    np.testing.assert_array_equal(got["f"][order], keep["f"].to_numpy(np.float64))
    np.testing.assert_array_equal(got["b"][order], keep["b"].fillna(False).to_numpy(bool))
    np.testing.assert_array_equal(np.sort(loaded(tmp_path / "ds")["ok"]), keep["ok"].to_numpy())


def test_drop_nulls_drops_rows_of_list_columns_with_a_null_inside(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """A null list row or a null inside a list drops the row; --fill does not apply to lists."""
    vec = pa.array([[1.0, 2.0], None, [3.0, None], [4.0, 5.0], [6.0, 7.0]], type=pa.list_(pa.float32(), 2))
    pq.write_table(pa.table({"v": vec, "y": pa.array([0, 1, 2, None, 4])}), tmp_path / "l.parquet")
    code, out, err = cli(capsys, "convert", tmp_path / "l.parquet", tmp_path / "ds", "-q", "--drop-nulls")
    assert code == 0, err
    got = stored(tmp_path / "ds")
    np.testing.assert_array_equal(got["v"], np.array([[1, 2], [6, 7]], np.float32))
    np.testing.assert_array_equal(got["y"], [0, 4])
    assert "dropped 3 row(s) with a null" in out
    code, _, err = cli(capsys, "convert", tmp_path / "l.parquet", tmp_path / "ds2", "-q", "--fill", "v=0")
    assert code == 2 and "--fill applies to scalar columns" in err and "'v'" in err


def test_fill_and_drop_errors(tmp_path: Path) -> None:
    src = _write(_nullable_frame(), tmp_path, "parquet")
    with pytest.raises(InputError, match=r"in.parquet: --fill names column 'nope'"):
        streambatch.convert(src, tmp_path / "a", fill={"nope": 1}, progress=False)
    with pytest.raises(InputError, match=r"--fill i=1.5: not a value of column 'i' \(int64\)"):
        streambatch.convert(src, tmp_path / "a", fill={"i": 1.5}, progress=False)
    pq.write_table(pa.table({"x": pa.array([None, None], pa.int64())}), tmp_path / "n.parquet")
    with pytest.raises(InputError, match=r"n.parquet: every one of the 2 rows has a null"):
        streambatch.convert(tmp_path / "n.parquet", tmp_path / "a", drop_nulls=True, progress=False)
    assert not (tmp_path / "a").exists()


# --------------------------------------------------------------------------- categoricals


@pytest.mark.parametrize("how", ["parquet", "feather"])
def test_pandas_categoricals_become_codes_with_their_categories(tmp_path: Path, how: str,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    """Codes as pandas' ``cat.codes`` (dtype and values; a missing category filled with -1),
    categories (an unused one too) and ``ordered`` in the manifest, shown by ``info``.  Number
    categories only through Feather: Parquet keeps dictionaries of strings only (pandas reads
    such a column back as plain numbers too)."""
    n = 500
    rng = np.random.default_rng(1)
    colour = pd.Categorical(rng.choice(["red", "green", "blue", None], n), categories=["red", "green", "blue", "teal"])
    size = pd.Categorical(rng.choice(["S", "M", "L"], n), categories=["L", "M", "S"], ordered=True)
    many = pd.Categorical([f"k{i % 300}" for i in range(n)])  # 300 categories: int16 codes
    df = pd.DataFrame({"colour": colour, "size": size, "many": many, "x": np.arange(n, dtype=np.float32)})
    if how == "feather":
        df["num"] = pd.Categorical(rng.choice([2.5, 10, 20], n), categories=[20, 10, 2.5])
    src = _write(df, tmp_path, how)
    code, out, err = cli(capsys, "convert", src, tmp_path / "ds", "-q", "--fill", "colour=-1", "--label", "size")
    assert code == 0, err
    got, m = stored(tmp_path / "ds"), meta(tmp_path / "ds")
    for name in ["colour", "size", "many"] + (["num"] if how == "feather" else []):
        codes = df[name].cat.codes.to_numpy()
        assert got[name].dtype == codes.dtype
        np.testing.assert_array_equal(got[name], codes)
        assert m[name] == {"type": "category", "categories": list(df[name].cat.categories),
                           "ordered": bool(df[name].cat.ordered)}
    np.testing.assert_array_equal(loaded(tmp_path / "ds")["colour"], df["colour"].cat.codes.to_numpy())
    assert m["x"] is None and "meta" not in load_manifest(tmp_path / "ds").to_json()["columns"][3]
    assert load_manifest(tmp_path / "ds").source["filled"] == {"colour": int(df["colour"].isna().sum())}
    code, out, _ = cli(capsys, "info", tmp_path / "ds")
    assert "codes of 4 categories ['red', 'green', 'blue', 'teal']" in out
    assert "codes of 3 ordered categories ['L', 'M', 'S']" in out
    assert cli(capsys, "verify", tmp_path / "ds")[0] == 0


def test_categories_differing_between_files_are_unified(tmp_path: Path) -> None:
    """A Parquet folder whose files have different categories: one list, first seen first,
    and every code names its row's value."""
    (tmp_path / "f").mkdir()
    a = pd.DataFrame({"c": pd.Categorical(["x", "y", "x"]), "v": [1, 2, 3]})
    b = pd.DataFrame({"c": pd.Categorical(["z", "y", "w", "z"]), "v": [4, 5, 6, 7]})
    many = [f"m{i}" for i in range(200)]  # int16 codes in this file, int8 in the others
    c = pd.DataFrame({"c": pd.Categorical(["m199", "x"], categories=[*many, "x"]), "v": [8, 9]})
    a.to_parquet(tmp_path / "f" / "0.parquet")
    b.to_parquet(tmp_path / "f" / "1.parquet")
    c.to_parquet(tmp_path / "f" / "2.parquet")
    m = streambatch.convert(tmp_path / "f", tmp_path / "ds", progress=False)
    assert isinstance(m, Manifest)
    cats = m.column("c").meta["categories"]  # type: ignore[index]
    assert cats == ["x", "y", "w", "z", *many] and m.column("c").dtype == "int16"
    got = stored(tmp_path / "ds")
    assert [cats[i] for i in got["c"]] == ["x", "y", "x", "z", "y", "w", "z", "m199", "x"]
    np.testing.assert_array_equal(got["v"], np.arange(1, 10))


# --------------------------------------------------------------------------- timestamps, durations


@pytest.mark.parametrize("how", ["parquet", "feather"])
def test_timestamps_and_durations_are_int64_with_unit_and_timezone(tmp_path: Path, how: str) -> None:
    n = 200
    df = pd.DataFrame({
        "when": pd.date_range("2021-03-27 22:00", periods=n, freq="17min", tz="Europe/Paris"),
        "naive": pd.date_range("1969-12-31", periods=n, freq="D").as_unit("ns"),
        "took": pd.to_timedelta(np.arange(n) * 1500 - 7, unit="ms"),
    })
    df.loc[5, "when"] = pd.NaT
    src = _write(df, tmp_path, how)
    with pytest.raises(InputError, match=r"column 'when': missing value at row 5"):
        streambatch.convert(src, tmp_path / "x", progress=False)
    streambatch.convert(src, tmp_path / "ds", fill={"when": 0}, progress=False)
    got, m = stored(tmp_path / "ds"), meta(tmp_path / "ds")
    unit = df["when"].dt.unit
    assert m["when"] == {"type": "timestamp", "unit": unit, "timezone": "Europe/Paris"}
    assert m["naive"] == {"type": "timestamp", "unit": "ns"}
    assert m["took"] == {"type": "duration", "unit": df["took"].dt.unit}
    assert all(got[k].dtype == np.int64 for k in ("when", "naive", "took"))
    utc = df["when"].dt.tz_convert(None).to_numpy()
    back = got["when"].view(f"datetime64[{unit}]")
    np.testing.assert_array_equal(np.delete(back, 5), np.delete(utc, 5))
    assert got["when"][5] == 0
    np.testing.assert_array_equal(got["naive"].view("datetime64[ns]"), df["naive"].to_numpy())
    np.testing.assert_array_equal(got["took"].view(f"timedelta64[{m['took']['unit']}]"), df["took"].to_numpy())


def test_numpy_datetime64_and_timedelta64_keep_their_unit_and_nat(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "cols").mkdir()
    days = np.array(["2020-02-28", "NaT", "1901-01-01", "2262-04-11"], "datetime64[D]")
    steps = np.array([0, -3, 2**40, 7], "timedelta64[10ms]")
    np.save(tmp_path / "cols" / "day.npy", days)
    np.save(tmp_path / "cols" / "step.npy", steps.astype(steps.dtype.newbyteorder(">")))  # big-endian too
    code, out, err = cli(capsys, "convert", tmp_path / "cols", tmp_path / "ds", "-q", "--format", "parquet")
    assert code == 0, err
    got, m = stored(tmp_path / "ds"), meta(tmp_path / "ds")
    assert m == {"day": {"type": "timestamp", "unit": "D"}, "step": {"type": "duration", "unit": "10ms"}}
    np.testing.assert_array_equal(got["day"].view("datetime64[D]"), days)  # NaT included
    np.testing.assert_array_equal(got["step"].view("timedelta64[10ms]"), steps)
    np.savez(tmp_path / "a.npz", t=days)
    m2 = streambatch.convert(tmp_path / "a.npz", tmp_path / "ds2", progress=False)
    assert isinstance(m2, Manifest)
    np.testing.assert_array_equal(read_all(m2)["t"].view("datetime64[D]"), days)
    code, out, _ = cli(capsys, "info", tmp_path / "ds")
    assert "timestamp[D]" in out and "duration[10ms]" in out
    assert cli(capsys, "verify", tmp_path / "ds")[0] == 0


# --------------------------------------------------------------------------- CSV delimiter


@pytest.mark.parametrize("sep, arg, word", [(";", ";", "semicolon"), ("\t", "tab", "tab"), ("\t", "\\t", "tab"),
                                            ("|", "|", "pipe")])
def test_csv_with_another_delimiter(tmp_path: Path, sep: str, arg: str, word: str,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    df = pd.DataFrame({"a": np.arange(40), "b": np.linspace(-1, 1, 40), "c": np.arange(40) % 3 == 0})
    df.to_csv(tmp_path / "in.csv", sep=sep, index=False)
    code, _, err = cli(capsys, "convert", tmp_path / "in.csv", tmp_path / "ds", "-q")
    assert code == 2 and err.count("\n") == 1
    assert "in.csv" in err and f"looks {word}-separated" in err and f"--delimiter {sep!r}" in err
    assert not (tmp_path / "ds").exists()
    code, _, err = cli(capsys, "convert", tmp_path / "in.csv", tmp_path / "ds", "-q", "--delimiter", arg)
    assert code == 0, err
    got = stored(tmp_path / "ds")
    for k in df:
        np.testing.assert_array_equal(got[k], df[k].to_numpy())
    assert load_manifest(tmp_path / "ds").options["delimiter"] == sep
    m = streambatch.convert(tmp_path / "in.csv", tmp_path / "py", delimiter=sep, progress=False)
    assert isinstance(m, Manifest) and m.rows == 40


def test_delimiter_is_for_csv_only(tmp_path: Path) -> None:
    pq.write_table(pa.table({"a": [1, 2]}), tmp_path / "a.parquet")
    with pytest.raises(InputError, match=r"a.parquet: --delimiter ';': applies to CSV input, not parquet"):
        streambatch.convert(tmp_path / "a.parquet", tmp_path / "ds", delimiter=";", progress=False)
    (tmp_path / "a.csv").write_text("a\n1\n")
    with pytest.raises(InputError, match="one character"):
        streambatch.convert(tmp_path / "a.csv", tmp_path / "ds", delimiter=";;", progress=False)


# --------------------------------------------------------------------------- Hive partitions


def _hive_frame(rows: int = 240) -> pd.DataFrame:
    rng = np.random.default_rng(2)
    return pd.DataFrame({
        "v": rng.standard_normal(rows),
        "year": rng.choice([2019, 2020, 2021], rows),
        "city": rng.choice(["a b", "Zürich", "y/z"], rows),
        "id": np.arange(rows),
    })


def _in_path_order(df: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """The rows as a reader of sorted key=value folders meets them: folders sorted by name
    (values as written, URL-encoded), rows in their order within one folder."""
    def folder(row: pd.Series) -> tuple[str, ...]:
        return tuple(f"{k}={quote(str(row[k]), safe='')}" for k in keys)

    return df.assign(_p=df.apply(folder, axis=1)).sort_values("_p", kind="stable").drop(columns="_p")


def test_hive_partitioned_parquet_from_pandas(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """pandas ``partition_cols``: integer key int64, string key categorical (sorted categories),
    URL-encoded values decoded, rows in sorted path order."""
    df = _hive_frame()
    df.to_parquet(tmp_path / "h", partition_cols=["year", "city"])
    code, _, err = cli(capsys, "convert", tmp_path / "h", tmp_path / "ds", "-q")
    assert code == 0, err
    m = load_manifest(tmp_path / "ds")
    assert [c.name for c in m.columns] == ["v", "id", "year", "city"]
    assert m.column("year").dtype == "int64" and m.column("year").meta is None
    assert m.column("city").meta == {"type": "category", "categories": ["Zürich", "a b", "y/z"], "ordered": False}
    want = _in_path_order(df, ["year", "city"])
    got = stored(tmp_path / "ds")
    np.testing.assert_array_equal(got["id"], want["id"].to_numpy())
    np.testing.assert_array_equal(got["v"], want["v"].to_numpy())
    np.testing.assert_array_equal(got["year"], want["year"].to_numpy())
    cats = m.column("city").meta["categories"]  # type: ignore[index]
    assert [cats[c] for c in got["city"]] == want["city"].tolist()


@pytest.mark.parametrize("null_key", [False, True])
def test_hive_partitioned_parquet_from_pyarrow_dataset(tmp_path: Path, null_key: bool) -> None:
    """``pyarrow.dataset.write_dataset(partitioning="hive")``, nested, many files and row groups:
    written by parallel shard writers (row ranges across files, each range the same rows as
    the whole read), or, with a null key (``__HIVE_DEFAULT_PARTITION__``) filled, in order."""
    df = _hive_frame(3000)
    if null_key:
        df.loc[df.index % 10 == 0, "city"] = None
    table = pa.Table.from_pandas(df, preserve_index=False)
    pads.write_dataset(table, tmp_path / "h", format="parquet", partitioning=["city", "year"],
                       partitioning_flavor="hive", max_rows_per_group=64, max_rows_per_file=256)
    fill = {"city": -1} if null_key else None
    source = open_source(tmp_path / "h", fill=fill)
    assert source.random_access is not null_key
    whole = {k: np.concatenate([p[k] for p in source.pieces(100)]) for k in ("id", "city", "year")}
    for lo, hi in [(0, 1), (250, 270), (255, 1290), (2999, 3000)]:
        part = list(source.pieces(64, ("year", "id", "city"), lo, hi))
        for k in whole:
            np.testing.assert_array_equal(np.concatenate([p[k] for p in part]), whole[k][lo:hi])
    m = streambatch.convert(tmp_path / "h", tmp_path / "ds", unit_rows=32, shard_bytes="16KiB", threads=2,
                            fill=fill, progress=False)
    assert isinstance(m, Manifest) and len(m.files) > 4
    cats = ["Zürich", "a b", "y/z"]
    assert m.column("city").meta["categories"] == cats  # type: ignore[index]
    assert m.source.get("filled") == ({"city": 300} if null_key else None)
    got = stored(tmp_path / "ds")
    for k in whole:
        np.testing.assert_array_equal(got[k], whole[k])
    seen = pd.DataFrame({"id": got["id"], "year": got["year"],
                         "city": [cats[c] if c >= 0 else None for c in got["city"]]})
    np.testing.assert_array_equal(np.sort(got["id"]), np.arange(3000))
    by_id = seen.sort_values("id").reset_index(drop=True)
    assert by_id["year"].tolist() == df["year"].tolist() and by_id["city"].tolist() == df["city"].tolist()
    folders = [f"city={quote(c, safe='') if isinstance(c, str) else '__HIVE_DEFAULT_PARTITION__'}/year={y}"
               for c, y in zip(seen["city"], seen["year"])]
    assert folders == sorted(folders)  # sorted path order
    one = streambatch.convert(tmp_path / "h", tmp_path / "one", unit_rows=32, shard_bytes="16KiB", threads=1,
                              fill=fill, progress=False)
    assert isinstance(one, Manifest) and one.fingerprint == m.fingerprint


def test_bad_hive_layouts_are_named(tmp_path: Path) -> None:
    df = _hive_frame(20)
    df.to_parquet(tmp_path / "h", partition_cols=["year"])
    stray = next((tmp_path / "h" / "year=2020").iterdir())
    (tmp_path / "h" / "year=2020" / "city=x").mkdir()
    stray.rename(tmp_path / "h" / "year=2020" / "city=x" / stray.name)
    with pytest.raises(InputError, match=r"city=x.*partition keys \['year', 'city'\] differ"):
        streambatch.convert(tmp_path / "h", tmp_path / "ds", progress=False)
    (tmp_path / "k").mkdir()
    (tmp_path / "k" / "id=1").mkdir()
    df.to_parquet(tmp_path / "k" / "id=1" / "p.parquet")
    with pytest.raises(InputError, match=r"column 'id' is also a partition key"):
        streambatch.convert(tmp_path / "k", tmp_path / "ds", progress=False)
    df.to_parquet(tmp_path / "k" / "top.parquet")
    with pytest.raises(InputError, match=r"k: holds both Parquet files and partition folders"):
        streambatch.convert(tmp_path / "k", tmp_path / "ds", progress=False)
    assert not (tmp_path / "ds").exists()


# --------------------------------------------------------------------------- the manifest and the CLI


def test_column_meta_is_validated_when_loading(tmp_path: Path) -> None:
    df = pd.DataFrame({"c": pd.Categorical(["a", "b"]), "t": pd.to_datetime(["2020", "2021"])})
    df.to_parquet(tmp_path / "in.parquet")
    streambatch.convert(tmp_path / "in.parquet", tmp_path / "ds", progress=False)
    path = tmp_path / "ds" / MANIFEST_NAME
    good = json.loads(path.read_text())
    for col, bad, match in [(0, {"type": "category", "categories": "ab"}, "'categories' must be a list"),
                            (0, {"type": "category", "categories": ["a", "a"]}, "distinct"),
                            (0, {"type": "colour"}, "'type' is 'category', 'timestamp' or 'duration'"),
                            (1, {"type": "timestamp", "unit": "fortnight"}, "needs a 'unit'"),
                            (1, {"type": "timestamp", "unit": "s", "timezone": 3}, "needs a 'unit'"),
                            (0, {"type": "timestamp", "unit": "s"}, "stored as int64, not int8"),
                            (1, {"type": "category", "categories": [], "ordered": 1}, "'ordered' a boolean")]:
        doc = json.loads(json.dumps(good))
        doc["columns"][col]["meta"] = bad
        write_manifest(tmp_path / "ds", doc)
        with pytest.raises(ManifestError, match=rf"column {col} \({'ct'[col]}\).*{match}"):
            load_manifest(tmp_path / "ds")
    write_manifest(tmp_path / "ds", good)
    assert load_manifest(tmp_path / "ds").column("t").meta == {"type": "timestamp", "unit": df["t"].dt.unit}


def test_the_installed_command_fills_drops_and_reports(tmp_path: Path) -> None:
    """The real ``python -m streambatch.cli`` process, as a user runs it."""
    df = _nullable_frame(100)
    df["cat"] = pd.Categorical(np.where(np.arange(100) % 9 == 4, None, np.array(["u", "v"])[np.arange(100) % 2]))
    src = _write(df, tmp_path, "parquet")
    run = subprocess.run([sys.executable, "-m", "streambatch.cli", "convert", str(src), str(tmp_path / "ds"), "-q",
                          "--fill", "cat=-1", "--drop-nulls"], capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    keep = df.dropna(subset=["i", "f", "b"])
    assert run.stdout.splitlines() == [f"wrote {tmp_path / 'ds'}", f"filled {int(keep['cat'].isna().sum())} null(s) "
                                       "in column 'cat'", f"dropped {len(df) - len(keep)} row(s) with a null"]
    got = stored(tmp_path / "ds")
    np.testing.assert_array_equal(got["cat"], keep["cat"].cat.codes.to_numpy())
    np.testing.assert_array_equal(got["ok"], keep["ok"].to_numpy())
