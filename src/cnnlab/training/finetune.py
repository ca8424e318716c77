"""Fine-tuning's parts: its options, freezing per stage, the head alone, backbone features.

``cnnlab.workflows.finetune.fine_tune`` runs the two stages with these:

- :class:`FineTuneOptions` and :func:`resolve_finetune_config`: the keys fine-tuning
  adds to the training config, with its defaults (``mobilenet``, ``imagenet``, 10 epochs);
- :func:`freeze_for_stage`: stage 1 freezes the backbone, stage 2 unfreezes its top
  blocks (:func:`unfrozen_block_count`), BatchNorm always frozen;
- :func:`head_model`, :func:`extract_features`, :func:`feature_dataset`: the *feature
  path*, where the frozen backbone runs once and the head trains on its pooled features.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np

from cnnlab.config import TrainConfig, normalise_keys, read_yaml_mapping, resolve_config
from cnnlab.errors import ConfigError, ModelError

log = logging.getLogger("cnnlab")

__all__ = [
    "FINETUNE_DEFAULTS",
    "FineTuneOptions",
    "backbone_block_list",
    "extract_features",
    "feature_dataset",
    "freeze_for_stage",
    "head_model",
    "paired_gain",
    "plan_validation",
    "resolve_finetune_config",
    "train_dataset",
    "unfrozen_block_count",
]

# Defaults that differ from `cnnlab train`'s when fine-tuning.
FINETUNE_DEFAULTS: dict[str, Any] = {"model": "mobilenet", "weights": "imagenet", "epochs": 10}


@dataclass
class FineTuneOptions:
    """The keys ``fine_tune`` adds to the training config (``epochs`` is stage 2's length)."""

    freeze_epochs: int = 10  # stage 1 epochs when the head trains by gradient descent; 0 skips
    unfreeze: str = "0.25"  # stage 2: top N blocks ("3"), a fraction ("0.25") or "all"; 0 skips it
    stage2_learning_rate: float | None = None  # default: stage 1's learning rate / 10
    layer_decay: float | None = (
        None  # e.g. 0.8: each unfrozen block below the top gets 0.8x more decay
    )
    stage1_augment: bool = False  # augment in stage 1 too (forces the backbone path)
    feature_cache: str = "auto"  # auto: feature path when possible; off: always the backbone path
    # auto: on the feature path a linear head is fitted as logistic regression (L-BFGS, C
    # by k-fold CV); epochs: the head is trained for freeze_epochs by gradient descent
    head_fit: str = "auto"
    head_only: bool = False  # stage 1 alone: the frozen-feature classifier (no stage 2)

    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]


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
        lr2 = opts.stage2_learning_rate
        opts.stage2_learning_rate = None if lr2 is None else float(lr2)
        opts.layer_decay = None if opts.layer_decay is None else float(opts.layer_decay)
        for key in ("stage1_augment", "head_only"):
            value = getattr(opts, key)
            if isinstance(value, str):
                value = value.lower() in ("1", "true", "yes")
            setattr(opts, key, bool(value))
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
    if opts.stage2_learning_rate is not None and opts.stage2_learning_rate <= 0:
        raise ConfigError(
            f"Bad stage2_learning_rate: received {opts.stage2_learning_rate}",
            expected="a positive number",
        )
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
    opts.head_fit = str(opts.head_fit).strip().lower()
    if opts.head_fit not in ("auto", "epochs"):
        raise ConfigError(
            f"Bad head_fit: received {opts.head_fit!r}",
            expected="auto (logistic regression on cached features when possible) or epochs",
            fix="Pass --head-fit auto or --head-fit epochs",
        )
    return opts


# ---------------------------------------------------------------- the plan

# Below this many images (training + validation), a validation split (10%: under 100
# images) cannot tell stage 2 from stage 1 reliably: the images all go to the head,
# chosen by k-fold cross-validation, and stage 2 is skipped.
STAGE2_MIN_IMAGES = 1000


def plan_validation(
    n_images: int, val_split: float, explicit_val: bool, stage2_wanted: bool
) -> tuple[float, str | None]:
    """The validation share a fine-tuning run uses, and why stage 2 will not run (or None).

    A validation split exists only to judge stage 2 against stage 1 (the head's
    regularisation is cross-validated on the training images). So without stage 2,
    or with fewer than :data:`STAGE2_MIN_IMAGES` images, no images are spent on one,
    unless ``val_split`` was given explicitly.

    Example:
        >>> plan_validation(245, 0.1, False, True)
        (0.0, '245 images: too few to judge stage 2 on a validation split (needs 1,000)')
    """
    if explicit_val:
        if not stage2_wanted:
            return val_split, "head only"
        return val_split, None if val_split > 0 else "no validation split to judge it on"
    if not stage2_wanted:
        return 0.0, "head only"
    if n_images < STAGE2_MIN_IMAGES:
        return 0.0, (
            f"{n_images:,} images: too few to judge stage 2 on a validation split "
            f"(needs {STAGE2_MIN_IMAGES:,})"
        )
    return val_split, None if val_split > 0 else "no validation split to judge it on"


# Stage 2 is kept only when it beats stage 1 on validation by more than chance:
# a one-sided McNemar test at 5% on the images one gets right and the other wrong.
STAGE2_Z = 1.645


