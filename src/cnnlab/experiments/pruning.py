"""The Keras callback that reports a trial's metric each epoch and prunes it."""

from __future__ import annotations

import math

import keras

from cnnlab.errors import ConfigError


class PruningCallback(keras.callbacks.Callback):
    """Reports the metric after every epoch and stops the run when the pruner says so.

    The run is stopped the way early stopping stops it, so a pruned trial still
    leaves a complete run folder (model, metrics, report) behind.
    """

    def __init__(self, trial, metric: str):
        super().__init__()
        self.trial = trial
        self.metric = metric
        self.pruned_at: int | None = None
        self.reason = ""

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if self.metric not in logs:
            numeric = sorted(k for k, v in logs.items() if isinstance(v, int | float))
            raise ConfigError(
                f"The sweep metric '{self.metric}' is not in the epoch logs",
                expected=f"one of {', '.join(numeric)}",
                fix="Set `metric:` in the sweep file (val_* needs a validation split)",
            )
        value = float(logs[self.metric])
        if math.isnan(value):
            self.trial.report(-math.inf if "loss" not in self.metric else math.inf, epoch)
        else:
            self.trial.report(value, epoch)
        last = epoch + 1 >= int(self.params.get("epochs") or 0)
        if not last and self.trial.should_prune():  # the last epoch's result is a whole trial
            self.pruned_at = epoch + 1
            self.reason = (
                f"pruned after epoch {epoch + 1}: {self.metric} {value:.4f} "
                f"is behind the other trials at this epoch"
            )
            self.model.stop_training = True
