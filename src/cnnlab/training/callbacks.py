"""Callbacks that make a run survive crashes and describe itself (its history columns)."""

from __future__ import annotations

import math
import time

import keras

from cnnlab._io import atomic_write, write_json
from cnnlab.config import monitor_mode


class EpochStats(keras.callbacks.Callback):
    """Adds learning rate, epoch time and training throughput (images/s) to the logs.

    Must run before CSVLogger so that these columns land in history.csv.
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
