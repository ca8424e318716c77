"""VGG-style networks with batch norm for small images (Simonyan & Zisserman 2015, CIFAR variant).

Stacks of 3×3 conv → BN → ReLU with 2×2 max pooling between stages, then global
average pooling and a softmax layer (no 4096-wide dense layers: on 32×32 data
they add parameters, not accuracy). ``width`` multiplies every conv's filter count
(it was ``width_mult`` before; the old name is accepted with a warning).
"""

from __future__ import annotations

import keras
from keras import layers

from cnnlab.models.registry import register_model
from cnnlab.models.scratch.common import classifier_head, conv_bn_act, image_input

# Numbers are conv widths, "M" a 2×2 max pool.
CONFIGS = {
    "vgg8_bn": [64, "M", 128, "M", 256, 256, "M", 512, "M"],
    "vgg11_bn": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16_bn": [
        64,
        64,
        "M",
        128,
        128,
        "M",
        256,
        256,
        256,
        "M",
        512,
        512,
        512,
        "M",
        512,
        512,
        512,
        "M",
    ],
}


def vgg(num_classes, input_shape, cfg, name, *, width=1.0, dropout=0.3, mean=None, std=None):
    inputs, x = image_input(input_shape, mean, std)
    stage, conv = 1, 1
    for item in cfg:
        if item == "M":
            x = layers.MaxPooling2D(2, padding="same", name=f"stage{stage}_pool")(x)
            stage, conv = stage + 1, 1
        else:
            x = conv_bn_act(x, max(8, int(item * width)), name=f"stage{stage}_conv{conv}")
            conv += 1
    outputs = classifier_head(x, num_classes, dropout)
    return keras.Model(inputs, outputs, name=name)


def _make(name):
    @register_model(
        name,
        family="vgg",
        default_image_size=32,
        min_image_size=8,
        description=f"{name.upper()} with batch norm, for small images",
    )
    def build(
        num_classes,
        input_shape,
        *,
        width: float = 1.0,
        dropout: float = 0.3,
        mean: list[float] | None = None,
        std: list[float] | None = None,
    ):
        return vgg(
            num_classes,
            input_shape,
            CONFIGS[name],
            name,
            width=width,
            dropout=dropout,
            mean=mean,
            std=std,
        )

    return build


for _name in CONFIGS:
    _make(_name)
