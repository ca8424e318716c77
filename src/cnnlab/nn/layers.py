"""Keras layers and initialisers a saved cnnlab model may hold.

Every class is registered with Keras under the package ``cnnlab`` (``cnnlab>DiracInit``
...), so a ``.keras`` file that holds one loads after ``import cnnlab.nn``, without the
model family's module. The names never change: files saved by earlier versions load.

- :class:`DiracInit`: a convolution initialised as (part) identity;
- :class:`ScaledBias`: a bias whose effective learning rate is ``scale²``×;
- :class:`PatchWhitening`: a fixed convolution that whitens image patches;
- :class:`TTAViews` and :class:`TTAPool`: test-time augmentation inside the model;
- :class:`TrainingResize`: lower-resolution training steps (progressive resizing);
- :class:`GELU` and :class:`FusedBatchNorm`: GELU and BatchNormalization whose
  training steps run as fused kernels (the same functions, fewer passes);
- :class:`ImagePreprocessing`: a pretrained family's input preprocessing, inside the model.

The first seven came with ``airbench`` (see ``cnnlab.models.scratch.airbench``), the last with
the ``keras.applications`` backbones (``cnnlab.models.pretrained``).
"""

from __future__ import annotations

import functools

import keras
import numpy as np
from keras import layers, ops

from cnnlab.errors import ModelError

__all__ = [
    "DiracInit",
    "FusedBatchNorm",
    "GELU",
    "PatchWhitening",
    "ScaledBias",
    "TTAPool",
    "TTAViews",
    "TrainingResize",
    "tta_weights",
]


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
        self.kernel = self.add_weight(
            shape=(p, p, c, 2 * k),
            trainable=False,
            name="kernel",
            initializer=keras.initializers.Constant(init),
        )
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
        x = np.asarray(images)
        if x.ndim != 4:
            raise ModelError(
                f"PatchWhitening.adapt received an array of shape {x.shape}",
                expected="images shaped (N, H, W, C)",
            )
        if not self.built:
            self.build(x.shape)
        p, c = self.patch_size, x.shape[-1]
        h, w = x.shape[1] - p + 1, x.shape[2] - p + 1
        cov = np.zeros((p * p * c, p * p * c))
        # 500 images at a time: the patches of 5,000 CIFAR images at once took 1.2 GB.
        for k in range(0, len(x), 500):
            chunk = np.asarray(x[k : k + 500], np.float64)
            # (n, h, w, p, p, C) in the kernel's (kh, kw, cin) order, flattened per patch.
            patches = np.stack(
                [
                    np.stack([chunk[:, i : i + h, j : j + w] for j in range(p)], axis=3)
                    for i in range(p)
                ],
                axis=3,
            )
            flat = patches.reshape(-1, p * p * c)
            cov += flat.T @ flat
        cov /= max(1, len(x) * h * w)  # uncentred, as airbench
        eigenvalues, eigenvectors = np.linalg.eigh(cov)
        scaled = eigenvectors / np.sqrt(eigenvalues + self.eps)  # columns = filters
        kernel = scaled.reshape(p, p, c, -1)
        self.kernel.assign(np.concatenate([kernel, -kernel], axis=-1).astype(np.float32))
        return eigenvalues

    def get_config(self):
        return {**super().get_config(), "patch_size": self.patch_size, "eps": self.eps}


def _reflect_translate(x, dy: int, dx: int):
    """Shift a batch by (dy, dx) pixels (|d| ≤ 1), filling the border by reflection."""
    h, w = x.shape[1], x.shape[2]
    padded = ops.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]], mode="reflect")
    return padded[:, 1 - dy : 1 - dy + h, 1 - dx : 1 - dx + w, :]


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


# ---------------------------------------------------------------- pretrained preprocessing

_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
_TORCH_MEAN = (0.485, 0.456, 0.406)
_TORCH_STD = (0.229, 0.224, 0.225)
PREPROCESSING_MODES = ("caffe", "tf", "torch", "none")


