"""``fine_tune``: a pretrained backbone adapted in two stages, with the guardrails built in.

Stage 1 trains a new head (pooler, dropout, dense) on the frozen backbone. While
the backbone is frozen and no augmentation runs before it, its features are the
same every epoch, so they are computed once and the head trains on them (the
*feature path*: on a CPU, epochs of stage 1 take milliseconds instead of
minutes). Otherwise the frozen backbone runs on every batch (the *backbone
path*). The log says which path ran.

Stage 2 unfreezes the top blocks of the backbone (``unfreeze``: a number of
blocks, a fraction of them, or ``all``), recompiles with a lower learning rate
(``stage2_learning_rate``, default: stage 1's / 10; optionally ``layer_decay`` per block
from the top) and continues. BatchNorm layers stay frozen, which in Keras 3
also keeps them in inference mode. It monitors validation accuracy and the run
keeps the best epoch of both stages, so stage 2 can never leave the model
worse (on validation) than stage 1 did.

The run folder, evaluation, report and prediction are those of ``cnnlab train``
(the same skeleton, ``cnnlab.workflows.skeleton``):

    runs/<timestamp>-mobilenet-160/
      config.yaml   the training keys plus freeze_epochs, unfreeze, stage2_learning_rate, ...
      history.csv   one row per epoch of both stages, with a ``stage`` column
      model.keras   the best epoch of either stage
      metrics.json  test metrics, plus per-stage results under "stages"
      ...

Example:
    >>> result = cnnlab.fine_tune(data="folder:flowers", model="mobilenet",
    ...                           weights="imagenet", image_size=160, epochs=5)
    >>> result.metrics["stages"]["1"]["val_accuracy"], result.test_accuracy
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cnnlab.config import TrainConfig
from cnnlab.errors import ModelError
from cnnlab.run_folder import RunFolder, read_history
from cnnlab.training.callbacks import RunCheckpoint, SaveClassifier
from cnnlab.training.finetune import (
    FineTuneOptions,
    backbone_block_list,
    extract_features,
    feature_dataset,
    freeze_for_stage,
    head_model,
    resolve_finetune_config,
    train_dataset,
    unfrozen_block_count,
)
from cnnlab.training.fit import compile_model, evaluate_accuracy, fit_quietly
from cnnlab.workflows.skeleton import (
    RunContext,
    best_model,
    checkpoint_metrics,
    data_from_config,
    finish_run,
    log_data,
    record_geometry,
    resolve_test_data,
    run_callbacks,
    seed_everything,
    setup_logging,
)
from cnnlab.workflows.train import TrainResult

log = logging.getLogger("cnnlab")

__all__ = ["FineTuneResult", "fine_tune"]


@dataclass
class FineTuneResult(TrainResult):
    """:class:`TrainResult` plus the fine-tuning options; ``metrics["stages"]`` has both stages."""

    options: FineTuneOptions | None = None

    @property
    def stage1_test_accuracy(self) -> float | None:
        return self.metrics.get("stages", {}).get("1", {}).get("test_accuracy")


@dataclass
class _Stages:
    """The run and the model the two stages share, and what each stage left behind."""

    ctx: RunContext
    opts: FineTuneOptions
    model: Any
    blocks: list[tuple[str, list]]
    lr1: float
    state: dict | None = None  # the checkpoint's state after the last stage


def fine_tune(
    config: TrainConfig | dict | str | Path | None = None,
    *,
    callbacks: list | None = None,
    **overrides: Any,
) -> FineTuneResult:
    """Fine-tune a pretrained backbone in two stages and write a run folder.

    Args:
        config: a :class:`TrainConfig`, a dict, or a YAML file; it may hold the
            fine-tuning keys of :class:`FineTuneOptions` too.
        callbacks: extra Keras callbacks, run after the run's own in both stages
            (e.g. an Optuna pruning callback).
        **overrides: any training key (``data``, ``model``, ``weights``,
            ``image_size``, ``epochs`` = stage 2 epochs, ``learning_rate`` = stage 1
            rate, ...) or fine-tuning key (``freeze_epochs``, ``unfreeze``,
            ``stage2_learning_rate``, ``layer_decay``, ``stage1_augment``, ``feature_cache``).
            Defaults: ``model="mobilenet"``, ``weights="imagenet"``, ``epochs=10``;
            ``weights="none"`` starts from random weights.

    Returns:
        A :class:`FineTuneResult`; ``metrics["stages"]`` has each stage's best
        validation accuracy and (stage 1) test accuracy, ``metrics["test"]`` the
        final model's, ``report`` the report's path.

    Raises:
        ModelError: the model is not a pretrained backbone.
        WeightsError: the weights are not available (before any data is read).

    Example:
        >>> result = cnnlab.fine_tune(data="folder:flowers", model="mobilenet",
        ...                           image_size=160, freeze_epochs=5, epochs=5)
        >>> result.stage1_test_accuracy, result.test_accuracy
    """
    from cnnlab.training.recipes import explicit_keys

    started = time.time()
    cfg, opts = resolve_finetune_config(config, overrides)
    setup_logging(cfg.verbose)
    cfg = resolve_test_data(cfg, explicit_keys(config, overrides))
    seed_everything(cfg)
    spec = _check_backbone(cfg)
    bundle = data_from_config(cfg, image_size=cfg.image_size or spec.default_image_size)
    record_geometry(cfg, bundle)
    run = RunFolder.create(cfg.runs_dir, spec.name, bundle.image_size, cfg.name, cfg.overwrite)
    run.write_setup({**cfg.to_dict(), **dataclasses.asdict(opts)}, bundle, cfg.seed)
    log.info("Run folder: %s", run.path)
    log_data(cfg, bundle)
    st = _build(spec, cfg, opts, bundle, run, started)
    st.ctx.extra_callbacks = list(callbacks or [])
    stages = _run_stages(st)
    final = best_model(st.ctx, st.model)  # the best epoch of either stage
    metrics = {"recipe": "finetune", **checkpoint_metrics(st.ctx, st.state or {}, final)}
    metrics["stages"] = stages
    seconds = sum(s.get("seconds", 0) for s in stages.values())
    metrics["train_seconds_this_session"] = round(seconds, 2)
    evaluation, report = finish_run(st.ctx, final, metrics)
    history = read_history(run.history)
    return FineTuneResult(run.path, final, history, metrics, cfg, evaluation, report, options=opts)


def _run_stages(st: _Stages) -> dict[str, dict[str, Any]]:
    """Stage 1 (unless ``freeze_epochs`` is 0), then stage 2 (unless nothing unfreezes)."""
    stages: dict[str, dict[str, Any]] = {}
    if st.opts.freeze_epochs > 0:
        stages["1"] = _stage1(st)
    unfrozen = unfrozen_block_count(st.opts.unfreeze, len(st.blocks))
    if unfrozen > 0:
        stages["2"] = _stage2(st, unfrozen, "1" in stages)
    else:
        log.info("Stage 2 skipped (unfreeze=%s)", st.opts.unfreeze)
    return stages


def _check_backbone(cfg: TrainConfig):
    """The model's spec, refused unless pretrained; its weights found before any data is read."""
    from cnnlab.models import get_spec, list_models
    from cnnlab.models.pretrained.weights import LITE_VARIANTS, resolve_weights, weights_status
    from cnnlab.training.fit import weights_option

    spec = get_spec(cfg.model)
    if not spec.pretrained:
        raise ModelError(
            f"fine_tune needs a pretrained backbone; received model={spec.name}",
            expected=f"one of: {', '.join(list_models(pretrained=True))}",
            fix=f"Pass --model mobilenet (or another of those), or train {spec.name} "
            "with `cnnlab train`",
        )
    weights = weights_option(cfg.weights)
    resolve_weights(spec.name, weights)
    lite = spec.name in LITE_VARIANTS
    if lite and weights == "imagenet" and not weights_status(spec.name).available:
        from cnnlab.models.pretrained.efficientnet_lite import _find_torch_weights

        _find_torch_weights(LITE_VARIANTS[spec.name])  # raises the WeightsError with its fix
    if weights is None:
        log.warning(
            "Fine-tuning %s from random weights (weights=none): expect scratch-level accuracy",
            spec.name,
        )
    return spec


