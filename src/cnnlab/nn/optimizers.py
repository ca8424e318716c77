"""Optimizers: the one factory every run uses, and layer-wise learning rates.

:func:`make_optimizer` builds the config's ``optimizer`` (``OPTIMIZERS``) with its
``schedule`` (``cnnlab.nn.schedules.SCHEDULES``); ``train``, the fast recipe,
fine-tuning and the learning-rate range test all call it.

``LAYERWISE`` holds a variant of each optimizer with a learning-rate multiplier
per variable (fine-tuning's ``layer_decay``). They are registered with Keras
(``cnnlab>LayerwiseSGD`` ...), so a model saved with one reloads with its optimizer.
"""

from __future__ import annotations

from collections.abc import Callable

import keras
from keras import ops

from cnnlab.errors import ConfigError
from cnnlab.nn.schedules import PerOptimizerStep, make_schedule

__all__ = [
    "DEFAULT_LEARNING_RATES",
    "ConvMuon",
    "LAYERWISE",
    "OPTIMIZERS",
    "accumulating",
    "layerwise_optimizer",
    "make_optimizer",
    "optimizer_steps",
]

DEFAULT_LEARNING_RATES = {
    "adam": 1e-3,
    "adamw": 1e-3,
    "rmsprop": 1e-3,
    "sgd": 0.05,
    "muon": 0.05,
}

# optimizer name (config key ``optimizer``) -> builder(cfg, learning rate or schedule).
# ``weight_decay`` is Keras' decoupled decay (``w -= lr * wd * w``) for every optimizer.
OPTIMIZERS: dict[str, Callable] = {
    "adam": lambda cfg, lr: keras.optimizers.Adam(lr, weight_decay=cfg.weight_decay or None),
    "adamw": lambda cfg, lr: keras.optimizers.AdamW(lr, weight_decay=cfg.weight_decay or 0.01),
    "rmsprop": lambda cfg, lr: keras.optimizers.RMSprop(
        lr, momentum=0.0, weight_decay=cfg.weight_decay or None
    ),
    "sgd": lambda cfg, lr: keras.optimizers.SGD(
        lr, momentum=cfg.momentum, nesterov=cfg.nesterov, weight_decay=cfg.weight_decay or None
    ),
    "muon": lambda cfg, lr: ConvMuon(
        lr,
        momentum=cfg.momentum,
        nesterov=cfg.nesterov,
        weight_decay=cfg.weight_decay or None,
        kernel_learning_rate_ratio=kernel_learning_rate(cfg.batch_size) / peak_learning_rate(cfg),
    ),
}

# ConvMuon's peak step for convolution kernels at batch 1024: airbench94_muon's 0.24
# (set there for batch 2000; the fast recipe's 10 epochs at 1024 were measured with it,
# bench/README.md; not tuned further).
KERNEL_LEARNING_RATE_1024 = 0.24


def kernel_learning_rate(batch_size: int) -> float:
    """ConvMuon's peak kernel step for a batch: 0.24 at 1024, scaled by sqrt(batch / 1024).

    An orthogonalised step has the same size whatever the gradient's noise, so
    the linear rule that keeps SGD's steps in proportion to the batch makes small
    batches' kernel steps too small; the square root kept one epoch of CIFAR-10 at
    batch 256 (width 0.25) at 0.753 test accuracy, where the linear rule gave 0.714.

    Example:
        >>> kernel_learning_rate(1024), kernel_learning_rate(256)
        (0.24, 0.12)
    """
    return KERNEL_LEARNING_RATE_1024 * (max(1, int(batch_size)) / 1024) ** 0.5


