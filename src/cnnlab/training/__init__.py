"""Training: optimizers and schedules, callbacks, run folders, and ``train``."""

from cnnlab.run_folder import RunFolder
from cnnlab.training.trainer import TrainResult, get_strategy, train

__all__ = ["RunFolder", "TrainResult", "get_strategy", "train"]
