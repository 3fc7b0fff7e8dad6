"""Converting on a Dask cluster (``convert(client=)``, ``--scheduler``): real worker processes,
output identical to the local converter's, bad input and a killed worker."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

import streambatch
from streambatch.cli import main
from streambatch.errors import InputError
from streambatch.manifest import MANIFEST_NAME, Manifest
from streambatch.sources import jsonl
from streambatch.storage import load_manifest

from conftest import SIGINT_HANDLER, write_sorted_npy
from test_jsonl import split_lines, write_awkward_jsonl
from test_remote import local, s3  # noqa: F401 - fixtures: an S3-compatible server on loopback

distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as c:
        with distributed.Client(c) as cl:
            yield cl


def _tree(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (its manifest aside) by relative path."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != MANIFEST_NAME}


def _assert_same(got: Path, want: Path) -> None:
    """The same files, bytes and manifest; statistics to rounding (so the manifest's own checksum
    may differ), as threads' are: a local run of one thread sums in another order."""
    da, db = _assert_same_data(got, want)
    assert da == db


def _assert_same_data(got: Path, want: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The same files, bytes, fingerprint and statistics (to rounding); the rest of the two
    manifests, for the caller to compare (their sources may differ: a path)."""
    a, b = load_manifest(got), load_manifest(want)
    assert a.fingerprint == b.fingerprint
    assert _tree(got) == _tree(want)
    da, db = (json.loads((p / MANIFEST_NAME).read_text()) for p in (got, want))
    sa, sb = da.pop("stats"), db.pop("stats")
    da.pop("checksum"), db.pop("checksum")
    assert sa.keys() == sb.keys()
    for name in sa:
        if "lengths" in sa[name]:  # a ragged column's: counts of rows and values, exact
            assert sa[name] == sb[name]
            continue
        for key in ("count", "mean", "std", "min", "max"):
            np.testing.assert_allclose(sa[name][key], sb[name][key], rtol=1e-12, atol=1e-13)  # means near 0
        assert sa[name].get("histogram") == sb[name].get("histogram")
    return da, db


def _parquet(folder: Path, npy: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = {p.stem: np.load(p) for p in sorted(npy.glob("*.npy"))}
    table = pa.table({"id": data["id"], "x": pa.FixedSizeListArray.from_arrays(data["x"].reshape(-1), 4),
                      "y": data["y"]})
    pq.write_table(table, folder / "src.parquet", row_group_size=50)
    return folder / "src.parquet"


def _leftovers(parent: Path) -> list[str]:
    return [p.name for p in parent.iterdir() if ".sbtmp-" in p.name]


@pytest.mark.parametrize("fmt,codec", [("zarr", "none"), ("parquet", "zstd")])
@pytest.mark.parametrize("src_kind", ["npy", "parquet"])
def test_cluster_output_equals_the_local_conversion(tmp_path: Path, client: Any, fmt: str, codec: str,
                                                    src_kind: str) -> None:
    """Parts written by two worker processes: the local converter's files, bytes and manifest."""
    npy = write_sorted_npy(tmp_path / "src", 5003)
    src = npy if src_kind == "npy" else _parquet(tmp_path, npy)
    opts: dict[str, Any] = dict(format=fmt, codec=codec, unit_rows=97, shard_bytes=20_000, label="y", progress=False)
    streambatch.convert(src, tmp_path / "local", **opts)
    m = streambatch.convert(src, tmp_path / "dask", client=client, **opts)
    assert isinstance(m, Manifest) and len(m.files) >= 8
    _assert_same(tmp_path / "dask", tmp_path / "local")
    assert _leftovers(tmp_path) == []


def _bad_labels(folder: Path) -> Path:
    folder.mkdir()
    y = np.repeat(np.arange(10.0), 500)
    y[[2150, 4321]] = np.nan
    np.save(folder / "y.npy", y)
    np.save(folder / "x.npy", np.zeros((5000, 8), np.float32))
    return folder


@pytest.mark.parametrize("shuffle", [None, 1])
def test_cluster_bad_input_fails_as_locally_and_leaves_nothing(tmp_path: Path, client: Any,
                                                               shuffle: int | None) -> None:
    """A bad row in a part (or a pre-shuffle's scatter task) on a worker: the local converter's
    error type and message (the first bad row in source order), no target, no temporary folder."""
    src = _bad_labels(tmp_path / "src")
    opts: dict[str, Any] = dict(unit_rows=100, shard_bytes=4000, label="y", shuffle=shuffle, memory="64KiB",
                                progress=False)
    with pytest.raises(InputError) as local:
        streambatch.convert(src, tmp_path / "local", **opts)
    with pytest.raises(InputError) as remote:
        streambatch.convert(src, tmp_path / "dask", client=client, **opts)
    assert "row 2150" in str(local.value)
    assert type(remote.value) is type(local.value) and str(remote.value) == str(local.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_cluster_refuses_what_it_cannot_split(tmp_path: Path, client: Any) -> None:
    """An input read in order (CSV) on a cluster: a one-line ``ValueError`` before anything is written."""
    (tmp_path / "a.csv").write_text("x,y\n1,2\n3,4\n")
    with pytest.raises(ValueError, match=r"a\.csv: a csv input is read in order, not by parts on a Dask cluster"):
        streambatch.convert(tmp_path / "a.csv", tmp_path / "ds", client=client, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.csv"]


def _pandas_jsonl(path: Path, n: int) -> Path:
    """JSON Lines as pandas writes them: numbers, a list of numbers a row, text (unicode escaped)."""
    import pandas as pd

    rng = np.random.default_rng(5)
    df = pd.DataFrame({"id": np.arange(n), "x": rng.standard_normal(n), "y": np.arange(n) * 10 // n,
                       "v": rng.integers(-9, 10, (n, 3)).tolist(), "s": ["é" * (i % 4) + str(i) for i in range(n)]})
    df.to_json(path, orient="records", lines=True)
    return path


@pytest.mark.parametrize("kind,shuffle", [("pandas", None), ("awkward", None), ("unterminated", 5)])
def test_cluster_jsonl_equals_the_local_conversion(tmp_path: Path, client: Any, monkeypatch: pytest.MonkeyPatch,
                                                   kind: str, shuffle: int | None) -> None:
    """A JSON Lines file written by pandas, or by hand (CRLF, blank and whitespace-only lines,
    two records on a line, unicode, nested and ragged lists; a blank line at the end, or no
    final line break), converted by parts on two worker processes, with ``shuffle`` too: the
    local converter's files, bytes and manifest.  The client indexes the file in chunks of
    ~2 KiB, which its parts start and stop inside; the local run reads it as one."""
    n = 3001
    src = (_pandas_jsonl(tmp_path / "a.jsonl", n) if kind == "pandas"
           else write_awkward_jsonl(tmp_path / "a.jsonl", n, "" if kind == "unterminated" else "\n\n"))
    opts: dict[str, Any] = dict(format="parquet" if kind == "pandas" else "zarr", codec="zstd", unit_rows=97,
                                shard_bytes=20_000, label="y", shuffle=shuffle, memory="1MiB", progress=False)
    if shuffle is not None:  # text is of varying length: not pre-shuffled
        opts["columns"] = ["id", "x", "y", "v", "m"]
    streambatch.convert(src, tmp_path / "local", **opts)
    monkeypatch.setattr(jsonl, "CHUNK_BYTES", 2048)
    m = streambatch.convert(src, tmp_path / "dask", client=client, **opts)
    assert isinstance(m, Manifest) and m.rows == n and len(m.files) >= 8
    _assert_same(tmp_path / "dask", tmp_path / "local")
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("where,shuffle", [("local", None), ("local", 5), ("s3", None)])
def test_cluster_jsonl_folder_equals_the_local_conversion(tmp_path: Path, client: Any, request: pytest.FixtureRequest,
                                                          monkeypatch: pytest.MonkeyPatch, where: str,
                                                          shuffle: int | None) -> None:
    """A folder of JSON Lines files (pandas' lines in three files), local or at a URL prefix (an
    S3-compatible server on loopback, copied beside the target), converted by parts on two worker
    processes, with ``shuffle`` too: the files, bytes and manifest of the local converter, which
    are those of the one file of the same lines.  The client indexes the files in chunks of
    ~2 KiB, which its parts start and stop inside and which the files end."""
    n = 3001
    whole = _pandas_jsonl(tmp_path / "all.jsonl", n)
    folder = split_lines(whole, tmp_path / "src", ("part-0.jsonl", "part-1.jsonl", "part-2.jsonl"), (1000, 2200))
    opts: dict[str, Any] = dict(format="parquet", codec="zstd", unit_rows=97, shard_bytes=20_000, label="y",
                                shuffle=shuffle, memory="1MiB", progress=False,
                                columns=["id", "x", "y", "v"] if shuffle is not None else None)
    streambatch.convert(whole, tmp_path / "one", **opts)
    streambatch.convert(folder, tmp_path / "local", **opts)
    src: Any = folder
    if where == "s3":
        import fsspec

        src = f"{request.getfixturevalue('s3')}/jsonl-src"
        fs = fsspec.filesystem("s3", skip_instance_cache=True)
        for p in folder.iterdir():
            fs.put_file(str(p), f"{src.removeprefix('s3://')}/{p.name}")
    monkeypatch.setattr(jsonl, "CHUNK_BYTES", 2048)
    m = streambatch.convert(src, tmp_path / "out" / "dask", client=client, **opts)
    assert isinstance(m, Manifest) and m.rows == n and len(m.files) >= 8
    got, want = _assert_same_data(tmp_path / "out" / "dask", tmp_path / "local")
    assert got.pop("source")["format"] == want.pop("source")["format"] == "jsonl"
    assert got == want
    _assert_same_data(tmp_path / "local", tmp_path / "one")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["dask"] and _leftovers(tmp_path) == []


@pytest.mark.parametrize("bad,message", [(None, "column 'x': missing value at row 2500"),
                                         ("oops", "line 2501: cannot parse JSONL: JSON parse error: Column(/x) "
                                                  "changed from number to string")])
def test_cluster_bad_jsonl_line_fails_as_locally_and_leaves_nothing(tmp_path: Path, client: Any,
                                                                    monkeypatch: pytest.MonkeyPatch, bad: Any,
                                                                    message: str) -> None:
    """A bad line in the middle of a JSON Lines file: a null where numbers are (found by the task
    of its part, on a worker) or a string (found by the client's pass at open, beyond the first
    block that gives the types): the local converter's error type and message, naming the file
    and the row or line; no target, no temporary folder."""
    monkeypatch.setattr(jsonl, "BLOCK_BYTES", 4096)
    lines = [json.dumps({"id": i, "x": i * 0.5, "y": i // 500}) for i in range(5000)]
    lines[2500] = json.dumps({"id": 2500, "x": bad, "y": 5})
    (tmp_path / "a.jsonl").write_text("\n".join(lines) + "\n")
    opts: dict[str, Any] = dict(unit_rows=100, shard_bytes=4000, label="y", progress=False)
    with pytest.raises(InputError) as local:
        streambatch.convert(tmp_path / "a.jsonl", tmp_path / "local", **opts)
    monkeypatch.setattr(jsonl, "CHUNK_BYTES", 2048)
    with pytest.raises(InputError) as remote:
        streambatch.convert(tmp_path / "a.jsonl", tmp_path / "dask", client=client, **opts)
    assert "a.jsonl: " in str(local.value) and message in str(local.value)
    assert type(remote.value) is type(local.value) and str(remote.value) == str(local.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jsonl"]


def test_cluster_refuses_null_options_and_compressed_jsonl(tmp_path: Path, client: Any) -> None:
    """``fill`` and ``drop_nulls`` (their counts, or the rows dropped, need the rows in order) and
    a compressed JSON Lines file (or a folder holding one) on a cluster: a one-line ``ValueError``
    naming the option or the file, before anything is written."""
    import gzip

    src = tmp_path / "a.jsonl"
    src.write_text('{"x": 1, "y": null}\n{"x": 2, "y": 3}\n')
    (tmp_path / "b.jsonl.gz").write_bytes(gzip.compress(src.read_bytes()))
    for option, value in (("fill", {"y": 0}), ("drop_nulls", True)):
        flag = "--" + option.replace("_", "-")
        with pytest.raises(ValueError, match=rf"a\.jsonl: {flag} reads the input in order, not by parts on a Dask "
                                             rf"cluster; convert without --scheduler or without {flag}$"):
            streambatch.convert(src, tmp_path / "ds", client=client, progress=False, **{option: value})
    with pytest.raises(ValueError, match=r"b\.jsonl\.gz: a compressed JSON Lines file is read in order, not by parts "
                                         r"on a Dask cluster \(use \.npy, Parquet or uncompressed JSON Lines\)"):
        streambatch.convert(tmp_path / "b.jsonl.gz", tmp_path / "ds", client=client, source_format="jsonl",
                            progress=False)
    folder = tmp_path / "folder"
    folder.mkdir()
    for p in (src, tmp_path / "b.jsonl.gz"):
        (folder / p.name).write_bytes(p.read_bytes())
    with pytest.raises(ValueError, match=r"folder: b\.jsonl\.gz is compressed: a compressed JSON Lines file is read in "
                                         r"order, not by parts on a Dask cluster"):
        streambatch.convert(folder, tmp_path / "ds", client=client, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jsonl", "b.jsonl.gz", "folder"]


@pytest.mark.parametrize("src_kind,fmt,codec", [("npy", "zarr", "none"), ("parquet", "parquet", "zstd")])
def test_cluster_shuffle_equals_the_local_shuffle(tmp_path: Path, client: Any, fmt: str, codec: str,
                                                  src_kind: str) -> None:
    """``shuffle`` on a cluster (scatter, permute and write tasks on two worker processes): the
    local ``--shuffle``'s files, bytes and manifest, through many buckets and scatter tasks."""
    n = 70_001  # beyond DRAW_ROWS: the buckets of two blocks, drawn in different scatter tasks
    npy = write_sorted_npy(tmp_path / "src", n)
    src = npy if src_kind == "npy" else _parquet(tmp_path, npy)
    opts: dict[str, Any] = dict(format=fmt, codec=codec, unit_rows=499, shard_bytes=200_000, label="y", shuffle=5,
                                memory="2MiB", progress=False)
    streambatch.convert(src, tmp_path / "local", **opts)
    m = streambatch.convert(src, tmp_path / "dask", client=client, **opts)
    assert isinstance(m, Manifest) and len(m.files) >= 8 and m.options["shuffle"] == 5
    _assert_same(tmp_path / "dask", tmp_path / "local")
    ids = np.concatenate([np.asarray(b["id"]) for b in streambatch.StreamDataset(tmp_path / "dask", batch_size=4096,
                                                                                  shuffle=False)])
    assert sorted(ids.tolist()) == list(range(n)) and abs(np.corrcoef(ids, np.arange(n))[0, 1]) < 0.05
    assert _leftovers(tmp_path) == []


def _worker_pids(client: Any) -> dict[str, int]:
    return dict(client.run(os.getpid))


def _in_a_part(pid: int, staging: Path) -> bool:
    """Whether process ``pid`` has a file of a part's attempt open (it is writing a part)."""
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            if str(staging) in os.readlink(fd):
                return True
        except OSError:  # closed meanwhile
            continue
    return False


def _kill_a_worker_in_a_part(client: Any, parent: Path, convert: threading.Thread) -> int:
    """SIGKILL a worker process caught (stopped) while it writes a part; return its pid."""
    pids = list(_worker_pids(client).values())
    while convert.is_alive():
        for pid in pids:
            for staging in parent.glob(".dask.sbtmp-*/.parts"):
                os.kill(pid, signal.SIGSTOP)
                try:
                    if _in_a_part(pid, staging):
                        os.kill(pid, signal.SIGKILL)
                        return pid
                finally:
                    os.kill(pid, signal.SIGCONT)
        time.sleep(0.002)
    pytest.fail("the conversion ended before a worker was caught writing a part")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("shuffle", [None, 3])
def test_cluster_survives_a_worker_killed_in_a_part(tmp_path: Path, client: Any, shuffle: int | None) -> None:
    """SIGKILL of a worker process while it writes a part (or, with ``shuffle``, any of its
    tasks): Dask runs the task again elsewhere, and the output is the local converter's, with no
    stray file of the killed attempt."""
    src = write_sorted_npy(tmp_path / "src", 400_000, width=16)
    opts: dict[str, Any] = dict(codec="zstd", unit_rows=1000, shard_bytes=1 << 20, shuffle=shuffle, memory="16MiB",
                                progress=False)
    streambatch.convert(src, tmp_path / "local", **opts)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            streambatch.convert(src, tmp_path / "dask", client=client, **opts)
        except BaseException as e:  # handed to the test's thread
            errors.append(e)

    convert = threading.Thread(target=run)
    convert.start()
    killed = _kill_a_worker_in_a_part(client, tmp_path, convert)
    convert.join(120)
    assert not convert.is_alive() and errors == []
    assert killed not in _worker_pids(client).values()
    _assert_same(tmp_path / "dask", tmp_path / "local")
    assert _leftovers(tmp_path) == []
    client.wait_for_workers(2, timeout=60)  # the nanny's new worker, for the tests after this one


def _dask(*args: str, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as err:
        return subprocess.Popen([sys.executable, "-m", "dask", *args], stdout=subprocess.DEVNULL, stderr=err)


def test_cli_on_a_scheduler_and_two_worker_processes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``streambatch convert --scheduler tcp://...`` on a ``dask scheduler`` and two ``dask
    worker`` processes on loopback: the local converter's output, with ``--shuffle`` too."""
    src = write_sorted_npy(tmp_path / "src", 5003)
    info = tmp_path / "scheduler.json"
    procs = [_dask("scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard", "--scheduler-file",
                   str(info), log=tmp_path / "scheduler.log")]
    try:
        deadline = time.monotonic() + 60
        while not info.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        address = json.loads(info.read_text())["address"]
        procs += [_dask("worker", address, "--nworkers", "1", "--nthreads", "1", "--no-dashboard", "--no-nanny",
                        "--host", "127.0.0.1", "--death-timeout", "60", log=tmp_path / f"worker{k}.log") for k in range(2)]
        with distributed.Client(address) as cl:
            cl.wait_for_workers(2, timeout=60)
        opts = ["--format", "parquet", "--codec", "zstd", "--unit-rows", "97", "--shard-bytes", "20000", "-q"]
        assert main(["convert", str(src), str(tmp_path / "local"), *opts]) == 0
        assert main(["convert", str(src), str(tmp_path / "dask"), "--scheduler", address, *opts]) == 0
        opts += ["--shuffle", "4", "--memory", "256KiB"]
        assert main(["convert", str(src), str(tmp_path / "local-shuffled"), *opts]) == 0
        assert main(["convert", str(src), str(tmp_path / "dask-shuffled"), "--scheduler", address, *opts]) == 0
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:  # a worker may take its time to retire gracefully: then it is killed
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    _assert_same(tmp_path / "dask", tmp_path / "local")
    assert _leftovers(tmp_path) == []
    _assert_same(tmp_path / "dask-shuffled", tmp_path / "local-shuffled")
    assert load_manifest(tmp_path / "dask-shuffled").fingerprint != load_manifest(tmp_path / "dask").fingerprint
    assert _leftovers(tmp_path) == []


def test_cluster_converts_a_dask_dataframe_as_its_rows_from_parquet(tmp_path: Path, client: Any) -> None:
    """A ``dask.dataframe.DataFrame`` (partitions of uneven length): the dataset converting its
    rows from a Parquet file gives (files, bytes, fingerprint); nothing is left beside it."""
    import dask.dataframe as dd
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = 7919
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"id": np.arange(n, dtype=np.int64), "x": rng.standard_normal(n).astype(np.float32),
                       "y": (np.arange(n) // 800).astype(np.float64)})
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), tmp_path / "rows.parquet", row_group_size=1000)
    frame = dd.from_pandas(df, npartitions=5).repartition(divisions=[0, 100, 3000, 3001, 7000, n - 1])
    opts: dict[str, Any] = dict(format="parquet", codec="zstd", unit_rows=97, shard_bytes=20_000, label="y",
                                progress=False)
    streambatch.convert(tmp_path / "rows.parquet", tmp_path / "local", **opts)
    m = streambatch.convert(frame, tmp_path / "dask", client=client, **opts)
    assert isinstance(m, Manifest) and m.rows == n and len(m.files) >= 8
    got, want = _assert_same_data(tmp_path / "dask", tmp_path / "local")
    assert got.pop("source")["format"] == want.pop("source")["format"] == "parquet"
    assert got == want
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dask", "local", "rows.parquet"]


def test_cluster_converts_a_url_prefix_copied_beside_the_target(tmp_path: Path, client: Any, s3: str) -> None:
    """A source at a URL prefix (an S3-compatible server on loopback): copied beside the target,
    where the workers see it, then converted by them: the local converter's dataset of the same
    files; the copy is gone afterwards.  A URL target is refused before anything is written."""
    import fsspec

    src = write_sorted_npy(tmp_path / "src", 5003)
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    for p in src.iterdir():
        fs.put_file(str(p), f"bucket/cluster-src/{p.name}")
    opts: dict[str, Any] = dict(unit_rows=97, shard_bytes=20_000, label="y", progress=False)
    streambatch.convert(src, tmp_path / "local", **opts)
    m = streambatch.convert(f"{s3}/cluster-src", tmp_path / "out" / "dask", client=client, **opts)
    assert isinstance(m, Manifest) and m.rows == 5003
    got, want = _assert_same_data(tmp_path / "out" / "dask", tmp_path / "local")
    assert got.pop("source")["format"] == want.pop("source")["format"] == "npy"
    assert got == want
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["dask"]
    with pytest.raises(ValueError, match="a conversion on a Dask cluster writes to a local path"):
        streambatch.convert(src, f"{s3}/cluster-out", client=client, **opts)
    assert not fs.exists("bucket/cluster-out")


def test_cluster_progress_bar_counts_tasks_only_when_asked(tmp_path: Path, client: Any,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """The client's bar counts the tasks done (here one a file); none where stderr is not a terminal."""
    src = write_sorted_npy(tmp_path / "src", 5003)
    opts: dict[str, Any] = dict(format="parquet", unit_rows=97, shard_bytes=20_000)
    m = streambatch.convert(src, tmp_path / "a", client=client, progress=True, **opts)
    err = capsys.readouterr().err
    assert f"{len(m.files)}/{len(m.files)}" in err and " tasks" in err and "rows" not in err
    streambatch.convert(src, tmp_path / "b", client=client, **opts)  # stderr is pytest's capture: no bar
    assert capsys.readouterr().err == ""


def test_cluster_ctrl_c_cancels_the_tasks_and_leaves_nothing(tmp_path: Path) -> None:
    """Ctrl-C on the client of ``convert --scheduler local:2 --shuffle`` while tasks write: the
    conversion stops (exit 130, "interrupted"), its tasks are stopped, and no target, temporary
    folder or attempt is left."""
    src = write_sorted_npy(tmp_path / "src", 400_000, width=16)
    out = tmp_path / "out"
    script = SIGINT_HANDLER + textwrap.dedent(f"""
        import sys
        from streambatch.cli import main
        if __name__ == "__main__":
            sys.exit(main(["convert", {str(src)!r}, {str(out / 'ds')!r}, "--scheduler", "local:2", "--shuffle", "1",
                           "--memory", "16MiB", "--codec", "zstd", "--unit-rows", "1000", "--shard-bytes", "1MiB",
                           "-q"]))
    """)
    (tmp_path / "run.py").write_text(script)
    proc = subprocess.Popen([sys.executable, str(tmp_path / "run.py")], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        while proc.poll() is None and not any(out.glob(".ds.sbtmp-*/.parts/*-*")):  # a task is writing
            time.sleep(0.005)
        assert proc.poll() is None, proc.communicate()[1]
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130 and "streambatch convert: interrupted" in err, (proc.returncode, err[-2000:])
    assert list(out.iterdir()) == []
