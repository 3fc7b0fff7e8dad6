"""Image folders end to end: PIL-written JPEG and PNG files converted as they are, decoded and
centre-cropped in the reader threads, every image exactly once per epoch, and an undecodable
image named by row and unit (or skipped, counted and logged)."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image as PILImage

import streambatch
from streambatch import Image, StreamDataset
from streambatch.errors import DataError
from streambatch.storage import load_manifest


def _folder(root: Path, per_class: int = 12, broken: int | None = None) -> list[tuple[int, tuple[int, int, int]]]:
    """An ImageFolder of 3 classes, each image one flat colour; its (label, colour) in row order
    (classes sorted, then file names).  ``broken``: that row's file holds bytes that are no image."""
    rng = np.random.default_rng(0)
    rows = []
    for label, cls in enumerate(["cat", "dog", "eel"]):
        (root / cls).mkdir(parents=True)
        for i in range(per_class):
            colour = tuple(int(v) for v in rng.integers(0, 256, 3))
            size = (int(rng.integers(40, 90)), int(rng.integers(40, 90)))
            fmt = "PNG" if i % 3 == 0 else "JPEG"
            path = root / cls / f"{i:03d}.{'png' if fmt == 'PNG' else 'jpg'}"
            if broken is not None and len(rows) == broken:
                path.write_bytes(b"not an image at all" * 20)
            else:
                buf = io.BytesIO()
                PILImage.new("RGB", size, colour).save(buf, fmt, quality=95)
                path.write_bytes(buf.getvalue())
            rows.append((label, colour))
    return rows


def test_image_folder_decoded_exactly_once(tmp_path: Path) -> None:
    rows = _folder(tmp_path / "imgs")
    m = streambatch.convert(tmp_path / "imgs", tmp_path / "ds", label="label", unit_bytes="4KiB", progress=False)
    assert [(c.name, c.kind) for c in m.columns] == [("image", "bytes"), ("label", "fixed")]
    assert load_manifest(tmp_path / "ds").column("label").meta["categories"] == ["cat", "dog", "eel"]
    ds = StreamDataset(tmp_path / "ds", batch_size=5, memory_budget="1MiB", return_index=True,
                       decode={"image": Image(size=(16, 24))})
    seen = []
    for b in ds:
        img, idx = b["image"], b["_row"].numpy()
        assert img.dtype == torch.uint8 and img.shape == (len(idx), 3, 16, 24)
        for k, i in enumerate(idx):
            label, colour = rows[i]
            assert int(b["label"][k]) == label
            got = img[k].float().mean(dim=(1, 2)).numpy()
            assert np.abs(got - np.array(colour)).max() < 6  # JPEG keeps a flat colour within a few levels
        seen.append(idx)
    assert np.array_equal(np.sort(np.concatenate(seen)), np.arange(len(rows)))


def test_undecodable_image_is_named_or_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rows = _folder(tmp_path / "imgs", broken=7)
    m = streambatch.convert(tmp_path / "imgs", tmp_path / "ds", unit_bytes="4KiB", progress=False)
    unit = int(np.searchsorted(m.unit_start, 7, "right")) - 1
    with pytest.raises(DataError, match=f"column 'image', row 7 \\(unit {unit}\\): not a decodable image"):
        for _ in StreamDataset(tmp_path / "ds", batch_size=4, decode={"image": Image(size=(8, 8))}):
            pass
    ds = StreamDataset(tmp_path / "ds", batch_size=4, return_index=True,
                       decode={"image": Image(size=(8, 8), on_error="skip")})
    with caplog.at_level(logging.WARNING, logger="streambatch"):
        served = np.concatenate([b["_row"].numpy() for b in ds])
    assert np.array_equal(np.sort(served), np.setdiff1d(np.arange(len(rows)), [7]))
    assert any("row 7" in r.getMessage() for r in caplog.records) and ds.skipped_rows == 1


