"""CIFAR-10 time to accuracy: cnnlab's fast recipe against the seed-style Keras baseline.

Both contenders train in the same run on the same machine, on the JPEG copy of
CIFAR-10 (all 50,000 training images; test accuracy on the 10,000 test images
after every epoch, evaluation time not counted):

- **fast**: ``cnnlab.train(recipe="fast")``, i.e. the airbench network
  (``--width``) with its recipe, for ``--epochs`` epochs; test accuracy with the
  model's test-time augmentation, as ``cnnlab evaluate`` reports it.
- **baseline**: the classic Keras ``cifar10_cnn.py`` network (conv 32-32, pool,
  conv 64-64, pool, dense 512, dropout), Adam 1e-3, batch 64, random flips and
  10% shifts, for ``--baseline-epochs`` epochs. It is fed by cnnlab's cached
  tf.data pipeline (not ImageDataGenerator), so the comparison isolates the
  recipe; ``bench/input_pipeline.py`` measures the loaders.

- **sprint** runs (``--sprint WIDTH:EPOCHS[:BATCH]``, default ``0.25:1:128``, ``0.25:2:256`` and
  ``0.375:2:256``, the quickest to 70, 75 and 80 % in trials): the same fast
  recipe with a short budget. The fast recipe's schedule and weight averaging
  are built to end at its last epoch, so the accuracy a short budget reaches is
  what a short run reports, not the middle of a long one. "Time to X %" for
  cnnlab is the shortest training time of any of its runs (main or sprint) to
  reach X; the table names the run.

The baseline stops early once its training time passes ``--budget-minutes``;
the fast recipe always runs its ``--epochs``.
Times are training wall time (the first epoch includes decoding and caching
the JPEGs); the one-off file scan and set-up are reported separately.
Each run trains in a child process of its own, so the peak resident memory
reported beside it (``getrusage``'s ``ru_maxrss``, what ``/usr/bin/time -v``
prints) is that run's alone: set-up, training and the test scoring.

Usage:
    python bench/cifar10_time_to_accuracy.py                       # full: the recipe's defaults, baseline 30 epochs
    python bench/cifar10_time_to_accuracy.py --epochs 4 --budget-minutes 10   # shorter: ~1/3 of the time
    python bench/cifar10_time_to_accuracy.py --epochs 4 --baseline-epochs 3 --width 0.25 --sprint none  # smoke test
    python bench/cifar10_time_to_accuracy.py --data /tmp/data/cifar10 --only fast

``--data`` takes the unpacked folder (with train/ and test/) or the zip;
default: ../shared/data/cifar10-jpg.zip, unpacked once to ~/.cache/cnnlab.
Results are appended to bench/results/cifar10_time_to_accuracy.jsonl.
The CPU may be shared with other work: compare numbers from one run only.
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

THRESHOLDS = (0.70, 0.75, 0.80, 0.90, 0.93, 0.94)
DEFAULT_SPRINTS = ("0.25:1:128", "0.25:2:256", "0.375:2:256")


def make_test_callback(test_images, labels, budget_s: float, curve: list, name: str):
    """A callback recording (epoch, training seconds, test accuracy) and enforcing the budget."""
    import numpy as np
    import tensorflow as tf

    from cnnlab.data.pipeline import apply_options

    # Through a tf.data pipeline with cnnlab's options: Keras' own pipeline for
    # arrays autotunes, and deleting its iterator stalled each scoring by ~18 s.
    test_ds = apply_options(tf.data.Dataset.from_tensor_slices(test_images).batch(500))

    class TestCurve(_common.epoch_timer(budget_s)):
        def after_epoch(self, epoch, logs):
            t = time.perf_counter()
            probs = self.model.predict(test_ds, verbose=0)
            acc = float(np.mean(np.argmax(probs, 1) == labels))
            curve.append(
                {
                    "contender": name,
                    "epoch": epoch + 1,
                    "train_seconds": round(self.train_seconds, 1),
                    "test_accuracy": acc,
                    "eval_seconds": round(time.perf_counter() - t, 1),
                }
            )
            print(
                f"  {name} epoch {epoch + 1}: {self.train_seconds:7.1f} s  test {acc:.4f}",
                flush=True,
            )

    return TestCurve()


def run_fast(
    root: Path,
    args,
    test,
    curve: list,
    name: str,
    width: float | None,
    epochs: int | None,
    batch_size: int | None = None,
) -> dict:
    """One cnnlab fast-recipe run; ``None`` settings keep the recipe's defaults."""
    import cnnlab

    t0 = time.perf_counter()
    images, labels = test
    cb = make_test_callback(images, labels, float("inf"), curve, name)
    out = args.runs or tempfile.mkdtemp(prefix="cnnlab-bench-")
    options = {"epochs": epochs} if epochs else {}
    if width:
        options["model_kwargs"] = {"width": width}
    if batch_size:
        options["batch_size"] = batch_size
    result = cnnlab.train(
        data=f"folder:{root / 'train'}",
        recipe="fast",
        val_split=0.0,
        test_split=0.0,
        runs_dir=out,
        verbose=0,
        seed=args.seed,
        callbacks=[cb],
        **options,
    )
    total = time.perf_counter() - t0
    return {
        "run_dir": str(result.run_dir),
        "setup_seconds": round(
            total
            - cb.train_seconds
            - sum(r["eval_seconds"] for r in curve if r["contender"] == name),
            1,
        ),
        "config": result.config.to_dict(),
    }


