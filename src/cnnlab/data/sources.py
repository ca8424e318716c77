"""Data sources, chosen by a spec string: ``builtin:NAME``, ``folder:PATH``, ``csv:FILE``,
``tfrecord:DIR``.

A source is a flat list of labelled examples (in-memory images, file paths, or
packed TFRecords) with the split each one came with, if any (``parts``): folders
with ``train/``/``val/``/``test/`` subfolders and CSVs with a ``split`` column
bring their own; everything else is split later by :mod:`cnnlab.data.splits`.
A ``tfrecord:`` folder (written by ``cnnlab data pack``) always brings the
split it was packed with, and its images stay in the shards (``records``).
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cnnlab.data.builtin import load_builtin
from cnnlab.data.records import RecordIndex, is_packed, read_index
from cnnlab.data.scan import IMAGE_EXTENSIONS
from cnnlab.errors import DataError

SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
}


@dataclass
class Source:
    """Every example of a data source, in a fixed order."""

    spec: str
    class_names: list[str]
    labels: np.ndarray  # int64, one per example
    parts: np.ndarray  # "train" / "val" / "test" as the source defines, or ""
    images: np.ndarray | None = None  # uint8 (N, H, W, C) for in-memory sources
    paths: np.ndarray | None = None  # str, for file sources
    records: RecordIndex | None = None  # for tfrecord: sources (paths and images are None)

    def __post_init__(self) -> None:
        # A fixed-width dtype wide enough for "train"; np.array([""]) would be <U1.
        self.parts = np.asarray(self.parts).astype("<U5")

    @property
    def is_files(self) -> bool:
        return self.paths is not None

    @property
    def is_records(self) -> bool:
        return self.records is not None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.labels)


def parse_spec(spec: str) -> tuple[str, str]:
    """Split 'kind:value'; a bare existing folder or .csv file is accepted too."""
    if ":" in spec and spec.split(":", 1)[0] in ("builtin", "folder", "csv", "tfrecord"):
        kind, value = spec.split(":", 1)
        return kind, value
    if os.path.isdir(spec):
        return ("tfrecord" if is_packed(spec) else "folder"), spec
    if spec.lower().endswith(".csv") and os.path.isfile(spec):
        return "csv", spec
    raise DataError(
        f"Cannot tell what kind of data source '{spec}' is",
        expected="builtin:NAME (digits, mnist, fashion_mnist, cifar10, cifar100), "
        "folder:PATH (one subfolder per class), csv:FILE (columns path,label[,split]) "
        "or tfrecord:DIR (written by cnnlab data pack)",
        fix="Prefix the path with folder: or csv:, or check that it exists",
    )


def find_test_folder(spec: str) -> str | None:
    """The ``test/`` folder beside a ``folder:.../train`` spec, as a spec; else None.

    ``folder:cifar10/train`` with ``cifar10/test/<class>/`` beside it gives
    ``folder:cifar10/test`` (also ``training``/``testing``). Only a test folder
    with class subfolders counts.

    Example:
        >>> find_test_folder("folder:cifar10/train")
        'folder:cifar10/test'
    """
    try:
        kind, value = parse_spec(spec)
    except DataError:
        return None
    root = Path(value).expanduser()
    if kind != "folder" or SPLIT_ALIASES.get(root.name.lower()) != "train":
        return None
    parent = root.resolve().parent
    # Split folders are matched as _folder_source matches them: by SPLIT_ALIASES, any case.
    for name in _class_dirs(parent):
        if SPLIT_ALIASES.get(name.lower()) == "test" and _class_dirs(parent / name):
            return f"folder:{Path(value).parent / name}"
    return None


def open_source(spec: str, data_dir: str | None = None) -> Source:
    """Read a data source's index (not its pixels, for file sources)."""
    kind, value = parse_spec(spec)
    if kind == "builtin":
        images, labels, parts, names = load_builtin(value, data_dir)
        return Source(spec, list(names), labels, parts, images=images)
    if kind == "folder":
        return _folder_source(spec, Path(value).expanduser())
    if kind == "tfrecord":
        index = read_index(value)
        return Source(spec, index.class_names, index.labels, index.parts, records=index)
    return _csv_source(spec, Path(value).expanduser())


def _image_files(folder: Path) -> list[str]:
    found = []
    for root, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [
            os.path.join(root, f)
            for f in sorted(files)
            if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS)
        ]
    return found


