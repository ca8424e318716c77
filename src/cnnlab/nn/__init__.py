"""Keras-serialisable building blocks a saved cnnlab model may hold.

Importing this package registers every custom layer, initialiser, schedule and
optimizer with Keras, which is all that loading a ``.keras`` file needs
(``cnnlab.models.saving.load_model`` imports it; no training code is involved).

- ``cnnlab.nn.layers``: DiracInit, ScaledBias, PatchWhitening, TTAViews, TTAPool, TrainingResize,
  GELU and FusedBatchNorm (Keras' GELU and BatchNorm with fused training kernels);
- ``cnnlab.nn.schedules``: WarmupSchedule, LinearWarmupDecay and the table of schedules;
- ``cnnlab.nn.optimizers``: ``make_optimizer`` (the one optimizer factory), the
  layer-wise optimizers of fine-tuning and ``ConvMuon`` (SGD with orthogonalised
  steps for convolution kernels, the fast recipe's).
"""

from cnnlab.nn import layers, optimizers, schedules
from cnnlab.nn.optimizers import LAYERWISE, ConvMuon, make_optimizer
from cnnlab.nn.schedules import LinearWarmupDecay, WarmupSchedule

__all__ = [
    "LAYERWISE",
    "ConvMuon",
    "LinearWarmupDecay",
    "WarmupSchedule",
    "layers",
    "make_optimizer",
    "optimizers",
    "schedules",
]
