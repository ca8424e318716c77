"""Input pipeline images/s: decode + augment a folder of JPEGs, three loaders, same run.

Contenders, all reading the same CIFAR-10 JPEGs (``--limit`` of them, a class-
balanced subset linked into a temporary folder), batch 64, shuffled, with the
same augmentation: random horizontal flip and random shifts of up to 10%,
delivering float arrays:

- **cnnlab**: ``cnnlab.data.pipeline.make_dataset`` (files decoded 32 per call
  in parallel, in-memory cache of decoded images, batched augmentation: flip
  and whole-pixel shifts with reflected borders in one gather). Epoch 1
  decodes; epoch 2 reads the cache (what every later training epoch costs).
- **cnnlab tfrecord**: the same images packed by ``cnnlab data pack`` (one
  split, 8 shards, JPEG bytes as they were; packing time reported) and read by
  the same ``make_dataset`` (``records=``: shards interleaved, decoded 32 per
  call, cached). Two streaming rows (``cache="none"``, as for data larger than
  memory: every epoch decodes again) compare TFRecords with the folder.
- **ImageDataGenerator**: ``tf_keras.preprocessing.image.ImageDataGenerator(
  horizontal_flip=True, width_shift_range=0.1, height_shift_range=0.1,
  fill_mode="reflect").flow_from_directory`` (the seed's loader; needs the
  ``tf-keras`` package; shifts resampled bilinearly).
- **torchvision**: ``ImageFolder`` + ``DataLoader(num_workers=2)`` with
  ``RandomHorizontalFlip`` and ``RandomAffine(translate=(0.1, 0.1))`` (nearest-
  pixel shifts; reflect padding is not offered there, zero fill). Runs in the Python given by
  ``--torch-python`` (default /work/benchvenv-torch/bin/python, a separate
  venv so torch's CUDA-sized wheels stay out of the main one); skipped with a
  message when torch is missing.

Every file is read once before the first contender starts, so all three find
the JPEGs in the operating system's page cache (otherwise whichever loader runs
first also pays for the disk, as cnnlab did in this script's first version).

Usage:
    python bench/input_pipeline.py                      # 10,000 images
    python bench/input_pipeline.py --limit 50000 --data /tmp/data/cifar10
    python bench/input_pipeline.py --only cnnlab,torchvision
    python bench/input_pipeline.py --only cnnlab,tfrecord --limit 45000

Results are appended to bench/results/input_pipeline.jsonl. The CPU may be
shared: compare rows of one run only.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common

_common.quiet_tensorflow()
BATCH = 64
TORCH_PYTHON = "/work/benchvenv-torch/bin/python"


def subset_folder(train: Path, limit: int, dest: Path) -> list[tuple[str, int]]:
    """Link ``limit`` images (equal per class, sorted) into ``dest/<class>/``; return (path, label)."""
    classes = sorted(p.name for p in train.iterdir() if p.is_dir())
    per = max(1, limit // len(classes))
    items = []
    for ci, c in enumerate(classes):
        (dest / c).mkdir(parents=True, exist_ok=True)
        for f in sorted((train / c).iterdir())[:per]:
            link = dest / c / f.name
            if not link.exists():
                os.symlink(f, link)
            items.append((str(link), ci))
    return items


def warm_page_cache(items) -> float:
    """Read every file once, so no contender pays for the first disk read; returns seconds."""
    t0 = time.perf_counter()
    for path, _ in items:
        with open(path, "rb") as f:
            f.read()
    return time.perf_counter() - t0


def bench_cnnlab(items, epochs: int = 2, records=None, cache: str = "auto") -> dict:
    import numpy as np

    from cnnlab.data.augment import Augmenter, AugmentOptions
    from cnnlab.data.pipeline import make_dataset

    paths = None if records is not None else np.array([p for p, _ in items])
    labels = np.array([y for _, y in items])
    aug = Augmenter(AugmentOptions(flip="horizontal", translation=0.1), (32, 32), 3, seed=0)
    ds = make_dataset(
        labels,
        num_classes=10,
        image_size=(32, 32),
        channels=3,
        paths=paths,
        records=records,
        batch_size=BATCH,
        training=True,
        augmenter=aug,
        cache=cache,
    )
    out = {}
    for e in range(epochs):
        n, t0 = 0, time.perf_counter()
        for x, _ in ds:
            n += len(x.numpy())
        out[f"epoch{e + 1}"] = n / (time.perf_counter() - t0)
    return out


def pack_subset(folder: Path) -> tuple[object, float]:
    """Pack the subset folder (one split, 8 shards); returns its reader and the seconds taken."""
    from cnnlab.data.records import read_index
    from cnnlab.data.tfrecord import pack

    dest = Path(tempfile.mkdtemp(prefix="cnnlab-pipe-tfr-")) / "packed"
    t0 = time.perf_counter()
    pack(f"folder:{folder}", dest, shards=8, val_split=0.0, test_split=0.0, quiet=True)
    return read_index(dest).split("train"), time.perf_counter() - t0


def bench_idg(folder: Path) -> dict:
    try:
        from tf_keras.preprocessing.image import ImageDataGenerator
    except ImportError:
        return {"skipped": "tf-keras is not installed (pip install 'tf-keras==2.21.*')"}
    gen = ImageDataGenerator(
        horizontal_flip=True, width_shift_range=0.1, height_shift_range=0.1, fill_mode="reflect"
    )
    flow = gen.flow_from_directory(
        str(folder),
        target_size=(32, 32),
        batch_size=BATCH,
        class_mode="categorical",
        shuffle=True,
        seed=0,
    )
    n, t0 = 0, time.perf_counter()
    for _ in range(len(flow)):
        x, _y = next(flow)
        n += len(x)
    return {"epoch1": n / (time.perf_counter() - t0)}


TORCH_WORKER = r"""
import json, sys, time
import torch
from torchvision import datasets, transforms
torch.manual_seed(0)
tf = transforms.Compose([transforms.RandomHorizontalFlip(),
                         transforms.RandomAffine(0, translate=(0.1, 0.1)),
                         transforms.ToTensor()])
