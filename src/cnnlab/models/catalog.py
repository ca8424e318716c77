"""Looking models up and building them by name: the registry's families, loaded on first use.

The families (``scratch/``, ``pretrained/``) import :mod:`cnnlab.models.registry` to add
themselves; this module imports the families, so the two never import each other.
"""

from __future__ import annotations

import fnmatch
from typing import Any

from cnnlab.config import normalise_model_options
from cnnlab.errors import CnnlabError, ModelError, close_matches
from cnnlab.models.registry import REGISTRY, ModelSpec


def _ensure_loaded() -> None:
    # Importing the families registers them; done lazily so `import cnnlab` stays fast.
    from cnnlab.models import pretrained, scratch  # noqa: F401


def get_spec(name: str) -> ModelSpec:
    _ensure_loaded()
    key = name.lower().replace("-", "_")
    if key not in REGISTRY:
        raise ModelError(
            f"Unknown model '{name}'.{close_matches(key, REGISTRY)}",
            expected="a registered model name",
            fix="Run `cnnlab models list` to see them all",
        )
    return REGISTRY[key]


def list_models(pattern: str = "*", *, pretrained: bool | None = None) -> list[str]:
    """Registered model names matching a glob ``pattern`` (e.g. ``"resnet*"``)."""
    _ensure_loaded()
    names = sorted(n for n in REGISTRY if fnmatch.fnmatch(n, pattern.lower()))
    if pretrained is not None:
        names = [n for n in names if REGISTRY[n].pretrained == pretrained]
    return names


def create_model(
    name: str,
    num_classes: int,
    image_size: int | tuple[int, int] | list[int] | None = None,
    channels: int = 3,
    **options: Any,
):
    """Build a registered model as a functional ``keras.Model``.

    The model takes raw 0-255 images of shape ``(*image_size, channels)`` and
    outputs class probabilities (softmax layer named ``predictions``); its
    preprocessing is its first layers.

    Example:
        >>> model = create_model("simple_cnn", num_classes=10, image_size=32)
    """
    spec = get_spec(name)
    size = image_size or spec.default_image_size
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    if min(h, w) < spec.min_image_size:
        raise ModelError(
            f"{spec.name} needs images of at least {spec.min_image_size}x{spec.min_image_size}; "
            f"received image_size={h}x{w}",
            fix=f"Pass --image-size {spec.min_image_size} or larger (images are resized)",
        )
    if num_classes < 2:
        raise ModelError(
            f"A classifier needs at least 2 classes; received num_classes={num_classes}",
            fix="Check that the data has one label per class",
        )
    options = normalise_model_options(spec.name, options, "the model options")
    accepted = spec.options()
    for key in options:
        if key not in accepted:
            raise ModelError(
                f"{spec.name} has no option '{key}'.{close_matches(key, accepted)}",
                expected=f"one of: {', '.join(accepted) or '(no options)'}",
                fix="Fix the key in model_kwargs / --model-kwargs",
            )
    try:
        return spec.builder(num_classes=num_classes, input_shape=(h, w, channels), **options)
    except (TypeError, ValueError) as e:
        if isinstance(e, CnnlabError):  # already a user-facing sentence (e.g. missing weights)
            raise
        raise ModelError(
            f"{spec.name} could not be built with options {options}: {e}",
            fix=f"Check the option values; defaults are {accepted}",
        ) from None