def _build(spec, cfg: TrainConfig, opts: FineTuneOptions, bundle, run, started) -> _Stages:
    """The classifier (pretrained backbone, new head) under the strategy, and its blocks."""
    from cnnlab.models import create_model
    from cnnlab.nn.optimizers import peak_learning_rate
    from cnnlab.training.fit import get_strategy, model_options

    options = model_options(spec, cfg, bundle)
    options.setdefault("freeze_bn", True)  # the recipe never trains BatchNorm
    strategy = get_strategy(cfg.strategy)
    with strategy.scope():
        model = create_model(
            spec.name, bundle.num_classes, bundle.image_size, bundle.channels, **options
        )
    blocks = backbone_block_list(model, spec)
    log.info(
        "Model: %s (%s weights), %s parameters, %d backbone blocks",
        spec.name,
        options.get("weights") or "random",
        f"{model.count_params():,}",
        len(blocks),
    )
    ctx = RunContext(cfg, bundle, run, strategy, started)
    return _Stages(ctx, opts, model, blocks, peak_learning_rate(cfg))


def _stage1(st: _Stages) -> dict[str, Any]:
    """Stage 1: the head on the frozen backbone (feature path or backbone path)."""
    ctx, opts, model = st.ctx, st.opts, st.model
    cfg, bundle = ctx.cfg, ctx.bundle
    t0 = time.time()
    freeze_for_stage(model, 1)
    augment1 = opts.stage1_augment and bundle.augment.active()
    feature_path = opts.feature_cache == "auto" and not augment1
    lr1 = st.lr1
    if feature_path:
        log.info(
            "Stage 1 (%d epochs, lr %g): feature path - backbone features computed once, "
            "head trained on them",
            opts.freeze_epochs,
            lr1,
        )
        fit_model, train1, val1 = _feature_path(st)
        checkpoint = SaveClassifier(model, ctx.run.checkpoints, ctx.monitor, None)
    else:
        log.info(
            "Stage 1 (%d epochs, lr %g): backbone path - the frozen backbone runs on every batch%s",
            opts.freeze_epochs,
            lr1,
            " (augmentation comes before it)" if augment1 else "",
        )
        fit_model, train1, val1 = model, train_dataset(bundle, augment1), bundle.val
        checkpoint = RunCheckpoint(ctx.run.checkpoints, ctx.monitor, None)
    cfg1 = cfg.replace(learning_rate=lr1, epochs=opts.freeze_epochs)
    with ctx.strategy.scope():
        compile_model(fit_model, cfg1, ctx.steps_per_epoch, bundle.num_classes)
    cbs = run_callbacks(ctx, checkpoint, stage=1)
    fit_quietly(fit_model, train1, val1, opts.freeze_epochs, 0, cbs, ctx.verbose)
    st.state = checkpoint.state
    best = ctx.run.checkpoints / "best.keras"
    if best.is_file():
        model.load_weights(str(best))  # stage 2 starts from stage 1's best epoch
    stage1 = _stage1_summary(st, feature_path, fit_model)
    stage1["seconds"] = round(time.time() - t0, 2)
    monitor = ctx.monitor
    test = f", test accuracy {stage1['test_accuracy']:.4f}" if "test_accuracy" in stage1 else ""
    log.info(
        "Stage 1 done in %.1f s: best %s %.4f (epoch %s)%s",
        stage1["seconds"],
        monitor,
        stage1[monitor] or float("nan"),
        stage1["best_epoch"],
        test,
    )
    return stage1


