"""Callbacks that make a run survive crashes and describe itself (its history columns),
and progressive resizing (the first epochs at a lower resolution)."""

from __future__ import annotations

import csv
import math
import os
import time

import keras

from cnnlab._io import atomic_write, write_json
from cnnlab.config import monitor_mode
from cnnlab.errors import ConfigError


class EpochStats(keras.callbacks.Callback):
    """Adds learning rate, epoch time and training throughput (images/s) to the logs.

    Must run before HistoryCSV so that these columns land in history.csv.
    """

    def __init__(self, num_train: int):
        super().__init__()
        self.num_train = num_train

    def on_epoch_begin(self, epoch, logs=None):
        self._t0 = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        seconds = time.perf_counter() - self._t0
        opt = self.model.optimizer
        lr = opt.learning_rate
        if callable(lr) and not hasattr(lr, "numpy"):
            lr = lr(opt.iterations)
        logs["learning_rate"] = float(keras.ops.convert_to_numpy(lr))
        logs["epoch_seconds"] = round(seconds, 3)
        logs["images_per_second"] = round(self.num_train / max(seconds, 1e-9), 1)


def _csv_header(path) -> list[str] | None:
    """The first row of a CSV file, or None when there is no such file or row."""
    if not os.path.isfile(path):
        return None
    with open(path, newline="") as f:
        return next(csv.reader(f), None)


class HistoryCSV(keras.callbacks.CSVLogger):
    """history.csv: Keras' CSVLogger, appending, with columns that mean something.

    Keras takes the columns from the first epoch's logs and, when those hold no
    ``val_`` key, adds a ``val_`` twin of each (for ``validation_freq`` > 1), so a run
    without validation data got a column of "NA" per metric. Here such a run gets
    none, and a run that appends to a history (resume, the next fine-tuning stage)
    keeps the columns of the file's header, so its rows line up with the rows above
    even when the logs' keys changed.
    """

    def __init__(self, filename, *, validates: bool):
        super().__init__(str(filename), append=True)
        self.validates = validates

    def on_epoch_end(self, epoch, logs=None):
        if self.keys is None:
            header = _csv_header(self.filename)
            if header and header[0] == "epoch":
                self.keys = header[1:]
            elif not self.validates:
                self.keys = sorted(logs or {})
        super().on_epoch_end(epoch, logs)


class RunCheckpoint(keras.callbacks.Callback):
    """Saves ``last.keras`` every epoch and ``best.keras`` when ``monitor`` improves.

    Both are written atomically (temporary file, then rename), so a run killed
    at any moment keeps its last finished epoch. ``state.json`` records how
    many epochs are finished and the best so far; ``--resume`` reads it.
    """

    def __init__(self, checkpoint_dir, monitor: str = "val_accuracy", state: dict | None = None):
        super().__init__()
        self.dir = checkpoint_dir
        self.monitor = monitor
        self.mode = monitor_mode(monitor)
        self.state = state or {"epochs_done": 0, "best_epoch": None, "best_value": None}

    def _better(self, value: float) -> bool:
        best = self.state.get("best_value")
        if best is None:
            return True
        return value < best if self.mode == "min" else value > best

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        value = logs.get(self.monitor)
        if value is None:  # no validation data: track the training metric instead
            value = logs.get(self.monitor.removeprefix("val_"))
        atomic_write(self.dir / "last.keras", self.model.save, suffix=".keras")
        if value is not None and not math.isnan(float(value)) and self._better(float(value)):
            atomic_write(self.dir / "best.keras", self.model.save, suffix=".keras")
            self.state.update(best_epoch=epoch + 1, best_value=float(value))
        self.state["epochs_done"] = epoch + 1
        self.state["monitor"] = self.monitor
        write_json(self.dir / "state.json", self.state)


class StageColumn(keras.callbacks.Callback):
    """Adds ``stage`` to the epoch logs (before CSVLogger, so history.csv has it)."""

    def __init__(self, stage: int):
        super().__init__()
        self.stage = stage

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["stage"] = self.stage


