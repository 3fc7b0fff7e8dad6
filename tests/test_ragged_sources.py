"""Variable-length inputs (issue 17): list, string and binary columns of Parquet, Arrow and JSON
Lines files, Hugging Face image columns and image folders come out of ``Source.pieces`` as
``Ragged`` rows, exactly, over any row range and piece size; nulls and bad rows are one-line
errors naming the row."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.feather as feather
import pyarrow.parquet as pq
import pytest
from PIL import Image

from streambatch.errors import InputError
from streambatch.ragged import Ragged
from streambatch.sources import Source, detect_format, open_source
from streambatch.sources.base import piece_nbytes

ROWS = 2500  # more than the 1024 first rows a Parquet file is looked at by


def _value(v: Any, i: int, kind: str) -> Any:
    """Row ``i`` of a piece's column as Python: a list, bytes or str for ragged columns."""
    if isinstance(v, Ragged):
        r = v.row(i)
        return r.tobytes() if kind == "bytes" else r.tobytes().decode() if kind == "string" else r.tolist()
    return v[i].tolist()


def rows_of(source: Source, max_rows: int = 1000, start: int = 0, stop: int | None = None,
            names: tuple[str, ...] | None = None) -> dict[str, list[Any]]:
    """Every row of ``pieces`` as Python values, each piece checked to be row-aligned."""
    kinds = {c.name: c.kind for c in source.columns}
    names = names or tuple(kinds)
    out: dict[str, list[Any]] = {n: [] for n in names}
    for piece in source.pieces(max_rows, names, start, stop):
        n = {len(v) for v in piece.values()}
        assert len(n) == 1 and 1 <= n.pop() <= max_rows
        for name, v in piece.items():
            out[name] += [_value(v, i, kinds[name]) for i in range(len(v))]
    return out


def _tokens(rng: np.random.Generator, n: int = ROWS) -> list[list[int]]:
    return [rng.integers(0, 50_000, int(k)).tolist() for k in rng.integers(0, 40, n)]


def _texts(n: int = ROWS) -> list[str]:
    return [("héllo wörld " * (i % 7))[: i % 31] + str(i) if i % 13 else "" for i in range(n)]


def _blobs(rng: np.random.Generator, n: int = ROWS) -> list[bytes]:
    return [rng.integers(0, 256, int(k), dtype=np.uint8).tobytes() for k in rng.integers(0, 300, n)]


# --------------------------------------------------------------------------- Parquet, Arrow, JSON Lines


def _table(rng: np.random.Generator) -> tuple[pa.Table, dict[str, list[Any]]]:
    tokens, texts, blobs = _tokens(rng), _texts(), _blobs(rng)
    points = [rng.standard_normal((int(k), 2)).astype(np.float32).tolist() for k in rng.integers(0, 5, ROWS)]
    want = {"tokens": tokens, "big": tokens, "points": points, "text": texts, "ltext": texts, "blob": blobs,
            "lblob": blobs, "id": list(range(ROWS))}
    table = pa.table({
        "tokens": pa.array(tokens, pa.list_(pa.int32())),
        "big": pa.array(tokens, pa.large_list(pa.int64())),
        "points": pa.array(points, pa.list_(pa.list_(pa.float32(), 2))),
        "text": pa.array(texts, pa.string()), "ltext": pa.array(texts, pa.large_string()),
        "blob": pa.array(blobs, pa.binary()), "lblob": pa.array(blobs, pa.large_binary()),
        "id": pa.array(range(ROWS), pa.int64())})
    return table, want


KINDS = {"tokens": ("list", "int32", ()), "big": ("list", "int64", ()), "points": ("list", "float32", (2,)),
         "text": ("string", "uint8", ()), "ltext": ("string", "uint8", ()), "blob": ("bytes", "uint8", ()),
         "lblob": ("bytes", "uint8", ()), "id": ("fixed", "int64", ())}


def _write_parquet(path: Path, table: pa.Table) -> Path:
    pq.write_table(table, path / "t.parquet", row_group_size=700)
    return path / "t.parquet"


def _write_feather(path: Path, table: pa.Table) -> Path:
    feather.write_feather(table, path / "t.feather", chunksize=600, compression="uncompressed")
    return path / "t.feather"


def _write_stream(path: Path, table: pa.Table) -> Path:
    with pa.OSFile(str(path / "t.arrow"), "wb") as f, pa.ipc.new_stream(f, table.schema) as w:
        w.write_table(table, max_chunksize=900)
    return path / "t.arrow"


