"""``fine_tune``: a pretrained backbone adapted in two stages, with the guardrails built in.

Stage 1 fits a new head (pooler, dropout, dense) on the frozen backbone. While
the backbone is frozen and no augmentation runs before it, its features are the
same every epoch, so they are computed once (the *feature path*). On that path
the head, a softmax over a linear map of the features, is fitted as what it is:
multinomial logistic regression by L-BFGS to convergence, its regularisation C
chosen by stratified k-fold cross-validation on the training images, the weights
written into the Keras head (``cnnlab.training.linear_head``). Otherwise (or with
``head_fit: epochs``) the head trains for ``freeze_epochs`` epochs.

Stage 2 unfreezes the top blocks of the backbone (``unfreeze``: a number of
blocks, a fraction of them, or ``all``), recompiles with a lower learning rate
(``stage2_learning_rate``, default: stage 1's / 10; optionally ``layer_decay`` per block
from the top) and continues. BatchNorm layers stay frozen, which in Keras 3
also keeps them in inference mode. It runs only when a validation split can judge
it (1,000 images or more, or a ``val_split`` given explicitly), and is kept only
when it beats stage 1 on validation beyond chance (a paired test). When stage 1 is
kept and the run has a test set, its head is refitted on training + validation.

No images are wasted on splits: a separate test set carves nothing, and below 1,000
images no validation split is carved (the head's C is cross-validated instead).
``head_only`` gives the frozen-feature classifier alone. Decisions are logged and kept
in ``decisions.json``. Stage 2's memory is estimated on start; over the budget it
accumulates micro-batches (``cnnlab.training.memory.plan_fine_tuning``).

The run folder, evaluation, report and prediction are ``cnnlab train``'s (``skeleton``):

    runs/<timestamp>-mobilenet-160/
      config.yaml     the training keys plus freeze_epochs, unfreeze, head_only, ...
      decisions.json  what the run decided and why (splits, C, stage 2, classifier kept)
      history.csv     one row per epoch that trained, with a ``stage`` column
      model.keras     the classifier kept
      metrics.json    test metrics, plus per-stage results under "stages"
      ...

Example:
    >>> result = cnnlab.fine_tune(data="folder:flowers", model="mobilenet",
    ...                           weights="imagenet", image_size=160, epochs=5)
    >>> result.metrics["classifier"], result.metrics["decisions"], result.test_accuracy
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cnnlab._io import atomic_write, write_json
from cnnlab.config import TrainConfig
from cnnlab.run_folder import RunFolder, best_in_history, read_history
from cnnlab.training.callbacks import RunCheckpoint, SaveClassifier
from cnnlab.training.finetune import (
    FineTuneOptions,
    backbone_block_list,
    check_backbone,
    compile_stage2,
    extract_features,
    feature_dataset,
    freeze_for_stage,
    head_model,
    paired_gain,
    plan_validation,
    resolve_finetune_config,
    stage2_layers,
    train_dataset,
    unfrozen_block_count,
)
from cnnlab.training.fit import compile_model, evaluate_accuracy, fit_quietly
from cnnlab.training.linear_head import (
    C_GRID,
    HeadFit,
    fit_logistic_head,
    has_linear_head,
    write_head,
)
from cnnlab.training.memory import plan_fine_tuning
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
    decisions: Decisions | None = None
    stage2_reason: str | None = None  # why stage 2 will not run (None: it may)
    fit: HeadFit | None = None  # stage 1's logistic-regression head, when fitted as one
    features: dict = dataclasses.field(default_factory=dict)  # split -> (features, labels)
    best: Any = None  # checkpoints/best.keras, loaded once (by best_model)

    def best_model(self):
        self.best = best_model(self.ctx, self.model) if self.best is None else self.best
        return self.best


class Decisions:
    """What the run decided and why: logged as it happens, kept for ``decisions.json``."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.facts: dict[str, Any] = {}

    def add(self, line: str, **facts: Any) -> None:
        log.info("Decision: %s", line)
        self.lines.append(line)
        self.facts.update(facts)

    def to_dict(self) -> dict[str, Any]:
        return {"decisions": self.lines, **self.facts}


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
    explicit = explicit_keys(config, overrides)
    cfg = resolve_test_data(cfg, explicit)
    seed_everything(cfg)
    spec = check_backbone(cfg)
    decisions = Decisions()
    cfg, bundle, reason = _plan_data(cfg, opts, spec, explicit, decisions)
    record_geometry(cfg, bundle)
    run = RunFolder.create(cfg.runs_dir, spec.name, bundle.image_size, cfg.name, cfg.overwrite)
    run.write_setup({**cfg.to_dict(), **dataclasses.asdict(opts)}, bundle, cfg.seed)
    log.info("Run folder: %s", run.path)
    log_data(cfg, bundle)
    st = _build(spec, cfg, opts, bundle, run, started)
    st.ctx.extra_callbacks = list(callbacks or [])
    st.decisions, st.stage2_reason = decisions, reason
    stages = _run_stages(st)
    final = _final_model(st, stages)
    metrics = {"recipe": "finetune", **checkpoint_metrics(st.ctx, st.state or {}, final)}
    metrics["stages"] = stages
    metrics["classifier"] = decisions.facts.get("classifier")
    metrics["memory"] = st.ctx.memory.record()
    metrics["decisions"] = decisions.lines
    seconds = sum(s.get("seconds", 0) for s in stages.values())
    metrics["train_seconds_this_session"] = round(seconds, 2)
    write_json(run.path / "decisions.json", decisions.to_dict())
    evaluation, report = finish_run(st.ctx, final, metrics)
    history = read_history(run.history)
    return FineTuneResult(run.path, final, history, metrics, cfg, evaluation, report, options=opts)


