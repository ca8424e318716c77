"""What the scan cache saves: the pre-flight scan and the dataset check, cold and warm.

On a folder source (CIFAR-10's 60,000 JPEGs by default), with an empty cache
in a temporary ``$CNNLAB_CACHE_DIR``, times:

* the pre-flight scan (``scan_images``: every file fully decoded), cold, then warm;
* the per-file part of the dataset check (``inspect_data(..., full_decode=False)``,
  what ``cnnlab train`` runs), cold, then warm; the warm check still hashes and
  searches for near duplicates, which the cache does not store;
* a warm scan after touching ``--touch`` files (only they are decoded again).

Prints a table (seconds and ms per image) and appends a JSON line to
``bench/results/scan_cache.jsonl``.

    python bench/scan_cache.py                          # CIFAR-10 (unpacked once)
    python bench/scan_cache.py --data /path/to/folder --limit 20000
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import append_result, cifar10_folder, quiet_tensorflow, table  # noqa: E402

quiet_tensorflow()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", help="a class-per-folder image folder [CIFAR-10 from ../shared]")
    p.add_argument("--limit", type=int, default=None, help="use a random sample of N files")
    p.add_argument("--touch", type=int, default=100, help="files touched before a rescan [100]")
    args = p.parse_args()
    os.environ["CNNLAB_CACHE_DIR"] = tempfile.mkdtemp(prefix="cnnlab-scan-cache-")

    from cnnlab.data.inspect import inspect_data
    from cnnlab.data.scan import scan_images
    from cnnlab.data.sources import open_source

    root = Path(args.data) if args.data else cifar10_folder()
    source = open_source(f"folder:{root}")
    if args.limit and args.limit < len(source):  # a random sample, every class in it
        keep = np.sort(np.random.default_rng(0).choice(len(source), args.limit, replace=False))
        source = dataclasses.replace(
            source, labels=source.labels[keep], parts=source.parts[keep], paths=source.paths[keep]
        )
    paths = [str(p) for p in source.paths]
    n = len(paths)
    rows = []

    def timed(stage: str, fn) -> None:
        t0 = time.perf_counter()
        fn()
        s = time.perf_counter() - t0
        rows.append({"stage": stage, "seconds": s, "ms per image": 1000 * s / n})
        print(f"{stage}: {s:.1f} s", flush=True)

    timed("scan, cold", lambda: scan_images(paths, quiet=True))
    timed("scan, warm", lambda: scan_images(paths, quiet=True))
    now = time.time_ns()
    for path in paths[: args.touch]:
        os.utime(path, ns=(now, now))
    timed(f"scan, warm, {args.touch} touched", lambda: scan_images(paths, quiet=True))
    timed("check, cold", lambda: inspect_data(source, full_decode=False, quiet=True))
    timed("check, warm", lambda: inspect_data(source, full_decode=False, quiet=True))
    timed(
        "check, warm, no near-duplicate search",
        lambda: inspect_data(source, full_decode=False, near_duplicates=False, quiet=True),
    )
    cache_bytes = sum(f.stat().st_size for f in Path(os.environ["CNNLAB_CACHE_DIR"]).iterdir())
    print(table(rows, ["stage", "seconds", "ms per image"]))
    print(f"\n{n:,} files in {root}; cache {cache_bytes / 1e6:.1f} MB")
    path = append_result(
        "scan_cache",
        {
            "command": "python " + " ".join(sys.argv),
            "args": vars(args),
            "data": str(root),
            "images": n,
            "cache_bytes": cache_bytes,
            "rows": rows,
        },
    )
    print(f"appended to {path}")


if __name__ == "__main__":
    main()
