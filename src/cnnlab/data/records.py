"""Reading data packed by ``cnnlab data pack``: sharded TFRecords and their index.

A packed folder holds ``index.json`` (classes, image size, counts per split,
the shard list, the source's checksum), ``split.csv`` (one row per image in
the source's order: ``index,path,label,split``, the file a run folder keeps)
and per-split shards ``train-00000-of-00016.tfrecord``... Each record is a
``tf.train.Example`` with the encoded image (``image``, JPEG or PNG bytes),
``label`` (int), ``path`` (relative to the packed source), ``split`` and
``index`` (its position within its split). A split's shards hold its images
in order: shard 0 the first ones, and so on, so reading them one after another
gives the order of ``split.csv``.

:class:`RecordSplit` turns one split into a ``tf.data`` pipeline of encoded
bytes: in order (scoring, subsets) or, for training, shards shuffled each
epoch and read several at once (``interleave``), optionally one worker's
shards only (:meth:`RecordSplit.shard`).

Writing is :func:`cnnlab.data.tfrecord.pack`.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from cnnlab.errors import DataError

FORMAT = "cnnlab-tfrecord"
FORMAT_VERSION = 1
INDEX_FILE = "index.json"
SPLIT_FILE = "split.csv"
# Shards read at once while training (each an open file with its own read buffer).
CYCLE_LENGTH = 8


def is_packed(folder: str | os.PathLike) -> bool:
    """True when ``folder`` holds a packed dataset (an ``index.json`` written by pack)."""
    index = Path(folder) / INDEX_FILE
    if not index.is_file():
        return False
    try:
        return json.loads(index.read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


@dataclass(frozen=True)
class RecordSplit:
    """The shards of one split (or one worker's part of them), and which rows to keep."""

    name: str
    files: tuple[str, ...]
    counts: tuple[int, ...]
    bytes: int
    rows: np.ndarray | None = None  # positions within the split to keep, sorted; None: all
    num_workers: int = 1
    worker_index: int = 0
    by_file: bool = False  # this worker's shards are already picked (files below)

    @property
    def count(self) -> int:
        """Images this reader yields."""
        if self.rows is not None:
            return len(self.rows)
        total = sum(self.counts)
        if self.num_workers > 1 and not self.by_file:
            # Record-level sharding: every num_workers-th record from worker_index.
            return len(range(self.worker_index, total, self.num_workers))
        return total

    @property
    def mean_record_bytes(self) -> float:
        return self.bytes / max(1, sum(self.counts))

    def select(self, rows) -> RecordSplit:
        """Only the images at ``rows`` (positions within the split), read in order."""
        rows = np.unique(np.asarray(rows, np.int64))
        return replace(self, rows=rows)

    def shard(self, num_workers: int, index: int) -> RecordSplit:
        """One ``tf.distribute`` worker's part: whole shards (every ``num_workers``-th file
        from ``index``) when there are at least as many shards as workers, else every
        ``num_workers``-th record. The workers' parts are disjoint and cover the split."""
        if num_workers < 1 or not 0 <= index < num_workers:
            raise DataError(
                f"Worker {index} of {num_workers} is not a valid shard",
                expected="num_workers >= 1 and 0 <= index < num_workers",
            )
        if len(self.files) >= num_workers:
            files, counts = self.files[index::num_workers], self.counts[index::num_workers]
            share = sum(counts) / max(1, sum(self.counts))
            return replace(
                self,
                files=files,
                counts=counts,
                bytes=int(self.bytes * share),
                num_workers=num_workers,
                worker_index=index,
                by_file=True,
            )
        return replace(self, num_workers=num_workers, worker_index=index, by_file=False)

    def dataset(
        self,
        *,
        training: bool = False,
        seed: int = 0,
        parallel: int = 0,
        shuffle_buffer: int = 0,
        batch: int = 0,
    ):
        """``tf.data`` pipeline of ``(encoded image bytes, label, index within split)``.

        Training: shard order reshuffled every epoch (seeded), ``CYCLE_LENGTH``
        shards read at once in ``parallel`` threads, deterministic given the seed;
        ``shuffle_buffer`` records (still serialized) then shuffle within a buffer.
        Otherwise the shards are read one after another: ``split.csv``'s order.
        With ``batch``, elements are batches of that many (images kept by
        :meth:`select` are picked out of each parsed batch).
        """
        import tensorflow as tf

        files = tf.data.Dataset.from_tensor_slices(list(self.files))
        if training and len(self.files) > 1:
            files = files.shuffle(len(self.files), seed=seed, reshuffle_each_iteration=True)
            cycle = min(CYCLE_LENGTH, len(self.files))
            ds = files.interleave(
                lambda f: tf.data.TFRecordDataset(f, buffer_size=1 << 20),
                cycle_length=cycle,
                num_parallel_calls=parallel or min(cycle, os.cpu_count() or 2),
                deterministic=True,
            )
        else:
            ds = files.flat_map(lambda f: tf.data.TFRecordDataset(f, buffer_size=1 << 20))
        if self.num_workers > 1 and not self.by_file:
            ds = ds.shard(self.num_workers, self.worker_index)
        if shuffle_buffer > 1:
            ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
        # Records are parsed many per call (per-record parsing costs more than decoding a
        # small JPEG), then split up again unless batches were asked for.
        ds = ds.batch(batch or 256).map(
            _parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
        )
        if self.rows is not None:
            keep = np.zeros(sum(self.counts), bool)
            keep[self.rows] = True
            mask = tf.constant(keep)

            def selected(img, y, i):
                m = tf.gather(mask, i)
                return tf.boolean_mask(img, m), tf.boolean_mask(y, m), tf.boolean_mask(i, m)

            ds = ds.map(selected).unbatch()
            ds = ds.batch(batch) if batch else ds
        elif not batch:
            ds = ds.unbatch()
        if self.num_workers > 1:
            # This reader already holds one worker's part: tf.distribute must not shard again.
            options = tf.data.Options()
            options.experimental_distribute.auto_shard_policy = (
                tf.data.experimental.AutoShardPolicy.OFF
            )
            ds = ds.with_options(options)
        return ds


def _parse(serialized):
    """One serialized record, or a batch of them, to (image bytes, label, index)."""
    import tensorflow as tf

    features = {
        "image": tf.io.FixedLenFeature([], tf.string),
        "label": tf.io.FixedLenFeature([], tf.int64),
        "index": tf.io.FixedLenFeature([], tf.int64),
    }
    ex = tf.io.parse_example(serialized, features)
    return ex["image"], ex["label"], ex["index"]


@dataclass(frozen=True)
class RecordIndex:
    """A packed folder's ``index.json`` and ``split.csv``, read once."""

    root: Path
    meta: dict
    names: np.ndarray  # relative path of every image, in split.csv's order
    labels: np.ndarray  # int64
    parts: np.ndarray  # train / val / test

    @property
    def class_names(self) -> list[str]:
        return list(self.meta["class_names"])

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(int(v) for v in self.meta["image_size"])

    @property
    def channels(self) -> int:
        return int(self.meta["channels"])

    def split(self, name: str) -> RecordSplit:
        shards = self.meta["shards"].get(name, [])
        return RecordSplit(
            name,
            tuple(str(self.root / s["file"]) for s in shards),
            tuple(int(s["count"]) for s in shards),
            sum(int(s["bytes"]) for s in shards),
        )


def read_index(folder: str | os.PathLike) -> RecordIndex:
    """Read and check a packed folder; a folder that is not one gets a DataError saying so."""
    root = Path(folder).expanduser()
    index_path = root / INDEX_FILE
    if not root.is_dir():
        raise DataError(
            f"TFRecord folder {root} does not exist",
            fix="Check the path after tfrecord:, or write one with "
            "`cnnlab data pack SPEC --to DIR`",
        )
    if not is_packed(root):
        raise DataError(
            f"{root} is not a folder written by `cnnlab data pack` (no valid {INDEX_FILE})",
            expected=f"{INDEX_FILE} with format '{FORMAT}', {SPLIT_FILE} and *.tfrecord shards",
            fix="Pack the data with `cnnlab data pack SPEC --to DIR`, or use folder:PATH",
        )
    meta = json.loads(index_path.read_text())
    if int(meta.get("version", 0)) > FORMAT_VERSION:
        raise DataError(
            f"{index_path} has format version {meta.get('version')}; this cnnlab reads "
            f"up to {FORMAT_VERSION}",
            fix="Upgrade cnnlab, or pack the data again with this version",
        )
    shards = [s["file"] for v in meta["shards"].values() for s in v]
    missing = [f for f in shards if not (root / f).is_file()]
    if missing:
        raise DataError(
            f"{root} lacks {len(missing)} shard(s) its {INDEX_FILE} lists: "
            + ", ".join(missing[:5]),
            fix="Copy the whole packed folder, or pack the data again",
        )
    with open(root / SPLIT_FILE, newline="") as f:
        rows = list(csv.DictReader(f))
    index = {n: i for i, n in enumerate(meta["class_names"])}
    names = np.array([r["path"] for r in rows])
    labels = np.array([index[r["label"]] for r in rows], np.int64)
    parts = np.array([r["split"] for r in rows])
    return RecordIndex(root, meta, names, labels, parts)