def _feature_path(st: _Stages):
    """The head model and its training and validation pipelines over features computed once."""
    ctx, model = st.ctx, st.model
    cfg, bundle = ctx.cfg, ctx.bundle
    t_feat = time.time()
    f_train, y_train = extract_features(model, bundle.dataset("train", training=False))
    has_val = bundle.val is not None
    f_val, y_val = extract_features(model, bundle.val) if has_val else (None, None)
    log.info(
        "Features of %d images in %.1f s",
        len(y_train) + (len(y_val) if has_val else 0),
        time.time() - t_feat,
    )
    cw = bundle.class_weights()
    w_train = None if cw is None else cw[y_train.argmax(1)].astype("float32")
    train1 = feature_dataset(f_train, y_train, cfg.batch_size, cfg.seed, w_train, True)
    val1 = feature_dataset(f_val, y_val, cfg.batch_size, cfg.seed) if has_val else None
    with ctx.strategy.scope():
        fit_model = head_model(model)
    return fit_model, train1, val1


def _stage1_summary(st: _Stages, feature_path: bool, fit_model) -> dict[str, Any]:
    """Stage 1's numbers: its best epoch and, with a test split, the test accuracy."""
    ctx, model, state = st.ctx, st.model, st.state
    summary: dict[str, Any] = {
        "path": "features" if feature_path else "backbone",
        "epochs": state.get("epochs_done"),
        "best_epoch": state.get("best_epoch"),
        ctx.monitor: state.get("best_value"),
        "learning_rate": st.lr1,
    }
    test = ctx.bundle.test
    if test is not None:
        if feature_path:
            f_test, y_test = extract_features(model, test)
            data = feature_dataset(f_test, y_test, ctx.cfg.batch_size, ctx.cfg.seed)
            summary["test_accuracy"] = evaluate_accuracy(fit_model, data)
        else:
            summary["test_accuracy"] = evaluate_accuracy(model, test)
    return summary