def parse_sprints(values: list[str] | None) -> list[tuple[float, int, int | None]]:
    """``["0.25:3", "0.5:2:512"]`` → ``[(0.25, 3, None), (0.5, 2, 512)]``; ``["none"]`` → ``[]``."""
    out = []
    for v in values if values is not None else DEFAULT_SPRINTS:
        if v == "none":
            continue
        try:
            parts = v.split(":")
            if len(parts) not in (2, 3):
                raise ValueError
            out.append((float(parts[0]), int(parts[1]), int(parts[2]) if len(parts) == 3 else None))
        except ValueError:
            raise SystemExit(
                f"--sprint {v!r}: expected WIDTH:EPOCHS[:BATCH], e.g. 0.25:3, or none"
            ) from None
    return out


def run_baseline(root: Path, args, test, curve: list) -> dict:
    import keras
    from throughput import keras_example_cnn

    from cnnlab.data import load_data

    t0 = time.perf_counter()
    keras.utils.set_random_seed(args.seed)
    # The seed's augmentation: random horizontal flips and 10% shifts.
    bundle = load_data(
        f"folder:{root / 'train'}",
        val_split=0.0,
        test_split=0.0,
        batch_size=64,
        augment="light",
        seed=args.seed,
    )
    model = keras_example_cnn(bundle.num_classes)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3), loss="categorical_crossentropy", metrics=["accuracy"]
    )
    setup = time.perf_counter() - t0
    images, labels = test
    cb = make_test_callback(images, labels, args.budget_minutes * 60, curve, "baseline")
    model.fit(bundle.train, epochs=args.baseline_epochs, callbacks=[cb], verbose=0)
    return {"setup_seconds": round(setup, 1)}


def time_to(curve: list, prefix: str, threshold: float) -> tuple[float | None, str | None]:
    """Shortest training time at which any contender named ``prefix…`` reached ``threshold``."""
    best: tuple[float | None, str | None] = (None, None)
    for r in curve:
        if r["contender"].startswith(prefix) and r["test_accuracy"] >= threshold:
            if best[0] is None or r["train_seconds"] < best[0]:
                best = (r["train_seconds"], r["contender"])
    return best


def contenders(args) -> list[str]:
    """The runs of this bench call, in order: ``fast``, ``sprint:W:E[:B]``…, ``baseline``."""
    out = []
    if args.only in (None, "fast"):
        out.append("fast")
        out += [
            f"sprint:{w:g}:{e}" + (f":{b}" if b else "") for w, e, b in parse_sprints(args.sprint)
        ]
    if args.only in (None, "baseline"):
        out.append("baseline")
    return out


def run_contender(spec: str, root: Path, args) -> dict:
    """Train one contender in this process; its curve, set-up info and peak RSS."""
    import resource

    import numpy as np

    from cnnlab.data import load_data

    tb = load_data(
        f"folder:{root / 'test'}", val_split=0.0, test_split=0.0, batch_size=500, augment="none"
    )
    # Decoded once into memory, so each scoring costs only the forward passes.
    x_test = np.concatenate([x.numpy() for x, _ in tb.dataset("train", training=False)])
    test = (x_test, np.asarray(tb.examples("train")["labels"]))
    curve: list[dict] = []
    if spec == "fast":
        from cnnlab.training.recipes import FAST

        width, epochs = args.width or FAST["width"], args.epochs or FAST["epochs"]
        print(f"fast recipe: airbench width {width}, {epochs} epochs", flush=True)
        name, info = "fast", run_fast(root, args, test, curve, "fast", args.width, args.epochs)
    elif spec.startswith("sprint:"):
        ((w, e, b),) = parse_sprints([spec.removeprefix("sprint:")])
        name = f"fast-sprint w{w:g} {e}ep" + (f" b{b}" if b else "")
        print(f"{name}: airbench width {w}, {e} epochs, batch {b or 'default'}", flush=True)
        info = run_fast(root, args, test, curve, name, w, e, b)
    else:
        name = "baseline"
        print(
            f"baseline: Keras example CNN, Adam 1e-3, batch 64, {args.baseline_epochs} epochs",
            flush=True,
        )
        info = run_baseline(root, args, test, curve)
    # The whole process's peak, as `/usr/bin/time -v` reports it (KiB on Linux).
    info["peak_rss_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
    return {"name": name, "curve": curve, "info": info}


def run_in_subprocess(spec: str, argv: list[str]) -> dict:
    """Run one contender in a child process of its own, so its peak RSS is its own."""
    import json
    import subprocess

    with tempfile.TemporaryDirectory(prefix="cnnlab-bench-") as tmp:
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, __file__, *argv, "--contender", spec, "--result-file", str(out)]
        done = subprocess.run(cmd, check=False)
        if done.returncode != 0 or not out.exists():
            raise SystemExit(
                f"contender {spec} failed (exit {done.returncode}); its output is above"
            )
        return json.loads(out.read_text())


