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
flips) is ``cnnlab.training.recipes``.

Example:
    >>> model = create_model("airbench", 10, 32, width=0.5)
    >>> init_whitening(model, x_train[:5000])   # cnnlab.train does this itself
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np
from keras import layers, ops

from cnnlab.errors import ModelError
from cnnlab.models.registry import register_model
from cnnlab.models.scratch.common import image_input

BASE_WIDTHS = (64, 256, 256)
# Weights of the TTA views (airbench94's infer_mirror_translate): half on the
# image and its mirror, half on the two 1-pixel translations and their mirrors.
TTA_LEVELS = (0, 1, 2)


@keras.saving.register_keras_serializable(package="cnnlab")
class DiracInit(keras.initializers.Initializer):
    """Default-scale uniform init with an identity filter in the first ``in``-many outputs.

    A conv initialised this way starts as (part) identity, so a deep plain
    network begins close to a shallow one; airbench's ablation: 18 instead of
    10 epochs to 94% without it.
    """

    def __init__(self, seed: int | None = None):
        self.seed = seed

    def __call__(self, shape, dtype=None):
        kh, kw, cin, cout = shape
        limit = 1.0 / np.sqrt(kh * kw * cin)  # PyTorch's default conv init range
        w = keras.random.uniform(shape, -limit, limit, dtype=dtype or "float32", seed=self.seed)
        n = min(cin, cout)
        keep = np.ones(shape, np.float32)
        keep[..., :n] = 0.0
        ident = np.zeros(shape, np.float32)
        ident[kh // 2, kw // 2, np.arange(n), np.arange(n)] = 1.0
        return w * ops.convert_to_tensor(keep, w.dtype) + ops.convert_to_tensor(ident, w.dtype)

    def get_config(self):
        return {"seed": self.seed}


@keras.saving.register_keras_serializable(package="cnnlab")
class ScaledBias(layers.Layer):
    """``x + scale · b`` with ``b`` trainable: ``b``'s effective learning rate is ``scale²``×.

    airbench gives BatchNorm biases a 64× learning rate; with SGD, storing the
    bias as ``scale · b`` multiplies both its gradient and its step by ``scale``,
    so ``scale=8`` gives 64×.
    """

    def __init__(self, scale: float = 8.0, **kwargs):
        super().__init__(**kwargs)
        self.scale = float(scale)

    def build(self, input_shape):
        self.b = self.add_weight(shape=(input_shape[-1],), initializer="zeros", name="b")

    def call(self, x):
        return x + ops.cast(self.b, x.dtype) * self.scale

    def get_config(self):
        return {**super().get_config(), "scale": self.scale}


@keras.saving.register_keras_serializable(package="cnnlab")
class PatchWhitening(layers.Layer):
    """A fixed ``patch×patch`` 'valid' convolution that whitens image patches.

    Its ``2·patch²·C`` filters are the eigenvectors of the patch covariance,
    each divided by sqrt(eigenvalue + eps), and their negatives (so a following
    GELU keeps both signs). Until :meth:`adapt` is called the filters are the
    identity on each patch pixel (and negatives): information-preserving but not
    whitening. The filters are non-trainable weights, saved in ``.keras``; the
    bias trains.

    Example:
        >>> layer = PatchWhitening()
        >>> layer.adapt(images)            # float images, (N, H, W, C), as the layer will see them
        >>> layer(images)                  # (N, H-1, W-1, 2·4·C), channel covariance ≈ I
    """

    def __init__(self, patch_size: int = 2, eps: float = 5e-4, **kwargs):
        super().__init__(**kwargs)
        self.patch_size = int(patch_size)
        self.eps = float(eps)

    def build(self, input_shape):
        p, c = self.patch_size, int(input_shape[-1])
        k = p * p * c
        ident = np.eye(k, dtype=np.float32).reshape(p, p, c, k)
        init = np.concatenate([ident, -ident], axis=-1)
        self.kernel = self.add_weight(shape=(p, p, c, 2 * k), trainable=False, name="kernel",
                                      initializer=keras.initializers.Constant(init))  # fmt: skip
        self.bias = self.add_weight(shape=(2 * k,), initializer="zeros", name="bias")

    def call(self, x):
        y = ops.conv(x, ops.cast(self.kernel, x.dtype), strides=1, padding="valid")
        return y + ops.cast(self.bias, x.dtype)

    def compute_output_shape(self, input_shape):
        n, h, w, c = input_shape
        p = self.patch_size
        out = 2 * p * p * c
        return (n, None if h is None else h - p + 1, None if w is None else w - p + 1, out)

    def adapt(self, images: np.ndarray) -> np.ndarray:
        """Set the filters from ``images`` (N, H, W, C floats); returns the eigenvalues."""
        x = np.asarray(images, np.float64)
        if x.ndim != 4:
            raise ModelError(f"PatchWhitening.adapt received an array of shape {x.shape}",
                             expected="images shaped (N, H, W, C)")  # fmt: skip
        if not self.built:
            self.build(x.shape)
        p = self.patch_size
        h, w = x.shape[1] - p + 1, x.shape[2] - p + 1
        # (N, h, w, p, p, C) in the kernel's (kh, kw, cin) order, flattened per patch.
        patches = np.stack([np.stack([x[:, i:i + h, j:j + w] for j in range(p)], axis=3)
                            for i in range(p)], axis=3)  # fmt: skip
        flat = patches.reshape(-1, p * p * x.shape[-1])
        cov = flat.T @ flat / len(flat)  # uncentred, as airbench
        eigenvalues, eigenvectors = np.linalg.eigh(cov)
        scaled = eigenvectors / np.sqrt(eigenvalues + self.eps)  # columns = filters
        kernel = scaled.reshape(p, p, x.shape[-1], -1)
        self.kernel.assign(np.concatenate([kernel, -kernel], axis=-1).astype(np.float32))
        return eigenvalues

    def get_config(self):
        return {**super().get_config(), "patch_size": self.patch_size, "eps": self.eps}


def _reflect_translate(x, dy: int, dx: int):
    """Shift a batch by (dy, dx) pixels (|d| ≤ 1), filling the border by reflection."""
    h, w = x.shape[1], x.shape[2]
    padded = ops.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]], mode="reflect")
    return padded[:, 1 - dy:1 - dy + h, 1 - dx:1 - dx + w, :]


