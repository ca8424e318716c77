"""Generate a folder of ImageNet-like JPEGs for the large-data benches (not committed).

ImageNet-1k's training JPEGs average about 400x350 px and 110 KB. Pure noise
compresses far worse than photographs and flat colour far better, so each image
here is a smooth random colour gradient plus a little Gaussian grain (a crop of
one of a few pre-drawn noise fields, so drawing the grain costs nothing),
saved at JPEG quality 90 without chroma subsampling: about 105-115 KB each.
Sizes vary around 400x350 (width 340-460, height 300-400).

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
    return rng.normal(0.0, GRAIN, (BANK, MAX_H + 64, MAX_W + 64, 3)).astype(np.float32)


def _image(rng: np.random.Generator, bank: np.ndarray) -> bytes:
    h, w = int(rng.integers(300, MAX_H + 1)), int(rng.integers(340, MAX_W + 1))
    yy = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None, None]
    xx = np.linspace(0.0, 1.0, w, dtype=np.float32)[None, :, None]
    base = rng.uniform(40, 215, 3).astype(np.float32)
    slope = rng.uniform(-100, 100, (2, 3)).astype(np.float32)
    k, oy, ox = int(rng.integers(BANK)), int(rng.integers(64)), int(rng.integers(64))
    img = base + xx * slope[0] + yy * slope[1] + bank[k, oy : oy + h, ox : ox + w]
    buf = io.BytesIO()
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(
        buf, "JPEG", quality=90, subsampling=0
    )
    return buf.getvalue()


def _work(args: tuple[str, int, int, int, int]) -> int:
    dest, start, stop, classes, seed = args
    bank = _noise_bank(seed)
    made = 0
    for i in range(start, stop):
        path = Path(dest) / f"c{i % classes:03d}" / f"{i:06d}.jpg"
        if path.exists():
            continue
        rng = np.random.default_rng((seed, i))
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(_image(rng, bank))
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
    args = ap.parse_args()
    for c in range(args.classes):
        (args.dest / f"c{c:03d}").mkdir(parents=True, exist_ok=True)
    chunk = 2000
    jobs = [
        (str(args.dest), s, min(s + chunk, args.count), args.classes, args.seed)
        for s in range(0, args.count, chunk)
    ]
    t0, made = time.time(), 0
    with mp.Pool(args.workers) as pool:
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
