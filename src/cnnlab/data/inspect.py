"""The dataset check: what is wrong with the images, before a model learns it.

``inspect_data("folder:photos")`` reads every image once (in threads) and reports:

* images per class and split, the imbalance ratio (largest / smallest class),
  classes with no image in a split;
* image sizes (most common, smallest, largest, tiny and huge ones, odd aspect
  ratios) and colour modes;
* files that cannot be decoded, and files whose extension disagrees with their
  real format (a PNG named ``.jpg``);
* images with an EXIF rotation: viewers turn them upright, TensorFlow's
  decoder does not, so the model sees them lying on their side;
* exact duplicates (same bytes: a content hash) and near duplicates (a
  perceptual hash, so resized or re-encoded copies are caught), within each
  split and across splits: a test image that is a copy of a training image is
  *leakage* and inflates the test accuracy; each such pair is named file by file.
  Copies that carry different labels are flagged too.

The perceptual hash is pHash (Zauner 2010): the 63 lowest non-constant
frequencies of the 2-D DCT of a 32×32 grayscale thumbnail, each bit "above the
median or not". Resizing and re-encoding barely move these frequencies, so a
copy stays within a few bits; two unrelated images differ in about half. Pairs
found by the hash are then confirmed on the thumbnails themselves (contrast-
normalised mean absolute difference), which rejects the rare unrelated pairs
whose coarse structure happens to agree (e.g. two different planes in an empty sky).

Fast enough for CIFAR-10's 60,000 files in well under a minute on two cores:
each file is read and decoded once; the hashes are compared 64 bits at a time
with NumPy; exact copies are collapsed before the near-duplicate search.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import os
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cnnlab._io import unique_dir
from cnnlab.data.scan import _EXT_FORMAT, SUPPORTED_FORMATS
from cnnlab.data.sources import Source, open_source

log = logging.getLogger("cnnlab")

THUMB = 32  # thumbnail side for the perceptual hash and the confirmation
# Hamming distance (of 63 bits; always even) up to which two hashes are candidates.
# Copies, resized (x0.5 to x2) or re-encoded (JPEG quality 60) stay within 0-2 bits;
# unrelated photos average about 31.
DEFAULT_HASH_DISTANCE = 10
# Largest mean absolute difference between the contrast-normalised 32x32
# thumbnails of a confirmed near duplicate (in standard deviations of their
# pixels). Resized or re-encoded copies measure about 0.01-0.05. Checked by eye
# on CIFAR-10's candidate pairs: up to about 0.3 they are the same photo
# (re-cropped, recoloured, re-encoded); from about 0.32 unrelated pictures with
# the same layout (a ship on the horizon) appear. 0.25 keeps a safety margin.
DEFAULT_PIXEL_DIFFERENCE = 0.25
MAX_PAIRS = 200_000  # stop collecting beyond this (a folder of thousands of blank images)
SMALL_SIDE, HUGE_SIDE, ODD_ASPECT = 32, 4096, 3.0
SPLIT_ORDER = ("train", "val", "test", "all")
EXIF_ORIENTATION = 0x0112
_ROTATIONS = {
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


@dataclass
class InspectReport:
    """The dataset check's findings; ``to_dict()`` is inspect.json, ``format_text()`` the terminal table."""

    spec: str
    class_names: list[str]
    num_images: int
    splits: list[str]
    counts: dict[str, dict[str, int]]  # split -> class -> images
    imbalance: float
    empty: list[dict]  # {"split", "class"}
    sizes: dict[str, Any]
    modes: dict[str, int]
    formats: dict[str, int]
    undecodable: list[dict]
    extension_mismatch: list[dict]
    exif_rotated: list[dict]
    exact_groups: list[dict]  # {"files": [...], "splits": [...], "labels": [...]}
    near_pairs: list[
        dict
    ]  # {"a", "b", "split_a", "split_b", "label_a", "label_b", "distance", "difference"}
    leakage: list[dict]  # pairs (exact or near) across splits
    label_conflicts: list[dict]  # pairs (exact or near) with different labels
    settings: dict[str, Any]
    seconds: float
    notes: list[str] = field(default_factory=list)

    # ------------------------------------------------------------------ views
    def within_split_duplicates(self) -> int:
        """Number of duplicate pairs (exact or near) inside one split."""
        exact = sum(_pairs_in(g, same_split=True) for g in self.exact_groups)
        return exact + sum(1 for p in self.near_pairs if p["split_a"] == p["split_b"])

    def problems(self) -> list[str]:
        """One line per finding that needs attention (empty when the data looks clean)."""
        out = []
        if self.undecodable:
            out.append(f"{len(self.undecodable)} file(s) cannot be decoded")
        if self.leakage:
            out.append(f"{len(self.leakage)} duplicate pair(s) across splits (leakage)")
        if self.label_conflicts:
            out.append(f"{len(self.label_conflicts)} duplicate pair(s) with different labels")
        dup = self.within_split_duplicates()
        if dup:
            out.append(f"{dup} duplicate pair(s) within a split")
        if self.extension_mismatch:
            out.append(
                f"{len(self.extension_mismatch)} file(s) whose extension is not their format"
            )
        if self.exif_rotated:
            out.append(f"{len(self.exif_rotated)} image(s) with an EXIF rotation")
        if self.imbalance >= 3:
            out.append(f"class imbalance {self.imbalance:.1f}:1")
        if self.empty:
            out.append(f"{len(self.empty)} class(es) with no image in a split")
        return out

    def to_dict(self) -> dict:
        d = {k: v for k, v in self.__dict__.items() if not k.startswith("_")}
        d["problems"] = self.problems()
        return d

    def format_text(self, max_rows: int = 10) -> str:
        """The terminal summary: class table, then one line per check, then the worst offenders."""
        head = (
            f"{self.spec}: {self.num_images:,} images, {len(self.class_names)} classes "
            f"(checked in {self.seconds:.1f} s)"
        )
        lines = [head, ""]
        width = max(5, *(len(c) for c in self.class_names)) if self.class_names else 5
        lines.append(f"{'class':<{width}}  " + "  ".join(f"{s:>7}" for s in self.splits))
        for c in self.class_names:
            lines.append(
                f"{c:<{width}}  "
                + "  ".join(f"{self.counts[s].get(c, 0):>7,}" for s in self.splits)
            )
        lines.append(
            f"{'total':<{width}}  "
            + "  ".join(f"{sum(self.counts[s].values()):>7,}" for s in self.splits)
        )
        lines.append("")

        def check(ok: bool, text: str) -> str:
            return f"  {'ok' if ok else '!!'}  {text}"

        lines.append(
            check(self.imbalance < 3, f"imbalance (largest / smallest class): {self.imbalance:.2f}")
        )
        if self.empty:
            lines.append(
                check(
                    False,
                    "empty: " + ", ".join(f"{e['class']} in {e['split']}" for e in self.empty[:10]),
                )
            )
        sz = self.sizes
        if sz.get("most_common"):
            common = ", ".join(f"{s} ×{n:,}" for s, n in sz["most_common"][:3])
            lines.append(
                check(True, f"sizes: {common}; smallest {sz['smallest']}, largest {sz['largest']}")
            )
            odd = [f"{sz['small']} under {SMALL_SIDE} px"] if sz["small"] else []
            odd += [f"{sz['huge']} over {HUGE_SIDE} px"] if sz["huge"] else []
            odd += (
                [f"{sz['odd_aspect']} with aspect ratio over {ODD_ASPECT:.0f}:1"]
                if sz["odd_aspect"]
                else []
            )
            if odd:
                lines.append(check(False, "unusual sizes: " + ", ".join(odd)))
        lines.append(
            check(True, "colour modes: " + ", ".join(f"{m} ×{n:,}" for m, n in self.modes.items()))
        )
        lines.append(check(not self.undecodable, f"undecodable files: {len(self.undecodable)}"))
        lines += [f"        {u['path']}: {u['problem']}" for u in self.undecodable[:max_rows]]
        lines.append(
            check(
                not self.extension_mismatch,
                f"extension differs from format: {len(self.extension_mismatch)}",
            )
        )
        lines += [
            f"        {u['path']}: really {u['format']}" for u in self.extension_mismatch[:max_rows]
        ]
        lines.append(
            check(
                not self.exif_rotated,
                f"EXIF-rotated images (the model sees them unrotated): {len(self.exif_rotated)}",
            )
        )
        lines += [f"        {u['path']}: {u['rotation']}" for u in self.exif_rotated[:max_rows]]
        n_exact = sum(len(g["files"]) - 1 for g in self.exact_groups)
        lines.append(
            check(
                not self.exact_groups,
                f"exact duplicates: {len(self.exact_groups)} group(s), {n_exact} redundant file(s)",
            )
        )
        near_within = sum(1 for p in self.near_pairs if p["split_a"] == p["split_b"])
        lines.append(
            check(
                not self.near_pairs,
                f"near duplicates (resized / re-encoded copies): "
                f"{len(self.near_pairs)} pair(s), {near_within} within a split",
            )
        )
        if len(self.splits) > 1 or self.splits[0] != "all":
            lines.append(
                check(not self.leakage, f"leakage across splits: {len(self.leakage)} pair(s)")
            )
            for p in self.leakage[:max_rows]:
                lines.append(
                    f"        {p['split_a']} {p['a']}  ==  {p['split_b']} {p['b']}  ({_kind(p)})"
                )
            if len(self.leakage) > max_rows:
                lines.append(
                    f"        ... and {len(self.leakage) - max_rows} more (see leakage.csv)"
                )
        elif self.exact_groups or self.near_pairs:
            lines.append(
                "  !!  no split yet: a random split may put both copies of a pair on both sides"
            )
        lines.append(
            check(
                not self.label_conflicts,
                f"copies with different labels: {len(self.label_conflicts)}",
            )
        )
        for p in self.label_conflicts[:max_rows]:
            lines.append(f"        {p['a']} ({p['label_a']})  ==  {p['b']} ({p['label_b']})")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    # ------------------------------------------------------------------ files
    def write(self, out_dir: str | os.PathLike) -> dict[str, Path]:
        """Write inspect.json, inspect.html and duplicates.csv (every pair) into ``out_dir``."""
        from cnnlab._io import write_json, write_text

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {
            "json": write_json(out / "inspect.json", self.to_dict()),
            "html": write_text(out / "inspect.html", _html_page(self)),
            "duplicates": write_text(out / "duplicates.csv", _pairs_csv(self)),
        }
        if self.leakage:
            paths["leakage"] = write_text(out / "leakage.csv", _pairs_csv(self, leakage_only=True))
        return paths


