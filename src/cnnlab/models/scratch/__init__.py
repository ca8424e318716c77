"""From-scratch families; importing this package registers them."""

from cnnlab.models.scratch import airbench, resnet, simple_cnn, vgg  # noqa: F401
