"""The model registry: every architecture is built by name, timm-style.

    @register_model("resnet20", family="resnet_cifar", default_image_size=32)
    def resnet20(num_classes, input_shape, **options) -> keras.Model: ...

    create_model("resnet20", num_classes=10, image_size=32)
    list_models("resnet*")
"""

from __future__ import annotations

import fnmatch
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cnnlab.errors import CnnlabError, ModelError, close_matches


@dataclass
class ModelSpec:
    """What the registry knows about an architecture before building it."""

    name: str
    builder: Callable[..., Any]
    family: str
    description: str = ""
    default_image_size: int = 32
    min_image_size: int = 8
    pretrained: bool = False
    tags: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    def options(self) -> dict[str, Any]:
        """The builder's keyword options with their defaults."""
        sig = inspect.signature(self.builder)
        return {
            k: (None if p.default is inspect.Parameter.empty else p.default)
            for k, p in sig.parameters.items()
            if k not in ("num_classes", "input_shape") and p.kind is p.KEYWORD_ONLY
        }


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(
    name: str,
    *,
    family: str,
    description: str = "",
    default_image_size: int = 32,
    min_image_size: int = 8,
    pretrained: bool = False,
    tags: tuple[str, ...] = (),
    **extra: Any,
) -> Callable:
    """Decorator that adds a builder ``fn(num_classes, input_shape, *, ...)`` to the registry."""

    def wrap(fn: Callable) -> Callable:
        _REGISTRY[name] = ModelSpec(
            name, fn, family, description or (fn.__doc__ or "").strip().split("\n")[0],
            default_image_size, min_image_size, pretrained, tags, extra,
        )  # fmt: skip
        return fn

    return wrap


def _ensure_loaded() -> None:
    # Importing the families registers them; done lazily so `import cnnlab` stays fast.
    from cnnlab.models import pretrained, scratch  # noqa: F401


def get_spec(name: str) -> ModelSpec:
    _ensure_loaded()
    key = name.lower().replace("-", "_")
    if key not in _REGISTRY:
        raise ModelError(
            f"Unknown model '{name}'.{close_matches(key, _REGISTRY)}",
            expected="a registered model name",
            fix="Run `cnnlab models list` to see them all",
        )
    return _REGISTRY[key]


def list_models(pattern: str = "*", *, pretrained: bool | None = None) -> list[str]:
    """Registered model names matching a glob ``pattern`` (e.g. ``"resnet*"``)."""
    _ensure_loaded()
    names = sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern.lower()))
    if pretrained is not None:
        names = [n for n in names if _REGISTRY[n].pretrained == pretrained]
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
