"""Training: fitting a model (strategy, compile, fit), callbacks, recipes, fine-tuning stages,
the learning-rate range test loop.

What a user runs end to end (``train``, ``fine_tune``, ``lr_find``) is ``cnnlab.workflows``.
"""

from cnnlab.training.fit import compile_model, fit_quietly, get_strategy

__all__ = ["compile_model", "fit_quietly", "get_strategy"]
