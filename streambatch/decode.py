"""Image decoding for the reader threads: encoded rows of a ``bytes`` column to uint8 [B, 3, H, W].

``Image(size=(224, 224))`` is the spec a user passes as ``decode={"image": Image(...)}``.  Each
image is decoded, converted to RGB (grayscale, RGBA, palette, CMYK and 16-bit inputs too; alpha is
dropped, as ``PIL.Image.convert("RGB")`` does), resized so that it covers ``size`` (the shorter side
fits, for a square size) and centre-cropped: torchvision's ``Resize(min(size))`` + ``CenterCrop(size)``
on a PIL image, within one level.  The resample is torch's antialiased bilinear kernel for uint8
(Pillow's filter, vectorised; 2-3x faster than Pillow's own, docs/PERFORMANCE.md), imported on
first use.

Decoders (docs/PERFORMANCE.md, Image decoding): ``"simplejpeg"`` (libjpeg-turbo, the ``image``
extra) decodes YCbCr and grayscale JPEGs, ``"pillow"`` everything else and every JPEG when
simplejpeg is not installed.  A JPEG at least twice the size it is scaled to is decoded at 1/2,
1/4 or 1/8 of its size in the DCT domain (libjpeg's power-of-two scaling: faster, and a low-pass
before the resample).  The decoders and torch's resample release the GIL, so reader threads
decode in parallel; the resample runs on the calling thread only (no intra-op threads).
"""

from __future__ import annotations

import functools
import io
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .errors import DataError
from .ragged import Ragged

__all__ = ["Image", "Decoded", "DECODERS", "default_decoder"]

try:  # the optional fast JPEG decoder (pip install streambatch[image])
    import simplejpeg as _simplejpeg
except ImportError:  # pragma: no cover - depends on the environment
    _simplejpeg = None

DECODERS = ("pillow", "simplejpeg")
"""The decoders ``Image(decoder=...)`` accepts; ``None`` picks :func:`default_decoder`."""
ON_ERROR = ("raise", "skip")
_JPEG_MAGIC = b"\xff\xd8\xff"
_OBJECT_REPR = re.compile(r" ?<[\w.]+ object at 0x[0-9a-fA-F]+>")  # Pillow names its BytesIO
_SIMPLEJPEG_SPACES = ("YCbCr", "Gray")  # others (CMYK, YCCK) go to Pillow, which knows Adobe's


def default_decoder() -> str:
    """``"simplejpeg"`` when it is installed (faster, docs/PERFORMANCE.md), else ``"pillow"``."""
    return "simplejpeg" if _simplejpeg is not None else "pillow"


class _Undecodable(Exception):
    """One row could not be decoded; the message says why (one line)."""


@dataclass(frozen=True)
class Decoded:
    """What :meth:`Image.decode_into` reports: the batch positions that failed (``on_error="skip"``;
    their output rows are zeros) and, aligned with them, one-line messages naming row and unit."""

    failed: NDArray[np.int64]
    errors: tuple[str, ...]


