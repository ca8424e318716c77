"""simple_cnn: the classic configurable Keras CNN, built from a list of blocks.

Each block is one or more convolutions (filters, kernel size, activation,
padding, batch norm), then pooling and dropout; then dense layers with dropout.
Configure it from Python, YAML (``model_kwargs:``) or ``--model-kwargs``::

    create_model("simple_cnn", 10, 32, filters=[32, 64, 128], dense=[256], dropout=0.25)
    create_model("simple_cnn", 10, 32, blocks=[{"filters": 32, "convs": 2, "pool": "max"}, ...])
"""

from __future__ import annotations

from typing import Any

import keras
from keras import layers

from cnnlab.errors import ModelError
from cnnlab.models.registry import register_model
from cnnlab.models.scratch.common import bn_layer, image_input

BLOCK_KEYS = (
    "filters",
    "kernel_size",
    "activation",
    "padding",
    "convs",
    "batch_norm",
    "pool",
    "pool_size",
    "dropout",
)
POOLS = ("max", "avg", "none")


def _block_list(blocks, filters, defaults) -> list[dict[str, Any]]:
    if blocks is None:
        blocks = [{"filters": f} for f in filters]
    out = []
    for i, b in enumerate(blocks):
        if isinstance(b, int):
            b = {"filters": b}
        if not isinstance(b, dict) or "filters" not in b:
            raise ModelError(
                f"simple_cnn block {i + 1} is {b!r}",
                expected="a mapping with at least 'filters', e.g. {filters: 64, convs: 2}",
            )
        unknown = [k for k in b if k not in BLOCK_KEYS]
        if unknown:
            raise ModelError(
                f"simple_cnn block {i + 1} has unknown key(s) {unknown}",
                expected=f"keys among {', '.join(BLOCK_KEYS)}",
            )
        merged = {**defaults, **b}
        if merged["pool"] not in POOLS:
            raise ModelError(
                f"simple_cnn block {i + 1}: bad pool {merged['pool']!r}",
                expected="max, avg or none",
            )
        out.append(merged)
    return out


@register_model(
    "simple_cnn",
    family="simple_cnn",
    default_image_size=32,
    min_image_size=4,
    description="Configurable conv blocks + dense layers (the classic Keras CNN)",
)
def simple_cnn(
    num_classes: int,
    input_shape: tuple[int, int, int],
    *,
    filters: list[int] = (32, 64, 128),
    kernel_size: int = 3,
    activation: str = "relu",
    padding: str = "same",
    convs: int = 2,
    batch_norm: bool = True,
    pool: str = "max",
    pool_size: int = 2,
    dropout: float = 0.1,
    blocks: list[dict[str, Any]] | None = None,
    dense: list[int] = (256,),
    dense_dropout: float = 0.3,
    global_pool: str = "avg",
    mean: list[float] | None = None,
    std: list[float] | None = None,
) -> keras.Model:
    """Conv blocks (conv → BN → activation, × convs; pool; dropout), then dense layers."""
    defaults = dict(
        kernel_size=kernel_size,
        activation=activation,
        padding=padding,
        convs=convs,
        batch_norm=batch_norm,
        pool=pool,
        pool_size=pool_size,
        dropout=dropout,
    )
    spec = _block_list(blocks, list(filters), defaults)
    inputs, x = image_input(input_shape, mean, std)
    for i, b in enumerate(spec, start=1):
        for j in range(1, int(b["convs"]) + 1):
            x = layers.Conv2D(
                int(b["filters"]),
                int(b["kernel_size"]),
                padding=b["padding"],
                use_bias=not b["batch_norm"],
                name=f"block{i}_conv{j}",
            )(x)
            if b["batch_norm"]:
                x = bn_layer(f"block{i}_bn{j}")(x)
            x = layers.Activation(b["activation"], name=f"block{i}_act{j}")(x)
        # 'same' pooling never shrinks a 1-pixel map to nothing on tiny inputs.
        if b["pool"] == "max":
            x = layers.MaxPooling2D(b["pool_size"], padding="same", name=f"block{i}_pool")(x)
        elif b["pool"] == "avg":
            x = layers.AveragePooling2D(b["pool_size"], padding="same", name=f"block{i}_pool")(x)
        if b["dropout"]:
            x = layers.Dropout(float(b["dropout"]), name=f"block{i}_dropout")(x)
    # 'pooler', as in every cnnlab model: fine-tuning and feature extraction find it by name.
    if global_pool == "avg":
        x = layers.GlobalAveragePooling2D(name="pooler")(x)
    elif global_pool == "max":
        x = layers.GlobalMaxPooling2D(name="pooler")(x)
    else:
        x = layers.Flatten(name="pooler")(x)
    for k, units in enumerate(dense, start=1):
        x = layers.Dense(int(units), activation=activation, name=f"dense{k}")(x)
        if dense_dropout:
            x = layers.Dropout(float(dense_dropout), name=f"dense{k}_dropout")(x)
    outputs = layers.Dense(num_classes, activation="softmax", dtype="float32", name="predictions")(
        x
    )
    return keras.Model(inputs, outputs, name="simple_cnn")
