"""``train``: config → data → model → fit → run folder → evaluation, resumable."""

from __future__ import annotations

import csv
import dataclasses
import logging
import math
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cnnlab._io import read_json, write_json
from cnnlab.config import TrainConfig, resolve_config
from cnnlab.errors import ConfigError, RunError
from cnnlab.run_folder import RunFolder, read_history

log = logging.getLogger("cnnlab")

# What may change when a run is resumed; everything else comes from its config.yaml.
RESUME_OVERRIDES = ("epochs", "verbose", "early_stopping")


@dataclass
class TrainResult:
    """What ``train`` returns: the run folder, the final model and its numbers."""

    run_dir: Path
    model: Any
    history: dict[str, list[float]]
    metrics: dict[str, Any]
    config: TrainConfig
    evaluation: Any = None
    report: Path | None = None  # report.html, when it could be written

    @property
    def test_accuracy(self) -> float | None:
        return self.metrics.get("test", {}).get("accuracy")


def get_strategy(name: str = "default"):
    """The ``tf.distribute`` strategy to build and train under.

    ``mirrored`` replicates over every GPU, or over every logical CPU device
    when there is no GPU (which is how the tests run it on one machine).
    """
    import tensorflow as tf

    if name == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        devices = [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]
        return tf.distribute.MirroredStrategy(devices=devices)
    return tf.distribute.get_strategy()


def input_statistics(bundle, max_examples: int = 2048) -> tuple[list[float], list[float]]:
    """Per-channel mean and std (0-255 units) of the training split, from a sample."""
    from cnnlab.data.pipeline import make_dataset

    ex = bundle.examples("train")
    rng = np.random.default_rng(bundle.seed)
    idx = rng.permutation(len(ex["labels"]))[:max_examples]
    if "images" in ex:
        sample = ex["images"][idx]
        if sample.shape[-1] != bundle.channels or tuple(sample.shape[1:3]) != bundle.image_size:
            ds = make_dataset(ex["labels"][idx], num_classes=bundle.num_classes,
                              image_size=bundle.image_size, channels=bundle.channels,
                              images=sample, batch_size=256, cache="none")  # fmt: skip
            sample = np.concatenate([x.numpy() for x, _ in ds])
    else:
        ds = make_dataset(ex["labels"][idx], num_classes=bundle.num_classes,
                          image_size=bundle.image_size, channels=bundle.channels,
                          paths=ex["paths"][idx], batch_size=256, resize=bundle.resize,
                          cache="none")  # fmt: skip
        sample = np.concatenate([x.numpy() for x, _ in ds])
    sample = sample.astype(np.float64)
    return sample.mean(axis=(0, 1, 2)).tolist(), sample.std(axis=(0, 1, 2)).tolist()


AUGMENT_KEYS = ("flip", "rotation", "zoom", "translation", "contrast", "random_crop")


def augment_options(cfg: TrainConfig) -> dict[str, Any]:
    """The explicit augmentation options of a config (None where not given)."""
    return {k: getattr(cfg, k) for k in AUGMENT_KEYS}


def data_from_config(cfg: TrainConfig, *, image_size=None, split=None):
    """``load_data`` with every data key of a training config (train, fine_tune, lr_find)."""
    from cnnlab.data import load_data

    return load_data(
        cfg.data, image_size=image_size or cfg.image_size, channels=cfg.channels,
        batch_size=cfg.batch_size, val_split=cfg.val_split, test_split=cfg.test_split,
        seed=cfg.seed, augment=cfg.augment, augment_options=augment_options(cfg),
        resize=cfg.resize, cache=cfg.cache, class_weight=cfg.class_weight,
        skip_bad_images=cfg.skip_bad_images, data_dir=cfg.data_dir, split=split,
    )  # fmt: skip


def resolve_test_data(cfg: TrainConfig, explicit: set[str]) -> TrainConfig:
    """Settle ``test_data``: the given spec, ``none``, or a ``test/`` folder beside ``train/``.

    With a separate test set no test split is carved from the training data
    (so ``folder:cifar10/train`` trains on all of it that is not validation)
    and that set is what the run scores and reports on. A given
    ``--test-split`` turns the search for a test folder off.
    """
    from cnnlab.data.sources import find_test_folder

    if cfg.test_data is not None and cfg.test_data.strip().lower() in ("none", ""):
        return dataclasses.replace(cfg, test_data=None)
    test_data = cfg.test_data
    if test_data is None:
        if "test_split" in explicit:
            return cfg
        test_data = find_test_folder(cfg.data)
        if test_data is None:
            return cfg
        log.info("Test set: %s, the folder beside the training folder (pass --test-data none "
                 "to carve a test split from the training data instead)", test_data)  # fmt: skip
    if "test_split" in explicit and cfg.test_split > 0:
        raise ConfigError(
            f"Both test_data ({test_data}) and test_split ({cfg.test_split}) are given",
            expected="one test set: a separate one, or a share carved from the training data",
            fix="Drop --test-split, or pass --test-data none",
        )
    return cfg.replace(test_data=test_data, test_split=0.0)


