"""Data: sources → pre-flight scan → seeded split → tf.data pipelines.

The one call most users need::

    data = cnnlab.load_data("folder:flowers", image_size=128, val_split=0.1)
    data.train, data.val, data.test   # tf.data.Dataset of (images 0-255, one-hot labels)
    data.class_names
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from cnnlab.data.augment import Augmenter, AugmentOptions, resolve_options
from cnnlab.data.pipeline import caches_in_memory, make_dataset
from cnnlab.data.scan import ImageInfo, is_grayscale, scan_images
from cnnlab.data.sources import Source, open_source, parse_spec
from cnnlab.data.splits import SPLITS, Split, make_split
from cnnlab.errors import BadImagesError, DataError

log = logging.getLogger("cnnlab")

__all__ = [
    "DataBundle",
    "Source",
    "Split",
    "load_data",
    "open_source",
    "make_split",
    "scan_images",
    "make_dataset",
    "ImageInfo",
    "parse_spec",
]

# Largest default image size picked from the data; bigger images are shrunk.
MAX_DEFAULT_SIZE = 224


@dataclass
class DataBundle:
    """A data source split three ways, with a pipeline for each split."""

    source: Source
    split: Split
    image_size: tuple[int, int]
    channels: int
    batch_size: int
    resize: str
    augment: AugmentOptions
    bad_files: list[ImageInfo] = field(default_factory=list)
    scan: list[ImageInfo] = field(default_factory=list)
    seed: int = 42
    class_weight: str = "none"
    cache: str = "auto"
    # The training pipeline's batches leave cut into this many micro-batches (gradient
    # accumulation; see cnnlab.training.memory); validation and test pipelines batch at
    # eval_batch_size (None: batch_size) to bound the memory of scoring.
    micro_batches: int = 1
    eval_batch_size: int | None = None
    _datasets: dict = field(default_factory=dict, repr=False)

    @property
    def class_names(self) -> list[str]:
        return self.source.class_names

    @property
    def num_classes(self) -> int:
        return self.source.num_classes

    def examples(self, name: str) -> dict:
        """The raw examples of a split: ``labels`` and ``images`` or ``paths`` (neither for
        a ``tfrecord:`` source, whose images stay in its shards: see ``records``)."""
        idx = self.split.indices(name)
        out = {"labels": self.source.labels[idx], "indices": idx}
        if self.source.is_files:
            out["paths"] = self.source.paths[idx]
        elif not self.source.is_records:
            out["images"] = self.source.images[idx]
        return out

    def cached_bytes(self, name: str) -> float:
        """Decoded bytes of split ``name`` that its pipeline keeps in memory (0 when it
        streams: ``cache: none``, or ``auto`` over the cache limit)."""
        h, w = self.image_size
        size = float(len(self.examples(name)["labels"]) * h * w * self.channels)
        return size if caches_in_memory(self.cache, size) else 0.0

    def records(self, name: str):
        """A ``tfrecord:`` source's reader of one split (a RecordSplit), else None."""
        return self.source.records.split(name) if self.source.is_records else None

    def class_weights(self) -> np.ndarray | None:
        """'balanced' weights n / (k * count_c) from the training split, else None."""
        if self.class_weight != "balanced":
            return None
        counts = np.bincount(self.examples("train")["labels"], minlength=self.num_classes)
        counts = np.maximum(counts, 1)
        return counts.sum() / (self.num_classes * counts)

    def set_batching(
        self, batch_size: int, micro_batches: int = 1, eval_batch_size: int | None = None
    ) -> None:
        """Batch the pipelines anew (those already built are dropped)."""
        self.batch_size = int(batch_size)
        self.micro_batches = max(1, int(micro_batches))
        self.eval_batch_size = None if eval_batch_size is None else int(eval_batch_size)
        self._datasets.clear()

    def redraw_split(self, val_split: float, test_split: float) -> None:
        """Draw the split again for new shares, without scanning the files again.

        The test split is drawn first from the seed, so it stays the same; undecodable
        files stay out. A packed (``tfrecord:``) split is fixed: nothing is redrawn.
        """
        if self.source.is_records:
            return
        skip = self.split.assignment == "skipped"
        self.split = make_split(self.source, val_split, test_split, self.seed, skip=skip)
        self._datasets.clear()

    def dataset(self, name: str, training: bool | None = None):
        """The tf.data pipeline for one split (built once, then reused)."""
        if name not in SPLITS:
            raise DataError(f"Unknown split '{name}'", expected="train, val or test")
        training = (name == "train") if training is None else training
        key = (name, training)
        if key not in self._datasets:
            ex = self.examples(name)
            if len(ex["labels"]) == 0:
                return None
            augmenter = None
            if training and self.augment.active():
                augmenter = Augmenter(self.augment, self.image_size, self.channels, self.seed)
            self._datasets[key] = make_dataset(
                ex["labels"],
                num_classes=self.num_classes,
                image_size=self.image_size,
                channels=self.channels,
                images=ex.get("images"),
                paths=ex.get("paths"),
                records=self.records(name),
                batch_size=self.batch_size if training else self.eval_batch_size or self.batch_size,
                training=training,
                augmenter=augmenter,
                resize=self.resize,
                cache=self.cache,
                seed=self.seed,
                class_weights=self.class_weights() if training else None,
                micro_batches=self.micro_batches if training else 1,
            )
        return self._datasets[key]

    def subset(
        self,
        split: str,
        rows=None,
        *,
        batch_size: int = 256,
        training: bool = False,
        shuffle_seed: int | None = None,
    ):
        """A pipeline over ``rows`` (positions within ``split``; all of it when None).

        No augmentation and no cache: the images as the model takes them, in order. With
        ``training=True`` it is the un-augmented, shuffled training pipeline (class weights
        kept), which fine-tuning's feature path and the fast recipe's set-up use.
        """
        ex = self.examples(split)
        records = self.records(split)
        if rows is not None:
            rows = np.asarray(rows, np.int64)
            ex = {k: v[rows] for k, v in ex.items()}
            if records is not None:
                if len(rows) and not np.all(np.diff(rows) > 0):
                    return self._reordered_subset(split, rows, batch_size)
                records = records.select(rows)
        return make_dataset(
            ex["labels"],
            num_classes=self.num_classes,
            image_size=self.image_size,
            channels=self.channels,
            images=ex.get("images"),
            paths=ex.get("paths"),
            records=records,
            batch_size=batch_size,
            training=training,
            augmenter=None,
            resize=self.resize,
            cache=self.cache if training else "none",
            seed=self.seed,
            class_weights=self.class_weights() if training else None,
        )

    def _reordered_subset(self, split: str, rows: np.ndarray, batch_size: int):
        """TFRecords are read in order: unsorted ``rows`` are read sorted, then put in order."""
        wanted = np.unique(rows)
        x = np.concatenate([b[0].numpy() for b in self.subset(split, wanted, batch_size=500)])
        pos = np.searchsorted(wanted, rows)
        return make_dataset(
            self.examples(split)["labels"][rows],
            num_classes=self.num_classes,
            image_size=self.image_size,
            channels=self.channels,
            images=x[pos].astype(np.uint8),
            batch_size=batch_size,
            cache="none",
        )

    def sample_images(self, split: str, max_images: int) -> np.ndarray:
        """Up to ``max_images`` images of ``split`` (seeded sample, sorted order) as uint8
        arrays of the model's size and channels."""
        n = len(self.examples(split)["labels"])
        rows = np.sort(np.random.default_rng(self.seed).permutation(n)[:max_images])
        ex = self.examples(split)
        if "images" in ex and tuple(ex["images"].shape[1:]) == (*self.image_size, self.channels):
            return ex["images"][rows]
        return np.concatenate([x.numpy() for x, _ in self.subset(split, rows, batch_size=500)])

    @property
    def train(self):
        return self.dataset("train")

    @property
    def val(self):
        return self.dataset("val")

    @property
    def test(self):
        return self.dataset("test")

    def summary(self) -> dict:
        """What ``data.json`` holds; its keys are the config's and the bundle's names (``data``
        as in ``--data``, ``class_names``; before 0.2 they were ``spec`` and ``classes``)."""
        counts = {}
        for s in SPLITS:
            labels = self.examples(s)["labels"]
            c = np.bincount(labels, minlength=self.num_classes)
            counts[s] = {n: int(v) for n, v in zip(self.class_names, c)}
        return {
            "data": self.source.spec,
            "class_names": self.class_names,
            "num_classes": self.num_classes,
            "image_size": list(self.image_size),
            "channels": self.channels,
            "split_sizes": self.split.counts(),
            "per_class": counts,
            "bad_files": [b.to_dict() for b in self.bad_files],
        }


