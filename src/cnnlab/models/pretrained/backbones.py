"""The table of pretrained backbones: what each one is, before anything is built.

One :class:`Backbone` per registered name. ``constructor`` is the
``keras.applications`` attribute (or ``lite:N`` for EfficientNet-Lite, built by
:mod:`cnnlab.models.pretrained.efficientnet_lite`); ``keras_module`` names the
reference ``keras.applications.<module>.preprocess_input``; ``block_rule`` says
how :func:`cnnlab.models.pretrained.applications.backbone_blocks` cuts it into
blocks for staged unfreezing; ``feature_width`` is the channels its pooler outputs.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["BACKBONES", "Backbone"]


@dataclass(frozen=True)
class Backbone:
    """One registered pretrained backbone."""

    name: str
    constructor: str  # keras.applications attribute, or "lite:N"
    family: str
    keras_module: str  # keras.applications.<module>.preprocess_input is its reference
    preprocessing: str
    default_image_size: int
    min_image_size: int
    feature_width: int
    block_rule: str
    description: str


def _row(
    name: str,
    constructor: str,
    family: str,
    preprocessing: str,
    size: int,
    feature_width: int,
    description: str,
    *,
    module: str | None = None,
    min_size: int = 32,
    rule: str | None = None,
) -> Backbone:
    """A table row; the preprocessing module and block rule default to the family."""
    return Backbone(
        name,
        constructor,
        family,
        family if module is None else module,
        preprocessing,
        size,
        min_size,
        feature_width,
        rule or family,
        description,
    )


# The rows are a table: one backbone a line (or two), aligned as written.
# fmt: off
def _classic() -> list[Backbone]:
    """VGG, ResNet (v1, v2), Inception, Xception, DenseNet, NASNet."""
    rows = [
        _row("vgg16", "VGG16", "vgg", "caffe", 224, 512, "VGG-16 (2014), ImageNet", module="vgg16"),
        _row("vgg19", "VGG19", "vgg", "caffe", 224, 512, "VGG-19 (2014), ImageNet", module="vgg19"),
    ]
    for depth in (50, 101, 152):
        rows.append(
            _row(f"resnet{depth}", f"ResNet{depth}", "resnet", "caffe", 224, 2048,
                 f"ResNet-{depth} (2015), ImageNet")
        )
        rows.append(
            _row(f"resnet{depth}_v2", f"ResNet{depth}V2", "resnet_v2", "tf", 224, 2048,
                 f"ResNet-{depth} v2, pre-activation (2016), ImageNet", rule="resnet")
        )
    rows += [
        _row("inception_v3", "InceptionV3", "inception_v3", "tf", 299, 2048,
             "Inception v3 (2015), ImageNet", min_size=75),
        _row("inception_resnet_v2", "InceptionResNetV2", "inception_resnet_v2", "tf", 299, 1536,
             "Inception-ResNet v2 (2016), ImageNet", min_size=75),
        _row("xception", "Xception", "xception", "tf", 299, 2048, "Xception (2017), ImageNet",
             min_size=71),
    ]
    for depth, width in ((121, 1024), (169, 1664), (201, 1920)):
        rows.append(
            _row(f"densenet{depth}", f"DenseNet{depth}", "densenet", "torch", 224, width,
                 f"DenseNet-{depth} (2017), ImageNet")
        )
    rows += [
        _row("nasnet_mobile", "NASNetMobile", "nasnet", "tf", 224, 1056,
             "NASNet-A Mobile (2018), ImageNet"),
        _row("nasnet_large", "NASNetLarge", "nasnet", "tf", 331, 4032,
             "NASNet-A Large (2018), ImageNet"),
    ]
    return rows


def _mobile() -> list[Backbone]:
    """MobileNet v1, v2 and v3."""
    return [
        _row("mobilenet", "MobileNet", "mobilenet", "tf", 224, 1024,
             "MobileNet v1, alpha 1.0 (2017), ImageNet"),
        _row("mobilenet_v2", "MobileNetV2", "mobilenet_v2", "tf", 224, 1280,
             "MobileNet v2, alpha 1.0 (2018), ImageNet"),
        _row("mobilenet_v3_small", "MobileNetV3Small", "mobilenet_v3", "none", 224, 576,
             "MobileNet v3 Small (2019), ImageNet"),
        _row("mobilenet_v3_large", "MobileNetV3Large", "mobilenet_v3", "none", 224, 960,
             "MobileNet v3 Large (2019), ImageNet"),
    ]


def _efficient() -> list[Backbone]:
    """EfficientNet B0-B7, EfficientNetV2, EfficientNet-Lite0-2 and ConvNeXt."""
    rows = []
    sizes = (224, 240, 260, 300, 380, 456, 528, 600)
    widths = (1280, 1280, 1408, 1536, 1792, 2048, 2304, 2560)
    for i, (size, width) in enumerate(zip(sizes, widths)):
        rows.append(
            _row(f"efficientnet_b{i}", f"EfficientNetB{i}", "efficientnet", "none", size, width,
                 f"EfficientNet-B{i} (2019), ImageNet")
        )
    v2 = (("b0", "B0", 224, 1280), ("b1", "B1", 240, 1280), ("b2", "B2", 260, 1408),
          ("b3", "B3", 300, 1536), ("s", "S", 384, 1280), ("m", "M", 480, 1280),
          ("l", "L", 480, 1280))
    for variant, ctor, size, width in v2:
        rows.append(
            _row(f"efficientnet_v2_{variant}", f"EfficientNetV2{ctor}", "efficientnet_v2", "none",
                 size, width, f"EfficientNetV2-{ctor} (2021), ImageNet", rule="efficientnet")
        )
    for size_name, width in (("tiny", 768), ("small", 768), ("base", 1024), ("large", 1536),
                             ("xlarge", 2048)):
        ctor = f"ConvNeXt{size_name.capitalize().replace('large', 'Large')}"
        rows.append(
            _row(f"convnext_{size_name}", ctor, "convnext", "none", 224, width,
                 f"ConvNeXt-{size_name.capitalize()} (2022), ImageNet")
        )
    for v, size in ((0, 224), (1, 240), (2, 260)):
        rows.append(
            _row(f"efficientnet_lite{v}", f"lite:{v}", "efficientnet_lite", "none", size, 1280,
                 f"EfficientNet-Lite{v} (2020), ImageNet converted from PyPI", module="",
                 rule="efficientnet")
        )
    return rows

# fmt: on


BACKBONES: dict[str, Backbone] = {b.name: b for b in _classic() + _mobile() + _efficient()}
