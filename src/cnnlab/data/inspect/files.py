"""Reading the images: one pass per file that keeps what every later check needs.

Each file is read once (in threads: decoding releases the GIL), by
:mod:`cnnlab.data.imagefile`. Its bytes give the content hash (exact
duplicates); Pillow gives format, mode, size and the EXIF orientation, and a
32×32 grayscale thumbnail for the perceptual hash and the near-duplicate
confirmation. Before training the pre-flight scan has already read every file
and cached this result (a full decode's), so the check reads none. In-memory
(builtin) sources take the same path through :func:`array_checks`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from cnnlab._progress import Progress
from cnnlab.data.imagefile import _EXT_FORMAT, THUMB, _thumbnail, examine_file
from cnnlab.data.scan_cache import CHECK_FAST, CHECK_FULL, FileCache

__all__ = [
    "ROTATIONS",
    "THUMB",
    "FileCheck",
    "_thumbnail",
    "array_checks",
    "examine_file",
    "file_checks",
]

log = logging.getLogger("cnnlab")

ROTATIONS = {
    2: "mirrored",
    3: "rotated 180°",
    4: "flipped vertically",
    5: "mirrored, rotated 90°",
    6: "rotated 90° (lying on its side)",
    7: "mirrored, rotated 270°",
    8: "rotated 270° (lying on its side)",
}


@dataclass
class FileCheck:
    """What reading one image told us."""

    index: int
    path: str
    split: str
    label: str
    ok: bool = True
    problem: str = ""
    format: str = ""
    mode: str = ""
    width: int = 0
    height: int = 0
    bytes: int = 0
    orientation: int = 1
    digest: str = ""

    @property
    def extension_mismatch(self) -> bool:
        expected = _EXT_FORMAT.get(os.path.splitext(self.path)[1].lower())
        return bool(self.ok and expected and self.format and expected != self.format)


def _cached(store: FileCache | None, paths: list[str], thumbs: np.ndarray) -> tuple[dict, list]:
    """Cached infos of unchanged files by index (their thumbnails written into ``thumbs``),
    and every file's (size, mtime_ns)."""
    if store is None:
        return {}, [None] * len(paths)
    hits, keys = store.lookup(paths)
    with_thumb = [i for i, (_, blob) in hits.items() if blob is not None]
    if with_thumb:
        data = b"".join(hits[i][1] for i in with_thumb)
        thumbs[with_thumb] = np.frombuffer(data, np.uint8).reshape(-1, THUMB, THUMB)
    if hits:
        log.info(
            "Data check cache: %d of %d files unchanged, not read again", len(hits), len(paths)
        )
    return {i: json.loads(value) for i, (value, _) in hits.items()}, keys


def file_checks(
    paths: list[str],
    names: np.ndarray,
    labels: list[str],
    full_decode: bool,
    workers: int,
    *,
    cache: bool | None = None,
    quiet: bool = False,
) -> tuple[list[FileCheck], np.ndarray]:
    """Examine every file (in threads); the checks in the order of ``paths`` and their thumbnails.

    Per-file results are cached like the pre-flight scan's
    (:mod:`cnnlab.data.scan_cache`; one entry per decode mode, and a fast check
    accepts a full decode's): unchanged files are not read again. A progress bar
    (terminal) or log lines show the reading, unless ``quiet``.
    """
    thumbs = np.zeros((len(paths), THUMB, THUMB), np.uint8)
    # A fast check takes a full decode's result where there is one (the pre-flight scan
    # leaves one for every file it read): it is at least as good.
    if full_decode:
        store = FileCache.open(paths, CHECK_FULL, cache)
    else:
        store = FileCache.open(paths, CHECK_FAST, cache, also=(CHECK_FULL,))
    infos, keys = _cached(store, paths, thumbs)
    todo = [i for i in range(len(paths)) if i not in infos]

    def run(i: int):
        return examine_file(paths[i], full_decode)

    with (
        ThreadPoolExecutor(max_workers=workers) as pool,
        Progress(len(todo), "Checking", unit="file", quiet=quiet) as progress,
    ):
        for i, (info, thumb) in zip(todo, pool.map(run, todo, chunksize=64)):
            infos[i] = info
            if thumb is not None:
                thumbs[i] = thumb
            progress.update()
            if store is not None:
                blob = None if thumb is None else thumb.tobytes()
                store.add(paths[i], keys[i], json.dumps(info), blob)
    if store is not None:
        store.close()
    checks = [FileCheck(i, p, names[i], labels[i], **infos[i]) for i, p in enumerate(paths)]
    return checks, thumbs


def array_checks(
    spec: str, images: np.ndarray, names: np.ndarray, labels: list[str]
) -> tuple[list[FileCheck], np.ndarray]:
    """The same checks for an in-memory source: every image decodes; the digest is of its pixels."""
    from PIL import Image

    mode = "L" if images.shape[-1] == 1 else "RGB"
    checks = []
    thumbs = np.empty((len(images), THUMB, THUMB), np.uint8)
    for i, img in enumerate(images):
        checks.append(
            FileCheck(
                i,
                f"{spec}#{i}",
                names[i],
                labels[i],
                format="array",
                mode=mode,
                width=int(images.shape[2]),
                height=int(images.shape[1]),
                bytes=int(img.nbytes),
                digest=hashlib.blake2b(img.tobytes(), digest_size=16).hexdigest(),
            )
        )
        thumbs[i] = _thumbnail(Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img))
    return checks, thumbs