def fit_quietly(model, data, val, epochs: int, initial_epoch: int, callbacks: list,
                verbose) -> None:  # fmt: skip
    """``model.fit`` on cnnlab pipelines (already shuffled, so ``shuffle=False``)."""
    with warnings.catch_warnings():
        # The file pipeline has unknown length (it may drop a file that broke after
        # the scan); Keras warns about that at every epoch's end.
        warnings.filterwarnings("ignore", message="Your input ran out of data")
        model.fit(data, validation_data=val, epochs=epochs, initial_epoch=initial_epoch,
                  callbacks=callbacks, verbose=verbose, shuffle=False)  # fmt: skip


def compile_model(model, cfg: TrainConfig, steps_per_epoch: int, num_classes: int) -> None:
    """Optimizer (the fast recipe's for its ``linear`` schedule), smoothed cross-entropy,
    accuracy and top-k."""
    import keras

    from cnnlab.training import recipes
    from cnnlab.training.optimizers import make_optimizer

    make = recipes.make_optimizer if cfg.schedule == "linear" else make_optimizer
    k = min(cfg.top_k, num_classes)
    model.compile(
        optimizer=make(cfg, steps_per_epoch),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing),
        metrics=[keras.metrics.CategoricalAccuracy(name="accuracy"),
                 keras.metrics.TopKCategoricalAccuracy(k=k, name=f"top{k}")],  # fmt: skip
    )


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of each message, so a
    caller that redirects stderr (a test harness, a notebook) still sees them."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def _setup_logging(verbose: int) -> None:
    if not log.handlers:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("cnnlab: %(message)s"))
        log.addHandler(handler)
    log.setLevel(logging.INFO if verbose else logging.WARNING)


