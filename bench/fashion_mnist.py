"""Fashion-MNIST with cnnlab's default for small grayscale images: test accuracy and wall time.

``cnnlab.train(data="builtin:fashion_mnist")`` with nothing else set picks the
``auto`` recipe, which is ``fast`` for 28×28 images: the airbench network on one
channel (whitening of 2×2 grayscale patches), Nesterov SGD with warm-up and
decay, lookahead, alternating flips and 2-pixel translations, mirror + shift
test-time augmentation. It trains on all 60,000 training images
(``val_split=0``) and reports accuracy on the official 10,000 test images.

The data come from Debian's ``dataset-fashion-mnist`` package
(``apt-get install dataset-fashion-mnist``: /usr/share/datasets/fashion-mnist)
or a ``--data-dir`` holding the four original .gz files.

Usage:
    python bench/fashion_mnist.py                          # the default recipe (10 epochs)
    python bench/fashion_mnist.py --epochs 4 --width 0.25  # a shorter run
    python bench/fashion_mnist.py --epochs 16 --width 1    # more time, more accuracy
    python bench/fashion_mnist.py --precision float32      # without bfloat16 arithmetic

Results are appended to bench/results/fashion_mnist.jsonl. The CPU may be
shared: wall times depend on the load (recorded with the result).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common

_common.quiet_tensorflow()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--epochs", type=int, help="epochs [the recipe's: 10]")
    ap.add_argument("--width", type=float, help="airbench width multiplier [the recipe's: 0.5]")
    ap.add_argument("--precision", help="float32, mixed_bfloat16 or auto [the recipe's: auto]")
    ap.add_argument("--data-dir", help="folder with the Fashion-MNIST .gz files [Debian's copy]")
    ap.add_argument("--runs", help="parent folder of the run folder [a temp dir]")
    ap.add_argument("--seed", type=int, default=42)
    args = ap.parse_args(argv)

    import cnnlab

    overrides = {"epochs": args.epochs, "data_dir": args.data_dir, "precision": args.precision}
    if args.width is not None:
        overrides["model_kwargs"] = {"width": args.width}
    t0 = time.perf_counter()
    result = cnnlab.train(
        data="builtin:fashion_mnist",
        val_split=0.0,
        seed=args.seed,
        verbose=0,
        runs_dir=args.runs or tempfile.mkdtemp(prefix="cnnlab-fmnist-"),
        **overrides,
    )
    wall = time.perf_counter() - t0
    history = result.history
    row = {
        "recipe": result.config.recipe,
        "model": result.config.model,
        "width": result.config.model_kwargs.get("width"),
        "epochs": result.config.epochs,
        "precision": result.config.precision,
        "test accuracy": result.test_accuracy,
        "train s": round(sum(history.get("epoch_seconds", [])), 1),
        "total wall s": round(wall, 1),
        "train img/s (last epoch)": (history.get("images_per_second") or [None])[-1],
    }
    print(_common.table([row]))
    print(f"run folder: {result.run_dir}")
    path = _common.append_result(
        "fashion_mnist",
        {"args": vars(args), "result": row, "config": result.config.to_dict(), "history": history},
    )
    print(f"\nappended to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
