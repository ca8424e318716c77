"""Mixed precision: the Keras dtype policy a model trains in, and the float32 model it ships.

| precision        | computes in                                   | weights |
| ---------------- | --------------------------------------------- | ------- |
| ``float32``      | float32                                       | float32 |
| ``mixed_bfloat16`` | bfloat16 (convolutions, matmuls, activations; BatchNorm statistics and the softmax stay float32) | float32 |
| ``auto``         | ``mixed_bfloat16`` where the hardware computes bfloat16 natively (CPUs with AVX512_BF16 or AMX, NVIDIA GPUs of compute capability 8.0 and up), else ``float32`` |

bfloat16 keeps float32's exponent range, so it needs no loss scaling (float16
would, and no CPU computes it natively, so cnnlab does not offer it). Where the
hardware has no bfloat16 units it is emulated and slower than float32, which
is why ``auto`` asks the hardware.

A model is built under its policy (:func:`dtype_policy`), its checkpoints keep
it (``--resume`` goes on in the same precision), and :func:`to_float32` gives
the model a run ships: the same layers and weights in float32 (the weights
were float32 all along), so its evaluation, exports and serving do not depend
on the machine having bfloat16 units.

Example:
    >>> with dtype_policy(resolve_precision("auto")):
    ...     model = create_model("airbench", 10, 32, 3)
    >>> shipped = to_float32(model)
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from cnnlab._io import cpu_flags
from cnnlab.config import PRECISIONS

log = logging.getLogger("cnnlab")

__all__ = [
    "PRECISIONS",
    "dtype_policy",
    "model_precision",
    "native_bfloat16",
    "resolve_precision",
    "to_float32",
]
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def native_bfloat16() -> bool:
    """True where bfloat16 has its own arithmetic units: an NVIDIA GPU of compute
    capability 8.0 or later (Ampere on) when TensorFlow sees a GPU, else a CPU with
    AVX512_BF16 or AMX (Linux ``/proc/cpuinfo``; False elsewhere)."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        details = tf.config.experimental.get_device_details(gpus[0])
        return tuple(details.get("compute_capability") or (0, 0)) >= (8, 0)
    return any(flag in cpu_flags() for flag in BF16_CPU_FLAGS)


def resolve_precision(precision: str) -> str:
    """``auto`` to ``mixed_bfloat16`` or ``float32`` for this machine; others unchanged.

    Example:
        >>> resolve_precision("float32")
        'float32'
    """
    if precision != "auto":
        return precision
    return "mixed_bfloat16" if native_bfloat16() else "float32"


@contextlib.contextmanager
def dtype_policy(precision: str):
    """Layers created inside take ``precision``'s Keras dtype policy (``auto`` resolved);
    the global policy is put back afterwards, so nothing else changes precision."""
    import keras

    before = keras.config.dtype_policy()
    keras.config.set_dtype_policy(resolve_precision(precision))
    try:
        yield
    finally:
        keras.config.set_dtype_policy(before)


def model_precision(model) -> str:
    """``mixed_bfloat16`` when any layer computes in bfloat16, else ``float32``."""
    for layer in _all_layers(model):
        if getattr(layer, "compute_dtype", "float32") == "bfloat16":
            return "mixed_bfloat16"
    return "float32"


def to_float32(model):
    """``model`` itself when it computes in float32, else the same architecture rebuilt
    in float32 with its weights and, when it was compiled, its loss, metrics and
    optimizer state (as saving and loading it would give)."""
    import keras

    if model_precision(model) == "float32":
        return model
    config = _float32_config(keras.saving.serialize_keras_object(model))
    shipped = keras.saving.deserialize_keras_object(config)
    shipped.set_weights(model.get_weights())
    if model.compiled and model.get_compile_config():
        shipped.compile_from_config(model.get_compile_config())  # builds the optimizer
        state = model.optimizer.variables
        if len(state) == len(shipped.optimizer.variables):  # else it never stepped
            for new, old in zip(shipped.optimizer.variables, state):
                new.assign(old)
    log.info("The saved model computes in float32 (trained in %s)", model_precision(model))
    return shipped


def _float32_config(node: Any) -> Any:
    """A serialised model with every mixed dtype policy replaced by float32."""
    if isinstance(node, dict):
        if node.get("class_name") == "DTypePolicy" and str(
            node.get("config", {}).get("name", "")
        ).startswith("mixed_"):
            return {**node, "config": {**node["config"], "name": "float32"}}
        return {
            k: "float32" if k == "dtype" and str(v).startswith("mixed_") else _float32_config(v)
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_float32_config(v) for v in node]
    return node


def _all_layers(model):
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers"):
            yield from _all_layers(layer)