def train(
    config: TrainConfig | dict | str | None = None,
    *,
    resume: str | Path | None = None,
    callbacks: list | None = None,
    **overrides: Any,
) -> TrainResult:
    """Train a model as the config says and write a self-describing run folder.

    Args:
        config: a :class:`TrainConfig`, a dict of its keys, or a YAML file path.
        resume: a run folder to continue from its last finished epoch.
        callbacks: extra Keras callbacks.
        **overrides: any config key, e.g. ``epochs=5, model="resnet20"``.

    Returns:
        A :class:`TrainResult` with the run folder, final model, history and test metrics.

    Example:
        >>> result = cnnlab.train(data="builtin:digits", epochs=10)
        >>> result.test_accuracy
        0.97...
    """
    import keras
    import tensorflow as tf

    from cnnlab.data.splits import Split
    from cnnlab.models.saving import load_model, save_model
    from cnnlab.models import create_model, get_spec
    from cnnlab.training import recipes
    from cnnlab.training.callbacks import EpochStats, RunCheckpoint

    started = time.time()
    run: RunFolder | None = None
    state = None
    if resume is not None:
        run = RunFolder.open(resume)
        bad = [k for k, v in overrides.items() if v is not None and k not in RESUME_OVERRIDES]
        if bad or config is not None:
            raise ConfigError(
                f"--resume continues {run.path} with its own config; cannot also change "
                f"{', '.join(bad) or 'the config'}",
                expected=f"only {', '.join(RESUME_OVERRIDES)} alongside --resume",
                fix="Drop those options, or start a new run",
            )
        cfg = resolve_config(run.config, overrides)
        if run.state.is_file():
            state = read_json(run.state)
        if state and state["epochs_done"] >= cfg.epochs and run.model.is_file():
            raise RunError(
                f"Run {run.path} already finished all {cfg.epochs} epochs",
                fix="Pass --epochs N with a larger N to train it further",
            )
    else:
        cfg = resolve_config(config, overrides)
        explicit = recipes.explicit_keys(config, overrides)
    _setup_logging(cfg.verbose)
    if resume is None:
        cfg = resolve_test_data(cfg, explicit)  # logs the test folder it finds
    keras.utils.set_random_seed(cfg.seed)
    if cfg.deterministic:
        tf.config.experimental.enable_op_determinism()

    spec = get_spec(cfg.model)  # unknown model names fail before any data is read
    saved_split = None
    if run is not None:
        from cnnlab.data.sources import open_source

        saved_split = Split.load(run.split, open_source(cfg.data, cfg.data_dir))
    image_size = cfg.image_size
    if image_size is None and spec.pretrained:
        image_size = spec.default_image_size
    bundle = data_from_config(cfg, image_size=image_size, split=saved_split)
    if resume is None:
        # The recipe fills in the keys the user did not give (auto: fast for
        # 20-40 px images). Pipelines are built lazily, so batch size and
        # augmentation can still change; the split and images are as loaded.
        given = cfg
        cfg, applied = recipes.apply_recipe(given, explicit, bundle.image_size,
                                            len(bundle.examples("train")["labels"]),
                                            bundle.channels)  # fmt: skip
        if cfg.val_split != given.val_split and saved_split is None:
            # The recipe changed the validation share: redraw the split (the test
            # split is drawn first from the seed, so it stays the same), then
            # settle the batch size on the new training count.
            from cnnlab.data.splits import make_split

            bundle.split = make_split(bundle.source, cfg.val_split, cfg.test_split, cfg.seed,
                                      skip=bundle.split.assignment == "skipped")  # fmt: skip
            cfg, applied = recipes.apply_recipe(given, explicit, bundle.image_size,
                                                len(bundle.examples("train")["labels"]),
                                                bundle.channels)  # fmt: skip
        if applied:
            from cnnlab.data.augment import resolve_options

            log.info("Recipe %s: %s", cfg.recipe, ", ".join(f"{k}={v}" for k, v in applied.items()))
            spec = get_spec(cfg.model)
            bundle.batch_size = cfg.batch_size
            bundle.augment = resolve_options(cfg.augment, cfg.data, **augment_options(cfg))
    # The resolved config records what was actually used, so the run repeats exactly.
    cfg.image_size = list(bundle.image_size)
    cfg.channels = bundle.channels
    n_train = len(bundle.examples("train")["labels"])
    steps_per_epoch = math.ceil(n_train / cfg.batch_size)

    log.info("Data: %s, %d classes, image size %s x %d channels, split %s",
             cfg.data, bundle.num_classes, "x".join(map(str, bundle.image_size)),
             bundle.channels, bundle.split.counts())  # fmt: skip

    strategy = get_strategy(cfg.strategy)
    epochs_done = 0
    last = run.checkpoints / "last.keras" if run is not None else None
    with strategy.scope():
        if state and last.is_file():
            model = load_model(last)
            epochs_done = int(state["epochs_done"])
            run.truncate_history(epochs_done)
            log.info("Resuming %s after epoch %d of %d", run.path, epochs_done, cfg.epochs)
        else:
            options = dict(cfg.model_kwargs)
            accepted = spec.options()
            if "mean" in accepted and "mean" not in options and "std" not in options:
                options["mean"], options["std"] = input_statistics(bundle)
            if cfg.weights is not None and "weights" in accepted:
                options["weights"] = cfg.weights
            model = create_model(cfg.model, bundle.num_classes, bundle.image_size,
                                 bundle.channels, **options)  # fmt: skip
            recipes.prepare_model(model, bundle)  # e.g. fit airbench's whitening layer
            compile_model(model, cfg, steps_per_epoch, bundle.num_classes)
    if run is None:
        # Created only now that data and model are known to work: a bad option or
        # missing weights file leaves no empty run folder behind.
        run = RunFolder.create(cfg.output, spec.name, bundle.image_size, cfg.name, cfg.overwrite)
        run.write_setup(cfg.to_dict(), bundle, cfg.seed)
        _check_data(bundle, run)
    log.info("Run folder: %s", run.path)
    log.info("Model: %s, %s parameters, strategy %s (%d replica(s))", spec.name,
             f"{model.count_params():,}", type(strategy).__name__,
             strategy.num_replicas_in_sync)  # fmt: skip

    has_val = bundle.val is not None
    monitor = cfg.monitor if has_val else cfg.monitor.removeprefix("val_")
    checkpoint = RunCheckpoint(run.checkpoints, monitor, state)
    # Recipe callbacks (lookahead) change the weights, so they run before the checkpoint.
    cbs = recipes.callbacks(cfg, steps_per_epoch) + [
        EpochStats(n_train),
        keras.callbacks.CSVLogger(str(run.history), append=True),
        checkpoint,
        keras.callbacks.TerminateOnNaN(),
    ]
    if cfg.early_stopping:
        cbs.append(keras.callbacks.EarlyStopping(
            monitor=monitor, patience=cfg.early_stopping,
            mode="min" if "loss" in monitor else "max"))  # fmt: skip
    cbs += callbacks or []
    verbose = cfg.verbose
    if verbose == 1 and not sys.stdout.isatty():
        verbose = 2  # one line per epoch in logs instead of a redrawn bar
    t0 = time.time()
    try:
        fit_quietly(model, bundle.train, bundle.val, cfg.epochs, epochs_done, cbs, verbose)
    except KeyboardInterrupt:
        log.warning("Interrupted. Finished epochs are saved; continue with: "
                    "cnnlab train --resume %s", run.path)  # fmt: skip
        raise
    train_seconds = time.time() - t0

    # The final model is the best validation epoch (or the last one without validation).
    # The fast recipe's schedule and lookahead are built to end at the last
    # epoch (measured: CIFAR-10 epoch 10 0.823 vs its best-train-accuracy epoch 8 0.798).
    best = run.checkpoints / "best.keras"
    final = load_model(best) if best.is_file() and cfg.recipe != "fast" else model
    save_model(final, run.model)

    metrics: dict[str, Any] = {
        "best_epoch": checkpoint.state.get("best_epoch"),
        "monitor": monitor,
        "best_value": checkpoint.state.get("best_value"),
        "epochs_done": checkpoint.state.get("epochs_done"),
        "train_seconds_this_session": round(train_seconds, 2),
        "parameters": int(final.count_params()),
        "strategy": type(strategy).__name__,
        "replicas": int(strategy.num_replicas_in_sync),
    }
    evaluation, test_bundle = evaluate_test_split(final, bundle, run, cfg, metrics)
    metrics["total_seconds_this_session"] = round(time.time() - started, 2)
    write_json(run.metrics, metrics)
    from cnnlab.evaluation.report import try_write_report  # a failed report only warns

    report = None
    if evaluation is None:
        log.info("No test split, so no report yet: `cnnlab evaluate %s --data folder:TEST` "
                 "scores a test set and writes report.html", run.path)  # fmt: skip
    else:
        report = try_write_report(run.path, model=final, bundle=test_bundle, evaluation=evaluation)
    log.info("Done in %.1f s. Run folder: %s", time.time() - started, run.path)
    return TrainResult(run.path, final, read_history(run.history), metrics, cfg, evaluation,
                       report)  # fmt: skip


