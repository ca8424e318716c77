"""Pre-flight scan: open every image once, before training, and name the bad ones.

One truncated JPEG would otherwise kill training mid-epoch with a TensorFlow
error that does not say which file. The scan decodes each file completely with
Pillow (in worker processes for large folders, else threads) and keeps what later stages
need: format, colour mode and size. The same read gives the dataset check's
per-file result (:func:`cnnlab.data.imagefile.read_image`), which it caches for
the check that follows: a cold run reads and decodes each file once.
"""

from __future__ import annotations

import functools
import json
import logging
import multiprocessing
import os
import sys
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass

from cnnlab._progress import Progress
from cnnlab.data.imagefile import (
    _EXT_FORMAT,
    IMAGE_EXTENSIONS,
    SUPPORTED_FORMATS,
    FileRead,
    read_image,
)
from cnnlab.data.scan_cache import CHECK_FULL, SCAN, FileCache

log = logging.getLogger("cnnlab")

__all__ = [
    "IMAGE_EXTENSIONS",
    "SUPPORTED_FORMATS",
    "ImageInfo",
    "is_grayscale",
    "scan_image",
    "scan_images",
]


@dataclass
class ImageInfo:
    """What the scan learned about one file."""

    path: str
    ok: bool
    problem: str = ""
    format: str = ""
    mode: str = ""
    width: int = 0
    height: int = 0

    @property
    def extension_mismatch(self) -> bool:
        """True when the file's real format differs from what its name says."""
        expected = _EXT_FORMAT.get(os.path.splitext(self.path)[1].lower())
        return bool(self.ok and expected and self.format and expected != self.format)

    def to_dict(self) -> dict:
        return asdict(self)


def scan_image(path: str) -> ImageInfo:
    """Decode one file completely and report whether the pipeline can read it."""
    return ImageInfo(path, **read_image(path, check=False).scan)


# From this many files the scan reads in one process per core instead of threads:
# Pillow's decode releases the GIL but the rest of a file's work (hashing, the
# thumbnail, building the result) does not, so 8 threads kept one core busy (10.8 s
# of CPU in 10.6 s for 6,000 ImageNet-sized JPEGs).
PROCESS_MIN_FILES = 2048


def _read_many(paths: Sequence[str], workers: int | None, check: bool) -> Iterator[FileRead]:
    """Read files in parallel, yielding results in the order of ``paths``: in forked
    worker processes for large sets on Linux (threads if they fail), else in threads."""
    read = functools.partial(read_image, check=check)
    if len(paths) < 64:
        yield from map(read, paths)
        return
    cores = os.cpu_count() or 1
    done = 0
    if len(paths) >= PROCESS_MIN_FILES and cores > 1 and sys.platform == "linux":
        try:
            for result in _read_in_processes(read, paths, workers or cores):
                done += 1
                yield result
            return
        except (BrokenProcessPool, OSError) as e:
            log.warning("Reading files in worker processes failed (%s); using threads", e)
    with ThreadPoolExecutor(max_workers=workers or min(8, cores * 2)) as pool:
        yield from pool.map(read, paths[done:], chunksize=64)


def _read_in_processes(read, paths: Sequence[str], workers: int) -> Iterator[FileRead]:
    # fork: the workers start at once and import nothing; they run Pillow, hashlib and
    # NumPy only, never TensorFlow, so the parent's TensorFlow threads do not matter.
    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        yield from pool.map(read, paths, chunksize=256)


def _store(store: FileCache, path: str, key, info: ImageInfo, read: FileRead) -> None:
    """Queue the scan's entry of one file and the dataset check's (its full-decode kind)."""
    value = {k: v for k, v in info.to_dict().items() if k != "path"}
    store.add(path, key, json.dumps(value), None)
    blob = None if read.thumb is None else read.thumb.tobytes()
    store.add(path, key, json.dumps(read.check), blob, kind=CHECK_FULL)


def scan_images(
    paths: Sequence[str],
    workers: int | None = None,
    *,
    cache: bool | None = None,
    quiet: bool = False,
) -> list[ImageInfo]:
    """Scan many files in parallel; the result is in the order of ``paths``.

    Results are cached per file (see :mod:`cnnlab.data.scan_cache`): files
    unchanged since an earlier scan (same path, size and modification time)
    are not decoded again. The same read of a file also gives the dataset
    check's result for it (content digest, EXIF orientation, thumbnail), cached
    too, so the check before training reads no file the scan has just read.
    ``cache=False`` (or ``CNNLAB_NO_CACHE=1``) scans everything and keeps
    nothing. Shows a progress bar on a terminal, periodic log lines otherwise,
    nothing with ``quiet=True``.

    Example:
        >>> bad = [info for info in scan_images(paths) if not info.ok]
    """
    paths = [str(p) for p in paths]
    store = FileCache.open(paths, SCAN, cache)
    infos: list[ImageInfo | None] = [None] * len(paths)
    keys: list = [None] * len(paths)
    if store is not None:
        hits, keys = store.lookup(paths)
        for i, (value, _) in hits.items():
            infos[i] = ImageInfo(paths[i], **json.loads(value))
        if hits:
            log.info(
                "Scan cache: %d of %d files unchanged, not decoded again", len(hits), len(paths)
            )
    todo = [i for i, info in enumerate(infos) if info is None]
    reads = _read_many([paths[i] for i in todo], workers, check=store is not None)
    with Progress(len(todo), "Scanning", unit="file", quiet=quiet) as progress:
        for i, read in zip(todo, reads):
            info = infos[i] = ImageInfo(paths[i], **read.scan)
            progress.update()
            if store is not None:
                _store(store, paths[i], keys[i], info, read)
    if store is not None:
        store.close()
    return infos  # type: ignore[return-value]


def is_grayscale(info: ImageInfo) -> bool:
    return info.mode in ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")
