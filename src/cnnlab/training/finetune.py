"""``fine_tune``: a pretrained backbone adapted in two stages, with the guardrails built in.

Stage 1 trains a new head (pooler, dropout, dense) on the frozen backbone. While
the backbone is frozen and no augmentation runs before it, its features are the
same every epoch, so they are computed once and the head trains on them (the
*feature path*: on a CPU, epochs of stage 1 take milliseconds instead of
minutes). Otherwise the frozen backbone runs on every batch (the *backbone
path*). The log says which path ran.

Stage 2 unfreezes the top blocks of the backbone (``unfreeze``: a number of
blocks, a fraction of them, or ``all``), recompiles with a lower learning rate
(``stage2_lr``, default: stage 1's / 10; optionally ``layer_decay`` per block
from the top) and continues. BatchNorm layers stay frozen, which in Keras 3
also keeps them in inference mode. It monitors validation accuracy and the run
keeps the best epoch of both stages, so stage 2 can never leave the model
worse (on validation) than stage 1 did.

The run folder, evaluation and prediction are those of ``cnnlab train``:

    runs/<timestamp>-mobilenet-160/
      config.yaml   the training keys plus freeze_epochs, unfreeze, stage2_lr, ...
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
import math
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np

from cnnlab._io import write_json
from cnnlab.config import TrainConfig, normalise_keys, read_yaml_mapping, resolve_config
from cnnlab.errors import ConfigError, ModelError
from cnnlab.training.callbacks import RunCheckpoint
from cnnlab.run_folder import read_history
from cnnlab.training.trainer import TrainResult, _setup_logging, fit_quietly

log = logging.getLogger("cnnlab")

__all__ = [
    "FineTuneOptions",
    "FineTuneResult",
    "fine_tune",
    "freeze_for_stage",
    "head_model",
    "resolve_finetune_config",
    "unfrozen_block_count",
]

# Defaults that differ from `cnnlab train`'s when fine-tuning.
FINETUNE_DEFAULTS: dict[str, Any] = {"model": "mobilenet", "weights": "imagenet", "epochs": 10}


@dataclass
class FineTuneOptions:
    """The keys ``fine_tune`` adds to the training config (``epochs`` is stage 2's length)."""

    freeze_epochs: int = 10  # stage 1: head only, backbone frozen
    unfreeze: str = "0.25"  # stage 2: top N blocks ("3"), a fraction ("0.25") or "all"; 0 skips it
    stage2_lr: float | None = None  # default: stage 1's learning rate / 10
    layer_decay: float | None = (
        None  # e.g. 0.8: each unfrozen block below the top gets 0.8x more decay
    )
    stage1_augment: bool = False  # augment in stage 1 too (forces the backbone path)
    feature_cache: str = "auto"  # auto: feature path when possible; off: always the backbone path

    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]


@dataclass
class FineTuneResult(TrainResult):
    """:class:`TrainResult` plus the fine-tuning options; ``metrics["stages"]`` has both stages."""

    options: FineTuneOptions | None = None

    @property
    def stage1_test_accuracy(self) -> float | None:
        return self.metrics.get("stages", {}).get("1", {}).get("test_accuracy")


# ---------------------------------------------------------------- configuration


def _read_config(config: TrainConfig | dict | str | Path | None) -> dict[str, Any]:
    if config is None:
        return {}
    if isinstance(config, TrainConfig):
        return config.to_dict()
    if isinstance(config, dict):
        return dict(config)
    return read_yaml_mapping(config)  # fine-tune keys are checked by the caller