def _kind(p: dict) -> str:
    return "exact copy" if p["distance"] == 0 and p.get("exact") else f"near, {p['distance']} bits"


def _pairs_in(group: dict, same_split: bool) -> int:
    splits = Counter(group["splits"])
    if same_split:
        return sum(n * (n - 1) // 2 for n in splits.values())
    total = len(group["splits"])
    return total * (total - 1) // 2 - sum(n * (n - 1) // 2 for n in splits.values())


# --------------------------------------------------------------------------- hashing
def _dct_matrix(n: int) -> np.ndarray:
    """Orthonormal DCT-II matrix: ``D @ x @ D.T`` is the 2-D DCT of an n×n block."""
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    d = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    d[0] /= np.sqrt(2.0)
    return d


def phash(thumbs: np.ndarray) -> np.ndarray:
    """63-bit perceptual hashes (uint64) of (N, 32, 32) grayscale thumbnails.

    Example:
        >>> h = phash(np.stack([thumb_a, thumb_b]))
        >>> int(np.bitwise_count(h[0] ^ h[1]))   # Hamming distance
        3
    """
    d = _dct_matrix(THUMB)
    x = np.asarray(thumbs, np.float32)
    coef = np.einsum("ij,njk,lk->nil", d, x, d, optimize=True)[:, :8, :8].reshape(len(x), 64)[:, 1:]
    bits = coef > np.median(coef, axis=1, keepdims=True)
    weights = (1 << np.arange(63, dtype=np.uint64)).astype(np.uint64)
    return (bits.astype(np.uint64) * weights).sum(axis=1, dtype=np.uint64)


def _thumbnail(im) -> np.ndarray:
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


def _examine(item: tuple[int, str], full_decode: bool) -> tuple[dict, np.ndarray | None]:
    """Read one file: hash its bytes, check it decodes, make its thumbnail."""
    from PIL import Image, UnidentifiedImageError

    index, path = item
    out: dict[str, Any] = {"index": index}
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        return {**out, "ok": False, "problem": f"cannot read: {e.strerror or e}"}, None
    out["bytes"] = len(data)
    if not data:
        return {**out, "ok": False, "problem": "empty file (0 bytes)"}, None
    out["digest"] = hashlib.blake2b(data, digest_size=16).hexdigest()
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
        out.update(
            ok=False,
            problem=f"unsupported format {out['format']} (use JPEG, PNG, GIF, BMP or WebP)",
        )
    else:
        out["ok"] = True
    return out, thumb


def _array_thumbnails(images: np.ndarray) -> np.ndarray:
    from PIL import Image

    thumbs = np.empty((len(images), THUMB, THUMB), np.uint8)
    for i, img in enumerate(images):
        im = Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img)
        thumbs[i] = _thumbnail(im)
    return thumbs


