"""``cnnlab data pack``: write a data source as sharded TFRecords plus a small index.

Large sets train faster from a few hundred large files than from a million small
ones: no per-file open, sequential reads, several shards read at once. Packing
runs the pre-flight scan once (undecodable files are left out and listed in the
index), draws the train/val/test split once (stored: every later run uses it),
runs the dataset check against that split (``inspect.html``/``inspect.json``
in the packed folder: duplicates, leakage; runs on ``tfrecord:`` data skip both
the scan and the check) and writes each split as its own shards (see :mod:`cnnlab.data.records` for
the layout). JPEG files are copied byte for byte; other formats are stored as
PNG (lossless), and with ``image_size`` every image is resized with the
pipeline's own resize and stored as JPEG (quality 95) or PNG.

The folder is written under a temporary name beside ``to`` and renamed when
complete, so an interrupted pack leaves nothing that reads as a packed folder.

Example:
    >>> pack("folder:/data/cifar10", "/data/cifar10-tfr")
    >>> data = load_data("tfrecord:/data/cifar10-tfr")
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import math
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from cnnlab._io import write_json, write_text
from cnnlab._progress import Progress
from cnnlab.data import _default_geometry
from cnnlab.data.records import FORMAT, FORMAT_VERSION, INDEX_FILE, SPLIT_FILE, is_packed
from cnnlab.data.scan import scan_images
from cnnlab.data.sources import Source, open_source, parse_spec
from cnnlab.data.splits import SPLITS, make_split
from cnnlab.errors import DataError

log = logging.getLogger("cnnlab")

# Auto shard count: about this many bytes per training shard, and at least MIN_SHARDS.
SHARD_BYTES = 128 * 1024**2
MIN_SHARDS = 8
JPEG_QUALITY = 95


def pack(
    spec: str,
    to: str | os.PathLike,
    *,
    shards: int | None = None,
    image_size: int | None = None,
    resize: str = "stretch",
    val_split: float = 0.1,
    test_split: float = 0.1,
    seed: int = 42,
    overwrite: bool = False,
    quiet: bool = False,
    data_dir: str | None = None,
    check: bool = True,
) -> dict:
    """Pack ``spec`` into ``to`` (a new or empty folder); returns the written index.

    Args:
        shards: training shards (val and test get a proportional number, at least
            one each); default: one per ~128 MB, at least 8.
        image_size: resize every image to this square size (re-encodes them).
        val_split, test_split, seed: the split drawn when the source has none
            (as ``cnnlab train``'s); it is stored and reused by every run.
        overwrite: replace ``to`` when it already holds a packed folder.
        check: run the dataset check (duplicates, leakage across the stored split)
            and keep its report in the packed folder.
    """
    to = Path(to).expanduser()
    kind, value = parse_spec(spec)
    if kind == "tfrecord":
        raise DataError(f"{spec} is already packed", fix="Train on it directly with --data")
    root = _source_root(kind, value)
    _check_destination(to, overwrite, root)
    if shards is not None and shards < 1:
        raise DataError(f"--shards {shards} is not a shard count", expected="1 or more")
    start = time.monotonic()
    source = open_source(spec, data_dir)
    source, skipped, infos = _without_bad_files(source, quiet)
    split = make_split(source, val_split, test_split, seed)
    size, channels = _geometry(source, infos, image_size)
    to.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{to.name}.packing-", dir=to.parent))
    try:
        written, checksum = _write_shards(
            tmp,
            source,
            split.assignment,
            root,
            shards,
            image_size and size,
            channels,
            resize,
            quiet,
        )
        names = _relative_names(source, root)
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["index", "path", "label", "split"])
        for i, (p, y, s) in enumerate(zip(names, source.labels, split.assignment)):
            w.writerow([i, p, source.class_names[y], s])
        write_text(tmp / SPLIT_FILE, buf.getvalue())
        findings = _check(source, split, tmp, quiet) if check else None
        index = _index(
            source,
            split.assignment,
            written,
            checksum,
            size,
            channels,
            skipped,
            resized=image_size is not None,
            resize=resize,
            split_args=(val_split, test_split, seed),
        )
        index["check"] = findings
        write_json(tmp / INDEX_FILE, index)
        _put_in_place(tmp, to)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info(
        "Packed %d images (%s) into %s: %d shards, %.1f MB, in %.1f s",
        len(source),
        ", ".join(f"{index['counts'][s]} {s}" for s in SPLITS),
        to,
        sum(len(v) for v in written.values()),
        index["bytes"] / 1e6,
        time.monotonic() - start,
    )
    return index


def _check(source: Source, split, folder: Path, quiet: bool) -> list[str]:
    """The dataset check on the stored split (files already fully decoded by the scan);
    its report goes into ``folder``; returns its findings (also logged)."""
    from cnnlab.data.inspect import inspect_data

    report = inspect_data(source, split=split, full_decode=False, quiet=quiet)
    report.write(folder)
    for p in report.problems():
        log.warning("Data check: %s", p)
    return report.problems()


def _source_root(kind: str, value: str) -> Path | None:
    if kind == "folder":
        return Path(value).expanduser().resolve()
    if kind == "csv":
        return Path(value).expanduser().resolve().parent
    return None


def _check_destination(to: Path, overwrite: bool, root: Path | None) -> None:
    """Refuse a --to that is a file, a non-empty folder (unless it is a packed folder and
    ``overwrite``), or a folder inside the source (it would be read as data)."""
    if to.exists() and not to.is_dir():
        raise DataError(
            f"--to {to} is a file",
            expected="a new or empty folder for the TFRecord shards and index.json",
            fix="Choose a folder path",
        )
    if root is not None and root.is_dir():
        full = to.resolve()
        if full == root or root in full.parents:
            raise DataError(
                f"--to {to} is inside the data being packed ({root})",
                fix="Choose a folder outside the source folder",
            )
    if to.is_dir() and any(to.iterdir()):
        if not overwrite:
            raise DataError(
                f"--to {to} is not empty",
                expected="a new or empty folder",
                fix="Choose another --to, or pass --overwrite to replace a packed folder",
            )
        if not is_packed(to):
            raise DataError(
                f"--to {to} holds files that are not a packed dataset (no {INDEX_FILE}); "
                "--overwrite only replaces a folder written by cnnlab data pack",
                fix="Choose a new or empty folder",
            )


def _without_bad_files(source: Source, quiet: bool) -> tuple[Source, list[str], list]:
    """Scan the files (cached per file) and drop the undecodable ones; returns the source
    without them, their descriptions and the good files' scan results."""
    if not source.is_files:
        return source, [], []
    infos = scan_images(list(source.paths), quiet=quiet)
    ok = np.array([i.ok for i in infos], bool)
    if not ok.any():
        raise DataError(f"No file in {source.spec} can be decoded", fix="Check the data")
    bad = [f"{i.path}: {i.problem}" for i in infos if not i.ok]
    if bad:
        log.warning("Leaving out %d undecodable file(s), e.g. %s", len(bad), bad[0])
    source = Source(
        source.spec, source.class_names, source.labels[ok], source.parts[ok], paths=source.paths[ok]
    )
    return source, bad, [i for i in infos if i.ok]


def _geometry(source: Source, infos: list, image_size: int | None) -> tuple[tuple[int, int], int]:
    size, channels = _default_geometry(source, infos)
    if image_size is not None:
        if image_size < 1:
            raise DataError(f"--image-size {image_size} is not a size", expected="1 or more")
        size = (int(image_size), int(image_size))
    return size, channels


def _relative_names(source: Source, root: Path | None) -> list[str]:
    if not source.is_files:
        return [f"{i:07d}" for i in range(len(source))]
    return [os.path.relpath(p, root) if root else str(p) for p in source.paths]


def _shard_counts(source: Source, assignment: np.ndarray, shards: int | None) -> dict:
    counts = {s: int((assignment == s).sum()) for s in SPLITS}
    n_train = max(1, counts["train"])
    if shards is None:
        if source.is_files:
            train = source.paths[assignment == "train"]
            size = sum(os.path.getsize(p) for p in train)
        else:
            size = counts["train"] * int(np.prod(source.images.shape[1:]))
        shards = max(MIN_SHARDS, math.ceil(size / SHARD_BYTES))
    out = {}
    for s, n in counts.items():
        k = shards if s == "train" else max(1, round(shards * n / n_train))
        out[s] = min(n, k)
    return out


def _encoder(source: Source, size, channels: int, resize: str):
    """A tf.data map: one example (path or array) to (original bytes, stored bytes)."""
    import tensorflow as tf

    from cnnlab.data.pipeline import make_loader

    load = make_loader(size, channels, resize, from_bytes=True) if size else None

    def store(data):
        is_jpeg = tf.strings.substr(data, 0, 3) == b"\xff\xd8\xff"
        if load is None:
            native = tf.io.decode_image(data, channels=0, expand_animations=False)
            return tf.cond(is_jpeg, lambda: data, lambda: tf.io.encode_png(native))
        img = load(data)
        return tf.cond(
            is_jpeg,
            lambda: tf.io.encode_jpeg(img, quality=JPEG_QUALITY),
            lambda: tf.io.encode_png(img),
        )

    if source.is_files:
        return lambda path: (lambda data: (data, store(data)))(tf.io.read_file(path))
    return lambda image: (tf.constant(b""), store(tf.io.encode_png(image)))


def _write_shards(tmp, source, assignment, root, shards, size, channels, resize, quiet):
    """Write each split's shards into ``tmp``; returns ({split: [shard rows]}, checksum)."""
    import tensorflow as tf

    names = _relative_names(source, root)
    plan = _shard_counts(source, assignment, shards)
    encode = _encoder(source, size, channels, resize)
    digests = [b""] * len(source)
    written: dict[str, list[dict]] = {}
    with Progress(len(source), "Packing", unit="image", quiet=quiet) as progress:
        for split in SPLITS:
            idx = np.flatnonzero(assignment == split)
            written[split] = []
            if not len(idx):
                continue
            items = source.paths[idx].astype(str) if source.is_files else source.images[idx]
            ds = tf.data.Dataset.from_tensor_slices(items).map(
                encode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
            )
            stream = ds.prefetch(64).as_numpy_iterator()
            k = plan[split]
            for s, block in enumerate(np.array_split(np.arange(len(idx)), k)):
                name = f"{split}-{s:05d}-of-{k:05d}.tfrecord"
                nbytes = 0
                with tf.io.TFRecordWriter(str(tmp / name)) as writer:
                    for pos in block:
                        original, stored = next(stream)
                        i = idx[pos]
                        raw = original if source.is_files else source.images[i].tobytes()
                        digests[i] = hashlib.sha1(raw).digest()
                        record = _example(stored, int(source.labels[i]), names[i], split, pos)
                        writer.write(record)
                        nbytes += len(record)
                        progress.update()
                written[split].append({"file": name, "count": len(block), "bytes": nbytes})
    h = hashlib.sha256()
    for name, y, d in zip(names, source.labels, digests):
        h.update(f"{name}\0{source.class_names[y]}\0".encode() + d)
    return written, "sha256:" + h.hexdigest()


def _example(image: bytes, label: int, path: str, split: str, index: int) -> bytes:
    import tensorflow as tf

    def b(v):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[v]))

    def i(v):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[v]))

    features = {
        "image": b(image),
        "label": i(label),
        "path": b(path.encode()),
        "split": b(split.encode()),
        "index": i(int(index)),
    }
    return tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString()