def _coerce_options(values: dict[str, Any]) -> FineTuneOptions:
    opts = FineTuneOptions()
    for key, value in values.items():
        if value is not None:
            setattr(opts, key, value)
    try:
        opts.freeze_epochs = int(opts.freeze_epochs)
        opts.stage2_lr = None if opts.stage2_lr is None else float(opts.stage2_lr)
        opts.layer_decay = None if opts.layer_decay is None else float(opts.layer_decay)
        if isinstance(opts.stage1_augment, str):
            opts.stage1_augment = opts.stage1_augment.lower() in ("1", "true", "yes")
        opts.stage1_augment = bool(opts.stage1_augment)
    except (TypeError, ValueError) as e:
        raise ConfigError(
            f"Bad fine-tuning option: {e}", fix="See `cnnlab finetune --help` for the types"
        ) from None
    opts.unfreeze = str(opts.unfreeze).strip().lower()
    _parse_unfreeze(opts.unfreeze)
    if opts.freeze_epochs < 0:
        raise ConfigError(
            f"Bad freeze_epochs: received {opts.freeze_epochs}",
            expected="0 or more epochs of stage 1",
        )
    if opts.stage2_lr is not None and opts.stage2_lr <= 0:
        raise ConfigError(f"Bad stage2_lr: received {opts.stage2_lr}", expected="a positive number")
    if opts.layer_decay is not None and not 0 < opts.layer_decay <= 1:
        raise ConfigError(
            f"Bad layer_decay: received {opts.layer_decay}",
            expected="a factor in (0, 1], e.g. 0.8",
            fix="Pass --layer-decay 0.8",
        )
    if opts.feature_cache not in ("auto", "off"):
        raise ConfigError(
            f"Bad feature_cache: received {opts.feature_cache!r}", expected="auto or off"
        )
    return opts


def _parse_unfreeze(value: str) -> tuple[str, float]:
    """``"all"`` -> ("all", 1); ``"3"`` -> ("blocks", 3); ``"0.25"`` -> ("fraction", 0.25)."""
    if value == "all":
        return "all", 1.0
    try:
        number = float(value)
    except ValueError:
        number = -1.0
    if number >= 1 and number == int(number) and "." not in value:
        return "blocks", number
    if number == 0:
        return "blocks", 0.0
    if 0 < number <= 1:
        return "fraction", number
    raise ConfigError(
        f"Bad unfreeze: received {value!r}",
        expected="a number of blocks (3), a fraction of the blocks (0.25), or all",
        fix="Pass --unfreeze 3, --unfreeze 0.25 or --unfreeze all (0 skips stage 2)",
    )


def resolve_finetune_config(
    config: TrainConfig | dict | str | Path | None = None, overrides: dict[str, Any] | None = None
) -> tuple[TrainConfig, FineTuneOptions]:
    """Split a config (object, dict or YAML path) plus overrides into training keys and
    fine-tuning options, with fine-tuning defaults (``mobilenet``, ``imagenet``, 10 epochs).

    Example:
        >>> cfg, opts = resolve_finetune_config({"unfreeze": "all"}, {"epochs": 3})
        >>> cfg.model, cfg.epochs, opts.unfreeze
        ('mobilenet', 3, 'all')
    """
    ft_keys, train_keys = FineTuneOptions.keys(), TrainConfig.keys()
    raw = normalise_keys(_read_config(config), "the config", tuple(ft_keys), "finetune")
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    given = normalise_keys(given, "the arguments", tuple(ft_keys), "finetune")
    ft = {k: v for k, v in {**raw, **given}.items() if k in ft_keys}
    base = {**FINETUNE_DEFAULTS, **{k: v for k, v in raw.items() if k in train_keys}}
    cfg = resolve_config(base, {k: v for k, v in given.items() if k in train_keys})
    return cfg, _coerce_options(ft)


# ---------------------------------------------------------------- freezing


def unfrozen_block_count(unfreeze: str, num_blocks: int) -> int:
    """How many of ``num_blocks`` blocks (from the top) stage 2 trains."""
    kind, number = _parse_unfreeze(str(unfreeze).strip().lower())
    if kind == "all":
        return num_blocks
    if kind == "fraction":
        return max(1, math.ceil(number * num_blocks))
    return min(num_blocks, int(number))


