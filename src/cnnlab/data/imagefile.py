"""Reading one image file: its bytes, its decode, and what the scan and the check keep of it.

The pre-flight scan (:mod:`cnnlab.data.scan`) and the dataset check
(:mod:`cnnlab.data.inspect.files`) both read files through here. On a cold
cache the scan calls :func:`read_image`: one read and one full decode give the
scan's verdict (ok or the problem; format, mode, size) and the check's fields
(content digest, EXIF orientation) and 32×32 thumbnail, so the check that
follows finds every file in the cache and reads none (each file used to be read
and decoded twice, once by each).
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from typing import Any

import numpy as np

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

THUMB = 32  # thumbnail side for the perceptual hash and the near-duplicate confirmation
EXIF_ORIENTATION = 0x0112


@dataclass
class FileRead:
    """What one read of a file gave: the scan's fields and the check's fields and thumbnail.

    ``scan`` holds :class:`~cnnlab.data.scan.ImageInfo`'s fields (without ``path``);
    ``check`` those of :class:`~cnnlab.data.inspect.files.FileCheck` (without
    ``index``, ``path``, ``split`` and ``label``), empty when not asked for;
    ``thumb`` is None when the file gave no thumbnail.
    """

    scan: dict
    check: dict
    thumb: np.ndarray | None = None


def _thumbnail(im) -> np.ndarray:
    """The 32×32 grayscale thumbnail of a Pillow image (transparency on white)."""
    from PIL import Image

    if im.mode in ("RGBA", "LA", "PA", "P"):
        # Transparent parts on white, as a viewer shows them, so a PNG and its JPEG copy agree.
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(bg, rgba)
    elif im.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        arr = np.asarray(im, np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        im = Image.fromarray(((arr - lo) / max(hi - lo, 1e-9) * 255).astype(np.uint8))
    g = im.convert("L").resize((THUMB, THUMB), Image.Resampling.BILINEAR, reducing_gap=2.0)
    return np.asarray(g, np.uint8)


def _orientation(im) -> int:
    try:
        return int(im.getexif().get(EXIF_ORIENTATION, 1) or 1)
    except Exception:  # noqa: BLE001 - broken EXIF is not a broken image
        return 1


def _bytes_named(data: bytes, name: str) -> io.BytesIO:
    """The bytes as a file object that carries the file's name (for whoever traces opens)."""
    buf = io.BytesIO(data)
    buf.name = name  # type: ignore[attr-defined]
    return buf


def _decode_image(
    data: bytes, full_decode: bool, name: str = "", check: bool = True
) -> tuple[dict, np.ndarray | None, bool]:
    """Format, mode, size, orientation and thumbnail of one file's bytes (or its problem).

    Returns those fields (with ``ok`` and ``problem``), the thumbnail, and whether
    the full decode succeeded (always False without ``full_decode``): a failure
    after it (making the thumbnail) is a problem for the check, not for the scan. ``check=False`` stops after
    the decode (no orientation, no thumbnail).

    With ``full_decode`` every byte is decoded first (this catches truncated files a
    thumbnail would not), then the orientation is read and the thumbnail made from
    that full decode; else JPEGs decode at reduced scale (``draft``), straight to the
    thumbnail.

    The check before training is a fast one but takes the scan's full-decode
    thumbnails. They are not bit-identical to the fast ones (libjpeg's Y channel at
    1/2..1/8 scale against Pillow's luma of the full RGB decode, then the same
    resize): on 400 flowers5 photos the two differ by 0.16 grey levels on average
    (at most 2), and their perceptual hashes by 0-2 bits (mean 0.14), as little as a
    resized copy's, against the 10 bits a candidate pair may differ by. Smooth
    synthetic colour fields (bench/make_imagenet_like.py) move more (up to 12 bits:
    their high DCT coefficients sit near the median), which matters only between two
    files checked in different modes (a cache from before the scan kept full-decode
    results). The duplicate tests (tests/data/test_inspect.py) find the same exact
    groups, near pairs and leakage either way.
    """
    from PIL import Image, UnidentifiedImageError

    out: dict[str, Any] = {}
    thumb, decoded = None, False
    try:
        with Image.open(_bytes_named(data, name)) as im:
            out.update(format=im.format or "", mode=im.mode, width=im.size[0], height=im.size[1])
            if full_decode:
                im.load()  # every byte: catches truncated data that verify() misses
                decoded = True
            if check:
                out["orientation"] = _orientation(im)
                if not full_decode:
                    im.draft("L", (THUMB * 2, THUMB * 2))  # JPEG: decode at 1/2..1/8 scale
                thumb = _thumbnail(im)
    except UnidentifiedImageError:
        return {**out, "ok": False, "problem": "not an image (unrecognised content)"}, None, decoded
    except Image.DecompressionBombError as e:
        return {**out, "ok": False, "problem": f"too large: {e}"}, None, decoded
    except (OSError, SyntaxError, ValueError) as e:
        msg = "truncated image data" if "truncated" in str(e).lower() else str(e)
        return {**out, "ok": False, "problem": f"cannot be decoded: {msg}"}, None, decoded
    if out["format"] not in SUPPORTED_FORMATS:
        problem = f"unsupported format {out['format']} (use JPEG, PNG, GIF, BMP or WebP)"
        return {**out, "ok": False, "problem": problem}, thumb, decoded
    return {**out, "ok": True}, thumb, decoded


