"""The model registry: the table every architecture adds itself to, timm-style.

@register_model("resnet20", family="resnet_cifar", default_image_size=32)
def resnet20(num_classes, input_shape, **options) -> keras.Model: ...

Looking up and building by name (``get_spec``, ``list_models``, ``create_model``) is
:mod:`cnnlab.models.catalog`, which loads the families first.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


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


REGISTRY: dict[str, ModelSpec] = {}


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
        REGISTRY[name] = ModelSpec(
            name,
            fn,
            family,
            description or (fn.__doc__ or "").strip().split("\n")[0],
            default_image_size,
            min_image_size,
            pretrained,
            tags,
            extra,
        )
        return fn

    return wrap