@dataclass(frozen=True)
class Image:
    """Decode an encoded image column (JPEG, PNG, anything Pillow reads) to uint8 [3, H, W] rows.

    Args:
        size: ``(H, W)`` of the output: the image is scaled to cover it (shorter side fits) and
            centre-cropped.
        decoder: ``"simplejpeg"`` or ``"pillow"``; ``None``: :func:`default_decoder`.
        on_error: ``"raise"``: an undecodable image raises ``DataError`` naming row and unit;
            ``"skip"``: it is reported in :class:`Decoded` so that the loader drops and counts it.

    Raises:
        ValueError: a size that is not two positive integers, an unknown decoder or ``on_error``,
            or ``"simplejpeg"`` when it is not installed.
        ImportError: Pillow is not installed.
    """

    size: tuple[int, int] = (224, 224)
    decoder: str | None = None
    on_error: str = "raise"

    def __post_init__(self) -> None:
        size = tuple(self.size)
        if len(size) != 2 or not all(isinstance(v, (int, np.integer)) and v > 0 for v in size):
            raise ValueError(f"Image size must be (height, width) in positive pixels, got {self.size!r}")
        object.__setattr__(self, "size", (int(size[0]), int(size[1])))
        if self.decoder is not None and self.decoder not in DECODERS:
            raise ValueError(f"Image decoder must be one of {DECODERS} or None, got {self.decoder!r}")
        if self.decoder == "simplejpeg" and _simplejpeg is None:
            raise ValueError("Image decoder 'simplejpeg' is not installed: pip install 'streambatch[image]'")
        if self.on_error not in ON_ERROR:
            raise ValueError(f"Image on_error must be one of {ON_ERROR}, got {self.on_error!r}")
        _pil()

    @property
    def shape(self) -> tuple[int, int, int]:
        """One decoded row's shape, ``(3, H, W)``."""
        return (3, *self.size)

    def decode_into(self, rows: Ragged, out: NDArray[np.uint8], row_ids: NDArray[np.int64],
                    unit: Callable[[int], str], column: str = "image") -> Decoded:
        """Decode row ``i`` of ``rows`` (encoded bytes) into ``out[i]`` for every ``i``.

        ``row_ids[i]`` is row ``i``'s global row number and ``unit(i)`` names its unit (both only
        for messages); ``column`` names the column.  Safe to call from several threads at once.

        Returns:
            :class:`Decoded`: empty unless ``on_error="skip"`` and some rows failed.

        Raises:
            DataError: ``on_error="raise"`` and a row is not a decodable image (the first such row,
                with its column, row number, unit and the decoder's reason).
            ValueError: ``out`` is not uint8 ``[len(rows), 3, H, W]`` or ``row_ids`` is too short.
        """
        n = len(rows)
        if out.dtype != np.uint8 or out.shape != (n, *self.shape):
            raise ValueError(f"decode output must be uint8 {(n, *self.shape)}, got {out.dtype} {out.shape}")
        if len(row_ids) < n:
            raise ValueError(f"{len(row_ids)} row ids for {n} rows")
        decoder = self.decoder or default_decoder()
        failed: list[int] = []
        errors: list[str] = []
        for i in range(n):
            try:
                decode_one(rows.row(i), out[i], self.size, decoder)
            except _Undecodable as e:
                message = (f"column {column!r}, row {int(row_ids[i])} ({unit(i)}): not a decodable"
                           f" image: {e}")
                if self.on_error == "raise":
                    raise DataError(message) from e.__cause__
                out[i] = 0
                failed.append(i)
                errors.append(message)
        return Decoded(np.asarray(failed, dtype=np.int64), tuple(errors))


def decode_one(data: NDArray[np.uint8] | bytes, out: NDArray[np.uint8], size: tuple[int, int],
               decoder: str = "pillow") -> None:
    """Decode one encoded image into ``out`` (uint8 ``[3, H, W]``, ``size`` = ``(H, W)``).

    Raises:
        _Undecodable: the bytes are not an image the decoders read (the reason, one line).
    """
    buf = memoryview(data).cast("B") if not isinstance(data, bytes) else data
    if len(buf) == 0:
        raise _Undecodable("empty; 0 bytes")
    found = None
    if decoder == "simplejpeg" and bytes(buf[:3]) == _JPEG_MAGIC:
        found = _simplejpeg_image(buf, size)
    pixels, w, h = found or _pillow_image(buf, size)
    (oh, ow), (nh, nw) = size, _resized_size(w, h, size)
    top, left = int(round((nh - oh) / 2.0)), int(round((nw - ow) / 2.0))
    try:
        scaled = _resample(pixels, nh, nw)
    except (RuntimeError, MemoryError) as e:
        raise _Undecodable(_reason(e, buf)) from e
    out[...] = scaled[0, :, top:top + oh, left:left + ow].numpy()


def _resized_size(w: int, h: int, size: tuple[int, int]) -> tuple[int, int]:
    """``(height, width)`` that torchvision's ``Resize(min(size))`` gives a ``w`` x ``h`` image:
    the binding side to its target, the other ``int(...)`` of the scaled side (never below it)."""
    oh, ow = size
    if oh / h >= ow / w:
        return oh, max(ow, int(w * oh / h))
    return max(oh, int(h * ow / w)), ow