class SaveClassifier(RunCheckpoint):
    """RunCheckpoint that saves the whole classifier while only its head is being fit."""

    def __init__(self, classifier, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._classifier = classifier

    def set_model(self, model):
        super().set_model(self._classifier)


# Progressive resizing: the low-resolution epochs train at three sizes, smallest first:
# half of them at 1/2 of the image side, the next fifth at 5/8, the last 3/10 at 3/4
# (16, 20 and 24 pixels for CIFAR), never under 16 pixels. In bfloat16 on the
# development VM, airbench's epochs at 16, 20 and 24 pixels took 0.28, 0.43 and 0.57 of
# a full-size epoch's time (bench/README.md).
LOW_RES_STAGES = ((0.5, 0.5), (0.625, 0.2), (0.75, 0.3))  # (scale of the side, share)
MIN_LOW_RES_SIDE = 16


def low_resolution(image_size, scale: float) -> tuple[int, int]:
    """``scale`` of each side of ``image_size``, at least 16 pixels and at most the side.

    Example:
        >>> low_resolution((32, 32), 0.75), low_resolution((28, 40), 0.5)
        ((24, 24), (16, 20))
    """
    return tuple(max(MIN_LOW_RES_SIDE, min(int(s), int(s * scale))) for s in image_size)


def low_resolution_epochs(fraction: float, epochs: int) -> int:
    """How many of the first epochs train at low resolution; the last one never does.

    Example:
        >>> low_resolution_epochs(0.5, 10), low_resolution_epochs(0.5, 1)
        (5, 0)
    """
    return max(0, min(epochs - 1, int(fraction * epochs + 1e-9)))


def low_resolution_sizes(image_size, low_epochs: int) -> list[tuple[int, int]]:
    """The (height, width) of each low-resolution epoch, following ``LOW_RES_STAGES``.

    Example:
        >>> [s[0] for s in low_resolution_sizes((32, 32), 10)]
        [16, 16, 16, 16, 16, 20, 20, 24, 24, 24]
    """
    sizes: list[tuple[int, int]] = []
    reached = 0.0
    for scale, share in LOW_RES_STAGES:
        reached += share
        until = int(reached * low_epochs + 0.5)
        sizes += [low_resolution(image_size, scale)] * (until - len(sizes))
    return sizes


class ProgressiveResizing(keras.callbacks.Callback):
    """Trains epoch ``e`` at ``sizes[e]`` (height, width) while there is one, then at full size.

    It sets the model's :class:`cnnlab.nn.layers.TrainingResize` layers when an epoch
    begins and clears them when it ends, so every checkpoint (this callback runs
    before the checkpoint's) holds a model that trains at full size, and a resumed
    run picks up the schedule by epoch number. ``train_scale`` (the epoch's height over
    the full one) is a history column.
    """

    def __init__(self, sizes, full_height: int):
        super().__init__()
        self.sizes = [[int(s) for s in size] for size in sizes]
        self.full_height = int(full_height)

    def _set(self, size) -> None:
        for layer in resize_layers(self.model):
            layer.size.assign(size)

    def _size(self, epoch: int):
        return self.sizes[epoch] if epoch < len(self.sizes) else None

    def on_epoch_begin(self, epoch, logs=None):
        self._set(self._size(epoch) or [0, 0])

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            size = self._size(epoch)
            logs["train_scale"] = size[0] / self.full_height if size else 1.0
        self._set([0, 0])

    def on_train_end(self, logs=None):
        self._set([0, 0])


def progressive_resizing(cfg, model, image_size) -> list[keras.callbacks.Callback]:
    """The callback for ``cfg.progressive_resize`` (a fraction of the epochs), if any.

    Raises ConfigError when the model has no :class:`TrainingResize` layer to act on.
    """
    if not cfg.progressive_resize:
        return []
    if not resize_layers(model):
        raise ConfigError(
            f"progressive_resize {cfg.progressive_resize} needs a model that can train at a "
            f"lower resolution; {cfg.model!r} has no TrainingResize layer",
            expected="model airbench (or a model with a cnnlab TrainingResize layer)",
            fix="Pass --progressive-resize 0, or --model airbench",
        )
    full = tuple(int(s) for s in image_size)
    sizes = low_resolution_sizes(full, low_resolution_epochs(cfg.progressive_resize, cfg.epochs))
    if all(tuple(size) == full for size in sizes):  # none, or images too small to shrink
        return []
    return [ProgressiveResizing(sizes, full[0])]


def resize_layers(model) -> list:
    from cnnlab.nn.layers import TrainingResize

    return [layer for layer in model.layers if isinstance(layer, TrainingResize)]