@keras.saving.register_keras_serializable(package="cnnlab")
class ConvMuon(keras.optimizers.SGD):
    """SGD whose convolution kernels take orthogonalised steps (airbench94_muon's rule).

    Every variable that is not a convolution kernel (biases, BatchNorm offsets,
    the dense head) takes a plain (Nesterov) SGD step with ``learning_rate``,
    ``momentum`` and decoupled ``weight_decay``. A convolution kernel (a 4-D
    variable ``(kh, kw, in, out)``) instead:

    1. keeps its own momentum (``kernel_momentum``, Nesterov like the rest);
    2. is rescaled to a Frobenius norm of ``sqrt(out)``: a kernel followed by
       BatchNorm computes the same function at any scale, so fixing the scale
       fixes the effective step size (and replaces weight decay for it);
    3. steps by ``learning_rate * kernel_learning_rate_ratio`` along the momentum
       seen as an ``(kh·kw·in, out)`` matrix and orthogonalised by
       ``ns_steps`` quintic Newton-Schulz iterations (K. Jordan's Muon), so
       every direction of the update moves at the same rate.

    Keras' own ``keras.optimizers.Muon`` orthogonalises 2-D variables only and
    sends convolution kernels to AdamW; this is the rule airbench uses for a
    conv net. The schedule of ``learning_rate`` scales both kinds of step.

    Example:
        >>> opt = ConvMuon(1.5, momentum=0.85, weight_decay=8.87e-3)
        >>> model.compile(optimizer=opt, loss="categorical_crossentropy")
    """

    NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)

    def __init__(
        self,
        learning_rate=0.01,
        momentum: float = 0.9,
        nesterov: bool = True,
        kernel_learning_rate_ratio: float = 0.16,
        kernel_momentum: float = 0.6,
        ns_steps: int = 3,
        **kwargs,
    ):
        super().__init__(learning_rate, momentum=momentum, nesterov=nesterov, **kwargs)
        self.kernel_learning_rate_ratio = float(kernel_learning_rate_ratio)
        self.kernel_momentum = float(kernel_momentum)
        self.ns_steps = int(ns_steps)

    @staticmethod
    def is_kernel(variable) -> bool:
        return len(variable.shape) == 4

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        if not self.momentums:  # SGD without momentum made none; kernels still need theirs
            self.momentums = [
                self.add_variable_from_reference(v, "momentum") if self.is_kernel(v) else None
                for v in variables
            ]

    def _use_weight_decay(self, variable):
        return not self.is_kernel(variable) and super()._use_weight_decay(variable)

    def update_step(self, gradient, variable, learning_rate):
        if not self.is_kernel(variable):
            return super().update_step(gradient, variable, learning_rate)
        m = self.momentums[self._get_variable_index(variable)]
        gradient = ops.cast(gradient, variable.dtype)
        mu = ops.cast(self.kernel_momentum, variable.dtype)
        self.assign(m, ops.add(ops.multiply(m, mu), gradient))
        direction = ops.add(gradient, ops.multiply(m, mu)) if self.nesterov else m
        out = variable.shape[-1]
        step = orthogonalize(ops.reshape(direction, (-1, out)), self.ns_steps)
        scale = ops.cast(out**0.5, variable.dtype) / (
            ops.norm(ops.reshape(variable, (-1,))) + 1e-12
        )
        lr = ops.cast(learning_rate, variable.dtype) * self.kernel_learning_rate_ratio
        self.assign(
            variable,
            ops.subtract(ops.multiply(variable, scale), lr * ops.reshape(step, variable.shape)),
        )

    def get_config(self):
        return {
            **super().get_config(),
            "kernel_learning_rate_ratio": self.kernel_learning_rate_ratio,
            "kernel_momentum": self.kernel_momentum,
            "ns_steps": self.ns_steps,
        }


def orthogonalize(matrix, steps: int = 3):
    """``matrix`` with its singular values pushed towards 1 (quintic Newton-Schulz).

    With K. Jordan's coefficients a few steps leave singular values roughly in
    0.5-1.5, which trains as well as the exact ``U Vᵀ`` of the SVD, at the cost of
    a handful of small matrix products.
    """
    a, b, c = ConvMuon.NS_COEFFICIENTS
    rows, cols = matrix.shape
    x = ops.transpose(matrix) if rows > cols else matrix
    x = x / (ops.norm(ops.reshape(x, (-1,))) + 1e-7)
    for _ in range(steps):
        gram = ops.matmul(x, ops.transpose(x))
        x = a * x + ops.matmul(b * gram + c * ops.matmul(gram, gram), x)
    return ops.transpose(x) if rows > cols else x


def peak_learning_rate(cfg) -> float:
    """The configured learning rate, or the optimizer's default when none is given."""
    return cfg.learning_rate or DEFAULT_LEARNING_RATES[cfg.optimizer]