def _plan_data(cfg: TrainConfig, opts: FineTuneOptions, spec, explicit: set[str], dec):
    """The data, split so that no images are wasted: the test set as resolved (a separate
    one carves nothing), a validation split only when stage 2 will be judged on it.
    Returns ``(cfg, bundle, why stage 2 will not run or None)``."""
    size = cfg.image_size or spec.default_image_size
    wanted = not opts.head_only and unfrozen_block_count(opts.unfreeze, 1) > 0
    given = cfg.val_split
    if "val_split" not in explicit:  # first without: the pool decides whether one is carved
        cfg = cfg.replace(val_split=0.0)
    bundle = data_from_config(cfg, image_size=size)
    if cfg.test_data:
        dec.add(f"test set: {cfg.test_data}; no test split carved from the training data")
    n_test = len(bundle.examples("test")["labels"])
    if n_test:
        dec.add(f"test split: {n_test:,} images carved from {cfg.data} (no separate test set)")
    pool = len(bundle.examples("train")["labels"]) + len(bundle.examples("val")["labels"])
    val_split, reason = plan_validation(pool, given, "val_split" in explicit, wanted)
    if val_split != cfg.val_split:  # the files are not scanned again
        cfg = cfg.replace(val_split=val_split)
        bundle.redraw_split(cfg.val_split, cfg.test_split)
    n_val = len(bundle.examples("val")["labels"])
    dec.add(
        f"{pool:,} training images: "
        + (
            f"{n_val:,} held out for validation, to judge stage 2 against stage 1"
            if n_val
            else "no validation split (the head's C is cross-validated on them)"
        ),
        training_images=pool,
        validation_images=n_val,
        test_split_images=n_test,
        test_data=cfg.test_data,
    )
    if opts.head_only:
        reason = "--head-only"
    elif wanted is False:
        reason = f"unfreeze={opts.unfreeze}"
    return cfg, bundle, reason


def _run_stages(st: _Stages) -> dict[str, dict[str, Any]]:
    """Stage 1 (unless ``freeze_epochs`` is 0), then stage 2 when a validation split can
    judge it (kept only when it beats stage 1 there by more than chance)."""
    stages: dict[str, dict[str, Any]] = {}
    if st.opts.freeze_epochs > 0:
        stages["1"] = _stage1(st)
    unfrozen = unfrozen_block_count(st.opts.unfreeze, len(st.blocks))
    reason = st.stage2_reason
    if reason is None and not len(st.ctx.bundle.examples("val")["labels"]):
        reason = "no validation split to judge it on"
    if reason is None and unfrozen > 0:
        stage1_weights = st.model.get_weights()
        stages["2"] = s2 = _stage2(st, unfrozen, "1" in stages)
        s1, monitor = stages.get("1", {}), st.ctx.monitor
        s2["kept"], why = _judge_stage2(st, s2, "1" in stages)
        if not s2["kept"] and s2["improved_on_stage1"]:  # back to stage 1's weights
            st.model.set_weights(stage1_weights)
            best = st.ctx.run.checkpoints / "best.keras"
            atomic_write(best, st.model.save, suffix=".keras")
            st.best = st.model  # what best.keras now holds
        st.decisions.add(
            ("stage 2 kept: " if s2["kept"] else "stage 2 not kept: ")
            + f"{why} ({monitor} {_num(s2.get(monitor))} vs stage 1's {_num(s1.get(monitor))})",
            stage2="kept" if s2["kept"] else "not kept",
        )
    else:
        st.decisions.add(f"stage 2 skipped: {reason}", stage2="skipped", stage2_reason=reason)
    return stages