def tta_weights(level: int, flip: bool = True) -> list[float]:
    """The weight of each view that :class:`TTAViews` makes (they sum to 1)."""
    if level == 0:
        return [1.0]
    base = [0.5, 0.5] if flip else [1.0]
    if level == 1:
        return base
    return [v * 0.5 for v in base] + [v * 0.25 for v in base] * 2


@keras.saving.register_keras_serializable(package="cnnlab")
class TTAViews(layers.Layer):
    """At inference, stacks the test-time views of each image along the batch axis.

    Views (``level``): 0 the image; 1 also its mirror; 2 also the image shifted
    by one pixel up-left and down-right (reflect-filled), and their mirrors.
    ``flip=False`` drops mirrors (for digits). In training it passes images
    through unchanged. :class:`TTAPool` undoes the stacking.
    """

    def __init__(self, level: int = 2, flip: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.level = int(level)
        self.flip = bool(flip)

    def views(self, x) -> list:
        out = [x]
        if self.level == 0:
            return out
        def mirror(t):
            return ops.flip(t, axis=2)

        if self.flip:
            out.append(mirror(x))
        if self.level >= 2:
            for dy, dx in ((-1, -1), (1, 1)):
                t = _reflect_translate(x, dy, dx)
                out.append(t)
                if self.flip:
                    out.append(mirror(t))
        return out

    def call(self, x, training=None):
        if training or self.level == 0:
            return x
        return ops.concatenate(self.views(x), axis=0)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "level": self.level, "flip": self.flip}


