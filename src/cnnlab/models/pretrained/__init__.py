"""Pretrained backbones (every keras.applications family and EfficientNet-Lite); importing registers them.

See :mod:`cnnlab.models.pretrained.applications` for the model layout and
:mod:`cnnlab.models.pretrained.weights` for where ImageNet weights come from.
"""

from cnnlab.models.pretrained import applications
from cnnlab.models.pretrained.weights import resolve_weights, weights_status

__all__ = ["applications", "resolve_weights", "weights_status"]
