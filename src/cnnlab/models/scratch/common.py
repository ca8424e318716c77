"""Pieces every from-scratch model shares: the input with its preprocessing, and the head."""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import layers


def image_input(
    input_shape: tuple[int, int, int],
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
):
    """Input of raw 0-255 pixels, then the model's own preprocessing.

    With ``mean``/``std`` (per channel, in 0-255 units, measured on the training
    split by cnnlab.train) the input is standardised; otherwise rescaled to 0-1.
    Either way a saved model needs nothing outside itself.
    """
    inputs = keras.Input(shape=input_shape, name="image")
    if mean is not None and std is not None:
        channels = input_shape[-1]
        mean = (
            list(mean)[:channels] if len(mean) >= channels else [sum(mean) / len(mean)] * channels
        )
        std = list(std)[:channels] if len(std) >= channels else [sum(std) / len(std)] * channels
        x = layers.Normalization(
            mean=mean, variance=[max(s, 1e-3) ** 2 for s in std], name="normalize"
        )(inputs)
    else:
        x = layers.Rescaling(1.0 / 255, name="rescale")(inputs)
    return inputs, x


def classifier_head(x, num_classes: int, dropout: float = 0.0, pooling: str = "avg"):
    """Global pooling ('pooler'), optional dropout, softmax ('predictions', float32)."""
    if pooling == "max":
        x = layers.GlobalMaxPooling2D(name="pooler")(x)
    elif pooling == "avg":
        x = layers.GlobalAveragePooling2D(name="pooler")(x)
    else:
        x = layers.Flatten(name="pooler")(x)
    if dropout:
        x = layers.Dropout(dropout, name="head_dropout")(x)
    # float32 output keeps the softmax stable under mixed precision.
    return layers.Dense(num_classes, activation="softmax", dtype="float32", name="predictions")(x)


# Keras' default BatchNorm momentum (0.99) needs thousands of steps before the
# moving statistics used at inference match the batch statistics used in
# training; short runs on small data then score far below their training
# accuracy. 0.9 (PyTorch's default, 0.1 there) settles within ~50 steps.
BN_MOMENTUM = 0.9


def bn_layer(name: str):
    return layers.BatchNormalization(momentum=BN_MOMENTUM, name=name)


def conv_bn_act(
    x,
    filters: int,
    kernel_size: int = 3,
    strides: int = 1,
    activation="relu",
    name: str = "conv",
    batch_norm: bool = True,
    padding: str = "same",
):
    x = layers.Conv2D(
        filters,
        kernel_size,
        strides=strides,
        padding=padding,
        use_bias=not batch_norm,
        kernel_initializer="he_normal",
        name=f"{name}_conv",
    )(x)
    if batch_norm:
        x = bn_layer(f"{name}_bn")(x)
    if activation:
        x = layers.Activation(activation, name=f"{name}_act")(x)
    return x
