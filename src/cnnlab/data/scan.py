"""Pre-flight scan: open every image once, before training, and name the bad ones.

One truncated JPEG would otherwise kill training mid-epoch with a TensorFlow
error that does not say which file. The scan decodes each file completely with
Pillow (in threads: decoding releases the GIL) and keeps what later stages
need: format, colour mode and size.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

from PIL import Image, UnidentifiedImageError

from cnnlab._progress import Progress
from cnnlab.data.scan_cache import FileCache

log = logging.getLogger("cnnlab")

# What tf.io.decode_image reads (checked with TF 2.21): the pipeline decodes
# with TensorFlow, so a file Pillow opens but TensorFlow cannot is "unsupported".
SUPPORTED_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WEBP")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff", ".jfif")

_EXT_FORMAT = {
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".jfif": "JPEG",
    ".png": "PNG",
    ".gif": "GIF",
    ".bmp": "BMP",
    ".webp": "WEBP",
    ".tif": "TIFF",
    ".tiff": "TIFF",
}


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
    try:
        size = os.path.getsize(path)
    except OSError as e:
        return ImageInfo(path, False, f"cannot read: {e.strerror or e}")
    if size == 0:
        return ImageInfo(path, False, "empty file (0 bytes)")
    try:
        with Image.open(path) as im:
            fmt, mode, (w, h) = im.format or "", im.mode, im.size
            im.load()  # full decode: catches truncated data that verify() misses
    except UnidentifiedImageError:
        return ImageInfo(path, False, "not an image (unrecognised content)")
    except (OSError, SyntaxError, ValueError) as e:
        msg = str(e)
        if "truncated" in msg.lower():
            msg = "truncated image data"
        return ImageInfo(path, False, f"cannot be decoded: {msg}")
    except Image.DecompressionBombError as e:
        return ImageInfo(path, False, f"too large: {e}")
    if fmt not in SUPPORTED_FORMATS:
        return ImageInfo(
            path,
            False,
            f"unsupported format {fmt} (use JPEG, PNG, GIF, BMP or WebP)",
            fmt,
            mode,
            w,
            h,
        )
    return ImageInfo(path, True, "", fmt, mode, w, h)


def _scan_many(paths: Sequence[str], workers: int | None) -> Iterator[ImageInfo]:
    """Scan files in parallel threads, yielding results in the order of ``paths``."""
    if len(paths) < 64:
        yield from map(scan_image, paths)
        return
    workers = workers or min(8, (os.cpu_count() or 2) * 2)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        yield from pool.map(scan_image, paths, chunksize=64)


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
    are not decoded again. ``cache=False`` (or ``CNNLAB_NO_CACHE=1``) scans
    everything. Shows a progress bar on a terminal, periodic log lines
    otherwise, nothing with ``quiet=True``.

    Example:
        >>> bad = [info for info in scan_images(paths) if not info.ok]
    """
    paths = [str(p) for p in paths]
    store = FileCache.open(paths, "scan", cache)
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
    with Progress(len(todo), "Scanning", unit="file", quiet=quiet) as progress:
        for i, info in zip(todo, _scan_many([paths[i] for i in todo], workers)):
            infos[i] = info
            progress.update()
            if store is not None:
                value = {k: v for k, v in info.to_dict().items() if k != "path"}
                store.add(paths[i], keys[i], json.dumps(value), None)
    if store is not None:
        store.close()
    return infos  # type: ignore[return-value]


def is_grayscale(info: ImageInfo) -> bool:
    return info.mode in ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")
