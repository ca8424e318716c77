"""ResNets for small images: the CIFAR ResNet-20/32/44/56/110 (He et al. 2016) and ResNet-9.

CIFAR ResNet: a 16-filter 3×3 stem, three stages of n basic blocks (16, 32, 64
filters; stride 2 at the start of stages 2 and 3), global average pooling.
Depth = 6n + 2. Shortcuts that change shape use a 1×1 projection.

ResNet-9 (D. Page, "How to train your ResNet"): prep conv 64, then
[conv 128, pool, residual(2× conv 128)], [conv 256, pool],
[conv 512, pool, residual(2× conv 512)], global max pool; fast on CIFAR-10.

``filters`` is the first layer's filter count (16 and 64 by default); the later
stages have 2×, 4× (and 8×) as many. (It was called ``width`` before;
``width`` means a multiplier in every cnnlab model, and the old name is accepted
with a warning for one release.)
"""

from __future__ import annotations

import keras
from keras import layers

from cnnlab.models.registry import register_model
from cnnlab.models.scratch.common import bn_layer, classifier_head, conv_bn_act, image_input


def _basic_block(x, filters: int, stride: int, name: str):
    shortcut = x
    y = conv_bn_act(x, filters, 3, stride, name=f"{name}_1")
    y = conv_bn_act(y, filters, 3, 1, activation=None, name=f"{name}_2")
    if stride != 1 or x.shape[-1] != filters:
        shortcut = layers.Conv2D(
            filters,
            1,
            strides=stride,
            use_bias=False,
            kernel_initializer="he_normal",
            name=f"{name}_proj_conv",
        )(x)
        shortcut = bn_layer(f"{name}_proj_bn")(shortcut)
    y = layers.Add(name=f"{name}_add")([shortcut, y])
    return layers.Activation("relu", name=f"{name}_out")(y)


def resnet_cifar(num_classes, input_shape, depth, *, filters=16, dropout=0.0, mean=None, std=None):
    if (depth - 2) % 6:
        raise ValueError(f"depth must be 6n+2 (20, 32, 44, 56, 110), got {depth}")
    n = (depth - 2) // 6
    inputs, x = image_input(input_shape, mean, std)
    x = conv_bn_act(x, filters, 3, name="stem")
    for stage, mult in enumerate((1, 2, 4), start=1):
        for block in range(n):
            stride = 2 if stage > 1 and block == 0 else 1
            x = _basic_block(x, filters * mult, stride, name=f"stage{stage}_block{block + 1}")
    outputs = classifier_head(x, num_classes, dropout)
    return keras.Model(inputs, outputs, name=f"resnet{depth}")


def _make(depth):
    @register_model(
        f"resnet{depth}",
        family="resnet_cifar",
        default_image_size=32,
        min_image_size=8,
        description=f"CIFAR ResNet-{depth} (6n+2, 16-32-64 filters)",
    )
    def build(
        num_classes,
        input_shape,
        *,
        filters: int = 16,
        dropout: float = 0.0,
        mean: list[float] | None = None,
        std: list[float] | None = None,
    ):
        return resnet_cifar(
            num_classes, input_shape, depth, filters=filters, dropout=dropout, mean=mean, std=std
        )

    return build


for _depth in (20, 32, 44, 56, 110):
    _make(_depth)


@register_model(
    "resnet9",
    family="resnet9",
    default_image_size=32,
    min_image_size=8,
    description="ResNet-9 (Page): 64-128-256-512, two residual stages",
)
def resnet9(
    num_classes,
    input_shape,
    *,
    filters: int = 64,
    dropout: float = 0.0,
    mean: list[float] | None = None,
    std: list[float] | None = None,
):
    """ResNet-9 from 'How to train your ResNet'; ``filters`` (the prep layer's) scales every
    layer."""
    w = filters
    inputs, x = image_input(input_shape, mean, std)
    x = conv_bn_act(x, w, name="prep")

    def residual(x, filters, name):
        y = conv_bn_act(x, filters, name=f"{name}_1")
        y = conv_bn_act(y, filters, name=f"{name}_2")
        return layers.Add(name=f"{name}_add")([x, y])

    x = conv_bn_act(x, 2 * w, name="layer1")
    x = layers.MaxPooling2D(2, padding="same", name="layer1_pool")(x)
    x = residual(x, 2 * w, "layer1_res")
    x = conv_bn_act(x, 4 * w, name="layer2")
    x = layers.MaxPooling2D(2, padding="same", name="layer2_pool")(x)
    x = conv_bn_act(x, 8 * w, name="layer3")
    x = layers.MaxPooling2D(2, padding="same", name="layer3_pool")(x)
    x = residual(x, 8 * w, "layer3_res")
    outputs = classifier_head(x, num_classes, dropout, pooling="max")
    return keras.Model(inputs, outputs, name="resnet9")
