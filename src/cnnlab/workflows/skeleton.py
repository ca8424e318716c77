"""The one run skeleton ``train`` and ``fine_tune`` share.

Every run goes through the same steps, in this order:

1. :func:`setup_logging`, :func:`seed_everything`, :func:`resolve_test_data`;
2. :func:`data_from_config` (every data key of the config), :func:`log_data` (the
   "Data:" line) and :func:`record_geometry` (what the config records);
3. the run folder, then fitting with the callbacks of :func:`run_callbacks` (the one
   place the callback list is built);
4. :func:`finish_run`: save the final model, score the held-out data
   (:func:`score_held_out`: the test set, or else the validation split, labelled as
   such), write ``metrics.json`` and the report (or log how to get one).
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cnnlab._io import write_json
from cnnlab.config import TrainConfig, monitor_mode
from cnnlab.errors import ConfigError
from cnnlab.run_folder import RunFolder

log = logging.getLogger("cnnlab")

AUGMENT_KEYS = ("flip", "rotation", "zoom", "translation", "contrast", "random_crop")


# ---------------------------------------------------------------- set-up


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of each message, so a
    caller that redirects stderr (a test harness, a notebook) still sees them."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def setup_logging(verbose: int) -> None:
    """``cnnlab: ...`` lines on stderr: INFO when ``verbose``, else warnings only."""
    if not log.handlers:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("cnnlab: %(message)s"))
        log.addHandler(handler)
    log.setLevel(logging.INFO if verbose else logging.WARNING)


def seed_everything(cfg: TrainConfig) -> None:
    """Seed Python, NumPy and TensorFlow; deterministic ops when the config asks."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(cfg.seed)
    if cfg.deterministic:
        tf.config.experimental.enable_op_determinism()


def fit_verbosity(verbose: int) -> int:
    """Keras' verbosity: one line per epoch instead of a redrawn bar when not on a terminal."""
    return 2 if verbose == 1 and not sys.stdout.isatty() else verbose


# ---------------------------------------------------------------- data


def augment_options(cfg: TrainConfig) -> dict[str, Any]:
    """The explicit augmentation options of a config (None where not given)."""
    return {k: getattr(cfg, k) for k in AUGMENT_KEYS}


def data_from_config(cfg: TrainConfig, *, image_size=None, split=None):
    """``load_data`` with every data key of a training config (train, fine_tune, lr_find);
    ``verbose=0`` (``-q``) silences the scan's progress too."""
    from cnnlab.data import load_data

    return load_data(
        cfg.data,
        image_size=image_size or cfg.image_size,
        channels=cfg.channels,
        batch_size=cfg.batch_size,
        val_split=cfg.val_split,
        test_split=cfg.test_split,
        seed=cfg.seed,
        augment=cfg.augment,
        augment_options=augment_options(cfg),
        resize=cfg.resize,
        cache=cfg.cache,
        class_weight=cfg.class_weight,
        skip_bad_images=cfg.skip_bad_images,
        data_dir=cfg.data_dir,
        split=split,
        quiet=cfg.verbose == 0,
    )


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
        log.info(
            "Test set: %s, the folder beside the training folder (pass --test-data none "
            "to carve a test split from the training data instead)",
            test_data,
        )
    if "test_split" in explicit and cfg.test_split > 0:
        raise ConfigError(
            f"Both test_data ({test_data}) and test_split ({cfg.test_split}) are given",
            expected="one test set: a separate one, or a share carved from the training data",
            fix="Drop --test-split, or pass --test-data none",
        )
    return cfg.replace(test_data=test_data, test_split=0.0)


def record_geometry(cfg: TrainConfig, bundle) -> None:
    """Write the image size and channels actually used into the config (it repeats exactly)."""
    cfg.image_size = list(bundle.image_size)
    cfg.channels = bundle.channels


def log_data(cfg: TrainConfig, bundle) -> None:
    """The "Data:" line every run logs."""
    log.info(
        "Data: %s, %d classes, image size %s x %d channels, split %s",
        cfg.data,
        bundle.num_classes,
        "x".join(map(str, bundle.image_size)),
        bundle.channels,
        bundle.split.counts(),
    )


def check_data(bundle, run: RunFolder, quiet: bool = False) -> None:
    """The dataset check (duplicates, leakage across the drawn split, odd files), logged and
    written to the run folder; ``quiet``: no progress output. Advisory: a failure here
    never stops training."""
    from cnnlab.data.inspect import check_before_training

    try:
        check_before_training(bundle, run.path, quiet=quiet)
    except Exception as e:  # noqa: BLE001 - advisory: any failure only warns
        log.warning(
            "The dataset check could not run (%s: %s); training goes on", type(e).__name__, e
        )


