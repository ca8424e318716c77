"""The summary numbers of the dataset check: counts per class and split, sizes, modes, odd files."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from cnnlab.data.inspect.files import ROTATIONS, FileCheck

SMALL_SIDE, HUGE_SIDE, ODD_ASPECT = 32, 4096, 3.0
SPLIT_ORDER = ("train", "val", "test", "all")


def class_counts(checks: list[FileCheck], class_names: list[str]) -> dict[str, Any]:
    """Images per split and class, the imbalance ratio and the empty (split, class) cells.

    Returns ``{"splits", "counts", "imbalance", "empty"}``; splits in train, val,
    test, all order, only those present.
    """
    present = [s for s in SPLIT_ORDER if any(c.split == s for c in checks)]
    counts = {s: {c: 0 for c in class_names} for s in present}
    for c in checks:
        if c.split in counts:
            counts[c.split][c.label] += 1
    totals: Counter = Counter()
    for s in present:
        totals.update(counts[s])
    nonzero = [v for v in totals.values() if v]
    imbalance = (max(nonzero) / min(nonzero)) if nonzero else 0.0
    empty = [{"split": s, "class": c} for s in present for c, v in counts[s].items() if v == 0]
    return {
        "splits": present,
        "counts": counts,
        "imbalance": round(float(imbalance), 4),
        "empty": empty,
    }


def size_summary(good: list[FileCheck]) -> dict[str, Any]:
    """Most common sizes, smallest and largest, and how many are tiny, huge or oddly shaped."""
    dims = Counter((c.width, c.height) for c in good)
    sizes: dict[str, Any] = {"most_common": [(f"{w}×{h}", k) for (w, h), k in dims.most_common(10)]}
    if not good:
        return sizes
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
    return sizes


def file_findings(checks: list[FileCheck], good: list[FileCheck]) -> dict[str, Any]:
    """Colour modes, formats, and the lists of undecodable, misnamed and EXIF-rotated files."""
    return {
        "modes": dict(Counter(c.mode for c in good).most_common()),
        "formats": dict(Counter(c.format for c in good).most_common()),
        "undecodable": [
            {"path": c.path, "split": c.split, "problem": c.problem} for c in checks if not c.ok
        ],
        "extension_mismatch": [
            {"path": c.path, "format": c.format} for c in good if c.extension_mismatch
        ],
        "exif_rotated": [
            {
                "path": c.path,
                "orientation": c.orientation,
                "rotation": ROTATIONS.get(c.orientation, "?"),
            }
            for c in good
            if c.orientation not in (0, 1)
        ],
    }
