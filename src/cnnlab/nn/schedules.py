"""Learning-rate schedules, computed per step from ``optimizer.iterations``.

Both classes are registered with Keras (``cnnlab>WarmupSchedule``,
``cnnlab>LinearWarmupDecay``), so a saved model with its optimizer reloads and
resumes exactly. ``SCHEDULES`` maps each ``schedule`` name of the config to the
function that builds it; :func:`make_schedule` reads it.

| schedule  | shape |
| --------- | ----- |
| constant  | linear warm-up, then the rate |
| cosine    | linear warm-up, then cosine decay to 0 |
| step      | linear warm-up, then × ``step_gamma`` at each of ``step_epochs`` |
| onecycle  | fastai/PyTorch one-cycle (ignores warm-up) |
| linear    | airbench's: 0.2× → 1× over the warm-up, then linearly to 0.07× |

Schedules count *optimizer* steps. With gradient accumulation (micro-batches,
``cnnlab.training.memory``) Keras calls the schedule with its raw counter, which
advances once per micro-batch; :class:`PerOptimizerStep` wraps a schedule so it
sees ``counter // accumulation_steps``, the optimizer steps taken (at the step that
applies the accumulated gradients, exactly the step the schedule would see without
micro-batches).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import keras
from keras import ops

from cnnlab.errors import ConfigError

__all__ = [
    "SCHEDULES",
    "LinearWarmupDecay",
    "PerOptimizerStep",
    "WarmupSchedule",
    "make_schedule",
]


@keras.saving.register_keras_serializable(package="cnnlab")
class WarmupSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up to ``learning_rate``, then ``kind`` decay over ``total_steps``.

    kinds: ``constant``; ``cosine`` (to 0); ``step`` (× ``gamma`` at each of
    ``boundaries``, in steps); ``onecycle`` (fastai/PyTorch: from lr/25 up to lr
    over the first 25% of steps, cosine down to lr/1e4; ignores warm-up).
    """

    def __init__(
        self,
        learning_rate: float,
        total_steps: int,
        warmup_steps: int = 0,
        kind: str = "cosine",
        boundaries: list[int] | None = None,
        gamma: float = 0.1,
    ):
        self.learning_rate = float(learning_rate)
        self.total_steps = max(1, int(total_steps))
        self.warmup_steps = max(0, int(warmup_steps))
        self.kind = kind
        self.boundaries = [int(b) for b in (boundaries or [])]
        self.gamma = float(gamma)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        if self.kind == "onecycle":
            return self._one_cycle(step)
        lr = self.learning_rate
        warm = float(self.warmup_steps)
        if self.kind == "cosine":
            t = ops.clip((step - warm) / max(1.0, self.total_steps - warm), 0.0, 1.0)
            value = lr * 0.5 * (1.0 + ops.cos(math.pi * t))
        elif self.kind == "step":
            passed = 0.0
            for b in self.boundaries:
                passed = passed + ops.cast(step >= b, "float32")
            value = lr * ops.power(self.gamma, passed)
        else:
            value = lr + 0.0 * step
        if self.warmup_steps:
            value = ops.where(step < warm, lr * (step + 1.0) / warm, value)
        return value

    def _one_cycle(self, step):
        lr, total = self.learning_rate, float(self.total_steps)
        up = max(1.0, 0.25 * total)
        t_up = ops.minimum(step / up, 1.0)
        rising = lr / 25.0 + (lr - lr / 25.0) * t_up
        t_down = ops.clip((step - up) / max(1.0, total - up), 0.0, 1.0)
        falling = lr / 1e4 + (lr - lr / 1e4) * 0.5 * (1.0 + ops.cos(math.pi * t_down))
        return ops.where(step < up, rising, falling)

    def get_config(self):
        return {
            "learning_rate": self.learning_rate,
            "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps,
            "kind": self.kind,
            "boundaries": self.boundaries,
            "gamma": self.gamma,
        }


