"""Grad-CAM: the heat map of a model trained to look at one corner lights up that corner."""

from __future__ import annotations

import numpy as np
import pytest

from cnnlab.evaluation.gradcam import find_last_conv_layer, gradcam, overlay
from cnnlab.models import create_model

SIZE = 16


def corner_data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Class 0: noise with a bright 5x5 patch at the top-left corner (give or take a pixel).
    Class 1: the same noise alone. The only evidence for class 0 lies in that corner."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 60, size=(n, SIZE, SIZE, 3)).astype(np.float32)
    y = np.arange(n) % 2
    for i in np.flatnonzero(y == 0):
        r, c = rng.integers(0, 2, size=2)
        x[i, r : r + 5, c : c + 5] = 230
    return x, y


@pytest.fixture(scope="module")
def corner_model():
    import keras

    keras.utils.set_random_seed(0)
    model = create_model(
        "simple_cnn",
        2,
        SIZE,
        3,
        filters=[8, 16],
        dense=[],
        dropout=0.0,
        batch_norm=False,
        dense_dropout=0.0,
    )
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3), loss="categorical_crossentropy", metrics=["accuracy"]
    )
    x, y = corner_data(400, seed=0)
    model.fit(x, keras.utils.to_categorical(y, 2), epochs=12, batch_size=32, verbose=0)
    return model


def test_heat_map_lights_up_the_corner(corner_model):
    x, y = corner_data(40, seed=1)
    probs = np.asarray(corner_model(x, training=False))
    assert np.mean(probs.argmax(1) == y) >= 0.95  # the model did learn the task
    a = x[y == 0]
    maps = gradcam(corner_model, a, class_index=0)
    assert maps.shape == (len(a), SIZE, SIZE)
    assert maps.min() >= 0 and maps.max() <= 1
    mean = maps.mean(axis=0)
    corner = mean[:7, :7].mean()
    rest = (mean.sum() - mean[:7, :7].sum()) / (SIZE * SIZE - 49)
    assert corner > 2 * rest, (corner, rest)
    r, c = np.unravel_index(mean.argmax(), mean.shape)
    assert r < SIZE // 2 and c < SIZE // 2
    # per image too: most maps peak in the top-left quadrant
    peaks = [np.unravel_index(m.argmax(), m.shape) for m in maps]
    assert np.mean([r < SIZE // 2 and c < SIZE // 2 for r, c in peaks]) >= 0.8


def test_default_class_is_the_prediction(corner_model):
    x, _ = corner_data(6, seed=2)
    pred = np.asarray(corner_model(x, training=False)).argmax(1)
    assert np.allclose(gradcam(corner_model, x), gradcam(corner_model, x, class_index=pred))


def test_last_conv_layer_found_automatically():
    # the activated map before pooling shrinks it
    assert find_last_conv_layer(create_model("simple_cnn", 3, 32, 3)) == "block3_act2"
    assert find_last_conv_layer(create_model("resnet20", 3, 32, 3)) == "stage3_block3_out"
    assert find_last_conv_layer(create_model("airbench", 3, 32, 3, width=0.125)) == "group3b_act"


def test_a_subclass_of_a_per_pixel_layer_counts_as_one():
    import keras

    from cnnlab.nn.layers import FusedBatchNorm

    inp = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv")(inp)
    x = FusedBatchNorm(name="bn")(x)
    out = keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(x))
    assert find_last_conv_layer(keras.Model(inp, out)) == "bn"


def test_model_without_convolution_is_named():
    import keras

    from cnnlab.errors import ModelError

    inp = keras.Input((8, 8, 1))
    out = keras.layers.Dense(2, activation="softmax", name="predictions")(
        keras.layers.Flatten()(inp)
    )
    with pytest.raises(ModelError, match="no convolutional layer for Grad-CAM"):
        find_last_conv_layer(keras.Model(inp, out, name="mlp"))


def test_overlay_is_rgb_uint8():
    img = np.full((4, 4, 1), 100.0)
    out = overlay(img, np.linspace(0, 1, 16).reshape(4, 4))
    assert out.shape == (4, 4, 3) and out.dtype == np.uint8


def test_gradcam_on_a_pretrained_backbone_classifier():
    """A keras.applications backbone is one nested layer; its feature map is still reachable."""
    model = create_model("mobilenet", 3, 32, 3, weights=None)
    assert find_last_conv_layer(model).startswith("mobilenet")
    images = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    maps = gradcam(model, images)
    assert maps.shape == (2, 32, 32) and np.isfinite(maps).all() and maps.max() <= 1.0