def test_decode_needs_a_bytes_column(tmp_path: Path) -> None:
    _folder(tmp_path / "imgs", per_class=2)
    streambatch.convert(tmp_path / "imgs", tmp_path / "ds", progress=False)
    with pytest.raises(ValueError, match="decode: 'label' is not a selected column of encoded bytes"):
        StreamDataset(tmp_path / "ds", decode={"label": Image()})
    with pytest.raises(TypeError, match="must be a streambatch.Image"):
        StreamDataset(tmp_path / "ds", decode={"image": (224, 224)})


def test_images_across_workers_and_resume(tmp_path: Path) -> None:
    rows = _folder(tmp_path / "imgs")
    streambatch.convert(tmp_path / "imgs", tmp_path / "ds", unit_bytes="4KiB", progress=False)

    def make() -> StreamDataset:
        return StreamDataset(tmp_path / "ds", batch_size=5, memory_budget="1MiB", return_index=True,
                             decode={"image": Image(size=(8, 8))})

    loader = torch.utils.data.DataLoader(make(), batch_size=None, num_workers=2)
    served = [b for b in loader]
    assert all(b["image"].shape[1:] == (3, 8, 8) for b in served)
    assert np.array_equal(np.sort(np.concatenate([b["_row"].numpy() for b in served])), np.arange(len(rows)))
    ds = make()
    it = iter(ds)
    head = [next(it)["_row"].numpy() for _ in range(3)]
    state = ds.state_dict()
    del it
    again = make()
    again.load_state_dict(state)
    rest = [b["_row"].numpy() for b in again]
    assert np.array_equal(np.sort(np.concatenate(head + rest)), np.arange(len(rows)))


def test_decoded_batches_stay_within_the_budget(tmp_path: Path) -> None:
    """Decoded batches are far larger than their encoded rows (here 64 x 3 x 128 x 128 = 3 MiB a
    batch from ~1 KB files) and count by their decoded bytes, the one in the consumer's hands
    included: numpy's buffers, traced from every thread, stay within the budget."""
    import tracemalloc

    _folder(tmp_path / "imgs", per_class=100)
    streambatch.convert(tmp_path / "imgs", tmp_path / "ds", unit_bytes="4KiB", progress=False)
    ds = StreamDataset(tmp_path / "ds", batch_size=64, memory_budget="24MiB",
                       decode={"image": Image(size=(128, 128))})
    for _ in ds:  # the first epoch imports what decoding needs: not the loader's memory
        pass
    tracemalloc.start()
    try:
        start, rows = tracemalloc.get_traced_memory()[0], 0
        for b in ds:
            rows += len(b["image"])
        peak = tracemalloc.get_traced_memory()[1] - start
    finally:
        tracemalloc.stop()
    assert rows == 300
    assert peak <= ds.memory_budget


def test_a_batch_is_decoded_in_parts_by_several_threads(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A batch of 60 rows is decoded in parts (the assembling thread and the decoding pool's):
    every row lands at its place with its colour, and a broken image in a later part is named,
    or skipped and counted, as with one part."""
    rows = _folder(tmp_path / "imgs", per_class=40, broken=101)
    m = streambatch.convert(tmp_path / "imgs", tmp_path / "ds", unit_bytes="4KiB", progress=False)
    unit = int(np.searchsorted(m.unit_start, 101, "right")) - 1
    with pytest.raises(DataError, match=f"column 'image', row 101 \\(unit {unit}\\): not a decodable image"):
        for _ in StreamDataset(tmp_path / "ds", batch_size=60, threads=2, decode={"image": Image(size=(16, 24))}):
            pass
    ds = StreamDataset(tmp_path / "ds", batch_size=60, threads=2, return_index=True,
                       decode={"image": Image(size=(16, 24), on_error="skip")})
    seen = []
    with caplog.at_level(logging.WARNING, logger="streambatch"):
        for b in ds:
            idx = b["_row"].numpy()
            for k, i in enumerate(idx):
                got = b["image"][k].float().mean(dim=(1, 2)).numpy()
                assert np.abs(got - np.array(rows[i][1])).max() < 6
            seen.append(idx)
    assert np.array_equal(np.sort(np.concatenate(seen)), np.setdiff1d(np.arange(len(rows)), [101]))
    assert ds.skipped_rows == 1 and "row 101" in caplog.text
