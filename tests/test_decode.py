"""streambatch.decode: encoded image rows (real JPEG/PNG bytes made with PIL) to uint8 [B, 3, H, W]."""

from __future__ import annotations

import importlib.util
import io
import pickle
import struct
import threading
import zlib

import numpy as np
import pytest
from PIL import Image as PILImage

from streambatch.decode import DECODERS, Decoded, Image
from streambatch.errors import DataError
from streambatch.ragged import Ragged

INSTALLED = [d for d in DECODERS if d == "pillow" or importlib.util.find_spec(d) is not None]


def encode(img: PILImage.Image, fmt: str = "JPEG", **kw: object) -> bytes:
    out = io.BytesIO()
    img.save(out, fmt, **kw)
    return out.getvalue()


def photo(w: int, h: int, seed: int = 0) -> PILImage.Image:
    """Smooth colour blobs plus fine grain: compresses and resamples like a photograph."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(max(2, h // 40), max(2, w // 40), 3), dtype=np.uint8)
    base = np.asarray(PILImage.fromarray(small).resize((w, h), PILImage.Resampling.BICUBIC), np.int16)
    grain = rng.integers(-8, 9, size=(h, w, 1), dtype=np.int16)
    return PILImage.fromarray(np.clip(base + grain, 0, 255).astype(np.uint8))


def reference(data: bytes, size: tuple[int, int]) -> np.ndarray:
    """What users write with torchvision on PIL images: convert("RGB"), Resize (the binding side
    to its target, the other int(...)), CenterCrop; as uint8 CHW."""
    im = PILImage.open(io.BytesIO(data)).convert("RGB")
    (oh, ow), (w, h) = size, im.size
    nh, nw = (oh, max(ow, int(w * oh / h))) if oh / h >= ow / w else (max(oh, int(h * ow / w)), ow)
    im = im.resize((nw, nh), PILImage.Resampling.BILINEAR)
    top, left = int(round((nh - oh) / 2.0)), int(round((nw - ow) / 2.0))
    return np.asarray(im.crop((left, top, left + ow, top + oh))).transpose(2, 0, 1)


def decode(rows: list[bytes], spec: Image, fill: int = 0) -> tuple[np.ndarray, Decoded]:
    out = np.full((len(rows), *spec.shape), fill, np.uint8)
    res = spec.decode_into(Ragged.from_rows(rows, np.uint8), out, np.arange(100, 100 + len(rows)),
                           lambda i: f"unit {i // 2}")
    return out, res


def png16(values: np.ndarray) -> bytes:
    """A 16-bit RGB PNG (Pillow cannot write one): ``values`` uint16 [H, W, 3]."""
    h, w, _ = values.shape
    raw = b"".join(b"\x00" + values[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


MODES = {  # name: encoded bytes of a 300 x 200 (w x h) image in that mode
    "rgb-jpeg": lambda im: encode(im, quality=90),
    "gray-jpeg": lambda im: encode(im.convert("L"), quality=90),
    "cmyk-jpeg": lambda im: encode(im.convert("CMYK"), quality=90),
    "rgb-png": lambda im: encode(im, "PNG"),
    "rgba-png": lambda im: encode(im.convert("RGBA"), "PNG"),
    "gray-alpha-png": lambda im: encode(im.convert("LA"), "PNG"),
    "palette-png": lambda im: encode(im.convert("P", palette=PILImage.Palette.ADAPTIVE), "PNG"),
    "bilevel-png": lambda im: encode(im.convert("1"), "PNG"),
}


@pytest.mark.parametrize("decoder", INSTALLED)
@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize("size", [(224, 224), (150, 160), (110, 290), (64, 96)])
def test_every_mode_decodes_to_rgb_chw_equal_to_the_pil_reference(decoder: str, mode: str, size: tuple[int, int]) -> None:
    """Every colour mode comes out RGB, resampled as the torchvision-style reference does (same
    filter taps, computed once on the crop box): at most 1 level apart (coefficient rounding).
    A JPEG at least twice the output (300 x 200 to 64 x 96) is shrunk in the DCT domain first,
    a different low-pass: within the tolerance of test_aspect_ratios_and_sizes."""
    data = MODES[mode](photo(300, 200))
    out, res = decode([data], Image(size, decoder=decoder))
    assert out.shape == (1, 3, *size) and out.dtype == np.uint8 and res.failed.size == 0
    diff = np.abs(out[0].astype(int) - reference(data, size))
    if size == (64, 96) and mode.endswith("jpeg"):
        assert diff.mean() <= 1.5 and np.percentile(diff, 99) <= 6, (diff.mean(), np.percentile(diff, 99))
    else:
        assert diff.max() <= 1, (mode, diff.max())


@pytest.mark.parametrize("decoder", INSTALLED)
@pytest.mark.parametrize("wh", [(5, 3), (1000, 90), (90, 1000), (224, 224), (225, 600), (2000, 1500)])
def test_aspect_ratios_and_sizes(decoder: str, wh: tuple[int, int]) -> None:
    """Tiny (upsampled), very wide, very tall, exact and large JPEGs: shape, and the reference's
    pixels (sources of twice the output or more are shrunk in the DCT domain first: a different
    low-pass, so mean within 1.5 levels and 99% within 6 on this photo-like content)."""
    data = encode(photo(*wh, seed=sum(wh)), quality=90)
    out, _ = decode([data], Image((224, 224), decoder=decoder))
    diff = np.abs(out[0].astype(int) - reference(data, (224, 224)))
    if min(wh) < 448:
        assert diff.max() <= 1
    else:
        assert diff.mean() <= 1.5 and np.percentile(diff, 99) <= 6, (diff.mean(), np.percentile(diff, 99))


def bands(w: int, h: int, horizontal: bool) -> PILImage.Image:
    """Red, green and blue thirds: across the width (``horizontal``) or down the height."""
    a = np.zeros((h, w, 3), np.uint8)
    n = w if horizontal else h
    for k in range(3):
        sl = slice(k * n // 3, (k + 1) * n // 3)
        if horizontal:
            a[:, sl, k] = 255
        else:
            a[sl, :, k] = 255
    return PILImage.fromarray(a)


@pytest.mark.parametrize("decoder", INSTALLED)
@pytest.mark.parametrize("horizontal", [True, False])
def test_the_centre_is_kept_and_the_borders_cropped(decoder: str, horizontal: bool) -> None:
    """A 600 x 200 image of red | green | blue thirds to 100 x 100: scaled by 1/2, the crop is
    exactly the green third (a squash, or a crop off-centre, shows red or blue)."""
    img = bands(600, 200, True) if horizontal else bands(200, 600, False)
    out, _ = decode([encode(img, "PNG")], Image((100, 100), decoder=decoder))
    r, g, b = out[0].astype(int)
    inner = (slice(None), slice(1, -1)) if horizontal else (slice(1, -1), slice(None))
    assert (g[inner] == 255).all() and (r[inner] == 0).all() and (b[inner] == 0).all()
    # the outermost output pixels' filter taps reach one source pixel into the neighbours
    assert g.min() > 200 and r.max() < 40 and b.max() < 40


@pytest.mark.parametrize("decoder", INSTALLED)
def test_16_bit_pngs_keep_their_top_8_bits(decoder: str) -> None:
    """16-bit grayscale is scaled, not clipped at 255 as PIL's convert("RGB") does; 16-bit RGB too."""
    gray = encode(PILImage.fromarray(np.full((40, 30), 0x8040, np.uint16)), "PNG")
    rgb = png16(np.broadcast_to(np.array([0x1000, 0x8000, 0xFFFF], np.uint16), (40, 30, 3)))
    out, _ = decode([gray, rgb], Image((16, 16), decoder=decoder))
    assert (out[0] == 0x80).all()
    assert (out[1, 0] == 0x10).all() and (out[1, 1] == 0x80).all() and (out[1, 2] == 0xFF).all()