@keras.saving.register_keras_serializable(package="cnnlab")
class LinearWarmupDecay(keras.optimizers.schedules.LearningRateSchedule):
    """airbench's schedule: ``start``× → 1× linearly over ``warmup_steps``, then → ``end``×
    at ``total_steps``.

    Example:
        >>> s = LinearWarmupDecay(1.0, total_steps=100, warmup_steps=23)
        >>> [round(float(s(t)), 2) for t in (0, 23, 100)]
        [0.2, 1.0, 0.07]
    """

    def __init__(
        self,
        learning_rate: float,
        total_steps: int,
        warmup_steps: int = 0,
        start: float = 0.2,
        end: float = 0.07,
    ):
        self.learning_rate = float(learning_rate)
        self.total_steps = max(1, int(total_steps))
        self.warmup_steps = max(0, min(int(warmup_steps), self.total_steps))
        self.start = float(start)
        self.end = float(end)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        warm = float(self.warmup_steps)
        total = float(self.total_steps)
        up = self.start + (1.0 - self.start) * step / max(warm, 1.0)
        t = ops.clip((step - warm) / max(total - warm, 1.0), 0.0, 1.0)
        down = 1.0 + (self.end - 1.0) * t
        return self.learning_rate * ops.where(step < warm, up, down)

    def get_config(self):
        return {
            "learning_rate": self.learning_rate,
            "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps,
            "start": self.start,
            "end": self.end,
        }


@keras.saving.register_keras_serializable(package="cnnlab")
class PerOptimizerStep(keras.optimizers.schedules.LearningRateSchedule):
    """``schedule`` evaluated at optimizer steps when each step accumulates the gradients
    of ``accumulation_steps`` micro-batches.

    Keras' optimizers call their schedule with the micro-batch counter
    (``optimizer._iterations``); ``optimizer.iterations`` is that counter divided by
    ``gradient_accumulation_steps``. This wrapper divides too, so a schedule laid out
    over ``steps_per_epoch * epochs`` optimizer steps ends where it should.

    Example:
        >>> s = PerOptimizerStep(LinearWarmupDecay(1.0, total_steps=10), 4)
        >>> float(s(4 * 10 - 1)) == float(LinearWarmupDecay(1.0, total_steps=10)(9))
        True
    """

    def __init__(self, schedule, accumulation_steps: int):
        if isinstance(schedule, dict):
            schedule = keras.saving.deserialize_keras_object(schedule)
        self.schedule = schedule
        self.accumulation_steps = max(1, int(accumulation_steps))

    def __call__(self, step):
        return self.schedule(ops.floor_divide(step, self.accumulation_steps))

    def get_config(self):
        return {
            "schedule": keras.saving.serialize_keras_object(self.schedule),
            "accumulation_steps": self.accumulation_steps,
        }


def _warmup_then(kind: str) -> Callable:
    def build(cfg, lr: float, steps_per_epoch: int, total: int, warmup: int):
        boundaries = None
        if kind == "step":
            epochs = cfg.step_epochs or [int(cfg.epochs * 0.5), int(cfg.epochs * 0.75)]
            boundaries = [e * steps_per_epoch for e in epochs]
        return WarmupSchedule(lr, total, warmup, kind, boundaries, cfg.step_gamma)

    return build


def _linear(cfg, lr: float, steps_per_epoch: int, total: int, warmup: int):
    return LinearWarmupDecay(lr, total, warmup)


# schedule name (config key ``schedule``) -> builder(cfg, lr, steps_per_epoch, total, warmup)
SCHEDULES: dict[str, Callable] = {
    "constant": _warmup_then("constant"),
    "cosine": _warmup_then("cosine"),
    "step": _warmup_then("step"),
    "onecycle": _warmup_then("onecycle"),
    "linear": _linear,
}


def make_schedule(cfg, steps_per_epoch: int, learning_rate: float):
    """The config's ``schedule`` at peak ``learning_rate``, over ``cfg.epochs`` epochs.

    Example:
        >>> make_schedule(TrainConfig(schedule="cosine", epochs=10), 100, 1e-3)
        <WarmupSchedule ...>
    """
    if cfg.schedule not in SCHEDULES:
        raise ConfigError(
            f"Unknown schedule '{cfg.schedule}'",
            expected=f"one of {', '.join(SCHEDULES)}",
            fix="Pass --schedule cosine (or another of those)",
        )
    total = steps_per_epoch * cfg.epochs
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    return SCHEDULES[cfg.schedule](cfg, float(learning_rate), steps_per_epoch, total, warmup)
