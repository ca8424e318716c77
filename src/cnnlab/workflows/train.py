"""``train``: config → data → model → fit → run folder → evaluation and report, resumable."""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cnnlab._io import read_json
from cnnlab.config import TrainConfig, resolve_config
from cnnlab.errors import ConfigError, RunError
from cnnlab.run_folder import RunFolder, read_history
from cnnlab.workflows.skeleton import (
    RunContext,
    augment_options,
    best_model,
    check_data,
    checkpoint_dir,
    checkpoint_metrics,
    data_from_config,
    finish_run,
    log_data,
    record_geometry,
    resolve_test_data,
    run_callbacks,
    scratch_config,
    scratch_run_folder,
    seed_everything,
    setup_logging,
    steps_per_epoch,
)

log = logging.getLogger("cnnlab")

__all__ = ["RESUME_OVERRIDES", "TrainResult", "train"]

# What may change when a run is resumed; everything else comes from its config.yaml.
RESUME_OVERRIDES = ("epochs", "verbose", "early_stopping")


@dataclass
class TrainResult:
    """What ``train`` returns: the run folder, the final model and its numbers."""

    run_dir: Path | None  # None on a multi-worker cluster's other workers
    model: Any
    history: dict[str, list[float]]
    metrics: dict[str, Any]
    config: TrainConfig
    evaluation: Any = None  # of the test set, or of the validation split without one
    report: Path | None = None  # report.html, when it was written

    @property
    def test_accuracy(self) -> float | None:
        return self.metrics.get("test", {}).get("accuracy")