def _judge_stage2(st: _Stages, s2: dict, after_stage1: bool) -> tuple[bool, str]:
    """Whether stage 2 is kept, and why: it must beat stage 1's best on the monitor and,
    when stage 1 is a fitted head, win a paired test on the validation images."""
    if not after_stage1 or not s2["improved_on_stage1"]:
        return not after_stage1, "no stage 1" if not after_stage1 else "no validation gain"
    if st.fit is None or "val" not in st.features:
        return True, "validation gain"
    f_val, y_val = st.features["val"]
    truth = y_val.argmax(1)
    right1 = st.fit.predict_proba(f_val).argmax(1) == truth
    val = st.ctx.bundle.dataset("val", training=False)
    right2 = st.best_model().predict(val, verbose=0).argmax(1) == truth
    fixed, broken, significant = paired_gain(right1, right2)
    s2.update(val_fixed=fixed, val_broken=broken)
    chance = "beyond" if significant else "within"
    return significant, (
        f"validation gain {chance} chance: {fixed} images fixed, {broken} broken "
        "(one-sided McNemar test at 5%)"
    )


def _num(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _final_model(st: _Stages, stages: dict[str, dict[str, Any]]):
    """The classifier kept: stage 2's best epoch when it beat stage 1 on validation, else
    stage 1's (its logistic head refitted on training + validation images when the
    run has a test set, so the validation images are not wasted)."""
    ctx, dec = st.ctx, st.decisions
    stage2 = stages.get("2")
    if st.fit is not None and "test" in st.features and "1" in stages:
        stages["1"]["test_accuracy"] = st.fit.accuracy(*st.features["test"])
    if stage2 is not None and stage2["kept"]:
        dec.add(
            f"kept: stage 2, the fine-tuned classifier ({len(stage2['unfrozen_blocks'])} "
            "blocks unfrozen)",
            classifier="fine-tuned (stage 2)",
        )
        return st.best_model()
    final = st.best_model() if stage2 is not None else st.model
    if st.fit is None:
        dec.add("kept: stage 1, head trained on the frozen backbone", classifier="head (stage 1)")
        return final
    has_test = bool(ctx.cfg.test_data) or len(ctx.bundle.examples("test")["labels"]) > 0
    fit = st.fit
    if "val" in st.features and has_test:
        (f_tr, y_tr), (f_val, y_val) = st.features["train"], st.features["val"]
        f_all, y_all = np.concatenate([f_tr, f_val]), np.concatenate([y_tr, y_val])
        w = _weights(ctx.bundle, y_all)
        fit = fit_logistic_head(f_all, y_all, seed=ctx.cfg.seed, sample_weight=w, c=st.fit.c)
        write_head(final, fit)
        dec.add(f"head refitted on all {fit.n:,} training + validation images (C={fit.c:g})")
    if "test" in st.features and "1" in stages:
        stages["1"]["test_accuracy"] = fit.accuracy(*st.features["test"])
    dec.add(
        f"kept: stage 1, the frozen-feature logistic-regression classifier (C={fit.c:g})",
        classifier=f"frozen-feature logistic regression (C={fit.c:g})",
        C=fit.c,
    )
    return final


def _weights(bundle, labels: np.ndarray):
    """Per-image class weights (``class_weight``), or None."""
    cw = bundle.class_weights()
    return None if cw is None else cw[labels.argmax(1)].astype("float64")


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
    unfrozen = 0 if opts.head_only else unfrozen_block_count(opts.unfreeze, len(blocks))
    plan = plan_fine_tuning(model, cfg, bundle, stage2_layers(model, blocks, unfrozen))
    bundle.set_batching(cfg.batch_size, 1, plan.eval_batch_size)  # stage 2 splits batches
    ctx = RunContext(cfg, bundle, run, strategy, started)
    ctx.memory = plan
    return _Stages(ctx, opts, model, blocks, peak_learning_rate(cfg))


def _stage1(st: _Stages) -> dict[str, Any]:
    """Stage 1: the head on the frozen backbone (feature path or backbone path)."""
    ctx, opts, model = st.ctx, st.opts, st.model
    cfg, bundle = ctx.cfg, ctx.bundle
    t0 = time.time()
    freeze_for_stage(model, 1)
    augment1 = opts.stage1_augment and bundle.augment.active()
    feature_path = opts.feature_cache == "auto" and not augment1
    if feature_path and opts.head_fit == "auto" and has_linear_head(model):
        return _stage1_logistic(st)
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


def _stage1_logistic(st: _Stages) -> dict[str, Any]:
    """Stage 1 on the feature path: the head fitted as logistic regression (L-BFGS) on
    features computed once, C chosen by k-fold cross-validation on the training images."""
    ctx, model, dec = st.ctx, st.model, st.decisions
    bundle, cfg = ctx.bundle, ctx.cfg
    t0 = time.time()
    feats = {"train": extract_features(model, bundle.dataset("train", training=False))}
    for split in ("val", "test"):
        if len(bundle.examples(split)["labels"]):
            feats[split] = extract_features(model, bundle.dataset(split, training=False))
    log.info(
        "Stage 1: feature path - backbone features of %d images computed once in %.1f s; "
        "head fitted as logistic regression (L-BFGS)",
        sum(len(y) for _, y in feats.values()),
        time.time() - t0,
    )
    (f_tr, y_tr), n = feats["train"], len(feats["train"][1])
    fit = fit_logistic_head(f_tr, y_tr, seed=cfg.seed, sample_weight=_weights(bundle, y_tr))
    write_head(model, fit)
    st.fit, st.features = fit, feats
    if fit.folds:
        tried = ", ".join(f"{c:g}" for c in fit.cv_log_loss)
        edge = " (the grid's smallest C)" if fit.c == min(C_GRID) else ""
        dec.add(
            f"{n:,} images: {fit.folds}-fold model selection of C over [{tried}]: chose "
            f"C={fit.c:g}{edge} (cv log-loss {fit.cv_log_loss[fit.c]:.4f}, cv accuracy "
            f"{fit.cv_accuracy[fit.c]:.4f}); head refitted on all {n:,}",
            cv_folds=fit.folds,
            cv_accuracy={f"{c:g}": round(v, 4) for c, v in fit.cv_accuracy.items()},
            cv_log_loss={f"{c:g}": round(v, 4) for c, v in fit.cv_log_loss.items()},
        )
    else:
        dec.add(
            f"{n:,} images: too few in some class for cross-validation; C=1 "
            f"(scikit-learn's default), head fitted on all {n:,}",
            cv_folds=0,
        )
    summary: dict[str, Any] = {
        "path": "features",
        "head_fit": "logistic regression (L-BFGS)",
        "C": fit.c,
        "cv_folds": fit.folds,
        "cv_accuracy": fit.cv_accuracy.get(fit.c),
        "epochs": 0,
        "best_epoch": 0,
        "accuracy": fit.accuracy(f_tr, y_tr),
        "loss": fit.log_loss(f_tr, y_tr),
    }
    if "val" in feats:
        summary["val_accuracy"] = fit.accuracy(*feats["val"])
        summary["val_loss"] = fit.log_loss(*feats["val"])
    summary.setdefault(ctx.monitor, None)
    st.state = {"epochs_done": 0, "best_epoch": 0, "best_value": summary[ctx.monitor]}
    st.state["monitor"] = ctx.monitor
    if st.stage2_reason is None:  # stage 2 may run: it starts from (and must beat) this
        atomic_write(ctx.run.checkpoints / "best.keras", model.save, suffix=".keras")
        write_json(ctx.run.checkpoints / "state.json", st.state)
    summary["seconds"] = round(time.time() - t0, 2)
    log.info(
        "Stage 1 done in %.1f s (C=%g): %s %s",
        summary["seconds"],
        fit.c,
        ctx.monitor,
        _num(summary[ctx.monitor]),
    )
    return summary


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
    plan, bundle = ctx.memory, ctx.bundle
    bundle.set_batching(bundle.batch_size, plan.micro_batches, plan.eval_batch_size)
    cfg2 = ctx.cfg.replace(learning_rate=lr2, micro_batch_size=plan.micro_batch_size)
    steps, decay = ctx.steps_per_epoch, opts.layer_decay
    with ctx.strategy.scope():
        compile_stage2(model, cfg2, steps, bundle.num_classes, st.blocks, unfrozen, decay)
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
    best_epoch, best = best_in_history(ctx.run.history, ctx.monitor, first_epoch=done)
    return {  # stage 2's own best (the checkpoint's may still be stage 1's)
        "epochs": int(state.get("epochs_done") or 0) - done,
        "unfrozen_blocks": names,
        "learning_rate": lr2,
        "layer_decay": opts.layer_decay,
        "improved_on_stage1": bool(improved),
        "best_epoch": best_epoch,
        ctx.monitor: best,
        "seconds": round(time.time() - t0, 2),
    }