def summarise(curve: list, info: dict) -> list[dict]:
    """Print the per-epoch curve, time to each threshold, and each run's final figures."""
    print("\nTest accuracy after each epoch (training wall time, s):")
    print(_common.table(curve, ["contender", "epoch", "train_seconds", "test_accuracy"]))
    summary = []
    for th in THRESHOLDS:
        (f, run), (b, _) = time_to(curve, "fast", th), time_to(curve, "baseline", th)
        summary.append(
            {
                "accuracy": f"{th:.0%}",
                "cnnlab s": f,
                "cnnlab run": run,
                "baseline s": b,
                "baseline / cnnlab": (b / f) if f and b else None,
            }
        )
    print("\nTime to accuracy (cnnlab: the fastest of its runs to get there):")
    print(_common.table(summary))
    print("\nEach run (peak RSS: the whole process, set-up, training and scoring):")
    for name in dict.fromkeys(r["contender"] for r in curve):
        rows = [r for r in curve if r["contender"] == name]
        best = max(r["test_accuracy"] for r in rows)
        print(
            f"{name}: final {rows[-1]['test_accuracy']:.4f} after {rows[-1]['epoch']} epochs, "
            f"{rows[-1]['train_seconds']:.0f} s; best {best:.4f}; "
            f"peak RSS {info[name]['peak_rss_gb']:.2f} GB"
        )
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--data", help="CIFAR-10 folder (train/, test/) or the zip [../shared/data/cifar10-jpg.zip]"
    )
    ap.add_argument("--cache-dir", help="where the zip is unpacked [~/.cache/cnnlab/cifar10-jpg]")
    ap.add_argument("--epochs", type=int, help="fast recipe epochs [the recipe's default]")
    ap.add_argument("--width", type=float, help="airbench width multiplier [the recipe's default]")
    ap.add_argument(
        "--sprint",
        action="append",
        metavar="WIDTH:EPOCHS[:BATCH]",
        help=f"extra short fast runs, repeatable; 'none' for none [{' '.join(DEFAULT_SPRINTS)}]",
    )
    ap.add_argument("--baseline-epochs", type=int, default=30, help="baseline epochs [30]")
    ap.add_argument(
        "--budget-minutes",
        type=float,
        default=60.0,
        help="stop the baseline after the epoch that passes this much training time [60]",
    )
    ap.add_argument("--only", choices=["fast", "baseline"], help="run one contender")
    ap.add_argument("--runs", help="output folder for the fast run's run folder [a temp dir]")
    ap.add_argument("--seed", type=int, default=42)
    # Internal: one contender in this process, its result written as JSON (see run_in_subprocess).
    ap.add_argument("--contender", help=argparse.SUPPRESS)
    ap.add_argument("--result-file", help=argparse.SUPPRESS)
    argv = sys.argv[1:] if argv is None else argv
    args = ap.parse_args(argv)

    root = _common.cifar10_folder(args.data, args.cache_dir)
    if args.contender:
        import json

        result = run_contender(args.contender, root, args)
        Path(args.result_file).write_text(json.dumps(result))
        return 0
    print(f"CIFAR-10 at {root}", flush=True)
    curve: list[dict] = []
    info: dict[str, dict] = {}
    for spec in contenders(args):
        result = run_in_subprocess(spec, argv)
        curve += result["curve"]
        info[result["name"]] = result["info"]
    summary = summarise(curve, info)
    if "fast" in info:
        print(f"fast run folder: {info['fast']['run_dir']}")
    path = _common.append_result(
        "cifar10_time_to_accuracy",
        {
            "args": vars(args),
            "data": str(root),
            "curve": curve,
            "time_to": summary,
            "info": {
                k: {kk: vv for kk, vv in v.items() if kk != "config"} for k, v in info.items()
            },
            "fast_config": info.get("fast", {}).get("config"),
        },
    )
    print(f"\nappended to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
