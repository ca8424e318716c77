"""Models: a registry of architectures, built by name, each owning its preprocessing."""

from cnnlab.models.catalog import create_model, get_spec, list_models
from cnnlab.models.registry import ModelSpec, register_model

__all__ = ["ModelSpec", "create_model", "get_spec", "list_models", "register_model"]
