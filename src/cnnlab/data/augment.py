"""Augmentation as named policies or explicit options, built from Keras preprocessing layers.

Runs in the ``tf.data`` pipeline on CPU, on batches of the training split only,
on raw 0-255 pixels (the model rescales them itself).

| policy   | what it does |
| -------- | ------------ |
| none     | nothing |
| light    | horizontal flip, translation 10% |
| standard | light + rotation 5%, zoom 10%, contrast 10% |
| strong   | standard + 4-pixel pad-and-crop and RandAugment (2 ops, RGB only) |
| auto     | ``light``, but no flips for handwritten digits (a mirrored 2 is not a 2) |

Explicit options (``flip``, ``rotation``, ``zoom``, ``translation``,
``contrast``, ``random_crop``) override the policy's value for that operation.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import keras
import tensorflow as tf

from cnnlab.errors import ConfigError


@dataclass
class AugmentOptions:
    flip: str = "none"  # none | horizontal | vertical | horizontal_and_vertical
    rotation: float = 0.0  # fraction of a full turn
    zoom: float = 0.0
    translation: float = 0.0
    contrast: float = 0.0
    random_crop: int = 0  # pad by this many pixels (reflect), then crop back
    rand_augment: bool = False

    def active(self) -> bool:
        return any(
            getattr(self, f.name) not in (0, 0.0, "none", False) for f in fields(self)
        )


POLICIES = {
    "none": AugmentOptions(),
    "light": AugmentOptions(flip="horizontal", translation=0.1),
    "standard": AugmentOptions(
        flip="horizontal", translation=0.1, rotation=0.05, zoom=0.1, contrast=0.1
    ),
    "strong": AugmentOptions(
        flip="horizontal", translation=0.1, rotation=0.05, zoom=0.1, contrast=0.1,
        random_crop=4, rand_augment=True,
    ),  # fmt: skip
}
NO_FLIP_DATASETS = ("builtin:digits", "builtin:mnist")
FLIPS = ("none", "horizontal", "vertical", "horizontal_and_vertical")


def resolve_options(policy: str, data_spec: str = "", **explicit) -> AugmentOptions:
    """Start from a policy and apply the explicitly given options (None = not given)."""
    if policy == "auto":
        base = POLICIES["light"]
        if data_spec in NO_FLIP_DATASETS:
            base = AugmentOptions(translation=0.1)
    elif policy in POLICIES:
        base = POLICIES[policy]
    else:
        raise ConfigError(
            f"Unknown augment policy '{policy}'",
            expected=f"one of auto, {', '.join(POLICIES)}",
        )
    opts = AugmentOptions(**{f.name: getattr(base, f.name) for f in fields(base)})
    for key, value in explicit.items():
        if value is not None:
            setattr(opts, key, value)
    if opts.flip not in FLIPS:
        raise ConfigError(f"Bad flip: received {opts.flip!r}", expected=f"one of {', '.join(FLIPS)}")
    return opts


class Augmenter:
    """Applies the chosen operations to a batch of images (float32, 0-255)."""

    def __init__(self, opts: AugmentOptions, image_size: tuple[int, int], channels: int, seed: int):
        self.opts = opts
        h, w = image_size
        layers: list[keras.layers.Layer] = []
        if opts.random_crop:
            layers.append(keras.layers.RandomCrop(h, w, seed=seed, name="random_crop"))
        if opts.flip != "none":
            layers.append(keras.layers.RandomFlip(opts.flip, seed=seed + 1, name="flip"))
        if opts.rotation:
            layers.append(keras.layers.RandomRotation(opts.rotation, fill_mode="reflect",
                                                      seed=seed + 2, name="rotation"))  # fmt: skip
        if opts.zoom:
            layers.append(keras.layers.RandomZoom(opts.zoom, fill_mode="reflect",
                                                  seed=seed + 3, name="zoom"))  # fmt: skip
        if opts.translation:
            layers.append(keras.layers.RandomTranslation(
                opts.translation, opts.translation, fill_mode="reflect", seed=seed + 4,
                name="translation"))  # fmt: skip
        if opts.contrast:
            layers.append(keras.layers.RandomContrast(opts.contrast, value_range=(0, 255),
                                                      seed=seed + 5, name="contrast"))  # fmt: skip
        if opts.rand_augment and channels == 3:
            layers.append(keras.layers.RandAugment(value_range=(0, 255), num_ops=2,
                                                   factor=0.5, seed=seed + 6, name="rand_augment"))  # fmt: skip
        self.layers = layers

    def __call__(self, images: tf.Tensor) -> tf.Tensor:
        x = images
        if self.opts.random_crop:
            p = int(self.opts.random_crop)
            x = tf.pad(x, [[0, 0], [p, p], [p, p], [0, 0]], mode="REFLECT")
        for layer in self.layers:
            x = layer(x, training=True)
        return tf.clip_by_value(x, 0.0, 255.0)

    def describe(self) -> str:
        return ", ".join(layer.name for layer in self.layers) or "none"
