"""Pretrained backbones: every ``keras.applications`` family, plus EfficientNet-Lite0/1/2.

Each backbone is registered by a lowercase name (``mobilenet``, ``resnet50``,
``efficientnet_v2_s``, ``convnext_tiny``, ``efficientnet_lite0``...) and built
as a cnnlab classifier::

    image (raw 0-255, RGB or grayscale)
      -> preprocess   ImagePreprocessing: the family's own scaling ("caffe", "tf",
                      "torch", or "none" when the backbone rescales inside itself)
      -> backbone     the keras.applications model, include_top=False
      -> pooler       global average (or max) pooling
      -> [head_dense1 ... ] optional hidden layers (hidden_units)
      -> head_dropout
      -> predictions  softmax, float32

The preprocessing is a layer of the model, so a saved ``.keras`` file cannot
be fed the wrong scaling. Grayscale input (1 channel) is tiled to RGB inside the
model. When pretrained weights are loaded the backbone's BatchNorm layers are
frozen (``trainable=False``), which in Keras 3 also makes them run in inference
mode: ``base(x, training=False)`` alone is not enough, because a functional
model passes its caller's ``training=True`` on to every layer during ``fit``.

The backbones themselves are the table in :mod:`cnnlab.models.pretrained.backbones`.
Registry metadata (``get_spec(name).extra``): ``feature_width`` (channels the
pooler outputs), ``preprocessing`` (the mode above), ``keras_module``
(``keras.applications.<module>.preprocess_input`` is the reference), and
``block_rule`` (how :func:`backbone_blocks` cuts the backbone into blocks for
staged unfreezing).

Example:
    >>> model = create_model("mobilenet", num_classes=5, image_size=128, weights="imagenet")
    >>> [b for b, _ in backbone_blocks(get_backbone(model), "mobilenet")][-2:]
    ['block_12', 'block_13']
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import keras
from keras import layers

from cnnlab.errors import ModelError
from cnnlab.models.pretrained.backbones import BACKBONES, Backbone
from cnnlab.models.registry import register_model
from cnnlab.nn.layers import PREPROCESSING_MODES, ImagePreprocessing  # noqa: F401 (re-exported)

__all__ = [
    "BACKBONES",
    "Backbone",
    "ImagePreprocessing",
    "backbone_blocks",
    "batchnorm_layers",
    "build_classifier",
    "get_backbone",
]

# ---------------------------------------------------------------- preprocessing


# ---------------------------------------------------------------- block rules
# A rule maps a backbone layer name to its block, or None for "no block of its
# own". In "prev" rules such layers join the block before them (or "stem" at the
# start); in "next" rules (Inception, whose branch layers have auto-generated
# names and whose blocks end at a named concatenation) the block after them.


def _match(pattern: str, fmt: str = "{0}") -> Callable[[str], str | None]:
    regex = re.compile(pattern)

    def key(name: str) -> str | None:
        m = regex.search(name)
        if not m:
            return None
        return fmt.format(*[g for g in m.groups() if g is not None] or [m.group(0)])

    return key


def _first(*keys: Callable[[str], str | None]) -> Callable[[str], str | None]:
    def key(name: str) -> str | None:
        for k in keys:
            out = k(name)
            if out is not None:
                return out
        return None

    return key


_NASNET_CELL = re.compile(r"^(?:normal|reduction|separable_conv|adjust)_")
_NASNET_ID = re.compile(r"_(stem_\d+|reduce_\d+)$|_(\d+)$")


def _nasnet_cell(name: str) -> str | None:
    # NASNet cell layers end in their cell id: "_stem_1", "_reduce_4" or "_12".
    m = _NASNET_ID.search(name) if _NASNET_CELL.match(name) else None
    return f"cell_{m.group(1) or m.group(2)}" if m else None


BLOCK_RULES: dict[str, tuple[Callable[[str], str | None], str]] = {
    "vgg": (_match(r"^(block\d+)_"), "prev"),
    "resnet": (_match(r"^(conv\d_block\d+|post)_"), "prev"),
    "inception_v3": (_match(r"^(mixed\d+)$"), "next"),
    "inception_resnet_v2": (_match(r"^(mixed_\d[a-z]|block\d+_\d+|conv_7b)(?:_|$)"), "next"),
    "xception": (_match(r"^(block\d+)_"), "prev"),
    "mobilenet": (_match(r"^conv_(?:dw|pw|pad)_(\d+)", "block_{0}"), "prev"),
    "mobilenet_v2": (
        _first(
            _match(r"^expanded_conv_", "block_0"),
            _match(r"^(block_\d+)_"),
            _match(r"^(?:Conv_1|Conv_1_bn|out_relu)$", "top"),
        ),
        "prev",
    ),
    "mobilenet_v3": (
        _first(
            _match(r"^expanded_conv_(\d+)_", "block_{0}"),
            _match(r"^expanded_conv_", "block_0"),
            _match(r"^conv_1(?:_|$)", "top"),
        ),
        "prev",
    ),
    "densenet": (
        _first(_match(r"^(conv\d_block\d+|pool\d)_"), _match(r"^(?:bn|relu)$", "top")),
        "prev",
    ),
    "efficientnet": (_match(r"^(stem|block\d+[a-z]|top)_"), "prev"),
    "convnext": (
        _first(
            _match(r"_(stem|stage_\d+_block_\d+|downsampling_block_\d+)(?:_|$)"),
            _match(r"^layer_normalization", "top"),
        ),
        "prev",
    ),
    "nasnet": (_nasnet_cell, "prev"),
}


def _walk(layer) -> list:
    """A layer and every layer nested in it (Sequential stems, nested models)."""
    out = [layer]
    for sub in getattr(layer, "layers", []) or []:
        out.extend(_walk(sub))
    return out


def batchnorm_layers(model) -> list:
    """Every BatchNormalization layer inside ``model``, however deeply nested."""
    return [layer for layer in _walk(model)[1:] if isinstance(layer, layers.BatchNormalization)]


def backbone_blocks(base, rule: str) -> list[tuple[str, list]]:
    """Cut a backbone into its blocks, input to output: ``[(block_name, [layers]), ...]``.

    Blocks are the units of staged unfreezing ("unfreeze the top 3 blocks"):
    ``block5`` of VGG, ``conv5_block3`` of ResNet, ``mixed9`` of InceptionV3,
    ``block6a`` of EfficientNet, ``block_13`` of MobileNet, and so on; layers
    before the first named block form ``stem``.

    Example:
        >>> [b for b, _ in backbone_blocks(keras.applications.VGG16(include_top=False), "vgg")]
        ['block1', 'block2', 'block3', 'block4', 'block5']
    """
    if rule not in BLOCK_RULES:
        raise ModelError(
            f"Unknown block rule {rule!r}", expected=f"one of {', '.join(BLOCK_RULES)}"
        )
    key_of, direction = BLOCK_RULES[rule]
    members = [layer for layer in base.layers if not isinstance(layer, layers.InputLayer)]
    keys = [key_of(layer.name) for layer in members]
    if direction == "next":
        following = None
        for i in range(len(keys) - 1, -1, -1):
            if keys[i] is None:
                keys[i] = following
            else:
                following = keys[i]
        last = next((k for k in reversed(keys) if k is not None), "stem")
        keys = [k if k is not None else last for k in keys]
    else:
        current = "stem"
        for i, k in enumerate(keys):
            if k is None:
                keys[i] = current
            else:
                current = k
    blocks: dict[str, list] = {}
    for layer, k in zip(members, keys):
        blocks.setdefault(k, []).append(layer)
    return list(blocks.items())


# ---------------------------------------------------------------- building


def make_backbone(bb: Backbone, input_shape: tuple[int, int, int]):
    """The bare backbone (no top, no pooling) with random weights."""
    if bb.constructor.startswith("lite:"):
        from cnnlab.models.pretrained.efficientnet_lite import efficientnet_lite

        return efficientnet_lite(
            int(bb.constructor[5:]),
            include_top=False,
            weights=None,
            input_shape=input_shape,
            pooling=None,
        )
    ctor = getattr(keras.applications, bb.constructor)
    return ctor(include_top=False, weights=None, input_shape=input_shape, pooling=None)


def get_backbone(model):
    """The backbone nested in a cnnlab pretrained classifier (its only sub-model)."""
    found = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    if len(found) != 1:
        raise ModelError(
            f"Model {model.name} has {len(found)} nested backbone models",
            expected="a classifier built from a pretrained backbone (cnnlab models list --pretrained)",
        )
    return found[0]


def build_classifier(
    bb: Backbone,
    num_classes: int,
    input_shape: Sequence[int],
    *,
    weights: str | None = None,
    dropout: float = 0.2,
    hidden_units: Sequence[int] | int | None = None,
    pooling: str = "avg",
    freeze_bn: bool | None = None,
):
    """Preprocess -> backbone -> pooler -> [dense ...] -> dropout -> predictions."""
    from cnnlab.models.pretrained.weights import load_backbone_weights, resolve_weights

    h, w, channels = (int(v) for v in input_shape)
    if channels not in (1, 3):
        raise ModelError(
            f"{bb.name} takes RGB images; received input with {channels} channels",
            expected="3 channels (1 is also accepted: grayscale is repeated to RGB in the model)",
            fix="Pass --channels 3",
        )
    if pooling not in ("avg", "max"):
        raise ModelError(f"Bad pooling for {bb.name}: received {pooling!r}", expected="avg or max")
    if not 0.0 <= float(dropout) < 1.0:
        raise ModelError(
            f"Bad dropout for {bb.name}: received {dropout}", expected="0 <= dropout < 1"
        )
    if isinstance(hidden_units, int):
        hidden_units = [hidden_units]
    hidden = [int(u) for u in (hidden_units or [])]

    path = resolve_weights(bb.name, weights)  # fails before anything is built
    if bb.constructor.startswith("lite:"):
        from cnnlab.models.pretrained.efficientnet_lite import efficientnet_lite

        lite_weights = None if path is None and not _is_imagenet(weights) else (path or "imagenet")
        base = efficientnet_lite(
            int(bb.constructor[5:]),
            include_top=False,
            weights=lite_weights,
            input_shape=(h, w, 3),
            pooling=None,
        )
    else:
        base = make_backbone(bb, (h, w, 3))
        if path is not None:
            load_backbone_weights(base, path, bb.name)
    pretrained = path is not None or _is_imagenet(weights)
    if freeze_bn is None:
        freeze_bn = pretrained
    if freeze_bn:
        # In Keras 3 a BatchNormalization layer with trainable=False runs in inference
        # mode even under fit(): the ImageNet statistics are never overwritten.
        for layer in batchnorm_layers(base):
            layer.trainable = False

    inputs = keras.Input(shape=(h, w, channels), name="image")
    x = ImagePreprocessing(bb.preprocessing, name="preprocess")(inputs)
    # training=False documents intent (the Keras guide's recipe) but Keras 3 lets
    # fit() override it; the frozen BatchNorm layers above are the real guarantee.
    x = base(x, training=False) if freeze_bn else base(x)
    if pooling == "max":
        x = layers.GlobalMaxPooling2D(name="pooler")(x)
    else:
        x = layers.GlobalAveragePooling2D(name="pooler")(x)
    for i, units in enumerate(hidden, start=1):
        x = layers.Dense(units, activation="relu", name=f"head_dense{i}")(x)
    if dropout:
        x = layers.Dropout(float(dropout), name="head_dropout")(x)
    outputs = layers.Dense(num_classes, activation="softmax", dtype="float32", name="predictions")(
        x
    )
    return keras.Model(inputs, outputs, name=f"{bb.name}_classifier")


def _is_imagenet(weights) -> bool:
    return isinstance(weights, str) and weights.lower() == "imagenet"


def _register(bb: Backbone) -> None:
    @register_model(
        bb.name,
        family=bb.family,
        description=bb.description,
        default_image_size=bb.default_image_size,
        min_image_size=bb.min_image_size,
        pretrained=True,
        tags=("pretrained", bb.family),
        feature_width=bb.feature_width,
        preprocessing=bb.preprocessing,
        keras_module=bb.keras_module,
        block_rule=bb.block_rule,
    )
    def build(
        num_classes,
        input_shape,
        *,
        weights: str | None = None,
        dropout: float = 0.2,
        hidden_units: list[int] | None = None,
        pooling: str = "avg",
        freeze_bn: bool | None = None,
    ):
        return build_classifier(
            bb,
            num_classes,
            input_shape,
            weights=weights,
            dropout=dropout,
            hidden_units=hidden_units,
            pooling=pooling,
            freeze_bn=freeze_bn,
        )

    build.__doc__ = (
        f"{bb.description}. Options: weights (None, 'imagenet' or a file), dropout, "
        "hidden_units, pooling (avg|max), freeze_bn (default: when weights are loaded)."
    )


for _bb in BACKBONES.values():
    _register(_bb)
