"""A model's memory footprint: its weights, and the bytes a step takes per image.

Training keeps every layer's output of the batch for backpropagation
(:func:`activation_bytes` × :data:`ACTIVATION_FACTOR`); inference through Keras'
compiled predict step frees each output once the next layer has used it, so it
grows with the largest output times the test-time views the model stacks
(:func:`inference_bytes` × :data:`INFERENCE_FACTOR`). The factors come from
``python bench/memory_calibration.py`` (see ``cnnlab.training.memory``).

An exported artifact has no Keras layers to read: ``cnnlab export`` records the
source model's numbers in ``export.json`` (:func:`footprint_record`), and
:func:`inference_estimate` reads them back (an artifact exported elsewhere is
estimated from its file size alone).
"""

from __future__ import annotations

import math

from cnnlab.memory import (  # noqa: F401 - the calibrated factors, used from here too
    ACTIVATION_FACTOR,
    BATCHES_IN_FLIGHT,
    INFERENCE_FACTOR,
    OVERHEAD_BYTES,
    Estimate,
)


def _layer_outputs(layer) -> list:
    import keras

    try:
        return [t for t in keras.tree.flatten(layer.output) if hasattr(t, "shape")]
    except (AttributeError, ValueError):  # a layer called several times, or never
        nodes = getattr(layer, "_inbound_nodes", [])
        return [t for node in nodes for t in keras.tree.flatten(node.output_tensors)]


def output_sizes(layers, *, inputs: bool = False) -> list[int]:
    """Elements per image of every output of ``layers`` (a nested model: its own layers),
    in order; outputs of unknown size are left out, and ``InputLayer``s too unless
    ``inputs`` (fine-tuning's list of trained layers names the model's input)."""
    sizes: list[int] = []
    for layer in layers:
        if type(layer).__name__ == "InputLayer" and not inputs:
            continue
        if hasattr(layer, "layers") and layer.layers:
            sizes += output_sizes(layer.layers, inputs=inputs)
            continue
        for t in _layer_outputs(layer):
            dims = list(t.shape[1:])
            if not any(d is None for d in dims):
                sizes.append(int(math.prod(dims)) if dims else 1)
    return sizes


def layer_sizes(model) -> list[int]:
    """Elements per image of every layer output (nested models included), in order."""
    return output_sizes(model.layers)


def output_bytes(layers) -> int:
    """Bytes of the outputs of ``layers`` for one image (float32), nested models and
    input layers included."""
    return 4 * sum(output_sizes(layers, inputs=True))


def activation_bytes(model) -> int:
    """Bytes of every layer's output for one image (float32): what a training step keeps
    for backpropagation, per image, before :data:`ACTIVATION_FACTOR`."""
    return 4 * sum(layer_sizes(model))


def inference_bytes(model) -> int:
    """Bytes per image of the largest layer output times the test-time views the model
    stacks on the batch (airbench's ``TTAViews``), before :data:`INFERENCE_FACTOR`."""
    sizes = layer_sizes(model) or [1]
    return 4 * max(sizes) * tta_views(model)


def tta_views(model) -> int:
    """How many views of each image the model runs at inference (1 without TTA)."""
    for layer in model.layers:
        views = getattr(layer, "views", None)
        if type(layer).__name__ == "TTAViews" and callable(views):
            import numpy as np

            return len(views(np.zeros((1, 4, 4, 1), np.float32)))
    return 1


def footprint_record(model) -> dict:
    """What ``export.json`` keeps under ``memory`` for the artifacts' estimates."""
    return {
        "parameters": int(model.count_params()),
        "inference_bytes_per_image": int(inference_bytes(model)),
    }


def _model_numbers(model) -> tuple[float, float | None]:
    """(bytes of weights as loaded, inference bytes per image or None when unknown) of a
    Keras model, or of an artifact (``runtime.Artifact.footprint``)."""
    if hasattr(model, "footprint"):
        return model.footprint()
    return 4.0 * model.count_params(), float(inference_bytes(model))


def inference_estimate(
    model,
    batch_size: int,
    pixels: int,
    *,
    what: str = "scoring",
    held_bytes: float = 0.0,
    overhead: float = OVERHEAD_BYTES,
) -> Estimate:
    """The estimated peak of running ``model`` (a Keras model or a loaded artifact) over
    batches of ``batch_size`` images of ``pixels`` values each, with ``held_bytes`` of
    decoded images kept in memory. The budget is left for the caller to set.

    Example:
        >>> inference_estimate(model, 64, 32 * 32 * 3).line()
        'Memory: ~1.0 GB estimated peak (scoring, batch 64; no budget)'
    """
    weights, per_image = _model_numbers(model)
    if per_image is None:  # an artifact exported elsewhere: its input and output only
        per_image = 8.0 * pixels
    return Estimate(
        what,
        int(batch_size),
        {
            "overhead": overhead,
            "weights": weights,
            "images": held_bytes + BATCHES_IN_FLIGHT * 4.0 * batch_size * pixels,
            "activations": INFERENCE_FACTOR * batch_size * per_image,
        },
        budget=None,
    )
