"""Fitting a model: the distribution strategy, the model's options, compiling, ``fit``.

What every run does between "the data is loaded" and "the epochs are done";
the run around it (run folder, logging, scoring, report) is ``cnnlab.workflows``.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from cnnlab.nn.optimizers import make_optimizer


def get_strategy(name: str = "default", *, multiworker: bool = False):
    """The ``tf.distribute`` strategy to build and train under.

    ``mirrored`` replicates over every GPU, or over every logical CPU device
    when there is no GPU (which is how the tests run it on one machine).
    ``multiworker`` spans the machines of ``TF_CONFIG`` (or Slurm's): see
    :mod:`cnnlab.training.distribute`; only callers with a multi-worker loop
    (``multiworker=True``) get it, others get a clear refusal.
    """
    import tensorflow as tf

    if name == "multiworker":
        from cnnlab.training.distribute import multiworker_strategy, refuse_multiworker

        if not multiworker:
            refuse_multiworker()
        return multiworker_strategy()
    if name == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        devices = [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]
        return tf.distribute.MirroredStrategy(devices=devices)
    return tf.distribute.get_strategy()


def input_statistics(bundle, max_examples: int = 2048) -> tuple[list[float], list[float]]:
    """Per-channel mean and std (0-255 units) of the training split, from a seeded sample."""
    sample = bundle.sample_images("train", max_examples).astype(np.float64)
    return sample.mean(axis=(0, 1, 2)).tolist(), sample.std(axis=(0, 1, 2)).tolist()


def weights_option(weights: str | None) -> str | None:
    """``weights`` as the model builders take it: ``none`` or empty means random weights."""
    return None if weights is None or str(weights).lower() in ("none", "") else weights


def model_options(spec, cfg, bundle) -> dict[str, Any]:
    """The builder options of ``spec`` for a run: ``model_kwargs``, plus the training
    split's mean/std for models that standardise their input, plus ``weights``."""
    options = dict(cfg.model_kwargs)
    accepted = spec.options()
    if "mean" in accepted and "mean" not in options and "std" not in options:
        options["mean"], options["std"] = input_statistics(bundle)
    if "train_resize" in accepted and getattr(cfg, "progressive_resize", 0):
        options.setdefault("train_resize", True)
    if "weights" in accepted and cfg.weights is not None:
        options["weights"] = weights_option(cfg.weights)
    return options


def accuracy_metrics(top_k: int, num_classes: int) -> list:
    """Accuracy and top-k accuracy (k at most the number of classes), as every run reports."""
    import keras

    k = min(top_k, num_classes)
    return [
        keras.metrics.CategoricalAccuracy(name="accuracy"),
        keras.metrics.TopKCategoricalAccuracy(k=k, name=f"top{k}"),
    ]


def compile_model(
    model,
    cfg,
    steps_per_epoch: int,
    num_classes: int,
    optimizer=None,
    *,
    accumulation_steps: int = 1,
) -> None:
    """The config's optimizer and schedule (or ``optimizer``), smoothed cross-entropy,
    accuracy and top-k.

    ``steps_per_epoch`` counts optimizer steps; with ``accumulation_steps`` > 1 each of
    them accumulates that many micro-batches (see ``make_optimizer``).
    """
    import keras

    model.compile(
        optimizer=optimizer
        or make_optimizer(cfg, steps_per_epoch, accumulation_steps=accumulation_steps),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing),
        metrics=accuracy_metrics(cfg.top_k, num_classes),
    )


def fit_quietly(
    model, data, val, epochs: int, initial_epoch: int, callbacks: list, verbose
) -> None:
    """``model.fit`` on cnnlab pipelines (already shuffled, so ``shuffle=False``)."""
    from cnnlab.training.distribute import refuse_keras_fit

    refuse_keras_fit(model)
    with warnings.catch_warnings():
        # The file pipeline has unknown length (it may drop a file that broke after
        # the scan); Keras warns about that at every epoch's end.
        warnings.filterwarnings("ignore", message="Your input ran out of data")
        model.fit(
            data,
            validation_data=val,
            epochs=epochs,
            initial_epoch=initial_epoch,
            callbacks=callbacks,
            verbose=verbose,
            shuffle=False,
        )


def evaluate_accuracy(model, data) -> float | None:
    """The accuracy of a compiled model on ``data`` (None without data)."""
    if data is None:
        return None
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Your input ran out of data")
        logs = model.evaluate(data, verbose=0, return_dict=True)
    return float(logs["accuracy"])