def _index(
    source, assignment, written, checksum, size, channels, skipped, *, resized, resize, split_args
) -> dict:
    per_class = {
        s: {
            n: int(c)
            for n, c in zip(
                source.class_names,
                np.bincount(source.labels[assignment == s], minlength=source.num_classes),
            )
        }
        for s in SPLITS
    }
    return {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "source": source.spec,
        "source_checksum": checksum,
        "class_names": list(source.class_names),
        "image_size": list(size),
        "channels": int(channels),
        "resized": bool(resized),
        "resize": resize if resized else None,
        "counts": {s: int((assignment == s).sum()) for s in SPLITS},
        "per_class": per_class,
        "split": dict(zip(("val_split", "test_split", "seed"), split_args), file=SPLIT_FILE),
        "shards": written,
        "bytes": sum(r["bytes"] for rows in written.values() for r in rows),
        "skipped": {"count": len(skipped), "files": skipped[:100]},
    }


def _put_in_place(tmp: Path, to: Path) -> None:
    """Rename the finished folder to ``to`` (replacing an empty or packed one)."""
    if to.is_dir() and any(to.iterdir()):
        old = Path(tempfile.mkdtemp(prefix=f".{to.name}.old-", dir=to.parent))
        os.rename(to, old / "packed")
        os.rename(tmp, to)
        shutil.rmtree(old, ignore_errors=True)
        return
    if to.is_dir():
        to.rmdir()
    os.rename(tmp, to)
