"""Datasets read from real servers on loopback: an S3-compatible server (moto) and plain HTTP."""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

import streambatch
from streambatch import DataError, RemoteOptions
from streambatch.manifest import MANIFEST_NAME
from streambatch.storage import FORMATS

from conftest import flip_byte, write_sorted_npy

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from range_server import RangeServer, free_port  # noqa: E402

ROWS = 3001


@pytest.fixture(scope="module")
def local(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("remote")
    src = write_sorted_npy(root / "src", ROWS)
    out = {"src": src}
    for fmt in FORMATS:
        out[fmt] = streambatch.convert(src, root / "served" / f"d.{fmt}", format=fmt, unit_rows=101,
                                       codec="lz4" if fmt == "zarr" else "none").root
    return out


@pytest.fixture(scope="module")
def http(local):
    srv = RangeServer(local["zarr"].parent)
    t = threading.Thread(target=srv.serve_forever, name="test-http", daemon=True)
    t.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture(scope="module")
def s3(local):
    moto_server = pytest.importorskip("moto.server")
    pytest.importorskip("s3fs")
    port = free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION",
                                             "AWS_ENDPOINT_URL")}
    # Credentials and endpoint from the standard environment variables, never the manifest.
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1",
                      AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}")
    import fsspec

    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    fs.mkdir("bucket")
    yield "s3://bucket"
    # moto keeps its buckets in process-wide state: leave none for the next module that starts a server
    fs.rm("bucket", recursive=True)
    type(fs).clear_instance_cache()  # and no cached filesystem that still points at this server
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def batches(path: str | Path, **kw) -> list[dict[str, torch.Tensor]]:
    # The same piece size for a URL and its local copy (by default a URL's units are read whole
    # and local uncompressed data is cut into pieces sized from the budget).
    kw.setdefault("piece_rows", 0)
    ds = streambatch.StreamDataset(path, batch_size=64, memory_budget=60_000, return_index=True, seed=3, **kw)
    return list(ds)


def same(a: list[dict[str, torch.Tensor]], b: list[dict[str, torch.Tensor]]) -> bool:
    return len(a) == len(b) and all(x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
                                    for x, y in zip(a, b))


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_http_dataset_gives_the_same_batches_as_the_local_copy(local, http, fmt):
    url = f"{http.url}/d.{fmt}"
    assert same(batches(url, remote=RemoteOptions(retries=2, backoff=0.01)), batches(local[fmt]))
    # asked for, pieces smaller than units are served from a URL too (each read as ranges)
    assert same(batches(url, piece_rows=7), batches(local[fmt], piece_rows=7))
    m = streambatch.load_manifest(url)
    assert m.rows == ROWS and str(m.root) == url


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_verify_over_http_checks_every_file(local, http, fmt, capsys):
    from streambatch.cli import main

    url = f"{http.url}/d.{fmt}"
    assert main(["verify", url]) == 0
    assert "OK" in capsys.readouterr().out
    rel = "x/zarr.json" if fmt == "zarr" else f"part-00000.{fmt}"
    path = local[fmt] / rel
    flip_byte(path, path.stat().st_size - 12)  # zarr.json: its metadata; Parquet, Arrow: its footer
    try:
        assert main(["verify", url]) == 1
    finally:
        flip_byte(path, path.stat().st_size - 12)
    assert f"file {rel}: " in capsys.readouterr().err


def test_verify_over_http_parses_the_footer_of_a_parquet_dataset_from_before_footer_checksums(local, tmp_path,
                                                                                             capsys):
    """Datasets written before footer checksums: verify parses each footer through ranged requests."""
    import json
    import shutil

    from streambatch.cli import main
    from streambatch.manifest import MANIFEST_NAME

    served = tmp_path / "served"
    ds = shutil.copytree(local["parquet"], served / "old.parquet")
    doc = json.loads((ds / MANIFEST_NAME).read_text())
    for key in ("footer_size", "footer_crc32c"):
        doc["layout"].pop(key)
    doc.pop("checksum")  # nor had manifests a checksum of their own then
    (ds / MANIFEST_NAME).write_text(json.dumps(doc))
    srv = RangeServer(served)
    t = threading.Thread(target=srv.serve_forever, name="test-http-old", daemon=True)
    t.start()
    try:
        assert main(["verify", f"{srv.url}/old.parquet"]) == 0
        assert "parsed and compared with the manifest" in capsys.readouterr().out
    finally:
        srv.shutdown()
        srv.server_close()


def test_dropped_connections_are_retried(local, http):
    http.drop_next = 5
    got = batches(f"{http.url}/d.zarr", remote=RemoteOptions(retries=8, backoff=0.01))
    assert http.drop_next == 0
    assert same(got, batches(local["zarr"]))


def test_a_server_that_stays_down_gives_a_clear_error(local):
    url = f"http://127.0.0.1:{free_port()}/d.zarr"
    with pytest.raises(streambatch.StreambatchError, match="127.0.0.1"):
        batches(url, remote=RemoteOptions(retries=2, backoff=0.01))


