"""The learning-rate range test loop: an exponential sweep of the rate, batch by batch.

The model trains for ``num_steps`` batches while the rate grows geometrically
from ``start_lr`` to ``end_lr`` (Smith 2015, as in fastai's ``lr_find``); the
sweep stops early once the smoothed loss exceeds 4x its minimum. The
suggestion is the rate at the minimum of the smoothed loss divided by 10, a
conservative point on the descending slope; the steepest-descent rate is
reported too. ``cnnlab.workflows.lr_find`` builds the model and writes the files.
"""

from __future__ import annotations

import math

import numpy as np

from cnnlab.errors import ConfigError
from cnnlab.nn.optimizers import make_optimizer

__all__ = ["check_sweep", "range_test", "smooth", "suggest_learning_rate"]

STAGES = ("auto", "head", "full")


def check_sweep(start_lr: float, end_lr: float, num_steps: int, stage: str) -> None:
    """Refuse a sweep that cannot work, before anything is loaded."""
    if not (0 < start_lr < end_lr):
        raise ConfigError(
            f"Bad learning-rate range: received {start_lr} to {end_lr}",
            expected="0 < start_learning_rate < end_learning_rate, e.g. 1e-7 to 1",
        )
    if num_steps < 5:
        raise ConfigError(
            f"Bad num_steps: received {num_steps}", expected="at least 5 (100 is typical)"
        )
    if stage not in STAGES:
        raise ConfigError(f"Bad stage: received {stage!r}", expected="auto, head or full")


def smooth(losses: list[float], beta: float = 0.98) -> list[float]:
    """Exponential moving average with bias correction (fastai's smoothing)."""
    out, avg = [], 0.0
    for i, value in enumerate(losses, start=1):
        avg = beta * avg + (1 - beta) * value
        out.append(avg / (1 - beta**i))
    return out


def suggest_learning_rate(lrs: list[float], smoothed: list[float]) -> tuple[float | None, ...]:
    """``(suggestion, steepest, min_loss_lr)`` from a sweep.

    The suggestion is the rate of the lowest smoothed loss / 10; ``steepest`` is
    where the smoothed loss falls fastest per decade before that minimum.

    Example:
        >>> suggest_learning_rate([1e-4, 1e-3, 1e-2, 1e-1], [2.0, 1.5, 1.0, 3.0])
        (0.001, 0.001, 0.01)
    """
    finite = [i for i, v in enumerate(smoothed) if math.isfinite(v)]
    if len(finite) < 3:
        return None, None, None
    i_min = min(finite, key=lambda i: smoothed[i])
    min_lr = lrs[i_min]
    steepest = None
    if i_min >= 2:
        log_lr = np.log10(np.asarray(lrs[: i_min + 1]))
        grads = np.gradient(np.asarray(smoothed[: i_min + 1]), log_lr)
        steepest = float(lrs[int(np.argmin(grads))])
    return float(min_lr / 10), steepest, float(min_lr)


def range_test(
    model, data, cfg, start_lr: float, end_lr: float, num_steps: int
) -> tuple[list[float], list[float]]:
    """Train ``model`` one batch per rate, the rate growing from ``start_lr`` to ``end_lr``.

    The optimizer is the config's (``make_optimizer`` at a fixed rate, set before each
    batch). Returns the rates tried and the loss of each batch; the sweep stops at a
    non-finite loss or once the smoothed loss passes 4x its minimum (after 10 batches).
    """
    import keras

    model.compile(
        optimizer=make_optimizer(cfg, learning_rate=start_lr),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing),
    )
    lrs: list[float] = []
    losses: list[float] = []
    factor = (end_lr / start_lr) ** (1 / (num_steps - 1))
    best = math.inf
    batches = iter(data.repeat())
    for i in range(num_steps):
        lr = start_lr * factor**i
        model.optimizer.learning_rate = lr
        batch = next(batches)
        loss = float(model.train_on_batch(batch[0], batch[1]))
        lrs.append(lr)
        losses.append(loss)
        if not math.isfinite(loss):
            break
        best = min(best, smooth(losses)[-1])
        if i >= 10 and smooth(losses)[-1] > 4 * best:
            break
    return lrs, losses
