"""airbench's parts: the whitening layer whitens, dirac init, TTA views and their average, save/load."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from cnnlab.models import create_model
from cnnlab.models.saving import load_model, save_model
from cnnlab.models.scratch.airbench import init_whitening
from cnnlab.nn.layers import DiracInit, PatchWhitening, TTAViews, tta_weights


def correlated_images(n=64, size=12, seed=0):
    """Smooth, strongly correlated colour images: neighbouring pixels and channels agree."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(n, size // 2, size // 2, 1))
    base = np.repeat(np.repeat(base, 2, axis=1), 2, axis=2)
    x = np.concatenate([base, 0.8 * base, 0.6 * base], axis=-1) + 0.05 * rng.normal(
        size=(n, size, size, 3)
    )
    return x.astype(np.float32)


def test_whitening_layer_whitens_patches():
    x = correlated_images()
    layer = PatchWhitening(eps=1e-6)
    eig = layer.adapt(x)
    assert eig.shape == (12,)
    y = keras.ops.convert_to_numpy(layer(x))
    assert y.shape == (64, 11, 11, 24)
    half = y[..., :12].reshape(-1, 12)  # the second half are the negatives
    cov = half.T @ half / len(half)
    np.testing.assert_allclose(cov, np.eye(12), atol=0.05)
    np.testing.assert_allclose(y[..., 12:], -y[..., :12], atol=1e-5)
    # Before adapting, the input patches themselves are covariate, not white.
    raw = np.stack([x[:, i : i + 11, j : j + 11] for i in range(2) for j in range(2)], 3).reshape(
        -1, 12
    )
    assert np.abs(np.corrcoef(raw.T) - np.eye(12)).max() > 0.5


def test_dirac_init_is_identity_in_first_filters():
    w = keras.ops.convert_to_numpy(DiracInit(seed=1)((3, 3, 4, 6)))
    x = np.random.default_rng(0).normal(size=(1, 5, 5, 4)).astype(np.float32)
    y = keras.ops.convert_to_numpy(keras.ops.conv(x, w, padding="same"))
    np.testing.assert_allclose(y[..., :4], x, atol=1e-6)  # identity in the first cin outputs
    assert np.abs(w[..., 4:]).max() > 0  # the rest keep their random init


@pytest.mark.parametrize(
    "level,flip,n_views", [(0, True, 1), (1, True, 2), (2, True, 6), (2, False, 3)]
)
def test_tta_views_are_the_intended_ones(level, flip, n_views):
    x = np.arange(2 * 4 * 4, dtype=np.float32).reshape(2, 4, 4, 1)
    layer = TTAViews(level, flip)
    views = [keras.ops.convert_to_numpy(v) for v in layer.views(keras.ops.convert_to_tensor(x))]
    assert len(views) == n_views == len(tta_weights(level, flip))
    assert abs(sum(tta_weights(level, flip)) - 1) < 1e-9
    np.testing.assert_array_equal(views[0], x)
    if flip and level >= 1:
        np.testing.assert_array_equal(views[1], x[:, :, ::-1])
    if level == 2:
        up_left, down_right = (views[2], views[4]) if flip else (views[1], views[2])
        # One-pixel shifts (reflected border): up-left new[:-1,:-1] = old[1:,1:], and back.
        np.testing.assert_array_equal(up_left[:, :-1, :-1], x[:, 1:, 1:])
        np.testing.assert_array_equal(down_right[:, 1:, 1:], x[:, :-1, :-1])
        if flip:
            np.testing.assert_array_equal(views[3], up_left[:, :, ::-1])
    # In training the layer passes images through.
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer(x, training=True)), x)


def test_model_prediction_is_the_weighted_average_of_view_logits():
    model = create_model("airbench", 3, 16, 3, width=0.125, tta=2)
    x = np.random.default_rng(0).uniform(0, 255, (4, 16, 16, 3)).astype(np.float32)
    probs = model.predict(x, verbose=0)
    plain = create_model("airbench", 3, 16, 3, width=0.125, tta=0)
    plain.set_weights(model.get_weights())
    logit_model = keras.Model(plain.input, plain.get_layer("head_scale").output)
    w_out = model.get_layer("predictions").kernel.numpy()
    views = TTAViews(2, True).views(keras.ops.convert_to_tensor(x))
    logits = sum(
        wt * (keras.ops.convert_to_numpy(logit_model(v, training=False)) @ w_out)
        for wt, v in zip(tta_weights(2), views)
    )
    expected = np.exp(logits - logits.max(1, keepdims=True))
    expected /= expected.sum(1, keepdims=True)
    np.testing.assert_allclose(probs, expected, atol=1e-4)


def test_airbench_trains_saves_and_reloads(tmp_path):
    model = create_model("airbench", 2, 16, 3, width=0.125, mean=[120.0] * 3, std=[60.0] * 3)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (16, 16, 16, 3)).astype(np.float32)
    assert init_whitening(model, x)
    y = keras.utils.to_categorical(np.arange(16) % 2, 2)
    model.compile(
        optimizer=keras.optimizers.SGD(0.1, momentum=0.85, nesterov=True),
        loss="categorical_crossentropy",
    )
    before = model.get_layer("whiten").kernel.numpy().copy()
    loss = model.train_on_batch(x, y)
    assert np.isfinite(loss)
    np.testing.assert_array_equal(model.get_layer("whiten").kernel.numpy(), before)  # fixed filters
    path = save_model(model, tmp_path / "m.keras")
    again = load_model(path)
    np.testing.assert_allclose(again.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)
    assert again.get_layer("pooler").level == 2


def test_bad_width_is_a_clear_error():
    from cnnlab.errors import ModelError

    with pytest.raises(ModelError, match="width"):
        create_model("airbench", 2, 16, 3, width=0)
    with pytest.raises(ModelError, match="tta"):
        create_model("airbench", 2, 16, 3, tta=5)