def test_a_server_that_dies_mid_epoch_gives_a_data_error_naming_the_unit(local, http):
    ds = streambatch.StreamDataset(f"{http.url}/d.zarr", batch_size=64, memory_budget=60_000,
                                   remote=RemoteOptions(retries=2, backoff=0.001))
    http.drop_next = 10_000  # from now on every request breaks off half-way
    try:
        with pytest.raises(DataError, match=r"failed after 3 attempts") as info:
            list(ds)
        assert any("unit" in n for n in info.value.__notes__)
    finally:
        http.drop_next = 0


@pytest.mark.parametrize("status", [503, 429])
def test_a_busy_server_is_retried_until_it_answers(local, http, status):
    """Busy answers are transient: each is retried, the read then succeeds; too many give a DataError."""
    want = (local["zarr"] / MANIFEST_NAME).read_bytes()[10:110]
    files = RemoteOptions(retries=5, backoff=0.001).open(f"{http.url}/d.zarr")
    gets = http.gets
    http.fail_status, http.fail_next = status, 3
    try:
        assert files.read(MANIFEST_NAME, 10, 100) == want
        assert (files.retried, http.gets - gets, http.fail_next) == (3, 4, 0)
        http.fail_next = 4  # during an epoch: the same batches
        assert same(batches(f"{http.url}/d.zarr", remote=RemoteOptions(retries=8, backoff=0.001)),
                    batches(local["zarr"]))
        assert http.fail_next == 0
        http.fail_next = 3
        with pytest.raises(DataError, match=rf"{MANIFEST_NAME} .*failed after 3 attempts.*{status}"):
            RemoteOptions(retries=2, backoff=0.001).open(f"{http.url}/d.zarr").read(MANIFEST_NAME, 0, 100)
    finally:
        http.fail_status, http.fail_next = 503, 0


@pytest.mark.parametrize("status", [404, 403, 400])
def test_a_permanent_failure_is_not_retried(local, http, status):
    """A missing object, no permission, a bad request: a DataError naming the object after one request."""
    files = RemoteOptions(retries=5, backoff=0.001).open(f"{http.url}/d.zarr")
    rel = "x/c/no-such-chunk" if status == 404 else MANIFEST_NAME
    gets = http.gets
    http.fail_status, http.fail_next = status, (0 if status == 404 else 1)
    try:
        with pytest.raises(DataError, match=rf"d\.zarr/{rel}") as info:
            files.read(rel, 0, 100)
    finally:
        http.fail_status, http.fail_next = 503, 0
    assert "attempts" not in str(info.value)
    assert (files.requests, files.retried, http.gets - gets) == (1, 0, 1)


def test_a_missing_object_in_a_bucket_is_not_retried(local, s3):
    files = RemoteOptions(retries=5, backoff=0.001).open(f"{s3}/no-such-dataset")
    with pytest.raises(DataError, match="no-such-dataset/_streambatch.json: FileNotFoundError"):
        files.cat(MANIFEST_NAME)
    assert (files.requests, files.retried) == (1, 0)


def test_a_programming_error_is_raised_at_once_with_its_type(local, http):
    """A bad fsspec option is a TypeError on every attempt: raised at once, never retried or renamed."""
    bad = RemoteOptions(storage_options={"client_kwargs": {"no_such_option": 1}}, retries=5, backoff=0.001)
    files = bad.open(f"{http.url}/d.zarr")
    gets = http.gets
    with pytest.raises(TypeError, match="no_such_option") as info:
        files.read(MANIFEST_NAME, 0, 100)
    assert any(MANIFEST_NAME in n for n in info.value.__notes__)
    assert (files.requests, files.retried, http.gets) == (1, 0, gets)
    with pytest.raises(TypeError, match="no_such_option"):
        streambatch.StreamDataset(f"{http.url}/d.zarr", remote=bad)


def test_remote_options_are_one_checked_frozen_object(local, http):
    import dataclasses

    opts = RemoteOptions(storage_options={"headers": {}}, cache_bytes="2MiB", retries=0)
    assert opts.cache_bytes == 2 << 20 and hash(opts) == hash(RemoteOptions(cache_bytes=2 << 20, retries=0))
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.retries = 3  # type: ignore[misc]
    for bad in (dict(retries=-1), dict(retries=1.5), dict(backoff=-0.1), dict(cache_bytes="lots")):
        with pytest.raises(ValueError):
            RemoteOptions(**bad)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="RemoteOptions"):
        streambatch.StreamDataset(f"{http.url}/d.zarr", remote={"retries": 2})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="retries"):
        streambatch.StreamDataset(f"{http.url}/d.zarr", retries=2)  # type: ignore[call-arg]


def test_disk_cache_is_bounded_and_serves_the_next_epoch(local, http, tmp_path):
    cache = tmp_path / "cache"
    url = f"{http.url}/d.zarr"
    first = batches(url, remote=RemoteOptions(cache_dir=cache, cache_bytes=1 << 30))
    gets = http.gets
    again = batches(url, remote=RemoteOptions(cache_dir=cache, cache_bytes="1GiB"))
    assert same(first, again)
    assert http.gets == gets + 1  # only the manifest was fetched again: every range came from the cache
    small = tmp_path / "small"
    batches(url, remote=RemoteOptions(cache_dir=small, cache_bytes=20_000))
    assert sum(p.stat().st_size for p in small.glob("*.bin")) <= 20_000