def corrupt() -> dict[str, bytes]:
    good = encode(photo(300, 200), quality=90)
    return {"truncated-jpeg": good[: len(good) // 2], "random": np.random.default_rng(3).bytes(5000),
            "empty": b"", "jpeg-header-then-garbage": good[:200] + b"\x00" * 3000,
            "truncated-png": encode(photo(300, 200), "PNG")[:3000]}


@pytest.mark.parametrize("decoder", INSTALLED)
@pytest.mark.parametrize("kind", sorted(corrupt()))
def test_an_undecodable_row_raises_naming_column_row_and_unit(decoder: str, kind: str) -> None:
    good = encode(photo(300, 200), quality=90)
    with pytest.raises(DataError) as info:
        decode([good, good, good, corrupt()[kind]], Image((32, 32), decoder=decoder))
    msg = str(info.value)
    assert "\n" not in msg and "object at 0x" not in msg
    assert msg.startswith("column 'image', row 103 (unit 1): not a decodable image: "), msg


@pytest.mark.parametrize("decoder", INSTALLED)
def test_skip_reports_the_failed_rows_and_zeroes_them(decoder: str) -> None:
    goods = [encode(photo(300, 200, seed=s), quality=90) for s in range(3)]
    bad = corrupt()
    rows = [goods[0], bad["random"], goods[1], bad["truncated-jpeg"], goods[2]]
    spec = Image((48, 48), decoder=decoder, on_error="skip")
    out, res = decode(rows, spec, fill=7)
    assert res.failed.tolist() == [1, 3] and res.failed.dtype == np.int64
    assert [m.split(":")[0] for m in res.errors] == ["column 'image', row 101 (unit 0)",
                                                     "column 'image', row 103 (unit 1)"]
    assert (out[[1, 3]] == 0).all()
    alone, ok = decode(goods, spec)
    assert ok.failed.size == 0 and ok.errors == ()
    np.testing.assert_array_equal(out[[0, 2, 4]], alone)


@pytest.mark.parametrize("decoder", INSTALLED)
def test_threads_give_the_single_thread_result(decoder: str) -> None:
    """Four threads decoding slices of one Ragged into one output write what one thread writes."""
    rng = np.random.default_rng(0)
    rows = [encode(photo(int(rng.integers(40, 700)), int(rng.integers(40, 700)), seed=i), quality=85)
            for i in range(48)]
    spec = Image((64, 64), decoder=decoder)
    single, _ = decode(rows, spec)
    ragged, out = Ragged.from_rows(rows, np.uint8), np.zeros_like(single)
    ids = np.arange(len(rows))

    def work(k: int) -> None:
        for a in range(k * 6, len(rows), 24):
            spec.decode_into(ragged[a:a + 6], out[a:a + 6], ids[a:], lambda i: "unit")

    threads = [threading.Thread(target=work, args=(k,), name=f"test-decode-{k}") for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    np.testing.assert_array_equal(out, single)


def test_the_decoders_agree() -> None:
    """simplejpeg and Pillow decode a JPEG to the same pixels (both are libjpeg-turbo, ISLOW)."""
    pytest.importorskip("simplejpeg")
    rows = [encode(photo(w, h, seed=w), quality=q) for w, h, q in [(300, 200, 90), (640, 480, 75), (257, 999, 95)]]
    a, _ = decode(rows, Image((224, 224), decoder="pillow"))
    b, _ = decode(rows, Image((224, 224), decoder="simplejpeg"))
    assert np.abs(a.astype(int) - b).max() <= 1


def test_bad_arguments_are_refused() -> None:
    for kw, match in [({"size": (0, 224)}, "size"), ({"size": (224,)}, "size"), ({"size": (2.5, 3)}, "size"),
                      ({"decoder": "cv2"}, "decoder"), ({"on_error": "ignore"}, "on_error")]:
        with pytest.raises(ValueError, match=match):
            Image(**kw)  # type: ignore[arg-type]
    spec = Image((8, 8))
    with pytest.raises(ValueError, match="uint8"):
        spec.decode_into(Ragged.from_rows([b"x"], np.uint8), np.zeros((1, 3, 8, 9), np.uint8), np.arange(1), str)


def test_the_spec_is_a_frozen_value_that_pickles() -> None:
    """It travels to DataLoader workers with the dataset."""
    spec = Image(size=[32, 48], on_error="skip")  # type: ignore[arg-type]
    assert spec.size == (32, 48) and spec.shape == (3, 32, 48)
    assert pickle.loads(pickle.dumps(spec)) == spec
    with pytest.raises(AttributeError):
        spec.size = (1, 1)  # type: ignore[misc]