def _default_geometry(source: Source, scan: list[ImageInfo]) -> tuple[tuple[int, int], int]:
    if source.is_records:
        return source.records.image_size, source.records.channels
    if not source.is_files:
        return tuple(source.images.shape[1:3]), int(source.images.shape[-1])
    good = [s for s in scan if s.ok]
    sizes = Counter((s.height, s.width) for s in good)
    (h, w), _ = sizes.most_common(1)[0]
    if max(h, w) > MAX_DEFAULT_SIZE:
        scale = MAX_DEFAULT_SIZE / max(h, w)
        h, w = max(1, round(h * scale)), max(1, round(w * scale))
    channels = 1 if all(is_grayscale(s) for s in good) else 3
    return (h, w), channels


def load_data(
    spec: str = "builtin:digits",
    *,
    image_size: int | tuple[int, int] | list[int] | None = None,
    channels: int | None = None,
    batch_size: int = 64,
    val_split: float = 0.1,
    test_split: float = 0.1,
    seed: int = 42,
    augment: str | AugmentOptions = "auto",
    augment_options: dict | None = None,
    resize: str = "stretch",
    cache: str = "auto",
    class_weight: str = "none",
    skip_bad_images: bool = False,
    data_dir: str | None = None,
    split: Split | None = None,
    scan: bool = True,
    quiet: bool = False,
) -> DataBundle:
    """Open a data source, scan its files, split it and prepare the pipelines.

    Args:
        spec: ``builtin:NAME``, ``folder:PATH``, ``csv:FILE`` or ``tfrecord:DIR`` (written
            by ``cnnlab data pack``: no scan, its stored split is used).
        image_size: output size; default: native size (most common file size,
            at most 224 px on the longer side).
        channels: 1 or 3; default: 1 when every image is grayscale, else 3.
        split: reuse a saved :class:`Split` instead of drawing a new one.
        skip_bad_images: leave undecodable files out instead of failing.
        quiet: no progress bar (terminal) or progress lines (elsewhere) for the scan.

    Returns:
        A :class:`DataBundle` with ``train``, ``val``, ``test`` pipelines.

    Example:
        >>> data = load_data("builtin:digits", batch_size=32)
        >>> data.num_classes
        10
    """
    source = open_source(spec, data_dir)
    infos: list[ImageInfo] = []
    bad: list[ImageInfo] = []
    skip = None
    if source.is_files and scan:
        log.info("Scanning %d files for images that cannot be decoded...", len(source))
        infos = scan_images(list(source.paths), quiet=quiet)
        bad = [i for i in infos if not i.ok]
        if bad and not skip_bad_images:
            raise BadImagesError(bad, spec)
        if bad:
            log.warning("Skipping %d undecodable file(s); see bad_files.csv", len(bad))
            skip = np.array([not i.ok for i in infos])
        if len(bad) == len(infos):
            raise DataError(f"No file in {spec} can be decoded", fix="Check the data folder")
    if split is None:
        split = make_split(source, val_split, test_split, seed, skip=skip)
    if image_size is None or channels is None:
        if source.is_files and not infos:
            infos = scan_images(list(source.paths[:200]), quiet=quiet)
        size0, ch0 = _default_geometry(source, infos)
        image_size = image_size or size0
        channels = channels or ch0
    if isinstance(image_size, int):
        image_size = (image_size, image_size)
    if isinstance(augment, str):
        augment = resolve_options(augment, spec, **(augment_options or {}))
    return DataBundle(
        source=source,
        split=split,
        image_size=tuple(int(v) for v in image_size),
        channels=int(channels),
        batch_size=batch_size,
        resize=resize,
        augment=augment,
        bad_files=bad,
        scan=infos,
        seed=seed,
        class_weight=class_weight,
        cache=cache,
    )