def _resample(pixels: NDArray[np.uint8], nh: int, nw: int) -> Any:
    """``pixels`` (uint8 [H, W, 3]) resampled to ``nh`` x ``nw`` as uint8 [1, 3, nh, nw], antialiased
    bilinear: torch's uint8 kernel of Pillow's filter (the same taps, within a level), on the
    channels-last view, 2-3x faster than Pillow's and free of the GIL (docs/PERFORMANCE.md).
    A JPEG shrunk in the DCT domain is resampled from its reduced size to the same target."""
    torch = _torch()
    x = torch.from_numpy(pixels).permute(2, 0, 1).unsqueeze(0)
    return torch.nn.functional.interpolate(x, size=(nh, nw), mode="bilinear", antialias=True,
                                           align_corners=False)


def _dct_scale(w: int, h: int, size: tuple[int, int]) -> int:
    """The largest of 8, 4, 2, 1 that a JPEG of ``w`` x ``h`` may be shrunk by while still
    covering ``size`` (before the resample)."""
    k = max(size[0] / h, size[1] / w)
    need_w, need_h = math.ceil(w * k), math.ceil(h * k)
    for s in (8, 4, 2):
        if w // s >= need_w and h // s >= need_h:
            return s
    return 1


def _simplejpeg_image(buf: Any, size: tuple[int, int]) -> tuple[NDArray[np.uint8], int, int] | None:
    """The JPEG decoded by simplejpeg, uint8 [H, W, 3] RGB, and the JPEG's full width and height,
    or ``None`` when simplejpeg declines it (a colour space it does not convert, a header it cannot
    read): Pillow then decodes it or says why not."""
    try:
        h, w, space, _ = _simplejpeg.decode_jpeg_header(buf)
        if space not in _SIMPLEJPEG_SPACES:
            return None
        s = _dct_scale(w, h, size)
        pixels = _simplejpeg.decode_jpeg(buf, "RGB", min_height=-(-h // s), min_width=-(-w // s))
    except (ValueError, MemoryError):
        return None
    return pixels, w, h


def _pillow_image(buf: Any, size: tuple[int, int]) -> tuple[NDArray[np.uint8], int, int]:
    """The image decoded by Pillow, uint8 [H, W, 3] RGB (a JPEG shrunk in the DCT domain where it
    may be), and its full width and height.

    Raises:
        _Undecodable: Pillow cannot identify or decode it.
    """
    try:
        im = _pil().open(io.BytesIO(buf))
        w, h = im.size
        if im.format == "JPEG" and (s := _dct_scale(w, h, size)) > 1:
            im.draft("RGB", (w // s, h // s))
        im.load()
        return np.array(_to_rgb(im)), w, h  # a writable copy: torch.from_numpy shares it
    except (OSError, ValueError, SyntaxError, MemoryError, _pil().DecompressionBombError) as e:
        raise _Undecodable(_reason(e, buf)) from e


def _to_rgb(im: Any) -> Any:
    """``im`` in mode RGB; 16-bit grayscale keeps its top 8 bits instead of being
    clipped at 255 as ``convert`` does."""
    if im.mode == "RGB":
        return im
    if im.mode.startswith("I;16") or (im.mode == "I" and im.format == "PNG"):
        top = np.asarray(im).astype(np.uint32) >> 8
        im = _pil().fromarray(np.minimum(top, 255).astype(np.uint8), "L")
    return im.convert("RGB")


def _reason(e: BaseException, buf: Any) -> str:
    """One line: the decoder's message, the byte count and the first bytes (to tell formats)."""
    text = _OBJECT_REPR.sub("", " ".join(str(e).split())) or type(e).__name__
    return f"{text}; {len(buf)} bytes starting {bytes(buf[:4]).hex(' ')}"


@functools.cache
def _pil() -> Any:
    """``PIL.Image``, imported on first use (``import streambatch`` does not need Pillow).

    Raises:
        ImportError: Pillow is not installed.
    """
    try:
        from PIL import Image as PILImage
    except ImportError as e:
        raise ImportError("decoding images needs Pillow: pip install 'streambatch[image]'") from e
    PILImage.init()  # register every format plugin now, not in racing reader threads
    return PILImage


@functools.cache
def _torch() -> Any:
    """``torch``, imported on first use (converting images does not need it)."""
    import torch

    return torch