def freeze_for_stage(
    model, stage: int, blocks: list[tuple[str, list]] | None = None, unfrozen: int = 0
) -> list[str]:
    """Set trainable flags for a stage; returns the names of the trainable backbone blocks.

    Stage 1: the whole backbone is frozen. Stage 2: the top ``unfrozen`` blocks
    of ``blocks`` are trainable, except their BatchNorm layers. The head is
    always trainable. Recompile the model after calling this.
    """
    from cnnlab.models.pretrained.applications import batchnorm_layers, get_backbone

    base = get_backbone(model)
    for layer in model.layers:
        if layer is not base:
            layer.trainable = True
    if stage == 1 or not unfrozen or not blocks:
        base.trainable = False
        return []
    base.trainable = True  # Keras 3: sets every nested layer; narrowed down below
    top = blocks[-unfrozen:]
    chosen = {id(layer) for _, members in top for layer in members}
    for layer in base.layers:
        layer.trainable = id(layer) in chosen
    for bn in batchnorm_layers(base):
        bn.trainable = False  # never train BatchNorm on a new, small dataset
    return [name for name, _ in top]


def head_model(model):
    """The layers after ``pooler`` as a model on pooled features (sharing their weights)."""
    names = [layer.name for layer in model.layers]
    if "pooler" not in names:
        raise ModelError(
            f"Model {model.name} has no layer named 'pooler'",
            expected="a cnnlab classifier (backbone, pooler, head)",
        )
    pooler = model.get_layer("pooler")
    features = keras.Input(shape=tuple(pooler.output.shape[1:]), name="features")
    x = features
    for layer in model.layers[names.index("pooler") + 1 :]:
        x = layer(x)
    return keras.Model(features, x, name="head")


# ---------------------------------------------------------------- layer-wise learning rates


def _layerwise(base_cls: type) -> type:
    """``base_cls`` with a learning-rate multiplier per variable (by variable path)."""

    class Layerwise(base_cls):  # type: ignore[misc, valid-type]
        def __init__(self, *args, lr_multipliers: dict[str, float] | None = None, **kwargs):
            super().__init__(*args, **kwargs)
            self.lr_multipliers = {str(k): float(v) for k, v in (lr_multipliers or {}).items()}
            self._lr_mults: list[float] = []

        def build(self, var_list):
            super().build(var_list)
            self._lr_mults = [self.lr_multipliers.get(v.path, 1.0) for v in var_list]

        def update_step(self, gradient, variable, learning_rate):
            # The TF backend passes the raw tf.Variable here; its index is stable.
            mult = self._lr_mults[self._get_variable_index(variable)] if self._lr_mults else 1.0
            if mult != 1.0:
                learning_rate = learning_rate * mult
            return super().update_step(gradient, variable, learning_rate)

        def get_config(self):
            return {**super().get_config(), "lr_multipliers": self.lr_multipliers}

    Layerwise.__name__ = Layerwise.__qualname__ = f"Layerwise{base_cls.__name__}"
    return keras.saving.register_keras_serializable(package="cnnlab")(Layerwise)


LAYERWISE = {
    cls: _layerwise(cls)
    for cls in (
        keras.optimizers.Adam,
        keras.optimizers.AdamW,
        keras.optimizers.SGD,
        keras.optimizers.RMSprop,
    )
}


def _layerwise_optimizer(optimizer, blocks: list[tuple[str, list]], unfrozen: int, decay: float):
    """Rebuild ``optimizer`` so block k from the top trains at lr * decay**(k + 1); head at lr."""
    mults: dict[str, float] = {}
    for k, (_, members) in enumerate(reversed(blocks[-unfrozen:])):
        for layer in members:
            for v in layer.trainable_weights:
                mults[v.path] = decay ** (k + 1)
    cls = LAYERWISE[type(optimizer)]
    return cls.from_config({**optimizer.get_config(), "lr_multipliers": mults})


# ---------------------------------------------------------------- data helpers