# ---------------------------------------------------------------- fitting


def steps_per_epoch(cfg: TrainConfig, bundle) -> int:
    """Batches per epoch of the training split (a tiny last batch is dropped)."""
    from cnnlab.data.pipeline import training_batches

    return training_batches(len(bundle.examples("train")["labels"]), cfg.batch_size)[0]


@dataclass
class RunContext:
    """What every step of a run needs: its config, data, folder and how it fits."""

    cfg: TrainConfig
    bundle: Any
    run: RunFolder
    strategy: Any
    started: float = field(default_factory=time.time)
    extra_callbacks: list = field(default_factory=list)
    scratch: bool = False  # ``run`` is a multi-worker helper's scratch folder, deleted after
    memory: Any = None  # train: the MemoryEstimate its batches were planned with

    @property
    def n_train(self) -> int:
        return len(self.bundle.examples("train")["labels"])

    @property
    def steps_per_epoch(self) -> int:
        return steps_per_epoch(self.cfg, self.bundle)

    @property
    def validates(self) -> bool:
        return len(self.bundle.examples("val")["labels"]) > 0

    @property
    def monitor(self) -> str:
        """The checkpoint's metric: the validation one, or the training one without validation."""
        return self.cfg.monitor if self.validates else self.cfg.monitor.removeprefix("val_")

    @property
    def verbose(self) -> int:
        return fit_verbosity(self.cfg.verbose)


def run_callbacks(ctx: RunContext, checkpoint, *, before=(), stage: int | None = None) -> list:
    """The callback list of every fit, in the order they must run.

    ``before`` (e.g. the fast recipe's lookahead, which changes the weights) runs
    first; then the epoch's learning rate, time and throughput; the ``stage``
    column (fine-tuning); ``history.csv``; TensorBoard's event files (unless
    ``tensorboard: false``); the checkpoint; stopping on NaN; early
    stopping when configured; and last the caller's own callbacks.
    """
    import keras

    from cnnlab.training.callbacks import EpochStats, HistoryCSV, StageColumn

    cbs = [*before, EpochStats(ctx.n_train)]
    if stage is not None:
        cbs.append(StageColumn(stage))
    cbs.append(HistoryCSV(ctx.run.history, validates=ctx.validates))
    if ctx.cfg.tensorboard:  # after EpochStats: its learning rate and images/s are logged too
        from cnnlab.training.tensorboard import TensorBoardLogger

        cbs.append(TensorBoardLogger(ctx.run.path, ctx.bundle.val, ctx.bundle.class_names))
    cbs += [
        checkpoint,
        keras.callbacks.TerminateOnNaN(),
    ]
    if ctx.cfg.early_stopping:
        monitor = ctx.monitor
        cbs.append(
            keras.callbacks.EarlyStopping(
                monitor=monitor,
                patience=ctx.cfg.early_stopping,
                mode=monitor_mode(monitor),
            )
        )
    return cbs + list(ctx.extra_callbacks)


def checkpoint_metrics(ctx: RunContext, state: dict, final) -> dict[str, Any]:
    """The numbers every run's ``metrics.json`` starts with."""
    return {
        "best_epoch": state.get("best_epoch"),
        "monitor": ctx.monitor,
        "best_value": state.get("best_value"),
        "epochs_done": state.get("epochs_done"),
        "parameters": int(final.count_params()),
        "strategy": type(ctx.strategy).__name__,
        "replicas": int(ctx.strategy.num_replicas_in_sync),
    }


# ---------------------------------------------------------------- the finish


def scratch_run_folder() -> RunFolder:
    """A temporary run folder for a multi-worker cluster's other workers: their callbacks
    run as the chief's do (so every worker takes the same steps), but what they write
    goes here and is deleted when training ends."""
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="cnnlab-worker-"))
    (path / "checkpoints").mkdir()
    return RunFolder(path)


def scratch_config(cfg: TrainConfig) -> TrainConfig:
    """The config a scratch worker runs with: no shared backup folder, no TensorBoard."""
    return dataclasses.replace(cfg, backup_dir=None, tensorboard=False)