@keras.saving.register_keras_serializable(package="cnnlab")
class ImagePreprocessing(layers.Layer):
    """Raw 0-255 RGB pixels to what a pretrained family expects, inside the model.

    Modes match ``keras.applications.imagenet_utils.preprocess_input``:

    * ``caffe``: RGB to BGR, minus the ImageNet mean per channel (VGG, ResNet);
    * ``tf``: scaled to [-1, 1] (ResNetV2, Inception, Xception, MobileNet/V2, NASNet);
    * ``torch``: scaled to [0, 1], minus mean, divided by std per channel (DenseNet);
    * ``none``: unchanged, for backbones that rescale inside themselves
      (EfficientNet, EfficientNetV2, ConvNeXt, MobileNetV3, EfficientNet-Lite).

    A one-channel (grayscale) input is repeated to three channels first.

    Example:
        >>> ImagePreprocessing("tf")(np.full((1, 2, 2, 3), 255.0))[0, 0, 0]
        [1., 1., 1.]
    """

    def __init__(self, mode: str = "none", **kwargs):
        super().__init__(**kwargs)
        if mode not in PREPROCESSING_MODES:
            raise ModelError(
                f"Unknown preprocessing mode {mode!r}",
                expected=f"one of {', '.join(PREPROCESSING_MODES)}",
            )
        self.mode = mode

    def call(self, inputs):
        x = ops.cast(inputs, self.compute_dtype)
        if x.shape[-1] == 1:
            x = ops.concatenate([x, x, x], axis=-1)
        if self.mode == "caffe":
            x = ops.flip(x, axis=-1) - ops.convert_to_tensor(_CAFFE_MEAN_BGR, self.compute_dtype)
        elif self.mode == "tf":
            x = x / 127.5 - 1.0
        elif self.mode == "torch":
            mean = ops.convert_to_tensor(_TORCH_MEAN, self.compute_dtype)
            std = ops.convert_to_tensor(_TORCH_STD, self.compute_dtype)
            x = (x / 255.0 - mean) / std
        return x

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], 3)

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


@keras.saving.register_keras_serializable(package="cnnlab")
class TrainingResize(layers.Layer):
    """In training steps, scales the images down to ``size`` (height, width); else passes them on.

    ``size`` is a non-trainable integer variable, (0, 0) (the default) meaning "leave
    the images as they are". A callback sets it per epoch (progressive resizing,
    ``cnnlab.training.callbacks.ProgressiveResizing``): convolutions on 16×16 and
    24×24 images cost about a quarter and a half of those on 32×32 ones, and the last
    epochs at full size adapt the network to the resolution it is used at. Inference
    (``evaluate``, ``predict``, exports) never resizes, so the layers after it must take
    any image size (global pooling, no flatten), as airbench's do.

    Example:
        >>> layer = model.get_layer("train_resize")
        >>> layer.size.assign([24, 24])   # training steps now see 24×24 images
    """

    def build(self, input_shape):
        self.size = self.add_weight(
            shape=(2,), dtype="int32", initializer="zeros", trainable=False, name="size"
        )

    def call(self, x, training=None):
        if not training:
            return x
        import tensorflow as tf  # the target size is a tensor, which TF's resize takes

        size = tf.convert_to_tensor(self.size.value)

        def smaller():
            return tf.cast(tf.image.resize(x, size, antialias=True), x.dtype)

        return tf.cond(size[0] > 0, smaller, lambda: x)

    def compute_output_shape(self, input_shape):
        return input_shape


def _fused_kernels_apply() -> bool:
    """The fused training paths run under TensorFlow on CPU-only machines, where they
    were measured; with a GPU (cuDNN refuses BatchNorm's epsilon below 1e-5) and
    under other backends the layers are Keras' own."""
    if keras.backend.backend() != "tensorflow":
        return False
    import tensorflow as tf

    return not tf.config.list_physical_devices("GPU")


_SQRT_HALF = 0.7071067811865476  # 1 / sqrt(2)
_INV_SQRT_2PI = 0.3989422804014327  # 1 / sqrt(2 pi)