# --------------------------------------------------------------------------- matching
def _normalised(thumbs: np.ndarray) -> np.ndarray:
    """Thumbnails with zero mean and unit standard deviation, so brightness and contrast
    changes (re-encoding, a gamma tweak) do not count as differences."""
    x = thumbs.reshape(len(thumbs), -1).astype(np.float32)
    x -= x.mean(axis=1, keepdims=True)
    return x / np.maximum(x.std(axis=1, keepdims=True), 4.0)  # flat images stay flat


def near_duplicate_pairs(
    hashes: np.ndarray,
    thumbs: np.ndarray,
    max_distance: int = DEFAULT_HASH_DISTANCE,
    max_difference: float = DEFAULT_PIXEL_DIFFERENCE,
    max_pairs: int = MAX_PAIRS,
    workers: int = 2,
) -> tuple[list[tuple[int, int, int, float]], bool]:
    """All pairs ``(i, j, hash distance, pixel difference)`` with ``i < j`` that are near duplicates.

    Brute force over the upper triangle, in blocks (NumPy's XOR and popcount
    release the GIL, so blocks run in parallel threads). Returns the pairs and
    whether the search stopped at ``max_pairs``.
    """
    n = len(hashes)
    norm = _normalised(thumbs)
    means = thumbs.reshape(n, -1).mean(axis=1)
    block = 512

    def search(start: int):
        blk = hashes[start : start + block]
        dist = np.bitwise_count(blk[:, None] ^ hashes[None, start:])
        ii, jj = np.nonzero(dist <= max_distance)
        keep = jj > ii  # upper triangle (the block's diagonal part included once)
        ii, jj = ii[keep] + start, jj[keep] + start
        if len(ii) == 0:
            return []
        d = dist[ii - start, jj - start]
        diff = np.abs(norm[ii] - norm[jj]).mean(axis=1)
        # Same structure but a different overall brightness is a different picture
        # (a night and a day shot); a re-encoded copy keeps its mean within a few levels.
        ok = (diff <= max_difference) & (np.abs(means[ii] - means[jj]) <= 40)
        return list(
            zip(ii[ok].tolist(), jj[ok].tolist(), d[ok].tolist(), diff[ok].round(4).tolist())
        )

    pairs: list[tuple[int, int, int, float]] = []
    truncated = False
    starts = range(0, n, block)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for found in pool.map(search, starts):
            pairs += found
            if len(pairs) > max_pairs:
                truncated = True
                break
    return pairs[:max_pairs], truncated