def _decode(data: bytes, full_decode: bool) -> tuple[dict, np.ndarray | None]:
    """The check's fields and thumbnail of one file's (or record's) bytes."""
    info, thumb, _ = _decode_image(data, full_decode)
    return info, thumb


def _read_bytes(path: str) -> tuple[bytes, dict | None]:
    """A file's bytes, or the check's fields of a file that cannot be read or is empty."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        return b"", {"ok": False, "problem": f"cannot read: {e.strerror or e}"}
    if not data:
        return b"", {"bytes": 0, "ok": False, "problem": "empty file (0 bytes)"}
    return data, None


def examine_file(path: str, full_decode: bool) -> tuple[dict, np.ndarray | None]:
    """Read one file for the check: hash its bytes, check it decodes, make its thumbnail.

    Returns the fields of a ``FileCheck`` (without index, path, split and label)
    and the thumbnail, or None when the file cannot be decoded.
    """
    data, failed = _read_bytes(path)
    if failed is not None:
        return failed, None
    info, thumb, _ = _decode_image(data, full_decode, path)
    info.update(bytes=len(data), digest=hashlib.blake2b(data, digest_size=16).hexdigest())
    return info, thumb


def _scan_fields(info: dict, decoded: bool) -> dict:
    """The scan's verdict from the check's fields: the same problems and messages the scan
    has always given (a file that failed to decode names no format, mode or size)."""
    if not decoded:
        return {"ok": False, "problem": info["problem"]}
    fields = {k: info[k] for k in ("format", "mode", "width", "height")}
    if info["format"] not in SUPPORTED_FORMATS:
        problem = f"unsupported format {info['format']} (use JPEG, PNG, GIF, BMP or WebP)"
        return {"ok": False, "problem": problem, **fields}
    return {"ok": True, "problem": "", **fields}


def read_image(path: str, check: bool = True) -> FileRead:
    """Read and fully decode one file once: the scan's verdict and (``check``) the check's
    fields and thumbnail, equal to ``examine_file(path, full_decode=True)``'s.

    Example:
        >>> read = read_image("flowers/rose/1.jpg")
        >>> read.scan["ok"], read.check["digest"][:8], read.thumb.shape
        (True, '5c1e07aa', (32, 32))
    """
    data, failed = _read_bytes(path)
    if failed is not None:
        return FileRead({"ok": False, "problem": failed["problem"]}, failed if check else {})
    info, thumb, decoded = _decode_image(data, True, path, check)
    scan = _scan_fields(info, decoded)
    if not check:
        return FileRead(scan, {})
    info.update(bytes=len(data), digest=hashlib.blake2b(data, digest_size=16).hexdigest())
    return FileRead(scan, info, thumb)