def make_optimizer(
    cfg, steps_per_epoch: int | None = None, *, learning_rate=None, accumulation_steps: int = 1
) -> keras.optimizers.Optimizer:
    """The config's optimizer with its schedule (``cfg.schedule`` over ``cfg.epochs``).

    Args:
        cfg: a ``TrainConfig`` (``optimizer``, ``learning_rate``, ``schedule``,
            ``weight_decay``, ``momentum``, ``nesterov``, ...).
        steps_per_epoch: optimizer steps (batches) per epoch, to lay the schedule out.
        learning_rate: a fixed rate (a float) or a Keras schedule instead of the
            configured schedule (the learning-rate range test sets the rate itself).
        accumulation_steps: micro-batches per batch: Keras' ``gradient_accumulation_steps``
            (the optimizer applies the mean of their gradients every that many calls), with
            the schedule wrapped in :class:`~cnnlab.nn.schedules.PerOptimizerStep` so it
            still counts optimizer steps.

    Example:
        >>> make_optimizer(TrainConfig(optimizer="sgd", schedule="linear"), 40)
        <keras.src.optimizers.sgd.SGD ...>
    """
    if cfg.optimizer not in OPTIMIZERS:
        raise ConfigError(
            f"Unknown optimizer '{cfg.optimizer}'",
            expected=f"one of {', '.join(OPTIMIZERS)}",
            fix="Pass --optimizer adam (or another of those)",
        )
    if learning_rate is None:
        if steps_per_epoch is None:
            raise ConfigError(
                "make_optimizer needs steps_per_epoch to lay out the schedule",
                fix="Pass steps_per_epoch, or a fixed learning_rate",
            )
        learning_rate = make_schedule(cfg, steps_per_epoch, peak_learning_rate(cfg))
    optimizer = OPTIMIZERS[cfg.optimizer](cfg, learning_rate)
    if accumulation_steps > 1:
        return accumulating(optimizer, accumulation_steps)
    return optimizer


def accumulating(optimizer, accumulation_steps: int) -> keras.optimizers.Optimizer:
    """A copy of ``optimizer`` that accumulates ``accumulation_steps`` micro-batches'
    gradients per step, its schedule still counting optimizer steps."""
    config = optimizer.get_config()
    lr = optimizer._learning_rate  # the schedule object (get_config holds its dict)
    if isinstance(lr, keras.optimizers.schedules.LearningRateSchedule):
        config["learning_rate"] = PerOptimizerStep(lr, accumulation_steps)
    config["gradient_accumulation_steps"] = int(accumulation_steps)
    return type(optimizer).from_config(config)


def optimizer_steps(optimizer) -> tuple[int, bool]:
    """``(optimizer steps taken, whether the last call applied one)``.

    Without gradient accumulation every call applies a step. With it, Keras counts
    micro-batches in ``optimizer._iterations`` and applies the accumulated gradients
    when that count reaches a multiple of ``gradient_accumulation_steps``.
    """
    every = int(getattr(optimizer, "gradient_accumulation_steps", None) or 1)
    calls = int(keras.ops.convert_to_numpy(optimizer._iterations))
    return calls // every, calls % every == 0


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


# Keras optimizer class -> its layer-wise variant (LayerwiseAdam, LayerwiseAdamW, ...).
LAYERWISE = {
    cls: _layerwise(cls)
    for cls in (
        keras.optimizers.Adam,
        keras.optimizers.AdamW,
        keras.optimizers.SGD,
        keras.optimizers.RMSprop,
    )
}


def layerwise_optimizer(optimizer, blocks: list[tuple[str, list]], unfrozen: int, decay: float):
    """Rebuild ``optimizer`` so block k from the top trains at lr * decay**(k + 1); head at lr.

    ``blocks`` are (name, layers) pairs from the bottom of the backbone to the top;
    the top ``unfrozen`` of them get the decayed rates.
    """
    mults: dict[str, float] = {}
    for k, (_, members) in enumerate(reversed(blocks[-unfrozen:])):
        for layer in members:
            for v in layer.trainable_weights:
                mults[v.path] = decay ** (k + 1)
    cls = LAYERWISE[type(optimizer)]
    return cls.from_config({**optimizer.get_config(), "lr_multipliers": mults})
