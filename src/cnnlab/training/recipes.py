"""Training recipes: named sets of defaults, applied to the keys a user did not set.

| recipe | what it does |
| ------ | ------------ |
| plain  | nothing: every key keeps TrainConfig's default |
| fast   | airbench94's setup (K. Jordan): the ``airbench`` network (whitening, identity-initialised convs, BatchNorm tricks, TTA), label smoothing 0.2, Nesterov SGD (momentum 0.85) with linear warm-up and decay whose convolution kernels take airbench94_muon's orthogonalised steps (``ConvMuon``), lookahead weight averaging, alternating flips and 2-pixel translations, the first 65 % of the epochs at 1/2 to 3/4 size (colour images), bfloat16 arithmetic where the hardware has it (``precision: auto``) |
| auto   | ``fast`` for small images (20 to 40 pixels a side: CIFAR, Fashion-MNIST, SVHN) when no ``--model`` is given; ``plain`` otherwise (e.g. the 8×8 digits) |

A recipe never overrides a key that was given (flag, YAML or keyword), and the
resolved values are written to the run's ``config.yaml``, so a run repeats
exactly and ``--resume`` does not re-apply anything.

The numbers (``FAST``) come from airbench94 with Keras conversions:
airbench sums the loss over a 1024 batch with lr 1.465e-3, which is lr 1.5 for
Keras' mean loss (scaled linearly with the batch size here). Its PyTorch SGD
gets ``weight_decay = wd / lr`` with ``wd = 0.0153 · 1024 / 7850.7``, so each
step shrinks the weights by ``wd`` ≈ 2.0e-3 times the schedule factor before
momentum, ≈ 1.33e-2 after Nesterov momentum 0.85 amplifies it by 1/(1-0.85).
Keras' decoupled decay shrinks by ``lr · weight_decay`` per step, so
``weight_decay`` = 1.33e-2 / 1.5 = 8.87e-3, independent of the batch size.
(An earlier version read airbench's decay as ``lr · wd`` and used 1.3e-5,
almost no decay: 0.834 against 0.845 on CIFAR-10 at width 0.5, 4 epochs.)

The convolution kernels follow airbench94_muon instead (``cnnlab.nn.ConvMuon``):
each step rescales a kernel to norm sqrt(filters) and moves it by 0.16 × the
scheduled rate (0.24 at batch 1024, airbench94_muon's value) along its
orthogonalised Nesterov momentum (0.6), without weight decay; biases, BatchNorm
offsets and the head keep the SGD above. On CIFAR-10 JPEGs this reaches in
10 epochs about what SGD reached in 13 (0.8995 and 0.8999 in 9 epochs, with and
without warm-up; SGD needed 11-12 for 0.90; bench/README.md). ``--optimizer sgd
--epochs 13 --progressive-resize 0`` is the recipe before ConvMuon.

Progressive resizing (``progressive_resize``, colour images): the first 65 % of
the epochs train at a lower resolution, half of them at 1/2 of the image side, a
fifth at 5/8 and the rest at 3/4 (16, 20 and 24 pixels for CIFAR: 0.28, 0.43 and 0.57
of a full-size epoch's time in bfloat16 with Keras' layers, 0.29, 0.42 and 0.58 with
the fused ones); the last epochs at full size adapt the
network, its BatchNorm statistics and the lookahead average to the size it is used
at. As in airbench, the whitening layer's bias trains for the first 30 % of the
epochs only (``FreezeWhiteningBias``), which spares the first convolution's input
gradient afterwards (4-8 % of a full-size step here).
Measured on CIFAR-10 JPEGs (bench runs, bfloat16, bench/README.md): 14 epochs, 9 of
them at 16 to 24 pixels, scored 0.9014 after 556 s of training with airbench's fused
GELU and BatchNorm kernels (``cnnlab.nn.layers.GELU``, ``FusedBatchNorm``), 0.9022
after 710 s with Keras' layers; 12 epochs with 7 at 24×24 0.9022 after 781 s; 10
full-size epochs 0.9027 after 866 s. With 10 of 14 at low resolution (4 at full size)
the bench scored 0.8991 after 656 s, short of 0.90.
``--progressive-resize 0 --epochs 10`` is the recipe without resizing.

Defaults: colour images width 0.75 (about 0.56 of airbench94's compute) for
14 epochs, 9 of them at lower resolution; grayscale width 0.5 for 10, all at full size
(untested there, so unchanged). ``--model-kwargs width=1`` is
airbench94's network; ``--epochs`` and ``width`` trade time for accuracy
(figures in bench/README.md).

Example:
    >>> cnnlab.train(data="folder:cifar10/train", recipe="fast", epochs=10)
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any

import keras
import numpy as np

from cnnlab import config as _config
from cnnlab.config import RECIPES, TrainConfig, load_yaml
from cnnlab.data.augment import NO_FLIP_DATASETS
from cnnlab.errors import ConfigError
from cnnlab.nn.optimizers import optimizer_steps

log = logging.getLogger("cnnlab")

# airbench94's hyperparameters (see the module docstring for the conversions).
FAST: dict[str, Any] = {
    "model": "airbench",
    "optimizer": "muon",  # SGD, with orthogonalised steps for convolution kernels
    # Colour images: ~0.56 of airbench94's compute per full-size epoch; 14 epochs, the
    # first 9 at 16-24 px (progressive resizing): 0.9014 on CIFAR-10 JPEGs after 556 s of
    # training on a 2-core CPU, with airbench's fused GELU and BatchNorm (bench/README.md).
    "width": 0.75,
    "epochs": 14,
    "batch_size": 1024,
    "lr_per_1024": 1.5,  # mean-loss learning rate at batch 1024, scaled linearly
    "momentum": 0.85,
    "weight_decay": 8.87e-3,  # decoupled, per unit of learning rate (see above)
    "label_smoothing": 0.2,
    "warmup_fraction": 0.23,  # of all steps: lr rises 0.2 → 1.0 × peak
    "final_fraction": 0.07,  # lr falls linearly to 0.07 × peak (cnnlab.nn.LinearWarmupDecay)
    "random_crop": 2,  # translations by up to 2 pixels (reflect padding)
    "lookahead_every": 5,
    # the whitening layer's bias trains for the first 30 % of the epochs (airbench: 3 of
    # 9.9), then freezes, which saves a convolution per step (FreezeWhiteningBias)
    "whiten_bias_fraction": 0.3,
    # Progressive resizing: the first 65 % of the epochs (9 of 14) at a lower
    # resolution: 5 at 1/2 of the side, 1 at 5/8, 3 at 3/4 (16, 20, 24 px for CIFAR;
    # cnnlab.training.callbacks.LOW_RES_STAGES).
    "progressive_resize": 0.65,
    # The schedule and weight averaging end at the last epoch, which is the model,
    # so a validation split would only take images (and TTA-evaluation time).
    "val_split": 0.0,
    # bfloat16 arithmetic where the hardware has it (cnnlab.models.precision): the
    # width-0.75 network trains 1.35x faster on an AVX512_BF16 CPU (bench/README.md).
    "precision": "auto",
}
# Grayscale images (Fashion-MNIST, MNIST) are easier: a quarter of the compute, 10 epochs,
# and plain SGD: ConvMuon scored 0.9427 on Fashion-MNIST where SGD scored 0.945 (bench/README.md).
FAST_GRAY: dict[str, Any] = {
    "width": 0.5,
    "epochs": 10,
    "optimizer": "sgd",
    "progressive_resize": 0.0,
}
AUTO_MIN_SIDE, AUTO_MAX_SIDE = 20, 40


# ---------------------------------------------------------------------- which keys were given
def explicit_keys(
    config: TrainConfig | dict | str | os.PathLike | None, overrides: dict[str, Any] | None
) -> set[str]:
    """The config keys a user set: non-None overrides plus the keys of the given config.

    For a :class:`TrainConfig` object, the keys whose value differs from the default.

    Example:
        >>> explicit_keys({"epochs": 3}, {"lr": None, "batch_size": 32})
        {'epochs', 'batch_size'}
    """
    aliases = getattr(_config, "ALIASES", {})

    def norm(k) -> str:
        k = str(k).replace("-", "_")
        return aliases.get(k, k)

    keys = {norm(k) for k, v in (overrides or {}).items() if v is not None}
    if isinstance(config, TrainConfig):
        default = TrainConfig().to_dict()
        keys |= {k for k, v in config.to_dict().items() if v != default[k]}
    elif isinstance(config, dict):
        keys |= {norm(k) for k in config}
    elif config is not None:
        keys |= set(load_yaml(config))
    return keys


# ---------------------------------------------------------------------- choosing and applying
def choose_recipe(cfg: TrainConfig, explicit: set[str], image_size: tuple[int, int]) -> str:
    """Resolve ``auto`` to ``fast`` or ``plain`` from the image size and whether a model was given."""
    if cfg.recipe not in RECIPES:
        raise ConfigError(
            f"Unknown recipe '{cfg.recipe}'",
            expected=f"one of {', '.join(RECIPES)}",
            fix="Pass --recipe fast, --recipe plain or --recipe auto",
        )
    if cfg.recipe != "auto":
        return cfg.recipe
    small = AUTO_MIN_SIDE <= min(image_size) and max(image_size) <= AUTO_MAX_SIDE
    model_given = "model" in explicit and cfg.model != FAST["model"]
    return "fast" if small and not model_given else "plain"


def fast_batch_size(n_train: int) -> int:
    """1024 as airbench for large sets; smaller for small ones (about 40 steps per epoch).

    The power of two nearest to ``n_train / 40``, so CIFAR-10's 50,000 images
    and the 40,000 left after the default validation and test splits both
    train at 1024 (rounding down gave 512 for the latter: 39 steps was "too few").

    Example:
        >>> fast_batch_size(50_000), fast_batch_size(40_000), fast_batch_size(1_000)
        (1024, 1024, 64)
    """
    size = 2 ** round(math.log2(max(n_train / 40, 1)))
    return int(min(FAST["batch_size"], max(64, size)))


def apply_recipe(
    cfg: TrainConfig,
    explicit: set[str],
    image_size: tuple[int, int],
    n_train: int,
    channels: int = 3,
) -> tuple[TrainConfig, dict[str, Any]]:
    """Resolve the recipe and fill in its defaults for every key not in ``explicit``.

    The fast recipe sets ``val_split`` 0 when none was given; the caller redraws
    the split when that changes it (see ``cnnlab.workflows.train``).

    ``channels`` picks the default width and epochs (``FAST`` for colour,
    ``FAST_GRAY`` for grayscale).

    Returns the new config (``recipe`` resolved to ``fast`` or ``plain``) and
    the values the recipe set.

    Example:
        >>> cfg, applied = apply_recipe(TrainConfig(recipe="fast"), set(), (32, 32), 50000)
        >>> applied["optimizer"], cfg.batch_size
        ('sgd', 1024)
    """
    name = choose_recipe(cfg, explicit, image_size)
    if name == "plain":
        return cfg.replace(recipe="plain"), {}
    defaults = FAST_GRAY if channels == 1 else FAST
    d = {
        k: v for k, v in _fast_values(cfg, explicit, n_train, defaults).items() if k not in explicit
    }
    # An explicit optimizer keeps its own default learning rate and momentum.
    if "optimizer" in explicit and cfg.optimizer not in ("sgd", "muon"):
        for k in ("learning_rate", "momentum", "nesterov", "weight_decay"):
            d.pop(k, None)
    if d.get("model", cfg.model) == "airbench":
        kwargs = {"width": defaults["width"]}
        if cfg.data in NO_FLIP_DATASETS:
            kwargs["tta_flip"] = False
        d["model_kwargs"] = {**kwargs, **(cfg.model_kwargs or {})}
    return cfg.replace(recipe="fast", **d), d


def _fast_values(cfg: TrainConfig, explicit: set[str], n_train: int, defaults: dict):
    """Every key the fast recipe sets, before the given ones are taken out."""
    epochs = cfg.epochs if "epochs" in explicit else defaults["epochs"]
    batch = cfg.batch_size if "batch_size" in explicit else fast_batch_size(n_train)
    return {
        "model": FAST["model"],
        "epochs": epochs,
        "batch_size": batch,
        "optimizer": defaults.get("optimizer", FAST["optimizer"]),
        "momentum": FAST["momentum"],
        "nesterov": True,
        "learning_rate": FAST["lr_per_1024"] * batch / 1024,
        "weight_decay": FAST["weight_decay"],
        "label_smoothing": FAST["label_smoothing"],
        "schedule": "linear",
        "warmup_epochs": round(FAST["warmup_fraction"] * epochs, 4),
        "augment": "none",
        "random_crop": FAST["random_crop"],
        "translation": 0.0,
        "flip": "none" if cfg.data in NO_FLIP_DATASETS else "alternating",
        "val_split": FAST["val_split"],
        "precision": defaults.get("precision", FAST["precision"]),
        "progressive_resize": defaults.get("progressive_resize", FAST["progressive_resize"]),
    }


# ---------------------------------------------------------------------- weight averaging
class Lookahead(keras.callbacks.Callback):
    """airbench's lookahead: every ``every`` steps blend the weights into a slow copy and write it back.

    The blend keeps ``0.95**every · progress³`` of the slow copy, so early on
    it follows the weights and towards the end it averages over many steps.
    At the last step the slow copy becomes the model. All float weights take
    part, BatchNorm's running statistics included (as airbench's state_dict).

    Steps are optimizer steps: with micro-batches (gradient accumulation) Keras calls
    this after every micro-batch, and it acts only after the ones that applied a step,
    so ``total_steps`` is ``steps_per_epoch * epochs`` either way.

    Example:
        >>> model.fit(ds, epochs=10, callbacks=[Lookahead(total_steps=10 * len(ds))])
    """

    def __init__(self, total_steps: int, every: int = 5):
        super().__init__()
        self.total_steps = max(1, int(total_steps))
        self.every = int(every)
        self._slow: list[np.ndarray] | None = None

    def _variables(self):
        return [v for v in self.model.weights if "float" in str(v.dtype)]

    def on_train_begin(self, logs=None):
        self._slow = [np.array(v.numpy()) for v in self._variables()]

    def _blend(self, decay: float) -> None:
        for v, slow in zip(self._variables(), self._slow):
            slow *= decay
            slow += (1.0 - decay) * v.numpy()
            v.assign(slow)

    def on_train_batch_end(self, batch, logs=None):
        step, stepped = optimizer_steps(self.model.optimizer)
        if not stepped:  # a micro-batch whose gradients were only accumulated
            return
        if step >= self.total_steps:
            self._blend(1.0)  # the slow copy is the final model
        elif step % self.every == 0:
            self._blend(0.95**self.every * (step / self.total_steps) ** 3)


class FreezeWhiteningBias(keras.callbacks.Callback):
    """airbench's whitening bias trains for the first epochs only (3 of its 10).

    From epoch ``from_epoch`` on, the :class:`~cnnlab.nn.layers.PatchWhitening`
    layers are frozen, so no gradient flows below the first convolution: its
    input-gradient convolution (on the largest feature map) is skipped: 4-8 % of
    a full-size step for airbench at width 0.75 in bfloat16. The train function
    is traced again once, the first time it is needed frozen.

    The layers are trainable again at every epoch's end, before the checkpoint
    is written, so a checkpoint's optimizer has the variables that a resumed run
    rebuilds; Keras keeps the frozen train function across that switch.
    """

    def __init__(self, from_epoch: int):
        super().__init__()
        self.from_epoch = int(from_epoch)
        self._frozen_function = None

    def _set(self, trainable: bool) -> None:
        from cnnlab.models.scratch.airbench import whitening_layers

        for layer in whitening_layers(self.model):
            layer.trainable = trainable

    def on_epoch_begin(self, epoch, logs=None):
        if epoch < self.from_epoch:
            return
        self._set(False)
        if self.model.train_function is not self._frozen_function:
            self.model.make_train_function(force=True)
            self._frozen_function = self.model.train_function

    def on_epoch_end(self, epoch, logs=None):
        self._set(True)

    def on_train_end(self, logs=None):
        self._set(True)


def callbacks(cfg: TrainConfig, steps_per_epoch: int) -> list[keras.callbacks.Callback]:
    """Callbacks the recipe needs; they must run before the checkpoint callback."""
    if cfg.recipe != "fast" or cfg.model != "airbench":
        return []
    freeze_from = max(1, round(FAST["whiten_bias_fraction"] * cfg.epochs))
    return [
        Lookahead(steps_per_epoch * cfg.epochs, FAST["lookahead_every"]),
        FreezeWhiteningBias(freeze_from),
    ]


def prepare_model(model, bundle) -> None:
    """Fit the whitening layer (if any) on up to 5000 training images."""
    from cnnlab.models.scratch.airbench import init_whitening, whitening_layers

    if not whitening_layers(model):
        return
    images = bundle.sample_images("train", 5000)
    init_whitening(model, images)
    log.info("Whitening layer fitted on %d training images", len(images))