@dataclass
class _Start:
    """Where a run starts: its config, and for ``--resume`` its folder and saved state."""

    cfg: TrainConfig
    explicit: set[str]
    run: RunFolder | None = None
    state: dict | None = None


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
        callbacks: extra Keras callbacks, run after the run's own at every epoch
            (e.g. an Optuna pruning callback).
        **overrides: any config key, e.g. ``epochs=5, model="resnet20"``.

    Returns:
        A :class:`TrainResult` with the run folder, final model, history, test metrics
        and the report's path.

    Example:
        >>> result = cnnlab.train(data="builtin:digits", epochs=10)
        >>> result.test_accuracy
        0.97...
    """
    from cnnlab.models import get_spec
    from cnnlab.models.precision import to_float32

    started = time.time()
    start = _start(config, resume, overrides)
    setup_logging(start.cfg.verbose)
    if start.cfg.strategy == "multiworker":
        from cnnlab.training.fit import get_strategy

        get_strategy("multiworker", multiworker=True)  # joins the cluster before any TF op
    if start.run is None:
        start.cfg = resolve_test_data(start.cfg, start.explicit)  # logs a test folder found
    seed_everything(start.cfg)
    get_spec(start.cfg.model)  # unknown model names fail before any data is read
    cfg, bundle = _load_data(start)
    ctx, model, epochs_done = _build(start, cfg, bundle, started)
    ctx.extra_callbacks = list(callbacks or [])
    try:
        checkpoint, seconds, cluster = _fit(ctx, model, epochs_done, start.state)
    finally:
        if ctx.scratch:  # another worker of a cluster: nothing of it stays on disk
            shutil.rmtree(ctx.run.path, ignore_errors=True)
    if ctx.scratch:
        end_together(ctx.strategy)  # wait for the chief's scoring and report
        return TrainResult(None, model, {}, {"multiworker": cluster}, cfg)
    if cluster:  # the chief scores a plain copy of the model, outside the cluster
        from cnnlab.models.saving import load_model

        model = load_model(checkpoint_dir(cfg, ctx.run) / "last.keras")
    # The final model is the best validation epoch (or the last one without validation).
    # The fast recipe's schedule and lookahead are built to end at the last
    # epoch (measured: CIFAR-10 epoch 10 0.823 vs its best-train-accuracy epoch 8 0.798).
    # A mixed-precision run ships its model in float32 (cnnlab.models.precision).
    final = to_float32(best_model(ctx, model, use_best=cfg.recipe != "fast"))
    metrics = checkpoint_metrics(ctx, checkpoint.state, final)
    metrics["train_seconds_this_session"] = round(seconds, 2)
    metrics["memory"] = ctx.memory.record() if ctx.memory else None
    if cluster:
        metrics["multiworker"] = cluster
    evaluation, report = finish_run(ctx, final, metrics)
    if cluster:
        end_together(ctx.strategy)
    history = read_history(ctx.run.history)
    return TrainResult(ctx.run.path, final, history, metrics, cfg, evaluation, report)


def end_together(strategy) -> None:
    """The cluster's last collective: other workers wait here for the chief to finish its
    scoring and report, so no worker exits while another still talks to it (the chief's
    coordination service would report it as crashed)."""
    from cnnlab.training.distribute import all_reduce

    all_reduce(strategy, [1.0])


def _start(config, resume, overrides: dict[str, Any]) -> _Start:
    """The resolved config of a new run, or of the run to resume (refusing changes)."""
    from cnnlab.training.recipes import explicit_keys

    if resume is None:
        return _Start(resolve_config(config, overrides), explicit_keys(config, overrides))
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
    state_file = checkpoint_dir(cfg, run) / "state.json"
    state = read_json(state_file) if state_file.is_file() else None
    if state and state["epochs_done"] >= cfg.epochs and run.model.is_file():
        raise RunError(
            f"Run {run.path} already finished all {cfg.epochs} epochs",
            fix="Pass --epochs N with a larger N to train it further",
        )
    return _Start(cfg, set(), run, state)


def _load_data(start: _Start):
    """The data (a resumed run's saved split), with the recipe applied to a new run."""
    from cnnlab.data.splits import Split
    from cnnlab.models import get_spec

    cfg = start.cfg
    spec = get_spec(cfg.model)
    saved_split = None
    if start.run is not None:
        from cnnlab.data.sources import open_source

        saved_split = Split.load(start.run.split, open_source(cfg.data, cfg.data_dir))
    image_size = cfg.image_size
    if image_size is None and spec.pretrained:
        image_size = spec.default_image_size
    bundle = data_from_config(cfg, image_size=image_size, split=saved_split)
    if start.run is None:
        cfg = _apply_recipe(cfg, start.explicit, bundle)
        cfg = _resolve_precision(cfg)
    record_geometry(cfg, bundle)
    log_data(cfg, bundle)
    return cfg, bundle


def _apply_recipe(given: TrainConfig, explicit: set[str], bundle) -> TrainConfig:
    """Fill in the keys the user did not give from the recipe (auto: fast for 20-40 px
    images). Pipelines are built lazily, so batch size and augmentation can still
    change; the split and images are as loaded."""
    from cnnlab.data.augment import resolve_options
    from cnnlab.training import recipes

    def apply():
        n_train = len(bundle.examples("train")["labels"])
        return recipes.apply_recipe(given, explicit, bundle.image_size, n_train, bundle.channels)

    cfg, applied = apply()
    if cfg.val_split != given.val_split and not bundle.source.is_records:
        # The recipe changed the validation share: redraw the split, then settle the
        # batch size on the new training count.
        bundle.redraw_split(cfg.val_split, cfg.test_split)
        cfg, applied = apply()
    if applied:
        log.info("Recipe %s: %s", cfg.recipe, ", ".join(f"{k}={v}" for k, v in applied.items()))
        bundle.batch_size = cfg.batch_size
        bundle.augment = resolve_options(cfg.augment, cfg.data, **augment_options(cfg))
    return cfg


def _resolve_precision(cfg: TrainConfig) -> TrainConfig:
    """``precision: auto`` settled for this machine, so config.yaml says what ran."""
    from cnnlab.models.precision import resolve_precision

    if cfg.precision != "auto":
        return cfg
    cfg = cfg.replace(precision=resolve_precision("auto"))
    log.info(
        "Precision auto: %s (%s)",
        cfg.precision,
        "this machine has bfloat16 units"
        if cfg.precision != "float32"
        else "no bfloat16 units here, where bfloat16 would be emulated and slower",
    )
    return cfg


def _build(start: _Start, cfg: TrainConfig, bundle, started: float):
    """The model under the strategy: a new one (set up and compiled), or the resumed
    run's last checkpoint. A new run's folder is created only now that data and model
    are known to work: a bad option or missing weights file leaves no empty folder."""
    from cnnlab.models import create_model, get_spec
    from cnnlab.models.precision import dtype_policy
    from cnnlab.models.saving import load_model
    from cnnlab.training import recipes
    from cnnlab.training.distribute import worker_role
    from cnnlab.training.fit import compile_model, get_strategy, model_options

    spec = get_spec(cfg.model)
    strategy = get_strategy(cfg.strategy, multiworker=True)
    chief = worker_role(strategy).is_chief
    run, epochs_done = start.run, 0
    with strategy.scope():
        if start.state and (checkpoint_dir(cfg, run) / "last.keras").is_file():
            model = load_model(checkpoint_dir(cfg, run) / "last.keras")
            epochs_done = int(start.state["epochs_done"])
            if chief:
                run.truncate_history(epochs_done)
            log.info("Resuming %s after epoch %d of %d", run.path, epochs_done, cfg.epochs)
            plan = _plan_memory(model, cfg, bundle, resumed=True)
        else:
            options = model_options(spec, cfg, bundle)
            with dtype_policy(cfg.precision):
                model = create_model(
                    cfg.model, bundle.num_classes, bundle.image_size, bundle.channels, **options
                )
            recipes.prepare_model(model, bundle)  # e.g. fit airbench's whitening layer
            plan = _plan_memory(model, cfg, bundle, resumed=False)
            compile_model(
                model,
                cfg,
                steps_per_epoch(cfg, bundle),  # optimizer steps, whatever the micro-batches
                bundle.num_classes,
                accumulation_steps=plan.micro_batches,
            )
    if not chief:  # the chief writes the run; this worker's callbacks write to a scratch folder
        ctx = RunContext(scratch_config(cfg), bundle, scratch_run_folder(), strategy, started)
        ctx.scratch = True
        return ctx, model, epochs_done
    if run is None:
        run = RunFolder.create(cfg.runs_dir, spec.name, bundle.image_size, cfg.name, cfg.overwrite)
        run.write_setup(cfg.to_dict(), bundle, cfg.seed)
        check_data(bundle, run, quiet=cfg.verbose == 0)
    ctx = RunContext(cfg, bundle, run, strategy, started)
    ctx.memory = plan
    log.info("Run folder: %s", run.path)
    log.info(
        "Model: %s, %s parameters, strategy %s (%d replica(s))",
        spec.name,
        f"{model.count_params():,}",
        type(strategy).__name__,
        strategy.num_replicas_in_sync,
    )
    return ctx, model, epochs_done


def _plan_memory(model, cfg: TrainConfig, bundle, *, resumed: bool):
    """Log the memory estimate, choose the micro-batch (``cfg.micro_batch_size`` records
    one below the batch, so the run repeats and resumes with it) and batch the pipelines
    for it: the training batch cut into micro-batches, scoring at the evaluation batch."""
    from cnnlab.training.memory import plan_memory

    plan = plan_memory(model, cfg, bundle, resumed=resumed)
    if plan.micro_batches > 1 or cfg.micro_batch_size is not None:
        cfg.micro_batch_size = plan.micro_batch_size
    bundle.set_batching(cfg.batch_size, plan.micro_batches, plan.eval_batch_size)
    return plan


def _fit(ctx: RunContext, model, epochs_done: int, state: dict | None):
    """Fit from ``epochs_done`` to ``cfg.epochs``; returns the checkpoint, the seconds and
    (multi-worker) this worker's summary of the cluster, else None."""
    from cnnlab.training import recipes
    from cnnlab.training.callbacks import RunCheckpoint, progressive_resizing
    from cnnlab.training.distribute import fit_multiworker, is_multiworker
    from cnnlab.training.fit import fit_quietly

    cfg, bundle = ctx.cfg, ctx.bundle
    folder = checkpoint_dir(cfg, ctx.run)
    folder.mkdir(parents=True, exist_ok=True)
    checkpoint = RunCheckpoint(folder, ctx.monitor, state)
    # Recipe callbacks (lookahead) change the weights and progressive resizing clears
    # the model's training size, so they run before the checkpoint.
    before = recipes.callbacks(cfg, ctx.steps_per_epoch)
    before += progressive_resizing(cfg, model, bundle.image_size)
    cbs = run_callbacks(ctx, checkpoint, before=before)
    t0 = time.time()
    cluster = None
    try:
        if is_multiworker(ctx.strategy):
            cluster = fit_multiworker(
                model,
                bundle,
                strategy=ctx.strategy,
                batch_size=cfg.batch_size,
                epochs=cfg.epochs,
                initial_epoch=epochs_done,
                callbacks=cbs,
                verbose=ctx.verbose,
                top_k=cfg.top_k,
            )
        else:
            fit_quietly(model, bundle.train, bundle.val, cfg.epochs, epochs_done, cbs, ctx.verbose)
    except KeyboardInterrupt:
        log.warning(
            "Interrupted. Finished epochs are saved; continue with: cnnlab train --resume %s",
            ctx.run.path,
        )
        raise
    return checkpoint, time.time() - t0, cluster