def checkpoint_dir(cfg: TrainConfig, run: RunFolder) -> Path:
    """Where a run's per-epoch checkpoints live: ``<backup_dir>/<run name>/`` when the
    config has a ``backup_dir`` (a folder every worker of a cluster reaches), else
    ``<run>/checkpoints``."""
    if cfg.backup_dir:
        return Path(cfg.backup_dir) / run.path.name
    return run.checkpoints


def best_model(ctx: RunContext, model, *, use_best: bool = True):
    """The run's final model: its best checkpoint (``checkpoints/best.keras``) when there
    is one and ``use_best``, else ``model`` as the last epoch left it."""
    best = checkpoint_dir(ctx.cfg, ctx.run) / "best.keras"
    if not (use_best and best.is_file()):
        return model
    from cnnlab.models.saving import load_model

    return load_model(best)


def score_held_out(model, ctx: RunContext, metrics: dict):
    """Score the held-out data into ``<run>/evaluation-<split>`` and add its headline
    numbers to ``metrics[split]``.

    The held-out data is the test set (``cfg.test_data`` when set, else the test
    split); without one, the validation split (``metrics["val"]``, labelled as the
    validation split). Returns ``(evaluation, bundle scored, split)``, or
    ``(None, None, None)`` when the run has neither.
    """
    from cnnlab.evaluation.evaluate import load_test_data, save_evaluation, score

    cfg, bundle = ctx.cfg, ctx.bundle
    label_map, scored, split = None, bundle, "test"
    if cfg.test_data:
        scored, label_map = load_test_data(
            cfg.test_data,
            bundle.class_names,
            image_size=bundle.image_size,
            channels=bundle.channels,
            resize=bundle.resize,
            batch_size=bundle.eval_batch_size or bundle.batch_size,  # bounded scoring memory
            skip_bad_images=cfg.skip_bad_images,
            data_dir=cfg.data_dir,
        )
        described = cfg.test_data
    elif len(bundle.examples("test")["labels"]):
        described = f"{cfg.data} (held-out split)"
    elif len(bundle.examples("val")["labels"]):
        split, described = "val", f"{cfg.data} (validation split: the run has no test set)"
    else:
        return None, None, None
    evaluation = score(model, scored, split, bundle.class_names, cfg.top_k, label_map)
    save_evaluation(evaluation, ctx.run.path / f"evaluation-{split}")
    metrics[split] = _headline(evaluation.metrics, described)
    m = metrics[split]
    k = evaluation.metrics["top_k"]
    log.info(
        "%s: accuracy %.4f, top%d %.4f, macro F1 %.4f on %d images of %s",
        "Test" if split == "test" else "Validation",
        m["accuracy"],
        k,
        m[f"top{k}"],
        m["macro_f1"],
        m["num_examples"],
        described,
    )
    return evaluation, scored, split


def _headline(m: dict, described: str) -> dict[str, Any]:
    k = m["top_k"]
    return {
        "loss": m["loss"],
        "accuracy": m["accuracy"],
        f"top{k}": m[f"top{k}"],
        "macro_f1": m["macro avg"]["f1-score"],
        "weighted_f1": m["weighted avg"]["f1-score"],
        "num_examples": m["num_examples"],
        "data": described,
    }


def finish_run(ctx: RunContext, final, metrics: dict) -> tuple[Any, Path | None]:
    """Save ``final`` as ``model.keras``, score the held-out data, write ``metrics.json``
    and the report. Returns the evaluation (None without held-out data) and the
    report's path (None when none was written)."""
    from cnnlab.evaluation.report import try_write_report
    from cnnlab.models.saving import save_model

    run = ctx.run
    save_model(final, run.model)
    evaluation, scored, split = score_held_out(final, ctx, metrics)
    metrics["total_seconds_this_session"] = round(time.time() - ctx.started, 2)
    if isinstance(metrics.get("memory"), dict):  # the estimate against the measured peak
        from cnnlab.training.memory import peak_resident_bytes

        metrics["memory"]["measured_peak_gb"] = round(peak_resident_bytes() / 1e9, 3)
    write_json(run.metrics, metrics)
    report = None
    if evaluation is None:
        log.info(
            "No test or validation split, so no report yet: `cnnlab evaluate %s --data "
            "folder:TEST` scores a test set and writes report.html",
            run.path,
        )
    else:  # a failed report only warns: the model and metrics are saved
        report = try_write_report(
            run.path, model=final, bundle=scored, evaluation=evaluation, split=split
        )
    log.info("Done in %.1f s. Run folder: %s", time.time() - ctx.started, run.path)
    return evaluation, report
