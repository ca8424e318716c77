"""Optimizers and learning-rate schedules, built from the config.

One schedule class covers warm-up plus constant, cosine, step and one-cycle
decay, computed per step from ``optimizer.iterations``; it is registered with
Keras so a saved model (with its optimizer) reloads and resumes exactly.
"""

from __future__ import annotations

import math

import keras
from keras import ops

from cnnlab.errors import ConfigError

DEFAULT_LEARNING_RATES = {"adam": 1e-3, "adamw": 1e-3, "rmsprop": 1e-3, "sgd": 0.05}


@keras.saving.register_keras_serializable(package="cnnlab")
class WarmupSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up to ``learning_rate``, then ``kind`` decay over ``total_steps``.

    kinds: ``constant``; ``cosine`` (to 0); ``step`` (× ``gamma`` at each of
    ``boundaries``, in steps); ``onecycle`` (fastai/PyTorch: from lr/25 up to lr
    over the first 25% of steps, cosine down to lr/1e4; ignores warm-up).
    """

    def __init__(self, learning_rate: float, total_steps: int, warmup_steps: int = 0,
                 kind: str = "cosine", boundaries: list[int] | None = None, gamma: float = 0.1):  # fmt: skip
        self.learning_rate = float(learning_rate)
        self.total_steps = max(1, int(total_steps))
        self.warmup_steps = max(0, int(warmup_steps))
        self.kind = kind
        self.boundaries = [int(b) for b in (boundaries or [])]
        self.gamma = float(gamma)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        lr = self.learning_rate
        total = float(self.total_steps)
        if self.kind == "onecycle":
            up = max(1.0, 0.25 * total)
            t_up = ops.minimum(step / up, 1.0)
            rising = lr / 25.0 + (lr - lr / 25.0) * t_up
            t_down = ops.clip((step - up) / max(1.0, total - up), 0.0, 1.0)
            falling = lr / 1e4 + (lr - lr / 1e4) * 0.5 * (1.0 + ops.cos(math.pi * t_down))
            return ops.where(step < up, rising, falling)
        warm = float(self.warmup_steps)
        if self.kind == "cosine":
            t = ops.clip((step - warm) / max(1.0, total - warm), 0.0, 1.0)
            value = lr * 0.5 * (1.0 + ops.cos(math.pi * t))
        elif self.kind == "step":
            passed = sum(ops.cast(step >= b, "float32") for b in self.boundaries) if self.boundaries else 0.0
            value = lr * ops.power(self.gamma, passed)
        else:
            value = lr + 0.0 * step
        if self.warmup_steps:
            value = ops.where(step < warm, lr * (step + 1.0) / warm, value)
        return value

    def get_config(self):
        return {"learning_rate": self.learning_rate, "total_steps": self.total_steps,
                "warmup_steps": self.warmup_steps, "kind": self.kind,
                "boundaries": self.boundaries, "gamma": self.gamma}  # fmt: skip


def make_schedule(cfg, steps_per_epoch: int) -> WarmupSchedule:
    lr = cfg.learning_rate or DEFAULT_LEARNING_RATES[cfg.optimizer]
    total = steps_per_epoch * cfg.epochs
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    boundaries = None
    if cfg.schedule == "step":
        epochs = cfg.step_epochs or [int(cfg.epochs * 0.5), int(cfg.epochs * 0.75)]
        boundaries = [e * steps_per_epoch for e in epochs]
    return WarmupSchedule(lr, total, warmup, cfg.schedule, boundaries, cfg.step_gamma)


def make_optimizer(cfg, steps_per_epoch: int, schedule=None) -> keras.optimizers.Optimizer:
    """Adam, AdamW, RMSprop or SGD (momentum, Nesterov) with the configured schedule
    (or ``schedule``, a Keras LearningRateSchedule, when given).

    ``weight_decay`` is Keras' decoupled decay (``w -= lr * wd * w``) for every optimizer.
    """
    schedule = schedule or make_schedule(cfg, steps_per_epoch)
    wd = cfg.weight_decay or None
    name = cfg.optimizer
    if name == "adam":
        return keras.optimizers.Adam(schedule, weight_decay=wd)
    if name == "adamw":
        return keras.optimizers.AdamW(schedule, weight_decay=cfg.weight_decay or 0.01)
    if name == "rmsprop":
        return keras.optimizers.RMSprop(schedule, momentum=0.0, weight_decay=wd)
    if name == "sgd":
        return keras.optimizers.SGD(schedule, momentum=cfg.momentum, nesterov=cfg.nesterov,
                                    weight_decay=wd)  # fmt: skip
    raise ConfigError(f"Unknown optimizer '{name}'", expected="adam, adamw, rmsprop or sgd")
