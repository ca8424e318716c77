"""From-scratch families; importing this package registers them."""

from cnnlab.models.scratch import resnet, simple_cnn, vgg  # noqa: F401