def paired_gain(stage1_right: np.ndarray, stage2_right: np.ndarray) -> tuple[int, int, bool]:
    """``(fixed, broken, significant)``: validation images stage 2 gets right that stage 1
    got wrong, the reverse, and whether ``fixed - broken >= STAGE2_Z * sqrt(fixed + broken)``.

    A gain of a few images on a few hundred is noise: on flowers5 (432 validation
    images) MobileNet's stage 2 won by 3 images and lost 1.4 points on the test set.

    Example:
        >>> paired_gain(np.array([1, 0, 0, 1]), np.array([1, 1, 1, 1]))
        (2, 0, True)
    """
    a, b = np.asarray(stage1_right, bool), np.asarray(stage2_right, bool)
    fixed, broken = int(np.sum(b & ~a)), int(np.sum(a & ~b))
    significant = fixed > broken and fixed - broken >= STAGE2_Z * math.sqrt(fixed + broken)
    return fixed, broken, bool(significant)


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
    config: TrainConfig | dict | str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    command: str = "finetune",
) -> tuple[TrainConfig, FineTuneOptions]:
    """Split a config (object, dict or YAML path) plus overrides into training keys and
    fine-tuning options, with fine-tuning defaults (``mobilenet``, ``imagenet``, 10 epochs).
    ``micro_batch_size`` is refused for any ``command`` but ``finetune`` (whose stage 2
    can accumulate micro-batches), naming it.

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
    refuse_train_only_options(cfg, command)
    return cfg, _coerce_options(ft)


def refuse_train_only_options(cfg: TrainConfig, command: str) -> None:
    """Refuse what only ``cnnlab train`` does, where it would be silently ignored.

    ``precision`` other than float32 (fine-tuning and the learning-rate range test
    compute in float32), and ``micro_batch_size`` outside ``train`` and ``finetune``
    (the range test trains whole batches).
    """
    if cfg.precision != "float32":
        raise ConfigError(
            f"precision {cfg.precision} given to `cnnlab {command}`, which computes in float32",
            expected="mixed precision with `cnnlab train` only",
            fix="Drop precision (or set it to float32)",
        )
    if command != "finetune" and cfg.micro_batch_size is not None:
        raise ConfigError(
            f"micro_batch_size given to `cnnlab {command}`, which does not use it",
            expected="micro-batches with `cnnlab train` and `cnnlab finetune` only",
            fix="Drop micro_batch_size, or pass a smaller --batch-size",
        )


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


def backbone_block_list(model, spec) -> list[tuple[str, list]]:
    """The backbone's blocks that hold weights, bottom to top: ``(name, layers)`` pairs."""
    from cnnlab.models.pretrained.applications import backbone_blocks, get_backbone

    base = get_backbone(model)
    return [
        (name, members)
        for name, members in backbone_blocks(base, spec.extra["block_rule"])
        if any(layer.weights for layer in members)
    ]


def compile_stage2(model, cfg, steps: int, num_classes: int, blocks, unfrozen: int, decay):
    """Compile ``model`` for stage 2 with ``cfg``'s optimizer (its micro-batches
    accumulated), layer-wise decayed when ``decay`` < 1. Call under the run's strategy."""
    from cnnlab.nn.optimizers import layerwise_optimizer, make_optimizer
    from cnnlab.training.fit import compile_model

    micro = cfg.micro_batch_size or cfg.batch_size
    optimizer = make_optimizer(cfg, steps, accumulation_steps=cfg.batch_size // micro)
    if decay and decay < 1:
        optimizer = layerwise_optimizer(optimizer, blocks, unfrozen, decay)
    compile_model(model, cfg, steps, num_classes, optimizer)


def stage2_layers(model, blocks: list[tuple[str, list]], unfrozen: int) -> list:
    """The layers whose outputs stage 2 keeps for backpropagation: the ``unfrozen`` top
    blocks and the head (the frozen blocks below them run as in inference)."""
    from cnnlab.models.pretrained.applications import get_backbone

    base = get_backbone(model)
    top = blocks[len(blocks) - unfrozen :] if unfrozen else []
    return [layer for _, members in top for layer in members] + [
        layer for layer in model.layers if layer is not base
    ]


# ---------------------------------------------------------------- the feature path


def train_dataset(bundle, augment: bool):
    """The shuffled training pipeline, augmented or not (class weights kept)."""
    if augment:
        return bundle.train
    return bundle.subset("train", batch_size=bundle.batch_size, training=True)


def extract_features(model, ds) -> tuple[np.ndarray, np.ndarray]:
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


def feature_dataset(feats, labels, batch_size: int, seed: int, weights=None, shuffle=False):
    """A ``tf.data`` pipeline over computed features (and per-example weights, if given)."""
    import tensorflow as tf

    from cnnlab.data.pipeline import apply_options

    parts = (feats, labels) if weights is None else (feats, labels, weights)
    ds = tf.data.Dataset.from_tensor_slices(parts)
    if shuffle:
        ds = ds.shuffle(len(labels), seed=seed, reshuffle_each_iteration=True)
    return apply_options(ds.batch(batch_size).prefetch(tf.data.AUTOTUNE))


def check_backbone(cfg):
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