@pytest.mark.parametrize("write", [_write_parquet, _write_feather, _write_stream])
def test_list_string_and_binary_columns_come_back_exactly(tmp_path: Path, write: Any) -> None:
    table, want = _table(np.random.default_rng(0))
    source = open_source(write(tmp_path, table))
    assert {c.name: (c.kind, c.dtype, c.shape) for c in source.columns} == KINDS
    assert source.random_access == (write is _write_parquet)
    assert rows_of(source) == want
    # pieces that cut through the file's batches and row groups, and ranges starting inside them
    for max_rows, start, stop in [(7, 0, ROWS), (333, 650, 1999), (1, 1398, 1403), (5000, 1, ROWS - 1)]:
        got = rows_of(source, max_rows, start, stop)
        assert got == {k: v[start:stop] for k, v in want.items()}, (max_rows, start, stop)


def test_nbytes_counts_ragged_columns_values_and_offsets(tmp_path: Path) -> None:
    """``Source.nbytes`` of an input of fewer than 4096 rows is exact: what ``piece_nbytes`` counts
    in one piece of every row."""
    table, _ = _table(np.random.default_rng(3))
    source = open_source(_write_parquet(tmp_path, table))
    parts: dict[str, list[Any]] = {c.name: [] for c in source.columns}
    for piece in source.pieces(ROWS):
        for k, v in piece.items():
            parts[k].append(v)
    whole = {k: Ragged.concat(v) if isinstance(v[0], Ragged) else np.concatenate(v) for k, v in parts.items()}
    assert source.nbytes == piece_nbytes(whole)
    assert whole["ltext"].nbytes == sum(len(t.encode()) for t in _texts()) + 8 * (ROWS + 1)


def test_string_and_binary_views_are_read_too(tmp_path: Path) -> None:
    """Arrow's view types (as Polars writes IPC) become string and bytes columns."""
    texts, blobs = _texts(50), _blobs(np.random.default_rng(4), 50)
    feather.write_feather(pa.table({"s": pa.array(texts, pa.string_view()), "b": pa.array(blobs, pa.binary_view())}),
                          tmp_path / "v.arrow", compression="uncompressed")
    source = open_source(tmp_path / "v.arrow")
    assert [c.kind for c in source.columns] == ["string", "bytes"]
    assert rows_of(source, 7, 3, 45) == {"s": texts[3:45], "b": blobs[3:45]}


