"""Grad-CAM (Selvaraju et al. 2017): where in the image the model looked for a class.

The class score's gradient with respect to the last convolutional feature map,
averaged over space, weighs each channel of that map; the ReLU of the weighted
sum is the heat map, upsampled to the image.

The class score is the *logit* (the ``predictions`` layer's input times its
kernel, plus bias) rather than the softmax probability: the probability of a
confident prediction is flat, so its gradient vanishes and the map goes blank.
"""

from __future__ import annotations

import numpy as np

# Layers that work on a feature map without mixing it spatially: after the last
# convolution, these still show "what the convolution found, where".
_PER_PIXEL = (
    "BatchNormalization",
    "Activation",
    "GELU",
    "ReLU",
    "LeakyReLU",
    "PReLU",
    "ELU",
    "Add",
    "Multiply",
    "Dropout",
    "SpatialDropout2D",
    "LayerNormalization",
)
_CONV = ("Conv2D", "DepthwiseConv2D", "SeparableConv2D", "Conv2DTranspose")


def _is_4d(layer) -> bool:
    try:
        shape = layer.output.shape
    except (AttributeError, ValueError):  # a layer used more than once, or not built
        return False
    return len(shape) == 4


def _is_kind(layer, kinds) -> bool:
    """Whether the layer's class, or a class it derives from, is named in ``kinds``
    (so cnnlab's ``FusedBatchNorm`` counts as a ``BatchNormalization``)."""
    return any(cls.__name__ in kinds for cls in type(layer).__mro__)


def find_last_conv_layer(model) -> str:
    """Name of the layer whose output Grad-CAM should use.

    The last convolution, or the last layer right after it that keeps its
    feature map as it is (batch norm, activation, residual add): the
    activated map, before any pooling shrinks it. A nested model (a pretrained
    backbone used as one layer) counts as a convolution.

    Example:
        >>> find_last_conv_layer(create_model("resnet20", 10, 32))
        'stage3_block3_out'
    """
    from cnnlab.errors import ModelError

    layers = list(model.layers)
    last_conv = None
    for i, layer in enumerate(layers):
        nested = hasattr(layer, "layers") and _is_4d(layer)
        if (_is_kind(layer, _CONV) or nested) and _is_4d(layer):
            last_conv = i
    if last_conv is None:
        raise ModelError(
            f"Model {model.name} has no convolutional layer for Grad-CAM",
            expected="a CNN with at least one Conv2D layer (or a convolutional backbone)",
        )
    chosen = last_conv
    shape = tuple(layers[last_conv].output.shape[1:3])
    for j in range(last_conv + 1, len(layers)):
        layer = layers[j]
        if not _is_4d(layer):
            continue
        if _is_kind(layer, _PER_PIXEL) and tuple(layer.output.shape[1:3]) == shape:
            chosen = j
        elif _is_kind(layer, _CONV):
            break
    return layers[chosen].name


def _output_in(model, layer):
    """The layer's output tensor in ``model``'s graph.

    For a nested model (a pretrained backbone used as one layer) ``layer.output``
    is the tensor of its own inner graph, which ``model.inputs`` do not reach;
    the tensor of the call inside ``model`` is on its last inbound node.
    """
    nodes = getattr(layer, "_inbound_nodes", None)
    if hasattr(layer, "layers") and nodes:
        return nodes[-1].output_tensors[0]
    return layer.output


def gradcam(
    model,
    images: np.ndarray,
    class_index: np.ndarray | int | None = None,
    layer: str | None = None,
    batch_size: int = 32,
) -> np.ndarray:
    """Heat maps in [0, 1], one per image, of the input's height and width.

    Args:
        model: a Keras model taking raw 0-255 images.
        images: (N, H, W, C) array, as the model takes them.
        class_index: the class to explain, per image or for all; default: the predicted class.
        layer: the feature-map layer; default: :func:`find_last_conv_layer`.

    Example:
        >>> maps = gradcam(model, images)           # (N, H, W)
        >>> over = overlay(images[0], maps[0])      # uint8 RGB for display
    """
    images = np.asarray(images, np.float32)
    grad_model, head = _grad_model(model, layer or find_last_conv_layer(model))
    out = []
    for start in range(0, len(images), batch_size):
        x = images[start : start + batch_size]
        if class_index is None or np.ndim(class_index) == 0:
            cls = class_index
        else:
            cls = np.asarray(class_index)[start : start + batch_size]
        out.append(_batch_maps(grad_model, head, x, cls))
    maps = np.concatenate(out) if out else np.zeros((0, *images.shape[1:3]), np.float32)
    # Each map is scaled to its own maximum: the question is "where", not "how much".
    peak = maps.reshape(len(maps), -1).max(axis=1) if len(maps) else np.zeros(0)
    return maps / np.where(peak > 0, peak, 1.0)[:, None, None]


def _grad_model(model, layer: str):
    """A model from the input to (the feature map, the class scores' source), and the dense
    ``predictions`` head whose logits are the class scores (None: use log-probabilities)."""
    import keras

    fmap_out = _output_in(model, model.get_layer(layer))
    head = None
    try:
        head = model.get_layer("predictions")
    except ValueError:
        pass
    if not (head is not None and hasattr(head, "kernel") and hasattr(head, "bias")):
        head = None
    score_out = head.input if head is not None else model.outputs[0]
    return keras.Model(model.inputs, [fmap_out, score_out]), head


def _batch_maps(grad_model, head, images: np.ndarray, class_index) -> np.ndarray:
    """Unscaled Grad-CAM maps of one batch, upsampled to the images' size."""
    import tensorflow as tf

    x = tf.convert_to_tensor(images)
    with tf.GradientTape() as tape:
        fmap, score = grad_model(x, training=False)
        if head is not None:
            k = tf.cast(head.kernel, score.dtype)
            b = tf.cast(head.bias, score.dtype) if head.bias is not None else 0.0
            logits = tf.matmul(score, k) + b
        else:
            logits = tf.math.log(tf.clip_by_value(score, 1e-12, 1.0))
        if class_index is None:
            cls = tf.argmax(logits, axis=1)
        elif np.ndim(class_index) == 0:
            cls = tf.fill([tf.shape(x)[0]], tf.cast(int(class_index), tf.int64))
        else:
            cls = tf.constant(class_index, tf.int64)
        target = tf.gather(logits, cls, axis=1, batch_dims=1)
    grads = tape.gradient(target, fmap)
    weights = tf.reduce_mean(tf.cast(grads, tf.float32), axis=(1, 2), keepdims=True)
    cam = tf.nn.relu(tf.reduce_sum(weights * tf.cast(fmap, tf.float32), axis=-1))
    return tf.image.resize(cam[..., None], images.shape[1:3], method="bilinear")[..., 0].numpy()


def overlay(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Blend a [0, 1] heat map (jet colours) over an image: uint8 RGB of the image's size."""
    import matplotlib

    img = np.asarray(image, np.float32)
    if img.ndim == 2:
        img = img[..., None]
    if img.shape[-1] == 1:
        img = np.repeat(img, 3, axis=-1)
    colours = matplotlib.colormaps["jet"](np.clip(heatmap, 0, 1))[..., :3] * 255.0
    return np.clip((1 - alpha) * img[..., :3] + alpha * colours, 0, 255).astype(np.uint8)