def _stage2(st: _Stages, unfrozen: int, after_stage1: bool) -> dict[str, Any]:
    """Stage 2: the top ``unfrozen`` blocks too, at a lower rate, BatchNorm still frozen."""
    ctx, opts, model = st.ctx, st.opts, st.model
    t0 = time.time()
    names = freeze_for_stage(model, 2, st.blocks, unfrozen)
    lr2 = opts.stage2_learning_rate or st.lr1 / 10
    done = int((st.state or {}).get("epochs_done") or 0)
    _compile_stage2(st, unfrozen, lr2)
    trainable = sum(int(np.prod(v.shape)) for v in model.trainable_weights)
    log.info(
        "Stage 2 (%d epochs, lr %g%s): %d of %d blocks unfrozen (%s ... %s), "
        "%s trainable parameters, BatchNorm frozen",
        ctx.cfg.epochs,
        lr2,
        f", layer decay {opts.layer_decay}" if opts.layer_decay else "",
        unfrozen,
        len(st.blocks),
        names[0],
        names[-1],
        f"{trainable:,}",
    )
    checkpoint = RunCheckpoint(ctx.run.checkpoints, ctx.monitor, st.state)
    before = checkpoint.state.get("best_value")
    cbs = run_callbacks(ctx, checkpoint, stage=2)
    bundle = ctx.bundle
    fit_quietly(model, bundle.train, bundle.val, done + ctx.cfg.epochs, done, cbs, ctx.verbose)
    st.state = state = checkpoint.state
    improved = state.get("best_epoch") is not None and (
        before is None or state["best_epoch"] > done
    )
    if not improved and after_stage1:
        log.info(
            "Stage 2 never beat stage 1's %s; the final model is stage 1's best epoch",
            ctx.monitor,
        )
    return {
        "epochs": int(state.get("epochs_done") or 0) - done,
        "unfrozen_blocks": names,
        "learning_rate": lr2,
        "layer_decay": opts.layer_decay,
        "improved_on_stage1": bool(improved),
        "best_epoch": state.get("best_epoch"),
        ctx.monitor: state.get("best_value"),
        "seconds": round(time.time() - t0, 2),
    }


def _compile_stage2(st: _Stages, unfrozen: int, lr2: float) -> None:
    """Recompile for stage 2 at ``lr2``, layer-wise decayed when ``layer_decay`` < 1."""
    from cnnlab.nn.optimizers import layerwise_optimizer, make_optimizer

    ctx, decay = st.ctx, st.opts.layer_decay
    cfg2 = ctx.cfg.replace(learning_rate=lr2)
    with ctx.strategy.scope():
        optimizer = make_optimizer(cfg2, ctx.steps_per_epoch)
        if decay and decay < 1:
            optimizer = layerwise_optimizer(optimizer, st.blocks, unfrozen, decay)
        compile_model(st.model, cfg2, ctx.steps_per_epoch, ctx.bundle.num_classes, optimizer)
