"""Generate a folder of ImageNet-like JPEGs for the large-data benches (not committed).

ImageNet-1k's training JPEGs average about 400x350 px and 110 KB. Pure noise
compresses far worse than photographs and flat colour far better, so each image
here is a smooth random colour field (a random 3x3 to 7x7 grid of colours,
upsampled bicubically: random low-frequency content, so perceptual hashes are
as varied as photographs' and the dataset check finds no false near
duplicates; plain linear gradients gave 91,000 near pairs in 40,000 images)
plus a little Gaussian grain (a crop of one of a few pre-drawn noise fields, so
drawing the grain costs nothing), saved at JPEG quality 90 without chroma
subsampling: about 100-115 KB each.
Sizes vary around 400x350 (width 340-460, height 300-400).

Drawing an image costs ~10 ms of CPU; on a busy 2-core machine that is hours
for 200,000. So only the first ``--unique`` images are drawn; image ``i`` after
them is image ``i mod unique`` flipped, rotated or transposed (one of the
seven non-identity symmetries of the square, chosen by ``i // unique``),
cropped by up to 32 px and re-encoded the same way (~4 ms). Those variants
differ pixel by pixel and to the perceptual hash (its low-frequency signs
change), so they are not near duplicates of their source.

Layout: ``DEST/c000/000000.jpg`` ... (``--classes`` folders, ``--count`` files in
all), i.e. a ``folder:`` data source. Files already present are kept, so an
interrupted run resumes. Work is spread over ``--workers`` processes.

Usage:
    nohup nice -n 10 python bench/make_imagenet_like.py --dest /tmp/imagenet-like \
        --count 200000 > /tmp/make_imagenet_like.log 2>&1 &
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing as mp
import os
import time
from pathlib import Path

import numpy as np
from PIL import Image

MAX_H, MAX_W = 400, 460
GRAIN = 13.0
BANK = 6


def _noise_bank(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    noise = rng.normal(0.0, GRAIN, (BANK, MAX_H + 64, MAX_W + 64, 3))
    return np.round(noise).astype(np.int16)


def _image(rng: np.random.Generator, bank: np.ndarray) -> bytes:
    h, w = int(rng.integers(300, MAX_H + 1)), int(rng.integers(340, MAX_W + 1))
    gh, gw = int(rng.integers(3, 8)), int(rng.integers(3, 8))
    grid = rng.integers(30, 226, (gh, gw, 3), dtype=np.uint8)
    smooth = Image.fromarray(grid).resize((w, h), Image.Resampling.BICUBIC)
    k, oy, ox = int(rng.integers(BANK)), int(rng.integers(64)), int(rng.integers(64))
    img = np.asarray(smooth, np.int16) + bank[k, oy : oy + h, ox : ox + w]
    np.clip(img, 0, 255, out=img)
    buf = io.BytesIO()
    Image.fromarray(img.astype(np.uint8)).save(buf, "JPEG", quality=90, subsampling=0)
    return buf.getvalue()


_TRANSPOSES = (
    Image.Transpose.FLIP_LEFT_RIGHT,
    Image.Transpose.FLIP_TOP_BOTTOM,
    Image.Transpose.ROTATE_90,
    Image.Transpose.ROTATE_180,
    Image.Transpose.ROTATE_270,
    Image.Transpose.TRANSPOSE,
    Image.Transpose.TRANSVERSE,
)


def _variant(source: Path, i: int, unique: int, rng: np.random.Generator) -> bytes:
    with Image.open(source) as im:
        img = im.transpose(_TRANSPOSES[(i // unique - 1) % len(_TRANSPOSES)])
    w, h = img.size
    left, top = int(rng.integers(0, 33)), int(rng.integers(0, 33))
    img = img.crop((left, top, w - int(rng.integers(0, 33)), h - int(rng.integers(0, 33))))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90, subsampling=0)
    return buf.getvalue()


def _path(dest: str, i: int, classes: int) -> Path:
    return Path(dest) / f"c{i % classes:03d}" / f"{i:06d}.jpg"


def _work(args: tuple[str, int, int, int, int, int]) -> int:
    dest, start, stop, classes, seed, unique = args
    bank = _noise_bank(seed)
    made = 0
    for i in range(start, stop):
        path = _path(dest, i, classes)
        if path.exists():
            continue
        rng = np.random.default_rng((seed, i))
        tmp = path.with_suffix(".tmp")
        if i < unique:
            tmp.write_bytes(_image(rng, bank))
        else:
            tmp.write_bytes(_variant(_path(dest, i % unique, classes), i, unique, rng))
        os.replace(tmp, path)
        made += 1
    return made


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dest", type=Path, default=Path("/tmp/imagenet-like"))
    ap.add_argument("--count", type=int, default=200_000)
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--unique",
        type=int,
        default=50_000,
        help="images drawn; later ones are symmetries of these [50000]",
    )
    args = ap.parse_args()
    for c in range(args.classes):
        (args.dest / f"c{c:03d}").mkdir(parents=True, exist_ok=True)
    chunk = 2000
    unique = min(args.unique, args.count)
    jobs = [
        (str(args.dest), s, min(s + chunk, args.count), args.classes, args.seed, unique)
        for s in range(0, args.count, chunk)
    ]
    t0, made = time.time(), 0
    # The unique images first (variants are made from them), then the variants.
    with mp.Pool(args.workers) as pool:
        for n, got in enumerate(pool.imap_unordered(_work, [j for j in jobs if j[1] < unique]), 1):
            made += got
            print(f"{n} unique chunks, {made} new files, {time.time() - t0:.0f} s", flush=True)
        jobs = [j for j in jobs if j[1] >= unique]
        for n, got in enumerate(pool.imap_unordered(_work, jobs), 1):
            made += got
            el = time.time() - t0
            print(f"{n}/{len(jobs)} chunks, {made} new files, {el:.0f} s", flush=True)
    files = sorted(args.dest.glob("c*/*.jpg"))
    total = sum(p.stat().st_size for p in files)
    print(
        json.dumps(
            {
                "dest": str(args.dest),
                "files": len(files),
                "mean_kb": round(total / max(1, len(files)) / 1000, 1),
                "total_gb": round(total / 1e9, 2),
                "seconds": round(time.time() - t0, 1),
                "load_avg": os.getloadavg()[0],
            }
        )
    )


if __name__ == "__main__":
    main()
