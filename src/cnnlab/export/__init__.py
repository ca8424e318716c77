"""Export: saving, loading and (later) converting models for deployment."""

from cnnlab.models.saving import LoadedModel, load_for_inference, load_model, save_model

__all__ = ["LoadedModel", "load_for_inference", "load_model", "save_model"]