ds = datasets.ImageFolder(sys.argv[1], transform=tf)
loader = torch.utils.data.DataLoader(ds, batch_size=64, shuffle=True, num_workers=2)
out = {"torch": torch.__version__}
for epoch in (1, 2):
    n, t0 = 0, time.perf_counter()
    for x, y in loader:
        n += len(x.numpy())
    out[f"epoch{epoch}"] = n / (time.perf_counter() - t0)
print(json.dumps(out))
"""


def bench_torchvision(folder: Path, python: str) -> dict:
    if not Path(python).is_file():
        return {
            "skipped": f"{python} not found: create it with `python3 -m venv /work/benchvenv-torch && "
            "/work/benchvenv-torch/bin/pip install torch==2.14.1 torchvision==0.29.1`"
        }
    r = subprocess.run(
        [python, "-c", TORCH_WORKER, str(folder)], capture_output=True, text=True, check=False
    )
    if r.returncode != 0:
        return {"skipped": f"torchvision failed: {r.stderr.strip().splitlines()[-1:]}"}
    return json.loads(r.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data", help="CIFAR-10 folder or zip [../shared/data/cifar10-jpg.zip]")
    ap.add_argument("--limit", type=int, default=10_000, help="images to read [10000]")
    ap.add_argument(
        "--only",
        default="cnnlab,tfrecord,idg,torchvision",
        help="contenders [cnnlab,tfrecord,idg,torchvision]",
    )
    ap.add_argument(
        "--torch-python", default=TORCH_PYTHON, help=f"Python with torchvision [{TORCH_PYTHON}]"
    )
    args = ap.parse_args(argv)
    only = set(args.only.split(","))

    import tensorflow as tf  # noqa: F401 - versions in the record

    root = _common.cifar10_folder(args.data)
    tmp = Path(tempfile.mkdtemp(prefix="cnnlab-pipe-"))
    items = subset_folder(root / "train", args.limit, tmp)
    print(f"{len(items)} JPEGs from {root / 'train'}", flush=True)
    print(f"page cache warmed: every file read once in {warm_page_cache(items):.1f} s", flush=True)
    results = {}
    if "cnnlab" in only:
        results["cnnlab"] = bench_cnnlab(items)
        print("cnnlab", results["cnnlab"], flush=True)
    if "tfrecord" in only:
        records, seconds = pack_subset(tmp)
        print(f"packed {records.count} images into {len(records.files)} shards in {seconds:.1f} s")
        results["cnnlab tfrecord"] = {**bench_cnnlab(items, records=records), "pack_s": seconds}
        print("cnnlab tfrecord", results["cnnlab tfrecord"], flush=True)
        results["cnnlab folder, streaming"] = bench_cnnlab(items, cache="none")
        print("cnnlab folder, streaming", results["cnnlab folder, streaming"], flush=True)
        results["cnnlab tfrecord, streaming"] = bench_cnnlab(items, records=records, cache="none")
        print("cnnlab tfrecord, streaming", results["cnnlab tfrecord, streaming"], flush=True)
    if "idg" in only:
        results["ImageDataGenerator"] = bench_idg(tmp)
        print("ImageDataGenerator", results["ImageDataGenerator"], flush=True)
    if "torchvision" in only:
        results["torchvision"] = bench_torchvision(tmp, args.torch_python)
        print("torchvision", results["torchvision"], flush=True)
    rows = []
    ref = results.get("cnnlab", {})
    for name, r in results.items():
        rows.append(
            {
                "loader": name,
                "epoch 1 img/s": r.get("epoch1"),
                "epoch 2 img/s": r.get("epoch2"),
                "cnnlab epoch 1 ×": (ref.get("epoch1") / r["epoch1"])
                if r.get("epoch1") and ref
                else None,
                "cnnlab epoch 2 ×": (ref.get("epoch2") / r.get("epoch2", r.get("epoch1")))
                if r.get("epoch1") and ref
                else None,
                "note": r.get("skipped", ""),
            }
        )
    print()
    print(_common.table(rows))
    print(
        "(cnnlab N× = how many times faster cnnlab's pipeline is than that loader in that epoch;"
        " ImageDataGenerator has no cache, so its epoch 2 equals epoch 1)"
    )
    path = _common.append_result(
        "input_pipeline",
        {"args": vars(args), "images": len(items), "results": results, "rows": rows},
    )
    print(f"\nappended to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
