"""Seeded, stratified train/val/test splits, saved as a file list in the run folder.

Keras' ``validation_split`` takes an unstratified tail slice; here every split
keeps the class proportions, depends only on the seed, and is written to
``split.csv`` so that ``cnnlab evaluate`` scores exactly the held-out images.
"""

from __future__ import annotations

import csv
import io
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cnnlab._io import write_text
from cnnlab.data.sources import Source
from cnnlab.errors import DataError

SPLITS = ("train", "val", "test")
SKIPPED = "skipped"


@dataclass
class Split:
    """Which split each example of a source belongs to (``skipped`` for bad files)."""

    assignment: np.ndarray

    def indices(self, name: str) -> np.ndarray:
        return np.flatnonzero(self.assignment == name)

    def counts(self) -> dict[str, int]:
        return {s: int((self.assignment == s).sum()) for s in (*SPLITS, SKIPPED)}

    def save(self, path: str | os.PathLike, source: Source) -> Path:
        """Write ``index,path,label,split``: one row per example (path empty in memory)."""
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["index", "path", "label", "split"])
        paths = source.paths if source.is_files else [""] * len(source)
        if source.is_records:
            paths = source.records.names
        for i, (p, y, s) in enumerate(zip(paths, source.labels, self.assignment)):
            w.writerow([i, p, source.class_names[y], s])
        return write_text(path, buf.getvalue())

    @classmethod
    def load(cls, path: str | os.PathLike, source: Source) -> Split:
        """Read a saved split and check that it still matches the source."""
        path = Path(path)
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        if len(rows) != len(source):
            raise DataError(
                f"The split in {path} lists {len(rows)} examples but {source.spec} now has "
                f"{len(source)}",
                expected="the same data the run was trained on",
                fix="Evaluate with --data pointing at other data to score it as a whole",
            )
        if source.is_files:
            for r, p in zip(rows, source.paths):
                if os.path.abspath(r["path"]) != os.path.abspath(p):
                    raise DataError(
                        f"The split in {path} names {r['path']} where {source.spec} now has {p}",
                        expected="the same files the run was trained on",
                        fix="Restore the data, or pass --data to evaluate other data as a whole",
                    )
        return cls(np.array([r["split"] for r in rows]))


def _carve(idx: np.ndarray, labels: np.ndarray, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Take ``n`` examples out of ``idx``, stratified by label when possible."""
    from sklearn.model_selection import train_test_split

    if n <= 0:
        return idx, idx[:0]
    if n >= len(idx):
        raise DataError(
            f"Cannot hold out {n} of {len(idx)} examples",
            expected="val_split + test_split well below 1",
            fix="Lower --val-split / --test-split or add data",
        )
    y = labels[idx]
    counts = np.bincount(y)
    counts = counts[counts > 0]
    stratify = y if counts.min() >= 2 and n >= len(counts) and len(idx) - n >= len(counts) else None
    if stratify is None:
        logging.getLogger("cnnlab").warning(
            "Some classes have too few examples for a stratified split; splitting at random."
        )
    keep, out = train_test_split(idx, test_size=n, random_state=seed, stratify=stratify)
    return np.sort(keep), np.sort(out)


def make_split(
    source: Source,
    val_split: float = 0.1,
    test_split: float = 0.1,
    seed: int = 42,
    skip: np.ndarray | None = None,
) -> Split:
    """Assign every example of ``source`` to train, val or test.

    Splits the source brings (``train/``, ``val/``, ``test/`` folders, a CSV
    ``split`` column, the official test set of a built-in dataset) are kept;
    missing ones are carved out of the training pool, stratified by class.
    ``skip`` marks examples (bad files) to leave out of every split.
    """
    if source.is_records:
        return _packed_split(source)
    parts = source.parts.astype(object).copy()
    has_parts = bool(np.any(parts != ""))
    parts[parts == ""] = "train"
    assignment = parts.astype("<U8")
    if skip is not None and len(skip):
        assignment[skip] = SKIPPED
    pool = np.flatnonzero(assignment == "train")
    n_pool = len(pool)
    rng_seed = int(seed)
    if not (has_parts and np.any(assignment == "test")):
        pool, test = _carve(pool, source.labels, int(round(test_split * n_pool)), rng_seed)
        assignment[test] = "test"
    if not (has_parts and np.any(assignment == "val")):
        pool, val = _carve(pool, source.labels, int(round(val_split * n_pool)), rng_seed + 1)
        assignment[val] = "val"
    if len(pool) == 0:
        raise DataError(
            f"{source.spec} leaves no training examples after splitting",
            fix="Lower --val-split / --test-split or add training data",
        )
    return Split(assignment)


def _packed_split(source: Source) -> Split:
    """A ``tfrecord:`` source's split: the one ``cnnlab data pack`` stored (each split is
    its own shards), whatever --val-split/--test-split say."""
    split = Split(source.parts.astype("<U8"))
    counts = split.counts()
    if counts["train"] == 0:
        raise DataError(
            f"{source.spec} holds no training images (packed split: {counts['val']} val, "
            f"{counts['test']} test)",
            fix="Pack the data again with --val-split/--test-split leaving a training split",
        )
    logging.getLogger("cnnlab").info(
        "Using the split stored when the data were packed: %d train, %d val, %d test "
        "(--val-split and --test-split do not apply to tfrecord: data)",
        counts["train"],
        counts["val"],
        counts["test"],
    )
    return split
