"""Write the CIFAR-10 JPEG subset the seed study (sweeps/cifar10-small.yaml) trains on.

    python bench/cifar10_subset.py                     # ../shared/data/cifar10-jpg.zip
    python bench/cifar10_subset.py --zip PATH --out /tmp/data/cifar10-small \
        --train-per-class 500 --test-per-class 200

Takes the first N files per class (in sorted name order, so the subset is the same on
every machine) of ``train/`` and ``test/`` straight from the zip into
``OUT/train/<class>/`` and ``OUT/test/<class>/``. ``cnnlab train --data
folder:OUT/train`` then scores ``OUT/test``, the folder beside it.
"""

from __future__ import annotations

import argparse
import zipfile
from collections import defaultdict
from pathlib import Path

DEFAULT_ZIP = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "cifar10-jpg.zip"


def write_subset(zip_path: Path, out: Path, per_class: dict[str, int]) -> dict[str, int]:
    written: dict[str, int] = defaultdict(int)
    with zipfile.ZipFile(zip_path) as zf:
        names = sorted(n for n in zf.namelist() if n.lower().endswith(".jpg"))
        by_class: dict[tuple[str, str], list[str]] = defaultdict(list)
        for name in names:
            split, cls, _ = name.split("/", 2)
            by_class[(split, cls)].append(name)
        for (split, cls), files in sorted(by_class.items()):
            if split not in per_class:
                continue
            folder = out / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            for name in files[: per_class[split]]:
                (folder / Path(name).name).write_bytes(zf.read(name))
                written[split] += 1
    return dict(written)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zip", type=Path, default=DEFAULT_ZIP)
    ap.add_argument("--out", type=Path, default=Path("/tmp/data/cifar10-small"))
    ap.add_argument("--train-per-class", type=int, default=500)
    ap.add_argument("--test-per-class", type=int, default=200)
    args = ap.parse_args()
    counts = write_subset(
        args.zip, args.out, {"train": args.train_per_class, "test": args.test_per_class}
    )
    print(f"{args.out}: {counts}")


if __name__ == "__main__":
    main()
