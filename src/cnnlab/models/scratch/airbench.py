"""airbench: the CIFAR-10 speed-record network (K. Jordan's airbench94) in Keras.

Layer by layer, after ``legacy/airbench94.py`` (arXiv 2404.00498):

- input standardised with the training split's mean/std (``normalize``);
- ``whiten``: a fixed 2×2 convolution whose filters are the eigenvectors of the
  covariance of 2×2 patches of training images, each scaled by 1/sqrt(λ + eps),
  and their negatives (:class:`PatchWhitening`; ``init_whitening`` fits it);
- three groups (widths 64, 256, 256 at ``width=1``): conv → max-pool → BN → GELU
  → conv → BN → GELU, convolutions identity-initialised (:class:`DiracInit`);
- BatchNorm with fast running averages (momentum 0.6), eps 1e-12, no scale, and
  a bias that learns 64× faster (:class:`ScaledBias`, a reparametrisation,
  since Keras has no per-variable learning rate);
- head: global max-pool, × 1/9, linear without bias, softmax;
- test-time augmentation inside the model (:class:`TTAViews` and
  :class:`TTAPool`): at inference the logits of the image, its mirror and
  1-pixel translations are averaged, so ``evaluate`` and ``predict`` use it.

About 1.97 M parameters and 0.24 GFLOP per 32×32 image forward at ``width=1``;
``width=0.5`` is about a quarter of the compute. The training recipe that goes
with it (label smoothing, Nesterov SGD, warm-up/decay, lookahead, alternating
flips) is ``cnnlab.training.recipes``. The custom layers live in
``cnnlab.nn.layers``, so a saved airbench loads without this module.

Example:
    >>> model = create_model("airbench", 10, 32, width=0.5)
    >>> init_whitening(model, x_train[:5000])   # cnnlab.train does this itself
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np
from keras import layers

from cnnlab.errors import ModelError
from cnnlab.models.registry import register_model
from cnnlab.models.scratch.common import image_input
from cnnlab.nn.layers import (  # noqa: F401 - re-exported: the layers came from here
    GELU,
    DiracInit,
    FusedBatchNorm,
    PatchWhitening,
    ScaledBias,
    TrainingResize,
    TTAPool,
    TTAViews,
    tta_weights,
)

BASE_WIDTHS = (64, 256, 256)
# Weights of the TTA views (airbench94's infer_mirror_translate): half on the
# image and its mirror, half on the two 1-pixel translations and their mirrors.
TTA_LEVELS = (0, 1, 2)


def _gelu(name: str, fused: bool):
    return GELU(name=name) if fused else layers.Activation("gelu", name=name)


def _conv_bn(x, filters, name: str, pool: bool, bn_momentum, bias_scale, fused: bool):
    x = layers.Conv2D(
        filters,
        3,
        padding="same",
        use_bias=False,
        kernel_initializer=DiracInit(),
        name=f"{name}_conv",
    )(x)
    if pool:
        x = layers.MaxPooling2D(2, name=f"{name}_pool")(x)
    # Keras momentum = 1 - PyTorch momentum: 0.6 makes running stats follow fast,
    # which matters in short runs. eps tiny and no scale, as airbench.
    norm = FusedBatchNorm if fused else layers.BatchNormalization
    x = norm(momentum=bn_momentum, epsilon=1e-12, scale=False, center=False, name=f"{name}_bn")(x)
    x = ScaledBias(bias_scale, name=f"{name}_bias")(x)
    return _gelu(f"{name}_act", fused)(x)


@register_model(
    "airbench",
    family="airbench",
    default_image_size=32,
    min_image_size=16,
    description="CIFAR speed-record net (airbench94): whitening, dirac init, TTA",
    tags=("fast",),
)
def airbench(
    num_classes: int,
    input_shape: tuple[int, int, int],
    *,
    width: float = 1.0,
    widths: Sequence[int] | None = None,
    tta: int = 2,
    tta_flip: bool = True,
    train_resize: bool = False,
    fused: bool = True,
    whiten_eps: float = 5e-4,
    bn_momentum: float = 0.6,
    bias_scale: float = 8.0,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> keras.Model:
    """airbench94's network; ``width`` scales the group widths (64, 256, 256).

    Args:
        width: multiplier of the group widths (0.5 ≈ a quarter of the compute).
        widths: explicit group widths, overriding ``width``.
        tta: test-time augmentation: 0 none, 1 mirror, 2 mirror + 1-pixel shifts.
        tta_flip: use mirrored views (off for digits and text).
        train_resize: add a :class:`TrainingResize` layer after the input, so that
            training steps can run at a lower resolution (the fast recipe's
            progressive resizing sets its size per epoch).
        fused: GELU and BatchNorm layers whose training steps run fused kernels
            (:class:`GELU`, :class:`FusedBatchNorm`: the same functions, faster to
            train; bench/README.md); False builds Keras' own layers.
    """
    if tta not in TTA_LEVELS:
        raise ModelError(
            f"airbench: bad tta {tta!r}",
            expected="0 (none), 1 (mirror) or 2 (mirror and 1-pixel shifts)",
            fix="Pass --model-kwargs tta=2",
        )
    if widths is None:
        if not width or width <= 0:
            raise ModelError(
                f"airbench: bad width {width!r}",
                expected="a positive multiplier like 0.5",
                fix="Pass --model-kwargs width=0.5",
            )
        widths = [max(8, round(w * width / 8) * 8) for w in BASE_WIDTHS]
    widths = [int(w) for w in widths]
    if len(widths) != 3:
        raise ModelError(
            f"airbench: widths {widths} has {len(widths)} entries",
            expected="three group widths, e.g. [64, 256, 256]",
        )
    inputs, x = image_input(input_shape, mean, std)
    if train_resize:
        x = TrainingResize(name="train_resize")(x)
    x = TTAViews(tta, tta_flip, name="tta_views")(x)
    x = PatchWhitening(2, whiten_eps, name="whiten")(x)
    x = _gelu("whiten_act", fused)(x)
    for i, w in enumerate(widths, start=1):
        x = _conv_bn(x, w, f"group{i}a", True, bn_momentum, bias_scale, fused)
        x = _conv_bn(x, w, f"group{i}b", False, bn_momentum, bias_scale, fused)
    x = TTAPool(tta, tta_flip, name="pooler")(x)
    # airbench scales the logits by 1/9: with BatchNorm'd features of max-pool
    # size, this keeps the initial softmax soft. (Linear, so before the Dense.)
    x = layers.Rescaling(1.0 / 9, name="head_scale")(x)
    outputs = layers.Dense(
        num_classes, use_bias=False, activation="softmax", dtype="float32", name="predictions"
    )(x)
    return keras.Model(inputs, outputs, name="airbench")


def whitening_layers(model) -> list[PatchWhitening]:
    return [layer for layer in model.layers if isinstance(layer, PatchWhitening)]


def init_whitening(model, images: np.ndarray, max_images: int = 5000) -> bool:
    """Fit the model's :class:`PatchWhitening` layer on training ``images`` (raw 0-255).

    The images go through the model's own preprocessing (``normalize`` or
    ``rescale``) first, so the layer whitens what it will see. Returns False
    when the model has no whitening layer.

    Example:
        >>> init_whitening(model, x_train)   # uses the first 5000 images
        True
    """
    found = whitening_layers(model)
    if not found:
        return False
    layer = found[0]
    pre_name = next((n for n in ("normalize", "rescale") if _has_layer(model, n)), None)
    x = np.asarray(images[:max_images], np.float32)
    if pre_name is not None:
        x = keras.ops.convert_to_numpy(model.get_layer(pre_name)(x))
    layer.adapt(x)
    return True


def _has_layer(model, name: str) -> bool:
    return any(layer.name == name for layer in model.layers)