def _train_dataset(bundle, augment: bool):
    """The shuffled training pipeline, augmented or not (class weights kept)."""
    if augment:
        return bundle.train
    from cnnlab.data.pipeline import make_dataset

    ex = bundle.examples("train")
    return make_dataset(
        ex["labels"],
        num_classes=bundle.num_classes,
        image_size=bundle.image_size,
        channels=bundle.channels,
        images=ex.get("images"),
        paths=ex.get("paths"),
        batch_size=bundle.batch_size,
        training=True,
        augmenter=None,
        resize=bundle.resize,
        cache=bundle.cache,
        seed=bundle.seed,
        class_weights=bundle.class_weights(),
    )


def _extract_features(model, ds) -> tuple[np.ndarray, np.ndarray]:
    """Pooled backbone features of every batch of ``ds`` (inference mode), with its labels."""
    import tensorflow as tf

    extractor = keras.Model(model.inputs, model.get_layer("pooler").output)
    spec = tf.TensorSpec((None, *model.input_shape[1:]), tf.float32)

    @tf.function(input_signature=[spec])  # one trace, whatever the last batch's size
    def run(x):
        return extractor(x, training=False)

    feats, labels = [], []
    for batch in ds:
        feats.append(run(batch[0]).numpy())
        labels.append(batch[1].numpy())
    return np.concatenate(feats), np.concatenate(labels)


def _feature_dataset(feats, labels, batch_size: int, seed: int, weights=None, shuffle=False):
    import tensorflow as tf

    from cnnlab.data.pipeline import apply_options

    parts = (feats, labels) if weights is None else (feats, labels, weights)
    ds = tf.data.Dataset.from_tensor_slices(parts)
    if shuffle:
        ds = ds.shuffle(len(labels), seed=seed, reshuffle_each_iteration=True)
    return apply_options(ds.batch(batch_size).prefetch(tf.data.AUTOTUNE))


class _StageColumn(keras.callbacks.Callback):
    """Adds ``stage`` to the epoch logs (before CSVLogger, so history.csv has it)."""

    def __init__(self, stage: int):
        super().__init__()
        self.stage = stage

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["stage"] = self.stage


