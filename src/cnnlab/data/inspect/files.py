"""Reading the images: one pass per file that keeps what every later check needs.

Each file is read once (in threads: decoding releases the GIL). Its bytes give
the content hash (exact duplicates); Pillow gives format, mode, size and the
EXIF orientation, and a 32×32 grayscale thumbnail for the perceptual hash and
the near-duplicate confirmation. In-memory (builtin) sources take the same
path through :func:`array_checks`.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from cnnlab._progress import Progress
from cnnlab.data.scan import _EXT_FORMAT, SUPPORTED_FORMATS
from cnnlab.data.scan_cache import FileCache

log = logging.getLogger("cnnlab")

THUMB = 32  # thumbnail side for the perceptual hash and the confirmation
EXIF_ORIENTATION = 0x0112
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


def _decode(data: bytes, full_decode: bool) -> tuple[dict, np.ndarray | None]:
    """Format, mode, size, orientation and thumbnail of one file's bytes (or its problem)."""
    from PIL import Image, UnidentifiedImageError

    out: dict[str, Any] = {}
    try:
        with Image.open(io.BytesIO(data)) as im:
            out.update(format=im.format or "", mode=im.mode, width=im.size[0], height=im.size[1])
            try:
                out["orientation"] = int(im.getexif().get(EXIF_ORIENTATION, 1) or 1)
            except Exception:  # noqa: BLE001 - broken EXIF is not a broken image
                out["orientation"] = 1
            if full_decode:
                im.load()  # every byte: catches truncated files that a thumbnail would not
            else:
                im.draft("L", (THUMB * 2, THUMB * 2))  # JPEG: decode at 1/2..1/8 scale
            thumb = _thumbnail(im)
    except UnidentifiedImageError:
        return {**out, "ok": False, "problem": "not an image (unrecognised content)"}, None
    except Image.DecompressionBombError as e:
        return {**out, "ok": False, "problem": f"too large: {e}"}, None
    except (OSError, SyntaxError, ValueError) as e:
        msg = "truncated image data" if "truncated" in str(e).lower() else str(e)
        return {**out, "ok": False, "problem": f"cannot be decoded: {msg}"}, None
    if out["format"] not in SUPPORTED_FORMATS:
        problem = f"unsupported format {out['format']} (use JPEG, PNG, GIF, BMP or WebP)"
        return {**out, "ok": False, "problem": problem}, thumb
    return {**out, "ok": True}, thumb


def examine_file(path: str, full_decode: bool) -> tuple[dict, np.ndarray | None]:
    """Read one file: hash its bytes, check it decodes, make its thumbnail.

    Returns the fields of a :class:`FileCheck` (without index, path, split and
    label) and the thumbnail, or None when the file cannot be decoded.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        return {"ok": False, "problem": f"cannot read: {e.strerror or e}"}, None
    if not data:
        return {"bytes": 0, "ok": False, "problem": "empty file (0 bytes)"}, None
    info, thumb = _decode(data, full_decode)
    info.update(bytes=len(data), digest=hashlib.blake2b(data, digest_size=16).hexdigest())
    return info, thumb


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
    (:mod:`cnnlab.data.scan_cache`; one entry per decode mode): unchanged files
    are not read again. A progress bar (terminal) or log lines show the reading.
    """
    thumbs = np.zeros((len(paths), THUMB, THUMB), np.uint8)
    store = FileCache.open(paths, "check-full" if full_decode else "check-fast", cache)
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