# --------------------------------------------------------------------------- the check
def _split_names(source: Source, split) -> np.ndarray:
    if split is not None:
        return np.asarray(split.assignment).astype(str)
    parts = np.asarray(source.parts).astype(str)
    return np.where(parts == "", "all", parts)


def inspect_data(
    spec: str | Source,
    *,
    data_dir: str | None = None,
    split=None,
    full_decode: bool = True,
    near_duplicates: bool = True,
    max_distance: int = DEFAULT_HASH_DISTANCE,
    max_difference: float = DEFAULT_PIXEL_DIFFERENCE,
    workers: int | None = None,
) -> InspectReport:
    """Check a data source: counts, sizes, modes, bad files, EXIF rotation, duplicates, leakage.

    Args:
        spec: ``folder:PATH``, ``csv:FILE``, ``builtin:NAME`` or an opened :class:`Source`.
        split: a :class:`~cnnlab.data.splits.Split` to check leakage against
            (default: the splits the source brings, e.g. ``train/`` and ``test/`` folders).
        full_decode: decode every pixel (finds truncated files); ``False`` decodes
            JPEGs at reduced scale, several times faster on large photos.
        near_duplicates: also look for resized / re-encoded copies (perceptual hash).
        max_distance: largest pHash Hamming distance (of 63 bits) for a candidate pair.
        max_difference: largest thumbnail difference for a confirmed near duplicate.

    Example:
        >>> report = inspect_data("folder:flowers")
        >>> print(report.format_text())
        >>> report.leakage[:1]
        [{'a': 'flowers/train/rose/1.jpg', 'b': 'flowers/test/rose/9.jpg', ...}]
    """
    t0 = time.perf_counter()
    source = spec if isinstance(spec, Source) else open_source(spec, data_dir)
    names = _split_names(source, split)
    labels = [source.class_names[y] for y in source.labels]
    n = len(source)
    workers = workers or min(8, (os.cpu_count() or 2) * 2)
    thumbs = np.zeros((n, THUMB, THUMB), np.uint8)
    checks: list[FileCheck] = []
    if source.is_files:
        paths = [str(p) for p in source.paths]

        def run(item):
            return _examine(item, full_decode)

        with ThreadPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(run, enumerate(paths), chunksize=64))
        for info, thumb in results:
            i = info["index"]
            fc = FileCheck(
                i, paths[i], names[i], labels[i], **{k: v for k, v in info.items() if k != "index"}
            )
            checks.append(fc)
            if thumb is not None:
                thumbs[i] = thumb
    else:
        paths = [f"{source.spec}#{i}" for i in range(n)]
        imgs = source.images
        mode = "L" if imgs.shape[-1] == 1 else "RGB"
        for i in range(n):
            checks.append(
                FileCheck(
                    i,
                    paths[i],
                    names[i],
                    labels[i],
                    True,
                    "",
                    "array",
                    mode,
                    int(imgs.shape[2]),
                    int(imgs.shape[1]),
                    int(imgs[i].nbytes),
                    1,
                    hashlib.blake2b(imgs[i].tobytes(), digest_size=16).hexdigest(),
                )
            )
        thumbs = _array_thumbnails(imgs)
    good = [c for c in checks if c.ok and c.split != "skipped"]

    # ---- counts
    present = [s for s in SPLIT_ORDER if any(c.split == s for c in checks)]
    counts = {s: {c: 0 for c in source.class_names} for s in present}
    for c in checks:
        if c.split in counts:
            counts[c.split][c.label] += 1
    totals = Counter()
    for s in present:
        totals.update(counts[s])
    nonzero = [v for v in totals.values() if v]
    imbalance = (max(nonzero) / min(nonzero)) if nonzero else 0.0
    empty = [{"split": s, "class": c} for s in present for c, v in counts[s].items() if v == 0]

    # ---- sizes, modes, formats
    dims = Counter((c.width, c.height) for c in good)
    sizes: dict[str, Any] = {"most_common": [(f"{w}×{h}", k) for (w, h), k in dims.most_common(10)]}
    if good:
        by_area = sorted(good, key=lambda c: c.width * c.height)
        sizes.update(
            smallest=f"{by_area[0].width}×{by_area[0].height}",
            largest=f"{by_area[-1].width}×{by_area[-1].height}",
            small=sum(min(c.width, c.height) < SMALL_SIDE for c in good),
            huge=sum(max(c.width, c.height) > HUGE_SIDE for c in good),
            odd_aspect=sum(
                max(c.width, c.height) / max(1, min(c.width, c.height)) > ODD_ASPECT for c in good
            ),
            median_width=float(np.median([c.width for c in good])),
            median_height=float(np.median([c.height for c in good])),
            unique_sizes=len(dims),
        )
    modes = dict(Counter(c.mode for c in good).most_common())
    formats = dict(Counter(c.format for c in good).most_common())
    undecodable = [
        {"path": c.path, "split": c.split, "problem": c.problem} for c in checks if not c.ok
    ]
    mismatch = [{"path": c.path, "format": c.format} for c in good if c.extension_mismatch]
    rotated = [
        {
            "path": c.path,
            "orientation": c.orientation,
            "rotation": _ROTATIONS.get(c.orientation, "?"),
        }
        for c in good
        if c.orientation not in (0, 1)
    ]

    # ---- exact duplicates
    groups: dict[str, list[int]] = defaultdict(list)
    for c in good:
        groups[c.digest].append(c.index)
    exact = [g for g in groups.values() if len(g) > 1]
    exact_groups = [
        {
            "files": [checks[i].path for i in g],
            "splits": [checks[i].split for i in g],
            "labels": [checks[i].label for i in g],
            "indices": g,
        }
        for g in exact
    ]
    pair_rows: list[dict] = []

    def pair(i: int, j: int, dist: int, diff: float, is_exact: bool) -> dict:
        a, b = checks[i], checks[j]
        if SPLIT_ORDER.index(_order(a.split)) > SPLIT_ORDER.index(_order(b.split)):
            a, b = b, a  # train first, then val, then test
        return {
            "a": a.path,
            "b": b.path,
            "split_a": a.split,
            "split_b": b.split,
            "label_a": a.label,
            "label_b": b.label,
            "distance": int(dist),
            "difference": float(diff),
            "exact": is_exact,
            "index_a": a.index,
            "index_b": b.index,
        }

    for g in exact:
        for x in range(len(g)):
            for y in range(x + 1, len(g)):
                if len(pair_rows) < MAX_PAIRS:
                    pair_rows.append(pair(g[x], g[y], 0, 0.0, True))

    # ---- near duplicates, among distinct contents only
    notes: list[str] = []
    near: list[dict] = []
    if near_duplicates and len(groups) > 1:
        reps = np.array(sorted(g[0] for g in groups.values()), np.int64)
        hashes = phash(thumbs[reps])
        found, truncated = near_duplicate_pairs(
            hashes, thumbs[reps], max_distance, max_difference, workers=min(4, os.cpu_count() or 2)
        )
        if truncated:
            notes.append(f"Stopped collecting near-duplicate pairs at {MAX_PAIRS:,}.")
        members = {g[0]: g for g in groups.values()}
        for i, j, dist, diff in found:
            # Every copy of one content is a near duplicate of every copy of the other.
            for a in members[int(reps[i])]:
                for b in members[int(reps[j])]:
                    if len(near) < MAX_PAIRS:
                        near.append(pair(a, b, dist, diff, False))
    pair_rows += near
    leakage = [p for p in pair_rows if p["split_a"] != p["split_b"]]
    conflicts = [p for p in pair_rows if p["label_a"] != p["label_b"]]
    report = InspectReport(
        spec=source.spec,
        class_names=list(source.class_names),
        num_images=n,
        splits=present,
        counts=counts,
        imbalance=round(float(imbalance), 4),
        empty=empty,
        sizes=sizes,
        modes=modes,
        formats=formats,
        undecodable=undecodable,
        extension_mismatch=mismatch,
        exif_rotated=rotated,
        exact_groups=exact_groups,
        near_pairs=near,
        leakage=leakage,
        label_conflicts=conflicts,
        settings={
            "full_decode": full_decode,
            "near_duplicates": near_duplicates,
            "max_distance": max_distance,
            "max_difference": max_difference,
            "hash": "pHash 63 bits",
        },
        seconds=round(time.perf_counter() - t0, 2),
        notes=notes,
    )
    report._source = source  # type: ignore[attr-defined]  # for pictures in the HTML page
    return report