class _SaveClassifier(RunCheckpoint):
    """RunCheckpoint that saves the whole classifier while only its head is being fit."""

    def __init__(self, classifier, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._classifier = classifier

    def set_model(self, model):
        super().set_model(self._classifier)


def _accuracy(model, data) -> float | None:
    if data is None:
        return None
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Your input ran out of data")
        logs = model.evaluate(data, verbose=0, return_dict=True)
    return float(logs["accuracy"])


# ---------------------------------------------------------------- the recipe


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
        callbacks: extra Keras callbacks, used in both stages.
        **overrides: any training key (``data``, ``model``, ``weights``,
            ``image_size``, ``epochs`` = stage 2 epochs, ``learning_rate`` = stage 1
            rate, ...) or fine-tuning key (``freeze_epochs``, ``unfreeze``,
            ``stage2_lr``, ``layer_decay``, ``stage1_augment``, ``feature_cache``).
            Defaults: ``model="mobilenet"``, ``weights="imagenet"``, ``epochs=10``;
            ``weights="none"`` starts from random weights.

    Returns:
        A :class:`FineTuneResult`; ``metrics["stages"]`` has each stage's best
        validation accuracy and (stage 1) test accuracy, ``metrics["test"]`` the
        final model's.

    Raises:
        ModelError: the model is not a pretrained backbone.
        WeightsError: the weights are not available (before any data is read).

    Example:
        >>> result = cnnlab.fine_tune(data="folder:flowers", model="mobilenet",
        ...                           image_size=160, freeze_epochs=5, epochs=5)
        >>> result.stage1_test_accuracy, result.test_accuracy
    """
    import tensorflow as tf

    from cnnlab.models.saving import load_model, save_model
    from cnnlab.models import create_model, get_spec, list_models
    from cnnlab.models.pretrained.applications import backbone_blocks, get_backbone
    from cnnlab.models.pretrained.weights import LITE_VARIANTS, resolve_weights, weights_status
    from cnnlab.training.callbacks import EpochStats
    from cnnlab.training.optimizers import DEFAULT_LEARNING_RATES
    from cnnlab.training.recipes import explicit_keys
    from cnnlab.run_folder import RunFolder
    from cnnlab.training.trainer import (
        data_from_config,
        evaluate_test_split,
        get_strategy,
        resolve_test_data,
    )

    started = time.time()
    cfg, opts = resolve_finetune_config(config, overrides)
    _setup_logging(cfg.verbose)
    cfg = resolve_test_data(cfg, explicit_keys(config, overrides))
    keras.utils.set_random_seed(cfg.seed)
    if cfg.deterministic:
        tf.config.experimental.enable_op_determinism()

    spec = get_spec(cfg.model)
    if not spec.pretrained:
        raise ModelError(
            f"fine_tune needs a pretrained backbone; received model={spec.name}",
            expected=f"one of: {', '.join(list_models(pretrained=True))}",
            fix=f"Pass --model mobilenet (or another of those), or train {spec.name} with `cnnlab train`",
        )
    # Weights are checked before any data is read or a run folder is made.
    weights = None if str(cfg.weights).lower() in ("none", "") else cfg.weights
    resolve_weights(spec.name, weights)
    if (
        spec.name in LITE_VARIANTS
        and weights == "imagenet"
        and not weights_status(spec.name).available
    ):
        from cnnlab.models.pretrained.efficientnet_lite import _find_torch_weights

        _find_torch_weights(LITE_VARIANTS[spec.name])  # raises the WeightsError with its fix
    if weights is None:
        log.warning(
            "Fine-tuning %s from random weights (weights=none): expect scratch-level accuracy",
            spec.name,
        )

    bundle = data_from_config(cfg, image_size=cfg.image_size or spec.default_image_size)
    cfg.image_size = list(bundle.image_size)
    cfg.channels = bundle.channels
    n_train = len(bundle.examples("train")["labels"])
    steps_per_epoch = math.ceil(n_train / cfg.batch_size)

    run = RunFolder.create(cfg.output, spec.name, bundle.image_size, cfg.name, cfg.overwrite)
    run.write_setup({**cfg.to_dict(), **dataclasses.asdict(opts)}, bundle, cfg.seed)
    log.info("Run folder: %s", run.path)
    log.info(
        "Data: %s, %d classes, image size %s x %d channels, split %s",
        cfg.data,
        bundle.num_classes,
        "x".join(map(str, bundle.image_size)),
        bundle.channels,
        bundle.split.counts(),
    )

    options = dict(cfg.model_kwargs)
    options["weights"] = weights
    options.setdefault("freeze_bn", True)  # the recipe never trains BatchNorm
    strategy = get_strategy(cfg.strategy)
    with strategy.scope():
        model = create_model(
            spec.name, bundle.num_classes, bundle.image_size, bundle.channels, **options
        )
    base = get_backbone(model)
    blocks = [
        (n, ls)
        for n, ls in backbone_blocks(base, spec.extra["block_rule"])
        if any(layer.weights for layer in ls)
    ]
    log.info(
        "Model: %s (%s weights), %s parameters, %d backbone blocks",
        spec.name,
        weights or "random",
        f"{model.count_params():,}",
        len(blocks),
    )

    has_val = bundle.val is not None
    monitor = cfg.monitor if has_val else cfg.monitor.removeprefix("val_")
    verbose = 2 if cfg.verbose == 1 and not sys.stdout.isatty() else cfg.verbose
    lr1 = cfg.learning_rate or DEFAULT_LEARNING_RATES[cfg.optimizer]
    stages: dict[str, dict[str, Any]] = {}
    checkpoint_state = None

    def stage_callbacks(stage: int, checkpoint) -> list:
        cbs = [
            EpochStats(n_train),
            _StageColumn(stage),
            keras.callbacks.CSVLogger(str(run.history), append=True),
            checkpoint,
            keras.callbacks.TerminateOnNaN(),
        ]
        if cfg.early_stopping:
            cbs.append(
                keras.callbacks.EarlyStopping(
                    monitor=monitor,
                    patience=cfg.early_stopping,
                    mode="min" if "loss" in monitor else "max",
                )
            )
        return cbs + list(callbacks or [])

    # ---- stage 1: the head on the frozen backbone
    t0 = time.time()
    freeze_for_stage(model, 1)
    augment1 = opts.stage1_augment and bundle.augment.active()
    feature_path = opts.feature_cache == "auto" and not augment1
    if opts.freeze_epochs > 0:
        cfg1 = cfg.replace(learning_rate=lr1, epochs=opts.freeze_epochs)
        if feature_path:
            log.info(
                "Stage 1 (%d epochs, lr %g): feature path - backbone features computed once, "
                "head trained on them",
                opts.freeze_epochs,
                lr1,
            )
            t_feat = time.time()
            f_train, y_train = _extract_features(model, bundle.dataset("train", training=False))
            f_val, y_val = _extract_features(model, bundle.val) if has_val else (None, None)
            log.info(
                "Features of %d images in %.1f s",
                len(y_train) + (len(y_val) if has_val else 0),
                time.time() - t_feat,
            )
            cw = bundle.class_weights()
            w_train = None if cw is None else cw[y_train.argmax(1)].astype("float32")
            train1 = _feature_dataset(f_train, y_train, cfg.batch_size, cfg.seed, w_train, True)
            val1 = _feature_dataset(f_val, y_val, cfg.batch_size, cfg.seed) if has_val else None
            with strategy.scope():
                fit_model = head_model(model)
            checkpoint = _SaveClassifier(model, run.checkpoints, monitor, None)
        else:
            log.info(
                "Stage 1 (%d epochs, lr %g): backbone path - the frozen backbone runs on every "
                "batch%s",
                opts.freeze_epochs,
                lr1,
                " (augmentation comes before it)" if augment1 else "",
            )
            train1, val1 = _train_dataset(bundle, augment1), bundle.val
            fit_model = model
            checkpoint = RunCheckpoint(run.checkpoints, monitor, None)
        with strategy.scope():
            _compile(fit_model, cfg1, steps_per_epoch, bundle.num_classes)
        fit_quietly(
            fit_model, train1, val1, opts.freeze_epochs, 0, stage_callbacks(1, checkpoint), verbose
        )
        checkpoint_state = checkpoint.state
        best = run.checkpoints / "best.keras"
        if best.is_file():
            model.load_weights(str(best))  # stage 2 starts from stage 1's best epoch
        stage1: dict[str, Any] = {
            "path": "features" if feature_path else "backbone",
            "epochs": checkpoint.state.get("epochs_done"),
            "best_epoch": checkpoint.state.get("best_epoch"),
            monitor: checkpoint.state.get("best_value"),
            "learning_rate": lr1,
        }
        if bundle.test is not None:
            if feature_path:
                f_test, y_test = _extract_features(model, bundle.test)
                stage1["test_accuracy"] = _accuracy(
                    fit_model, _feature_dataset(f_test, y_test, cfg.batch_size, cfg.seed)
                )
            else:
                stage1["test_accuracy"] = _accuracy(model, bundle.test)
        stage1["seconds"] = round(time.time() - t0, 2)
        stages["1"] = stage1
        log.info(
            "Stage 1 done in %.1f s: best %s %.4f (epoch %s)%s",
            stage1["seconds"],
            monitor,
            stage1[monitor] or float("nan"),
            stage1["best_epoch"],
            f", test accuracy {stage1['test_accuracy']:.4f}" if "test_accuracy" in stage1 else "",
        )

    # ---- stage 2: the top blocks too, at a lower rate, BatchNorm still frozen
    unfrozen = unfrozen_block_count(opts.unfreeze, len(blocks))
    if unfrozen > 0:
        t0 = time.time()
        names = freeze_for_stage(model, 2, blocks, unfrozen)
        lr2 = opts.stage2_lr or lr1 / 10
        done = int((checkpoint_state or {}).get("epochs_done") or 0)
        cfg2 = cfg.replace(learning_rate=lr2)
        with strategy.scope():
            _compile(model, cfg2, steps_per_epoch, bundle.num_classes)
            if opts.layer_decay and opts.layer_decay < 1:
                decayed = _layerwise_optimizer(model.optimizer, blocks, unfrozen, opts.layer_decay)
                model.compile(
                    optimizer=decayed, loss=model.loss, metrics=_metrics(cfg, bundle.num_classes)
                )
        trainable = sum(int(np.prod(v.shape)) for v in model.trainable_weights)
        log.info(
            "Stage 2 (%d epochs, lr %g%s): %d of %d blocks unfrozen (%s ... %s), "
            "%s trainable parameters, BatchNorm frozen",
            cfg.epochs,
            lr2,
            f", layer decay {opts.layer_decay}" if opts.layer_decay else "",
            unfrozen,
            len(blocks),
            names[0],
            names[-1],
            f"{trainable:,}",
        )
        checkpoint = RunCheckpoint(run.checkpoints, monitor, checkpoint_state)
        before = checkpoint.state.get("best_value")
        fit_quietly(
            model,
            bundle.train,
            bundle.val,
            done + cfg.epochs,
            done,
            stage_callbacks(2, checkpoint),
            verbose,
        )
        checkpoint_state = checkpoint.state
        improved = checkpoint.state.get("best_epoch") is not None and (
            before is None or checkpoint.state["best_epoch"] > done
        )
        stages["2"] = {
            "epochs": int(checkpoint.state.get("epochs_done") or 0) - done,
            "unfrozen_blocks": names,
            "learning_rate": lr2,
            "layer_decay": opts.layer_decay,
            "improved_on_stage1": bool(improved),
            "best_epoch": checkpoint.state.get("best_epoch"),
            monitor: checkpoint.state.get("best_value"),
            "seconds": round(time.time() - t0, 2),
        }
        if not improved and "1" in stages:
            log.info(
                "Stage 2 never beat stage 1's %s; the final model is stage 1's best epoch", monitor
            )
    else:
        log.info("Stage 2 skipped (unfreeze=%s)", opts.unfreeze)

    best = run.checkpoints / "best.keras"
    final = load_model(best) if best.is_file() else model
    save_model(final, run.model)
    state = checkpoint_state or {}
    metrics: dict[str, Any] = {
        "recipe": "finetune",
        "best_epoch": state.get("best_epoch"),
        "monitor": monitor,
        "best_value": state.get("best_value"),
        "epochs_done": state.get("epochs_done"),
        "stages": stages,
        "train_seconds_this_session": round(sum(s.get("seconds", 0) for s in stages.values()), 2),
        "parameters": int(final.count_params()),
    }
    evaluation, test_bundle = evaluate_test_split(final, bundle, run, cfg, metrics)
    metrics["total_seconds_this_session"] = round(time.time() - started, 2)
    write_json(run.metrics, metrics)
    try:
        from cnnlab.evaluation.report import try_write_report
    except ImportError:  # the HTML report is optional
        pass
    else:
        try_write_report(run.path, model=final, bundle=test_bundle, evaluation=evaluation)
    log.info("Done in %.1f s. Run folder: %s", time.time() - started, run.path)
    return FineTuneResult(
        run.path, final, read_history(run.history), metrics, cfg, evaluation, options=opts
    )


def _compile(model, cfg: TrainConfig, steps_per_epoch: int, num_classes: int) -> None:
    from cnnlab.training.trainer import compile_model

    compile_model(model, cfg, steps_per_epoch, num_classes)


def _metrics(cfg: TrainConfig, num_classes: int) -> list:
    k = min(cfg.top_k, num_classes)
    return [
        keras.metrics.CategoricalAccuracy(name="accuracy"),
        keras.metrics.TopKCategoricalAccuracy(k=k, name=f"top{k}"),
    ]