def _class_dirs(folder: Path) -> list[str]:
    return sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))


def _folder_source(spec: str, root: Path) -> Source:
    if not root.is_dir():
        raise DataError(
            f"Data folder {root} does not exist",
            expected="a folder with one subfolder of images per class",
            fix="Check the path after folder:",
        )
    subdirs = _class_dirs(root)
    split_dirs = {SPLIT_ALIASES[d.lower()]: d for d in subdirs if d.lower() in SPLIT_ALIASES}
    layout = split_dirs if split_dirs else {"": None}
    if split_dirs and len(split_dirs) != len(subdirs):
        others = [d for d in subdirs if d not in split_dirs.values()]
        raise DataError(
            f"{root} mixes split folders ({', '.join(split_dirs.values())}) with other "
            f"folders ({', '.join(others)})",
            expected="either only train/, val/, test/ subfolders, or only class subfolders",
            fix="Move the class folders into train/ (and val/, test/)",
        )
    names_per_part = {part: _class_dirs(root / d) if d else subdirs for part, d in layout.items()}
    main = "train" if "train" in names_per_part else next(iter(names_per_part))
    class_names = names_per_part[main]
    if not class_names:
        raise DataError(
            f"{root / (layout[main] or '')} has no class subfolders",
            expected="one subfolder per class, each holding that class's images "
            "(e.g. flowers/daisy/001.jpg)",
            fix="Arrange the images by class, or use csv:FILE with path,label columns",
        )
    paths, labels, parts = [], [], []
    for part, d in layout.items():
        base = root / d if d else root
        for name in names_per_part[part]:
            if name not in class_names:
                raise DataError(
                    f"Class folder {base / name} has no counterpart in {root / (layout[main] or '')}",
                    expected=f"the same classes in every split: {', '.join(class_names)}",
                    fix="Rename or remove that folder, or add the class to the training split",
                )
            files = _image_files(base / name)
            if not files and part in ("", "train"):
                raise DataError(
                    f"Class folder {base / name} holds no image files",
                    expected=f"files ending in {', '.join(IMAGE_EXTENSIONS)}",
                    fix="Add images or remove the empty folder",
                )
            paths += files
            labels += [class_names.index(name)] * len(files)
            parts += [part] * len(files)
    return Source(
        spec, class_names, np.array(labels, np.int64), np.array(parts), paths=np.array(paths)
    )


def _csv_source(spec: str, path: Path) -> Source:
    if not path.is_file():
        raise DataError(f"CSV file {path} does not exist", fix="Check the path after csv:")
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        fields = [c.strip().lower() for c in (reader.fieldnames or [])]
        if "path" not in fields or "label" not in fields:
            raise DataError(
                f"CSV file {path} has columns {fields or 'none'}",
                expected="a header row with columns path,label and optionally split",
                fix="Rename the columns (paths may be relative to the CSV's folder)",
            )
        rows = [{k.strip().lower(): (v or "").strip() for k, v in r.items() if k} for r in reader]
    if not rows:
        raise DataError(f"CSV file {path} has a header but no rows", fix="Add one row per image")
    base = path.parent
    paths, labels, parts, missing = [], [], [], []
    for i, r in enumerate(rows, start=2):
        p = Path(r["path"])
        full = p if p.is_absolute() else base / p
        if not r["path"] or not r["label"]:
            raise DataError(
                f"CSV file {path}, line {i}: empty path or label",
                fix="Fill in both columns on every row",
            )
        split = r.get("split", "")
        if split and split.lower() not in SPLIT_ALIASES:
            raise DataError(
                f"CSV file {path}, line {i}: unknown split '{split}'",
                expected="train, val or test (or an empty cell)",
            )
        if not full.is_file():
            missing.append(f"{full} (line {i})")
        paths.append(str(full))
        labels.append(r["label"])
        parts.append(SPLIT_ALIASES.get(split.lower(), "") if split else "")
    if missing:
        raise DataError(
            f"CSV file {path} lists {len(missing)} file(s) that do not exist: "
            + "; ".join(missing[:10])
            + ("; ..." if len(missing) > 10 else ""),
            fix="Fix the paths (relative paths are read from the CSV's folder) or remove the rows",
        )
    class_names = sorted(set(labels))
    index = {n: i for i, n in enumerate(class_names)}
    return Source(
        spec,
        class_names,
        np.array([index[lab] for lab in labels], np.int64),
        np.array(parts),
        paths=np.array(paths),
    )