def test_csv_text_is_a_string_column(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text("id,text\n1,hello\n2,\"a, b\"\n3,\n")
    source = open_source(tmp_path / "t.csv", fill={"text": "empty"})
    assert [c.kind for c in source.columns] == ["fixed", "string"]
    assert rows_of(source, 2) == {"id": [1, 2, 3], "text": ["hello", "a, b", ""]}


def test_ragged_values_are_arrow_buffers_not_copies(tmp_path: Path) -> None:
    """Large types are read without a copy of their values or offsets (an Arrow file is mapped)."""
    table, _ = _table(np.random.default_rng(1))
    source = open_source(_write_feather(tmp_path, table))
    piece = next(source.pieces(50, ("big", "ltext"), 10, 60))
    for name in ("big", "ltext"):
        r = piece[name]
        assert not r.values.flags.owndata and not r.offsets.flags.owndata, name
        assert r.offsets[0] > 0  # a slice of a batch: its parent's offsets


def test_a_list_column_is_ragged_only_where_its_rows_differ_in_length(tmp_path: Path) -> None:
    """Rows of one length stay a fixed-shape column; a column whose rows first differ past the
    first rows looked at (a later row group) is ragged too, and the spec keeps the decision."""
    same = [[i, i + 1, i + 2] for i in range(ROWS)]
    late = [list(r) for r in same]
    late[2100] = [7]
    pq.write_table(pa.table({"same": pa.array(same, pa.list_(pa.int16())), "late": pa.array(late, pa.list_(pa.int16())),
                             "x": np.arange(ROWS)}), tmp_path / "t.parquet", row_group_size=1100)
    source = open_source(tmp_path / "t.parquet")
    assert {c.name: (c.kind, c.shape) for c in source.columns} == {"same": ("fixed", (3,)), "late": ("list", ()),
                                                                   "x": ("fixed", ())}
    assert source.spec is not None and source.spec.ragged == ("late",)
    assert rows_of(source, 512, 2050, 2200)["late"] == late[2050:2200]
    again = open_source(**vars(source.spec))
    assert again.columns == source.columns
    forced = open_source(tmp_path / "t.parquet", ragged=("same", "late"))
    assert [c.kind for c in forced.columns] == ["list", "list", "fixed"]
    assert rows_of(forced, 100, 0, 5)["same"] == same[:5]
    with pytest.raises(InputError, match=r"t.parquet: column 'x' cannot be read as ragged rows: it is not a "
                                         r"variable-length list column \(those are \['same', 'late'\]\)"):
        open_source(tmp_path / "t.parquet", ragged=("x",))


def test_pandas_list_and_string_columns_through_parquet_and_json_lines(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    df = pd.DataFrame({"ids": _tokens(rng, 300), "text": _texts(300), "y": rng.integers(0, 5, 300)})
    df.to_parquet(tmp_path / "df.parquet", row_group_size=64)
    df.to_json(tmp_path / "df.jsonl", orient="records", lines=True, force_ascii=False)
    want = {"ids": df["ids"].tolist(), "text": df["text"].tolist(), "y": df["y"].tolist()}
    for name in ("df.parquet", "df.jsonl"):
        source = open_source(tmp_path / name)
        kinds = {c.name: c.kind for c in source.columns}
        assert kinds == {"ids": "list", "text": "string", "y": "fixed"}, name
        assert rows_of(source, 50) == want, name
        assert rows_of(source, 9, 17, 250) == {k: v[17:250] for k, v in want.items()}, name


def test_json_lines_arrays_of_numbers_and_strings(tmp_path: Path) -> None:
    rows = [{"tokens": [1, 2, 3][: i % 4], "caption": f"a photo of {i}", "score": [0.5, i / 2]} for i in range(40)]
    (tmp_path / "r.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    source = open_source(tmp_path / "r.jsonl")
    assert {c.name: (c.kind, c.dtype, c.shape) for c in source.columns} == {
        "tokens": ("list", "int64", ()), "caption": ("string", "uint8", ()), "score": ("fixed", "float64", (2,))}
    got = rows_of(source, 6, 3, 37)
    assert got["tokens"] == [r["tokens"] for r in rows[3:37]]
    assert got["caption"] == [r["caption"] for r in rows[3:37]]


def test_nested_lists_whose_elements_differ_in_shape_are_an_error_naming_the_row(tmp_path: Path) -> None:
    rows = [[[1, 2], [3, 4]], [[5, 6]]] * 10
    rows[13] = [[1, 2], [3]]
    pq.write_table(pa.table({"m": pa.array(rows, pa.list_(pa.list_(pa.int32())))}), tmp_path / "m.parquet")
    source = open_source(tmp_path / "m.parquet")
    assert (source.columns[0].kind, source.columns[0].shape) == ("list", (2,))
    with pytest.raises(InputError, match=r"m.parquet: column 'm': row 13 has an element of 1 values where 2"):
        rows_of(source)


# --------------------------------------------------------------------------- nulls


def _with_nulls(tmp_path: Path) -> Path:
    tokens: list[Any] = [[i] * (i % 3 + 1) for i in range(20)]
    tokens[7] = None
    tokens[12] = [1, None, 3]
    texts: list[Any] = [f"t{i}" for i in range(20)]
    texts[4] = None
    pq.write_table(pa.table({"tokens": pa.array(tokens, pa.list_(pa.int32())), "text": pa.array(texts),
                             "i": np.arange(20)}), tmp_path / "n.parquet", row_group_size=6)
    return tmp_path / "n.parquet"


def test_a_null_row_is_an_error_naming_it_unless_filled_or_dropped(tmp_path: Path) -> None:
    src = _with_nulls(tmp_path)
    with pytest.raises(InputError) as e:
        rows_of(open_source(src, columns=("text",)))
    assert str(e.value) == (f"{src}: column 'text': row 4 has a null; pass --fill text=empty (an empty row) "
                            "or --drop-nulls")
    with pytest.raises(InputError, match=r"column 'tokens': row 7 has a null; pass --fill tokens=empty"):
        rows_of(open_source(src, columns=("tokens",)))

    filled = open_source(src, columns=("text", "i"), fill={"text": "empty"})
    got = rows_of(filled, 5)
    assert got["text"] == [f"t{i}" if i != 4 else "" for i in range(20)]
    assert filled.nulls.report() == {"filled": {"text": 1}}
    assert filled.nulls.options() == {"fill": {"text": "empty"}}

    dropped = open_source(src, drop_nulls=True)
    assert dropped.rows == 17
    assert rows_of(dropped, 4)["i"] == [i for i in range(20) if i not in (4, 7, 12)]
    assert dropped.nulls.dropped == 3


def test_a_null_inside_a_list_is_an_error_naming_the_row(tmp_path: Path) -> None:
    src = _with_nulls(tmp_path)
    source = open_source(src, columns=("tokens",), fill={"tokens": ""})
    with pytest.raises(InputError) as e:
        rows_of(source, 5)
    assert str(e.value) == (f"{src}: column 'tokens': row 12 has a null inside its list; streambatch stores no "
                            "nulls inside a row (--drop-nulls leaves such rows out)")


def test_a_ragged_column_is_filled_only_with_an_empty_row(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"--fill text=0: column 'text' is a string column; its nulls can only "
                                         r"be filled with an empty row: --fill text=empty"):
        open_source(_with_nulls(tmp_path), fill={"text": "0"})


# --------------------------------------------------------------------------- Hugging Face images


def _image_bytes(size: tuple[int, int], color: int, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (color, 255 - color, 40)).save(buf, format=fmt)
    return buf.getvalue()


IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def test_hugging_face_image_column_gives_the_image_bytes(tmp_path: Path) -> None:
    images = [_image_bytes((8 + i, 5 + i % 3), 10 * i, "PNG" if i % 2 else "JPEG") for i in range(25)]
    col = pa.array([{"bytes": b, "path": f"img{i}.png" if i % 3 else None} for i, b in enumerate(images)], IMAGE_TYPE)
    pq.write_table(pa.table({"image": col, "label": np.arange(25) % 4}), tmp_path / "hf.parquet", row_group_size=10)
    source = open_source(tmp_path / "hf.parquet")
    assert (source.columns[0].kind, source.columns[0].dtype) == ("bytes", "uint8")
    assert rows_of(source, 4, 3, 22)["image"] == images[3:22]
    assert Image.open(io.BytesIO(rows_of(source, 7)["image"][5])).size == (13, 7)


def test_an_image_with_only_a_path_is_an_error_naming_the_row_and_path(tmp_path: Path) -> None:
    rows = [{"bytes": b"\xff\xd8x", "path": None}] * 6
    rows[4] = {"bytes": None, "path": "train/cat.jpg"}
    pq.write_table(pa.table({"image": pa.array(rows, IMAGE_TYPE)}), tmp_path / "hf.parquet")
    with pytest.raises(InputError) as e:
        rows_of(open_source(tmp_path / "hf.parquet"))
    assert str(e.value) == (f"{tmp_path / 'hf.parquet'}: column 'image': row 4 has no image bytes, only the path "
                            "'train/cat.jpg' (paths are not followed); pass --fill image=empty (an empty row) "
                            "or --drop-nulls")
    dropped = open_source(tmp_path / "hf.parquet", drop_nulls=True)
    assert dropped.rows == 5 and rows_of(dropped)["image"] == [b"\xff\xd8x"] * 5


# --------------------------------------------------------------------------- image folders


def _image_tree(root: Path) -> dict[str, list[tuple[str, bytes]]]:
    """Class folders of PIL-written JPEG and PNG files (and files that are not images)."""
    classes: dict[str, list[tuple[str, bytes]]] = {}
    for k, (name, n) in enumerate([("dog", 4), ("cat", 3), ("Zebra", 2), ("bird", 5)]):
        (root / name).mkdir(parents=True)
        files = []
        for i in range(n):
            fname = f"{n - i:02d}_{name}.{['jpg', 'PNG', 'jpeg', 'png'][(i + k) % 4]}"
            data = _image_bytes((16 + i, 12 + k), 30 * i + k, "PNG" if "png" in fname.lower() else "JPEG")
            (root / name / fname).write_bytes(data)
            files.append((fname, data))
        (root / name / "notes.txt").write_text("not an image")
        (root / name / ".hidden.jpg").write_bytes(b"not listed")
        classes[name] = sorted(files)
    (root / "README.md").write_text("an image folder")
    return dict(sorted(classes.items()))


def test_image_folder_rows_are_the_files_bytes_in_class_then_name_order(tmp_path: Path) -> None:
    tree = _image_tree(tmp_path / "imgs")
    assert detect_format(tmp_path / "imgs") == "imagefolder"
    source = open_source(tmp_path / "imgs")
    assert source.format == "imagefolder" and source.random_access
    image, label = source.columns
    assert (image.name, image.kind, label.name, label.dtype) == ("image", "bytes", "label", "int64")
    assert label.meta == {"type": "category", "categories": ["Zebra", "bird", "cat", "dog"], "ordered": False}
    want_images = [data for files in tree.values() for _, data in files]
    want_labels = [k for k, files in enumerate(tree.values()) for _ in files]
    assert rows_of(source) == {"image": want_images, "label": want_labels}
    assert rows_of(source, 3, 4, 13) == {"image": want_images[4:13], "label": want_labels[4:13]}
    assert rows_of(source, 2, names=("label",)) == {"label": want_labels}
    assert source.nbytes == sum(map(len, want_images)) + 8 * (source.rows + 1) + 8 * source.rows
    assert sum(piece_nbytes(p) for p in source.pieces(5)) == source.nbytes + 8 * (-(-source.rows // 5) - 1)
    first = next(source.pieces(1, ("image",)))["image"]
    assert Image.open(io.BytesIO(first.row(0).tobytes())).format == ("PNG" if "png" in tree["Zebra"][0][0].lower()
                                                                    else "JPEG")


def test_image_folder_errors_name_the_folder_or_file(tmp_path: Path) -> None:
    root = tmp_path / "imgs"
    _image_tree(root)
    (root / "empty").mkdir()
    (root / "empty" / "x.txt").write_text("no image")
    assert detect_format(root) == "imagefolder"  # another class folder holds images
    with pytest.raises(InputError) as e:
        open_source(root)
    assert str(e.value).startswith(f"{root / 'empty'}: class folder holds no image files (.jpg, .jpeg")
    (root / "empty" / "x.txt").unlink()
    (root / "empty").rmdir()

    os.symlink(tmp_path / "nowhere.jpg", root / "cat" / "broken.jpg")
    with pytest.raises(InputError, match=rf"^{root / 'cat' / 'broken.jpg'}: cannot read: No such file"):
        open_source(root)
    (root / "cat" / "broken.jpg").unlink()

    source = open_source(root)
    victim = root / "dog" / sorted(p.name for p in (root / "dog").glob("0*"))[0]
    victim.unlink()
    with pytest.raises(InputError, match=rf"^{victim}: cannot read: No such file"):
        rows_of(source, 4, names=("image",))
    victim.write_bytes(b"shorter")
    with pytest.raises(InputError, match=rf"^{victim}: changed since the image folder was opened"):
        rows_of(source, 4, names=("image",))

    (root / "dog" / "sub").mkdir()
    with pytest.raises(InputError, match=rf"^{root / 'dog' / 'sub'}: a folder inside class folder 'dog'"):
        open_source(root)
    (tmp_path / "none").mkdir()
    with pytest.raises(InputError, match=rf"^{tmp_path / 'none'}: holds no class folders"):
        open_source(tmp_path / "none", "imagefolder")


def test_image_folder_detection_leaves_other_folders_alone(tmp_path: Path) -> None:
    """Folders of class-like subfolders without images, Hive partitions and datasets are not taken."""
    hive = tmp_path / "hive"
    (hive / "year=2020").mkdir(parents=True)
    pq.write_table(pa.table({"x": [1.0]}), hive / "year=2020" / "a.parquet")
    (hive / "year=2020" / "thumb.jpg").write_bytes(_image_bytes((4, 4), 1, "JPEG"))
    assert detect_format(hive) == "parquet"
    splits = tmp_path / "splits"  # train/<class>/x.jpg: one level too deep to be classes
    (splits / "train" / "cat").mkdir(parents=True)
    (splits / "train" / "cat" / "a.jpg").write_bytes(_image_bytes((4, 4), 1, "JPEG"))
    with pytest.raises(InputError, match="cannot tell the input format"):
        detect_format(splits)
    tree = tmp_path / "tree"
    _image_tree(tree)
    assert detect_format(tree) == "imagefolder"
    pq.write_table(pa.table({"x": [1.0]}), tree / "meta.parquet")
    assert detect_format(tree) == "parquet"