def _order(split: str) -> str:
    return split if split in SPLIT_ORDER else "all"


# --------------------------------------------------------------------------- before training
def check_before_training(
    bundle, run_dir: str | os.PathLike | None = None, logger: logging.Logger | None = None
) -> InspectReport | None:
    """The brief dataset check the trainer runs on file-based data, against the split it drew.

    Skips the full decode (``load_data`` has already decoded every file) and
    logs one warning per problem: leakage between train and val/test (with the
    first pairs), duplicates, label conflicts, EXIF rotation, imbalance.
    With ``run_dir``, writes ``inspect.json``, ``inspect.html`` and the CSVs there.
    Returns None for in-memory (builtin) data.

    Example:
        >>> check_before_training(bundle, run.path)
    """
    logger = logger or log
    if not bundle.source.is_files:
        return None
    report = inspect_data(bundle.source, split=bundle.split, full_decode=False)
    for p in report.problems():
        logger.warning("Data check: %s", p)
    for p in report.leakage[:5]:
        logger.warning(
            "  leakage: %s %s == %s %s (%s)", p["split_a"], p["a"], p["split_b"], p["b"], _kind(p)
        )
    if run_dir is not None:
        written = report.write(run_dir)
        if report.problems():
            logger.warning("Data check details: %s", written["html"])
    logger.info(
        "Data check: %d images in %.1f s, %s",
        report.num_images,
        report.seconds,
        "no problems" if not report.problems() else f"{len(report.problems())} finding(s)",
    )
    return report


