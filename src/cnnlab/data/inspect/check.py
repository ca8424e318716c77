"""The dataset check, step by step: read the files, count, find duplicates, report.

``inspect_data`` is the whole check (``cnnlab data inspect``);
``check_before_training`` is the brief version a training run logs.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import numpy as np

from cnnlab._io import unique_dir
from cnnlab.data.inspect.aggregate import class_counts, file_findings, size_summary
from cnnlab.data.inspect.duplicates import (
    content_groups,
    exact_duplicates,
    kind,
    leakage_and_conflicts,
    near_duplicates,
)
from cnnlab.data.inspect.files import FileCheck, array_checks, file_checks
from cnnlab.data.inspect.hashing import DEFAULT_HASH_DISTANCE, DEFAULT_PIXEL_DIFFERENCE
from cnnlab.data.inspect.report import InspectReport
from cnnlab.data.inspect_records import record_checks
from cnnlab.data.sources import Source, open_source, parse_spec

log = logging.getLogger("cnnlab")


def _split_names(source: Source, split) -> np.ndarray:
    """Each image's split name: from ``split`` if given, else the source's own parts (or "all")."""
    if split is not None:
        return np.asarray(split.assignment).astype(str)
    parts = np.asarray(source.parts).astype(str)
    return np.where(parts == "", "all", parts)


def read_source(
    source: Source,
    split,
    full_decode: bool,
    workers: int,
    cache: bool | None = None,
    quiet: bool = False,
) -> tuple[list[FileCheck], np.ndarray]:
    """Step 1: one :class:`FileCheck` and one thumbnail per image (files: cached per file)."""
    names = _split_names(source, split)
    labels = [source.class_names[y] for y in source.labels]
    if source.is_files:
        paths = [str(p) for p in source.paths]
        return file_checks(paths, names, labels, full_decode, workers, cache=cache, quiet=quiet)
    if source.is_records:  # packed TFRecords: each record's bytes examined as a file's
        return record_checks(source, names, labels, full_decode, workers, quiet=quiet)
    return array_checks(source.spec, source.images, names, labels)


def find_duplicates(
    checks: list[FileCheck],
    thumbs: np.ndarray,
    near: bool,
    max_distance: int,
    max_difference: float,
    quiet: bool = False,
) -> dict:
    """Step 2: exact groups, near pairs, leakage and label conflicts, and notes."""
    good = [c for c in checks if c.ok and c.split != "skipped"]
    groups = content_groups(good)
    exact_groups, exact_rows = exact_duplicates(checks, groups)
    near_rows, notes = (
        near_duplicates(checks, thumbs, groups, max_distance, max_difference, quiet)
        if near
        else ([], [])
    )
    return {
        "exact_groups": exact_groups,
        "near_pairs": near_rows,
        **leakage_and_conflicts(exact_rows + near_rows),
        "notes": notes,
    }


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
    cache: bool | None = None,
    quiet: bool = False,
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
        cache: ``False`` reads every file even when an earlier check of the same,
            unchanged file is cached (see :mod:`cnnlab.data.scan_cache`);
            ``CNNLAB_NO_CACHE=1`` does the same.
        quiet: no progress bar (terminal) or progress log lines (elsewhere).

    Example:
        >>> report = inspect_data("folder:flowers")
        >>> print(report.format_text())
        >>> report.leakage[:1]
        [{'a': 'flowers/train/rose/1.jpg', 'b': 'flowers/test/rose/9.jpg', ...}]
    """
    t0 = time.perf_counter()
    source = spec if isinstance(spec, Source) else open_source(spec, data_dir)
    workers = workers or min(8, (os.cpu_count() or 2) * 2)
    checks, thumbs = read_source(source, split, full_decode, workers, cache, quiet)
    good = [c for c in checks if c.ok and c.split != "skipped"]
    found = find_duplicates(checks, thumbs, near_duplicates, max_distance, max_difference, quiet)
    report = InspectReport(
        spec=source.spec,
        class_names=list(source.class_names),
        num_images=len(source),
        **class_counts(checks, list(source.class_names)),
        sizes=size_summary(good),
        **file_findings(checks, good),
        **found,
        settings={
            "full_decode": full_decode,
            "near_duplicates": near_duplicates,
            "max_distance": max_distance,
            "max_difference": max_difference,
            "hash": "pHash 63 bits",
        },
        seconds=round(time.perf_counter() - t0, 2),
    )
    report._source = source  # type: ignore[attr-defined]  # for pictures in the HTML page
    return report


def check_before_training(
    bundle,
    run_dir: str | os.PathLike | None = None,
    logger: logging.Logger | None = None,
    quiet: bool = False,
) -> InspectReport | None:
    """The brief dataset check the trainer runs on file-based data, against the split it drew.

    Skips the full decode (``load_data`` has already decoded every file) and
    logs one warning per problem: leakage between train and val/test (with the
    first pairs), duplicates, label conflicts, EXIF rotation, imbalance.
    With ``run_dir``, writes ``inspect.json``, ``inspect.html`` and the CSVs there.
    Per-file results are cached between runs; ``quiet`` hides the progress output.
    Returns None for in-memory (builtin) data.

    Example:
        >>> check_before_training(bundle, run.path)
    """
    logger = logger or log
    if not bundle.source.is_files:
        return None
    report = inspect_data(bundle.source, split=bundle.split, full_decode=False, quiet=quiet)
    for p in report.problems():
        logger.warning("Data check: %s", p)
    for p in report.leakage[:5]:
        logger.warning(
            "  leakage: %s %s == %s %s (%s)", p["split_a"], p["a"], p["split_b"], p["b"], kind(p)
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
    try:
        kind_, value = parse_spec(spec)
    except Exception:  # noqa: BLE001
        kind_, value = "data", spec
    name = Path(value.rstrip("/")).stem if kind_ != "builtin" else value
    name = "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in name) or "data"
    return unique_dir(Path(base) / f"inspect-{name}")
