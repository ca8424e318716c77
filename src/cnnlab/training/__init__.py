"""Training: fitting a model (strategy, compile, fit), callbacks, recipes, fine-tuning stages,
the learning-rate range test loop.

What a user runs end to end (``train``, ``fine_tune``, ``lr_find``) is ``cnnlab.workflows``.
"""

__all__ = ["compile_model", "fit_quietly", "get_strategy"]


def __getattr__(name: str):
    # Lazy: ``cnnlab launch`` imports cnnlab.training.launch, which must not pay for
    # TensorFlow (the workers it starts import it themselves).
    if name in __all__:
        from cnnlab.training import fit

        return getattr(fit, name)
    raise AttributeError(f"module 'cnnlab.training' has no attribute {name!r}")