def evaluate_test_split(model, bundle, run: RunFolder, cfg: TrainConfig, metrics: dict):
    """Score the test set into ``<run>/evaluation-test`` and add its headline numbers to
    ``metrics["test"]``.

    The test set is ``cfg.test_data`` when set, else the held-out test split.
    Returns the EvaluationResult and the DataBundle it scored (None, None without
    a test set).
    """
    from cnnlab.evaluation.evaluate import load_test_data, save_evaluation, score

    label_map = None
    if cfg.test_data:
        test_bundle, label_map = load_test_data(
            cfg.test_data, bundle.class_names, image_size=bundle.image_size,
            channels=bundle.channels, resize=bundle.resize, batch_size=bundle.batch_size,
            skip_bad_images=cfg.skip_bad_images, data_dir=cfg.data_dir)  # fmt: skip
    elif bundle.test is not None:
        test_bundle = bundle
    else:
        return None, None
    evaluation = score(model, test_bundle, "test", bundle.class_names, cfg.top_k, label_map)
    save_evaluation(evaluation, run.path / "evaluation-test")
    m = evaluation.metrics
    k = m["top_k"]
    metrics["test"] = {"loss": m["loss"], "accuracy": m["accuracy"], f"top{k}": m[f"top{k}"],
                       "macro_f1": m["macro avg"]["f1-score"],
                       "weighted_f1": m["weighted avg"]["f1-score"],
                       "num_examples": m["num_examples"],
                       "data": cfg.test_data or f"{cfg.data} (held-out split)"}  # fmt: skip
    log.info("Test: accuracy %.4f, top%d %.4f, macro F1 %.4f on %d images of %s",
             m["accuracy"], k, m[f"top{k}"], m["macro avg"]["f1-score"], m["num_examples"],
             metrics["test"]["data"])  # fmt: skip
    return evaluation, test_bundle


def _check_data(bundle, run: RunFolder) -> None:
    """The dataset check (duplicates, leakage across the drawn split, odd files), logged and
    written to the run folder. Advisory: a failure here never stops training."""
    from cnnlab.data.inspect import check_before_training

    try:
        check_before_training(bundle, run.path)
    except Exception as e:  # noqa: BLE001
        log.warning("The dataset check could not run (%s: %s); training goes on",
                    type(e).__name__, e)  # fmt: skip
