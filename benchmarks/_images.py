"""The must-show image dataset of issue 17: generated JPEGs in the ImageFolder layout.

    python benchmarks/_images.py ROOT [--n 20000] [--classes 10] [--seed 0] [--threads 2]

writes ``ROOT/<class>/<index>.jpg``: ``n`` JPEGs (quality 90, 4:2:0) of 256-500 px a side,
``classes`` folders ``class_00 ...`` of consecutive indices (label-sorted: listing the files in
order lists class 0's first).  Each image is smooth coloured blobs (low-frequency noise, tinted
per class), a few filled shapes with hard edges and fine grain, so that it compresses like a
textured photograph rather than like flat colour or pure noise: about 2.4 bits a pixel, 45 KB an
image, 891 MB for 20,000 (ImageNet's training JPEGs: about 110 KB at about 400 x 350).  Image ``i``
depends only on ``(seed, i)``: the same arguments write the same bytes, in any thread count.
A finished folder carries ``ROOT/_images.json`` (the arguments); :func:`ensure_images` reuses it.
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

MIN_SIDE, MAX_SIDE = 256, 500
QUALITY = 90
_MARKER = "_images.json"


_GRAIN_SIDE = 1024


@functools.lru_cache(maxsize=4)
def _grain(seed: int) -> np.ndarray:
    """Fine grain (normal, sigma 6) that images cut at random offsets: drawing it per image took
    half the generation time."""
    noise = np.random.default_rng([seed, 1 << 40]).normal(0, 6, size=(_GRAIN_SIDE, _GRAIN_SIDE))
    return noise.astype(np.int16)


def image_bytes(i: int, n_classes: int, label: int, seed: int = 0) -> bytes:
    """JPEG bytes of image ``i`` (of class ``label``), a pure function of its arguments."""
    rng = np.random.default_rng([seed, i])
    h, w = (int(v) for v in rng.integers(MIN_SIDE, MAX_SIDE + 1, size=2))
    gh, gw = max(2, h // 48), max(2, w // 48)
    base = rng.normal(0.0, 1.0, size=(gh, gw, 3))
    tint = np.array([np.cos(2 * np.pi * (label / n_classes + k / 3)) for k in range(3)])
    small = np.clip(128 + 55 * base + 45 * tint, 0, 255).astype(np.uint8)
    img = Image.fromarray(small, "RGB").resize((w, h), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(3, 9))):
        x0, y0 = int(rng.integers(0, w - 16)), int(rng.integers(0, h - 16))
        x1, y1 = x0 + int(rng.integers(16, w // 2)), y0 + int(rng.integers(16, h // 2))
        fill = tuple(int(c) for c in rng.integers(0, 256, size=3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=fill)
    y0, x0 = (int(v) for v in rng.integers(0, _GRAIN_SIDE - MAX_SIDE, size=2))
    arr = np.asarray(img, dtype=np.int16) + _grain(seed)[y0:y0 + h, x0:x0 + w, None]
    out = io.BytesIO()
    Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB").save(out, "JPEG", quality=QUALITY)
    return out.getvalue()


def labels(n: int, n_classes: int) -> np.ndarray:
    """The class of each of ``n`` images: ``n_classes`` runs of consecutive indices."""
    return (np.arange(n, dtype=np.int64) * n_classes) // n


def write_images(root: str | os.PathLike[str], n: int = 20_000, n_classes: int = 10, seed: int = 0,
                 threads: int | None = None) -> Path:
    """Write the dataset under ``root`` (which must not hold a different one); return ``root``.

    Raises:
        FileExistsError: ``root`` exists and is not an empty folder.
    """
    out = Path(root)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out}: exists and is not empty; choose another folder")
    y = labels(n, n_classes)
    width = len(str(max(n - 1, 1)))
    for c in range(n_classes):
        (out / f"class_{c:02d}").mkdir(parents=True, exist_ok=True)

    def one(i: int) -> None:
        data = image_bytes(i, n_classes, int(y[i]), seed)
        (out / f"class_{int(y[i]):02d}" / f"{i:0{width}d}.jpg").write_bytes(data)

    with ThreadPoolExecutor(threads or os.cpu_count() or 1) as pool:
        for _ in pool.map(one, range(n), chunksize=64):
            pass
    (out / _MARKER).write_text(json.dumps({"n": n, "classes": n_classes, "seed": seed}))
    return out


def ensure_images(root: str | os.PathLike[str], n: int = 20_000, n_classes: int = 10, seed: int = 0) -> Path:
    """``root`` as :func:`write_images` makes it, written only when it is missing."""
    out = Path(root)
    try:
        if json.loads((out / _MARKER).read_text()) == {"n": n, "classes": n_classes, "seed": seed}:
            return out
    except (OSError, ValueError):
        pass
    return write_images(out, n, n_classes, seed)


def image_files(root: str | os.PathLike[str]) -> tuple[list[Path], np.ndarray]:
    """The JPEG files under ``root`` in ImageFolder order (class folders sorted, then names) and
    their labels (the class folder's position)."""
    classes = sorted(p for p in Path(root).iterdir() if p.is_dir())
    files, y = [], []
    for label, folder in enumerate(classes):
        names = sorted(folder.glob("*.jpg"))
        files += names
        y += [label] * len(names)
    return files, np.asarray(y, dtype=np.int64)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("root")
    ap.add_argument("--n", type=int, default=20_000)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    root = write_images(args.root, args.n, args.classes, args.seed, args.threads)
    total = sum(p.stat().st_size for p in root.rglob("*.jpg"))
    print(f"{root}: {args.n:,} JPEGs, {total / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
