"""Workflows: what a user runs end to end, on the one run skeleton.

- ``train`` (:mod:`cnnlab.workflows.train`): config → data → model → fit → run folder
  → held-out scores → report, resumable;
- ``fine_tune`` (:mod:`cnnlab.workflows.finetune`): a pretrained backbone in two stages,
  same run folder;
- ``lr_find`` (:mod:`cnnlab.workflows.lr_find`): the learning-rate range test;
- ``evaluate`` (:mod:`cnnlab.workflows.evaluate`): score a run, save the results, report.

The shared steps (logging, the "Data:" line, the callback list, the finish) are
:mod:`cnnlab.workflows.skeleton`.
"""

from cnnlab.workflows.evaluate import evaluate
from cnnlab.workflows.finetune import FineTuneResult, fine_tune
from cnnlab.workflows.lr_find import LRFindResult, lr_find
from cnnlab.workflows.train import TrainResult, train

__all__ = [
    "FineTuneResult",
    "LRFindResult",
    "TrainResult",
    "evaluate",
    "fine_tune",
    "lr_find",
    "train",
]