@keras.saving.register_keras_serializable(package="cnnlab")
class TTAPool(layers.Layer):
    """Global max-pool, then (at inference) the weighted mean over the TTA views.

    The head after it is linear without bias, so averaging pooled features is
    exactly averaging the views' logits, as airbench does.
    """

    def __init__(self, level: int = 2, flip: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.level = int(level)
        self.flip = bool(flip)

    def call(self, x, training=None):
        pooled = ops.max(x, axis=(1, 2))
        weights = tta_weights(self.level, self.flip)
        if training or len(weights) == 1:
            return pooled
        views = ops.reshape(pooled, (len(weights), -1, pooled.shape[-1]))
        w = ops.reshape(ops.convert_to_tensor(weights, pooled.dtype), (-1, 1, 1))
        return ops.sum(views * w, axis=0)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[-1])

    def get_config(self):
        return {**super().get_config(), "level": self.level, "flip": self.flip}


def _conv_bn(x, filters: int, name: str, pool: bool, bn_momentum: float, bias_scale: float):
    x = layers.Conv2D(filters, 3, padding="same", use_bias=False, kernel_initializer=DiracInit(),
                      name=f"{name}_conv")(x)  # fmt: skip
    if pool:
        x = layers.MaxPooling2D(2, name=f"{name}_pool")(x)
    # Keras momentum = 1 - PyTorch momentum: 0.6 makes running stats follow fast,
    # which matters in short runs. eps tiny and no scale, as airbench.
    x = layers.BatchNormalization(momentum=bn_momentum, epsilon=1e-12, scale=False,
                                  center=False, name=f"{name}_bn")(x)  # fmt: skip
    x = ScaledBias(bias_scale, name=f"{name}_bias")(x)
    return layers.Activation("gelu", name=f"{name}_act")(x)


@register_model("airbench", family="airbench", default_image_size=32, min_image_size=16,
                description="CIFAR speed-record net (airbench94): whitening, dirac init, TTA",
                tags=("fast",))  # fmt: skip
def airbench(
    num_classes: int,
    input_shape: tuple[int, int, int],
    *,
    width: float = 1.0,
    widths: Sequence[int] | None = None,
    tta: int = 2,
    tta_flip: bool = True,
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
    """
    if tta not in TTA_LEVELS:
        raise ModelError(f"airbench: bad tta {tta!r}", expected="0 (none), 1 (mirror) or 2 "
                         "(mirror and 1-pixel shifts)", fix="Pass --model-kwargs tta=2")  # fmt: skip
    if widths is None:
        if not width or width <= 0:
            raise ModelError(f"airbench: bad width {width!r}", expected="a positive multiplier like 0.5",
                             fix="Pass --model-kwargs width=0.5")  # fmt: skip
        widths = [max(8, round(w * width / 8) * 8) for w in BASE_WIDTHS]
    widths = [int(w) for w in widths]
    if len(widths) != 3:
        raise ModelError(f"airbench: widths {widths} has {len(widths)} entries",
                         expected="three group widths, e.g. [64, 256, 256]")  # fmt: skip
    inputs, x = image_input(input_shape, mean, std)
    x = TTAViews(tta, tta_flip, name="tta_views")(x)
    x = PatchWhitening(2, whiten_eps, name="whiten")(x)
    x = layers.Activation("gelu", name="whiten_act")(x)
    for i, w in enumerate(widths, start=1):
        x = _conv_bn(x, w, f"group{i}a", True, bn_momentum, bias_scale)
        x = _conv_bn(x, w, f"group{i}b", False, bn_momentum, bias_scale)
    x = TTAPool(tta, tta_flip, name="pooler")(x)
    # airbench scales the logits by 1/9: with BatchNorm'd features of max-pool
    # size, this keeps the initial softmax soft. (Linear, so before the Dense.)
    x = layers.Rescaling(1.0 / 9, name="head_scale")(x)
    outputs = layers.Dense(num_classes, use_bias=False, activation="softmax", dtype="float32",
                           name="predictions")(x)  # fmt: skip
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