def default_output_dir(spec: str, base: str | os.PathLike = ".") -> Path:
    """``./inspect-<name>/``, or ``-2``, ``-3``... when taken: earlier results are never overwritten."""
    from cnnlab.data.sources import parse_spec

    try:
        kind, value = parse_spec(spec)
    except Exception:  # noqa: BLE001
        kind, value = "data", spec
    name = Path(value.rstrip("/")).stem if kind != "builtin" else value
    name = "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in name) or "data"
    return unique_dir(Path(base) / f"inspect-{name}")


# --------------------------------------------------------------------------- HTML and CSV
def _pairs_csv(report: InspectReport, leakage_only: bool = False) -> str:
    """Every duplicate pair (or only those across splits), one row each."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(
        [
            "kind",
            "split_a",
            "file_a",
            "label_a",
            "split_b",
            "file_b",
            "label_b",
            "hash_distance",
            "pixel_difference",
        ]
    )
    for p in report.leakage if leakage_only else _all_pairs(report):
        w.writerow(
            [
                "exact" if p.get("exact") else "near",
                p["split_a"],
                p["a"],
                p["label_a"],
                p["split_b"],
                p["b"],
                p["label_b"],
                p["distance"],
                p["difference"],
            ]
        )
    return buf.getvalue()


def _all_pairs(report: InspectReport) -> list[dict]:
    """Exact pairs (expanded from their groups) then near pairs, at most MAX_PAIRS of each."""
    exact: list[dict] = []
    for g in report.exact_groups:
        for x in range(len(g["files"])):
            for y in range(x + 1, len(g["files"])):
                if len(exact) >= MAX_PAIRS:
                    break
                exact.append(
                    {
                        "a": g["files"][x],
                        "b": g["files"][y],
                        "split_a": g["splits"][x],
                        "split_b": g["splits"][y],
                        "label_a": g["labels"][x],
                        "label_b": g["labels"][y],
                        "distance": 0,
                        "difference": 0.0,
                        "exact": True,
                        "index_a": g["indices"][x],
                        "index_b": g["indices"][y],
                    }
                )
    return exact + report.near_pairs


def _thumb_png(report: InspectReport, index: int) -> bytes | None:
    from cnnlab import _html as H

    source = getattr(report, "_source", None)
    if source is None:
        return None
    if source.is_files:
        return H.file_png(str(source.paths[index]), 128)
    return H.array_png(source.images[index], 128)


def _html_page(report: InspectReport) -> str:
    from cnnlab import _html as H

    secs = []
    problems = report.problems()
    tiles = H.tiles(
        [
            ("images", f"{report.num_images:,}"),
            ("classes", str(len(report.class_names))),
            ("imbalance", f"{report.imbalance:.2f}"),
            ("undecodable", str(len(report.undecodable))),
            ("leakage pairs", str(len(report.leakage))),
            ("duplicate pairs in a split", str(report.within_split_duplicates())),
        ]
    )
    summary = tiles + (
        ("<ul>" + "".join(f'<li class="bad">{H.esc(p)}</li>' for p in problems) + "</ul>")
        if problems
        else '<p class="good">No problems found.</p>'
    )
    summary += H.note(
        f"Checked in {report.seconds:.1f} s. Settings: "
        + ", ".join(f"{k} {v}" for k, v in report.settings.items())
    )
    secs.append(("summary", "Summary", summary))

    # classes
    top = max((v for s in report.splits for v in report.counts[s].values()), default=1) or 1
    rows = []
    for c in report.class_names:
        cells = [H.esc(c)]
        for s in report.splits:
            v = report.counts[s][c]
            cells.append(f'{v:,} <span class="bar" style="width:{80 * v / top:.0f}px"></span>')
        rows.append(cells)
    rows.append(["total", *(f"{sum(report.counts[s].values()):,}" for s in report.splits)])
    classes = (
        '<div class="scroll">'
        + H.table(
            ["class", *report.splits],
            rows,
            numeric=range(1, len(report.splits) + 1),
            raw=True,
            row_classes=[""] * len(report.class_names) + ["total"],
        )
        + "</div>"
    )
    classes += H.note(
        f"Imbalance (largest / smallest class over all splits): {report.imbalance:.2f}."
        + (
            " Empty: " + ", ".join(f"{e['class']} in {e['split']}" for e in report.empty)
            if report.empty
            else ""
        )
    )
    secs.append(("classes", "Classes", classes))

    # images
    sz = report.sizes
    img_rows = [
        (
            "most common sizes (w×h)",
            ", ".join(f"{s} ×{n:,}" for s, n in sz.get("most_common", [])[:5]),
        )
    ]
    if "smallest" in sz:
        img_rows += [
            ("smallest, largest", f"{sz['smallest']}, {sz['largest']}"),
            ("distinct sizes", f"{sz['unique_sizes']:,}"),
            (
                f"under {SMALL_SIDE} px / over {HUGE_SIDE} px / aspect over {ODD_ASPECT:.0f}:1",
                f"{sz['small']} / {sz['huge']} / {sz['odd_aspect']}",
            ),
        ]
    img_rows += [
        ("colour modes", ", ".join(f"{m} ×{n:,}" for m, n in report.modes.items())),
        ("formats", ", ".join(f"{m} ×{n:,}" for m, n in report.formats.items())),
    ]
    images = H.table(["", ""], img_rows)
    images += _problem_list("Files that cannot be decoded", report.undecodable, ("path", "problem"))
    images += _problem_list(
        "Extension differs from the real format (they load fine)",
        report.extension_mismatch,
        ("path", "format"),
    )
    images += _problem_list(
        "EXIF-rotated images: viewers turn them, TensorFlow does not, so the model "
        "sees them as stored",
        report.exif_rotated,
        ("path", "rotation"),
    )
    secs.append(("images", "Images", images))

    # duplicates

    def pair_cards(pairs: list[dict], limit: int = 60) -> str:
        cards = []
        for p in pairs[:limit]:
            pics = [_thumb_png(report, p["index_a"]), _thumb_png(report, p["index_b"])]
            imgs = "".join(H.img(x, "image", cls="") for x in pics)
            label = (
                "exact copy"
                if p.get("exact")
                else f"near: {p['distance']} bits, Δ {p['difference']:.2f}"
            )
            lab_cls = "bad" if p["label_a"] != p["label_b"] else ""
            cap = (
                f'<b>{H.esc(label)}</b><br><span class="{lab_cls}">{H.esc(p["label_a"])} / '
                f"{H.esc(p['label_b'])}</span><br>"
                f'<span class="file" title="{H.esc(p["a"])}">{H.esc(p["split_a"])}: {H.esc(_short(p["a"]))}</span><br>'
                f'<span class="file" title="{H.esc(p["b"])}">{H.esc(p["split_b"])}: {H.esc(_short(p["b"]))}</span>'
            )
            cards.append(
                f'<div class="card"><div class="imgs">{imgs}</div><div class="cap">{cap}</div></div>'
            )
        more = (
            H.note(f"... and {len(pairs) - limit:,} more in the CSV files.")
            if len(pairs) > limit
            else ""
        )
        return '<div class="gallery">' + "".join(cards) + "</div>" + more

    if report.splits == ["all"]:
        leak = H.note(
            "The source has no train/val/test parts yet, so nothing can leak; but a random "
            "split may put the two copies of a duplicate pair on both sides (see below)."
        )
    elif report.leakage:
        leak = H.note(
            f"{len(report.leakage):,} pair(s) of copies across splits (all in leakage.csv). "
            "A test image that is a copy of a training image measures memory, not "
            "generalisation: remove one copy of each pair."
        ) + pair_cards(report.leakage)
    else:
        leak = '<p class="good">No image of one split is a copy of an image in another.</p>'
    secs.append(("leakage", "Leakage across splits", leak))
    within = [p for p in _all_pairs(report) if p["split_a"] == p["split_b"]]
    dup = H.note(
        f"{len(report.exact_groups)} group(s) of byte-identical files; "
        f"{len(report.near_pairs):,} near-duplicate pair(s) (resized, re-encoded or lightly "
        f"edited copies). {len(within):,} pair(s) lie within one split."
    ) + (pair_cards(within) if within else '<p class="good">No duplicates within a split.</p>')
    secs.append(("duplicates", "Duplicates within a split", dup))
    if report.label_conflicts:
        secs.append(
            (
                "conflicts",
                "Copies with different labels",
                H.note("The same picture under two labels: at least one label is wrong.")
                + pair_cards(report.label_conflicts),
            )
        )
    secs += [("notes", "Notes", "".join(H.note(n) for n in report.notes))] if report.notes else []
    return H.page(
        f"cnnlab data check: {report.spec}",
        f"{report.num_images:,} images · {len(report.class_names)} classes · "
        f"{', '.join(report.splits)}",
        secs,
        footer="Written by cnnlab data inspect. The same numbers are in inspect.json.",
    )


def _short(path: str) -> str:
    parts = Path(path).parts
    return "/".join(parts[-2:]) if len(parts) >= 2 else path


def _problem_list(title: str, items: list[dict], keys: tuple[str, str], limit: int = 50) -> str:
    from cnnlab import _html as H

    if not items:
        return f"<h3>{H.esc(title)}</h3>" + '<p class="good">None.</p>'
    rows = [(it[keys[0]], it[keys[1]]) for it in items[:limit]]
    more = (
        H.note(f"... and {len(items) - limit} more in inspect.json.") if len(items) > limit else ""
    )
    return (
        f"<h3>{H.esc(title)}: {len(items)}</h3>"
        + '<div class="scroll">'
        + H.table(list(keys), rows)
        + "</div>"
        + more
    )