@functools.cache  # built once, on first use (it needs TensorFlow)
def _fused_gelu():
    """Exact GELU, ``x · Φ(x)``, as one XLA kernel forward and one backward.

    TensorFlow runs ``keras.activations.gelu`` and its automatic gradient as about
    ten element-wise passes over the tensor, each in bfloat16 under mixed precision.
    Here each direction is one compiled loop in float32 (then rounded once):
    7.3× faster forward and backward on a (1024, 31, 31, 48) bfloat16 tensor on a
    2-core CPU (``python bench/fused_layers.py``).
    """
    import tensorflow as tf

    @tf.function(jit_compile=True)
    def forward(x):
        xf = tf.cast(x, "float32")
        return tf.cast(xf * (0.5 * tf.math.erfc(-xf * _SQRT_HALF)), x.dtype)

    @tf.function(jit_compile=True)
    def backward(dy, x):
        xf = tf.cast(x, "float32")
        cdf = 0.5 * tf.math.erfc(-xf * _SQRT_HALF)
        pdf = _INV_SQRT_2PI * tf.exp(-0.5 * xf * xf)
        return tf.cast(tf.cast(dy, "float32") * (cdf + xf * pdf), x.dtype)

    @tf.custom_gradient
    def gelu(x):
        return forward(x), lambda dy: backward(dy, x)

    return gelu


@keras.saving.register_keras_serializable(package="cnnlab")
class GELU(layers.Layer):
    """Exact GELU (``keras.activations.gelu``); training steps use fused kernels.

    The same function as ``Activation("gelu")``. In training steps (TensorFlow
    backend, CPU) the forward pass and its gradient each run as one XLA-compiled loop
    (:func:`_fused_gelu`); with :class:`FusedBatchNorm` the fast recipe trains on
    CIFAR-10 in 0.78× the time on a 2-core CPU (bench/README.md). Inference,
    exports and Grad-CAM use the plain op, so an exported model holds nothing
    XLA-specific.
    """

    def call(self, x, training=None):
        if training and _fused_kernels_apply():
            return _fused_gelu()(x)
        return keras.activations.gelu(x, approximate=False)

    def compute_output_shape(self, input_shape):
        return input_shape


@keras.saving.register_keras_serializable(package="cnnlab")
class FusedBatchNorm(layers.BatchNormalization):
    """``keras.layers.BatchNormalization`` whose training steps use TensorFlow's fused kernel.

    The same layer (weights, moving averages, saved config). When it normalises the
    last axis of a 4-D tensor under the TensorFlow backend on CPU, a training step runs
    ``FusedBatchNormV3`` (oneDNN's kernel on CPU) and its gradient: one pass each
    way, where Keras' layer upcasts to float32, computes the moments and normalises
    in separate passes, and autodiff adds as many again (5.2× faster forward and
    backward on a (1024, 31, 31, 48) bfloat16 tensor on a 2-core CPU;
    ``python bench/fused_layers.py``). Everything
    else (inference, exports, masks, renorm, synchronised statistics) is Keras' code.
    """

    def _fused(self, inputs, training, mask) -> bool:
        return bool(
            training
            and self.trainable
            and mask is None
            and not (self.renorm or self.synchronized)
            and len(inputs.shape) == 4
            and self.axis in (-1, 3)
            and _fused_kernels_apply()
        )

    def call(self, inputs, training=None, mask=None):
        if not self._fused(inputs, training, mask):
            return super().call(inputs, training=training, mask=mask)
        import tensorflow as tf

        channels = inputs.shape[-1]
        gamma = self.gamma.value if self.scale else tf.ones([channels], "float32")
        beta = self.beta.value if self.center else tf.zeros([channels], "float32")
        outputs, mean, variance, *_ = tf.raw_ops.FusedBatchNormV3(
            x=inputs,
            scale=tf.cast(gamma, "float32"),
            offset=tf.cast(beta, "float32"),
            mean=tf.zeros([0], "float32"),
            variance=tf.zeros([0], "float32"),
            epsilon=float(self.epsilon),  # tf.nn.fused_batch_norm would raise it to 1e-5
            data_format="NHWC",
            is_training=True,
        )
        # The kernel returns the unbiased variance; Keras' moving average takes the biased.
        n = tf.cast(tf.reduce_prod(tf.shape(inputs)[:-1]), "float32")
        variance = variance * (n - 1) / tf.maximum(n, 2.0)
        m = self.momentum
        self.moving_mean.assign(
            self.moving_mean * m + tf.cast(mean, self.moving_mean.dtype) * (1 - m)
        )
        self.moving_variance.assign(
            self.moving_variance * m + tf.cast(variance, self.moving_variance.dtype) * (1 - m)
        )
        return tf.cast(outputs, self.compute_dtype)
