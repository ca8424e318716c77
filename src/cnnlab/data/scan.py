"""Pre-flight scan: open every image once, before training, and name the bad ones.

One truncated JPEG would otherwise kill training mid-epoch with a TensorFlow
error that does not say which file. The scan decodes each file completely with
Pillow (in threads: decoding releases the GIL) and keeps what later stages
need: format, colour mode and size.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

from PIL import Image, UnidentifiedImageError

# What tf.io.decode_image reads (checked with TF 2.21): the pipeline decodes
# with TensorFlow, so a file Pillow opens but TensorFlow cannot is "unsupported".
SUPPORTED_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WEBP")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff", ".jfif")

_EXT_FORMAT = {
    ".jpg": "JPEG", ".jpeg": "JPEG", ".jfif": "JPEG", ".png": "PNG", ".gif": "GIF",
    ".bmp": "BMP", ".webp": "WEBP", ".tif": "TIFF", ".tiff": "TIFF",
}  # fmt: skip


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
            path, False, f"unsupported format {fmt} (use JPEG, PNG, GIF, BMP or WebP)",
            fmt, mode, w, h,
        )  # fmt: skip
    return ImageInfo(path, True, "", fmt, mode, w, h)


def scan_images(paths: Sequence[str], workers: int | None = None) -> list[ImageInfo]:
    """Scan many files in parallel; the result is in the order of ``paths``."""
    workers = workers or min(8, (os.cpu_count() or 2) * 2)
    if len(paths) < 64:
        return [scan_image(p) for p in paths]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(scan_image, paths, chunksize=64))


def is_grayscale(info: ImageInfo) -> bool:
    return info.mode in ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")