@pytest.mark.parametrize("fmt", ["zarr", "parquet"])
def test_s3_convert_to_and_read_from_a_bucket(local, s3, fmt, tmp_path):
    url = f"{s3}/ds-{fmt}"
    streambatch.convert(local["src"], url, format=fmt, unit_rows=101, overwrite=True)
    assert same(batches(url), batches(local[fmt]))
    with pytest.raises(streambatch.TargetExistsError):
        streambatch.convert(local["src"], url, format=fmt)


def test_s3_source_for_convert(local, s3, tmp_path):
    import fsspec

    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    for p in local["src"].iterdir():
        fs.put_file(str(p), f"bucket/src/{p.name}")
    m = streambatch.convert(f"{s3}/src", tmp_path / "from-s3.zarr", unit_rows=101)
    assert m.rows == ROWS
    ids = np.concatenate([b["id"].numpy() for b in batches(tmp_path / "from-s3.zarr")])
    assert np.array_equal(np.sort(ids), np.arange(ROWS))


def _objects(fs, prefix: str) -> dict[str, bytes]:
    fs.invalidate_cache()
    return {p: fs.cat_file(p) for p in sorted(fs.find(prefix))}


@pytest.mark.parametrize("what", ["objects", "an object"])
def test_s3_overwrite_refuses_what_is_not_a_dataset(local, s3, what):
    import fsspec

    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    url = f"{s3}/not-a-dataset-{what.replace(' ', '-')}"
    if what == "objects":
        fs.pipe_file(f"{url[5:]}/notes.txt", b"keep me")
        fs.pipe_file(f"{url[5:]}/sub/results.csv", b"a,b\n1,2\n")
    else:
        fs.pipe_file(url[5:], b"keep me")
    before = _objects(fs, url[5:])
    with pytest.raises(streambatch.TargetExistsError, match="is a file|not a streambatch dataset") as info:
        streambatch.convert(local["src"], url, unit_rows=101, overwrite=True)
    assert len(str(info.value).splitlines()) == 1 and url in str(info.value)
    assert _objects(fs, url[5:]) == before


def test_s3_overwrite_refuses_a_dataset_that_holds_the_source(local, s3):
    import fsspec

    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    url = f"{s3}/holds-src"
    streambatch.convert(local["src"], url, unit_rows=101)
    for p in local["src"].iterdir():
        fs.put_file(str(p), f"{url[5:]}/input/{p.name}")
    before = _objects(fs, url[5:])
    with pytest.raises(streambatch.TargetExistsError, match="holds the input") as info:
        streambatch.convert(f"{url}/input", url, unit_rows=50, overwrite=True)
    assert len(str(info.value).splitlines()) == 1 and url in str(info.value)
    assert _objects(fs, url[5:]) == before
    with pytest.raises(streambatch.InputError, match="inside the input"):
        streambatch.convert(f"{url}/input", f"{url}/input/out", unit_rows=50)
    assert _objects(fs, url[5:]) == before


def test_s3_overwrite_replaces_a_dataset(local, s3):
    url = f"{s3}/replaced"
    streambatch.convert(local["src"], url, format="parquet", unit_rows=50)
    streambatch.convert(local["src"], url, format="zarr", unit_rows=101, overwrite=True)
    m = streambatch.load_manifest(url)
    assert m.storage == "zarr" and int(m.unit_rows[0]) == 101
    assert same(batches(url), batches(local["zarr"]))


def test_s3_upload_carries_the_statistics_files_of_wide_columns(s3, tmp_path):
    """A column of 1,500 values keeps its per-feature statistics in a file beside the manifest:
    uploaded with the data (before the manifest) and read through the same requests."""
    import fsspec

    src = tmp_path / "src"
    src.mkdir()
    np.save(src / "x.npy", np.random.default_rng(2).standard_normal((300, 1500)).astype(np.float32) * 3 + 1)
    local = streambatch.convert(src, tmp_path / "local.zarr", unit_rows=10)
    url = f"{s3}/wide"
    m = streambatch.convert(src, url, unit_rows=10, overwrite=True)
    assert fsspec.filesystem("s3", skip_instance_cache=True).exists(f"bucket/wide/{m.stats_files['x']['path']}")

    def normalised(path):  # rows by number: read locally, the 6 KB rows of x go straight into the
        # batches through larger windows (loader/direct.py), so the order differs from the URL's
        got = list(streambatch.StreamDataset(path, batch_size=16, memory_budget="4MiB", normalize=True, seed=3,
                                             piece_rows=0, return_index=True))
        rows = torch.cat([b["_row"] for b in got])
        assert torch.equal(torch.sort(rows).values, torch.arange(300))
        return torch.cat([b["x"] for b in got])[torch.argsort(rows)]

    assert torch.equal(normalised(url), normalised(local.root))
