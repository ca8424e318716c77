"""cnnlab.nn: the Keras-serialisable objects keep their registered names, and loading a
saved model needs them and the model families only, never training code."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from cnnlab.config import TrainConfig
from cnnlab.errors import ConfigError
from cnnlab.models import create_model
from cnnlab.models.saving import save_model
from cnnlab.nn import layers, optimizers, schedules


def test_registered_names_are_those_saved_files_hold():
    # A .keras file names each custom object by these strings: renaming one breaks old files.
    named = [
        layers.DiracInit,
        layers.ScaledBias,
        layers.PatchWhitening,
        layers.TTAViews,
        layers.TTAPool,
        layers.TrainingResize,
        layers.GELU,
        layers.FusedBatchNorm,
        schedules.WarmupSchedule,
        schedules.LinearWarmupDecay,
        *optimizers.LAYERWISE.values(),
        optimizers.ConvMuon,
    ]
    assert [keras.saving.get_registered_name(c) for c in named] == [
        "cnnlab>DiracInit",
        "cnnlab>ScaledBias",
        "cnnlab>PatchWhitening",
        "cnnlab>TTAViews",
        "cnnlab>TTAPool",
        "cnnlab>TrainingResize",
        "cnnlab>GELU",
        "cnnlab>FusedBatchNorm",
        "cnnlab>WarmupSchedule",
        "cnnlab>LinearWarmupDecay",
        "cnnlab>LayerwiseAdam",
        "cnnlab>LayerwiseAdamW",
        "cnnlab>LayerwiseSGD",
        "cnnlab>LayerwiseRMSprop",
        "cnnlab>ConvMuon",
    ]


def test_training_resize_shrinks_training_steps_only_and_saves_its_size(tmp_path):
    from cnnlab.models.saving import load_model

    model = create_model("airbench", 3, 32, width=0.125, train_resize=True)
    layer = model.get_layer("train_resize")
    x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    assert layer.size.numpy().tolist() == [0, 0]
    assert layer(x, training=True).shape == (2, 32, 32, 3)  # off until a size is set
    layer.size.assign([24, 20])
    assert layer(x, training=True).shape == (2, 24, 20, 3)
    assert layer(x, training=False).shape == (2, 32, 32, 3)  # inference never resizes
    # The whole network trains on the smaller images (global max-pool head).
    assert model(x, training=True).shape == (2, 3)
    np.testing.assert_allclose(model.predict(x, verbose=0).sum(axis=1), 1.0, rtol=1e-5)
    save_model(model, tmp_path / "m.keras")
    again = load_model(tmp_path / "m.keras")
    assert again.get_layer("train_resize").size.numpy().tolist() == [24, 20]


def _value_and_input_gradient(layer, x, training):
    import tensorflow as tf

    x = tf.convert_to_tensor(x)
    upstream = tf.cast(tf.random.stateless_normal(x.shape, seed=[1, 2]), x.dtype)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x, training=training)
    return y, tape.gradient(y, x, output_gradients=upstream)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_fused_gelu_is_keras_gelu_with_its_gradient(dtype):
    # The fused training path must be the same function, forward and backward, as
    # keras' exact GELU (bfloat16: within its rounding, the fused path rounds once).
    import tensorflow as tf

    x = tf.cast(tf.linspace(-6.0, 6.0, 2 * 9 * 9 * 4), dtype)
    x = tf.reshape(x, (2, 9, 9, 4))
    fused, fused_dx = _value_and_input_gradient(layers.GELU(dtype=dtype), x, training=True)
    plain, plain_dx = _value_and_input_gradient(
        keras.layers.Activation("gelu", dtype=dtype), x, training=True
    )
    assert fused.dtype == plain.dtype == tf.as_dtype(dtype)
    tol = 1e-6 if dtype == "float32" else 2e-2
    np.testing.assert_allclose(np.float32(fused), np.float32(plain), atol=tol, rtol=tol)
    np.testing.assert_allclose(np.float32(fused_dx), np.float32(plain_dx), atol=tol, rtol=tol)
    # Inference is Keras' own op, so exports hold nothing XLA-specific.
    np.testing.assert_array_equal(
        np.float32(layers.GELU(dtype=dtype)(x, training=False)), np.float32(plain)
    )


@pytest.mark.parametrize("affine", [False, True])
def test_fused_batch_norm_trains_like_keras_batch_normalization(affine):
    # Same outputs, input gradient and moving averages as Keras' layer in a training
    # step (airbench's: no scale or offset, momentum 0.6, epsilon 1e-12; and the
    # default affine layer), and the same layer in inference.
    x = np.random.default_rng(0).normal(3.0, 2.0, (6, 5, 5, 4)).astype("float32")
    kwargs = {"momentum": 0.6, "epsilon": 1e-12, "scale": affine, "center": affine}
    fused, plain = layers.FusedBatchNorm(**kwargs), keras.layers.BatchNormalization(**kwargs)
    for layer in (fused, plain):
        layer.build(x.shape)
        if affine:
            layer.gamma.assign([0.5, 1.0, 2.0, 3.0])
            layer.beta.assign([1.0, -1.0, 0.0, 2.0])
    (y, dx), (y0, dx0) = (_value_and_input_gradient(m, x, training=True) for m in (fused, plain))
    np.testing.assert_allclose(y, y0, atol=1e-5)
    np.testing.assert_allclose(dx, dx0, atol=1e-5)
    np.testing.assert_allclose(fused.moving_mean, plain.moving_mean, rtol=1e-6)
    np.testing.assert_allclose(fused.moving_variance, plain.moving_variance, rtol=1e-5)
    np.testing.assert_allclose(fused(x, training=False), plain(x, training=False), atol=1e-5)
    # A 2-D input is Keras' own code path.
    flat = layers.FusedBatchNorm(**kwargs)
    assert flat(x[:, 0, 0, :], training=True).shape == (6, 4)


def test_airbench_trains_with_the_fused_layers_and_reloads_them(tmp_path):
    from cnnlab.models.saving import load_model

    model = create_model("airbench", 3, 16, width=0.125)
    kinds = {type(layer).__name__ for layer in model.layers}
    assert {"GELU", "FusedBatchNorm"} <= kinds and "Activation" not in kinds
    save_model(model, tmp_path / "m.keras")
    again = load_model(tmp_path / "m.keras")
    x = np.random.default_rng(0).uniform(0, 255, (4, 16, 16, 3)).astype("float32")
    np.testing.assert_allclose(again.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-5)
    assert isinstance(again.get_layer("group1a_bn"), layers.FusedBatchNorm)
    # fused=False (--model-kwargs fused=false) builds Keras' own layers.
    plain = create_model("airbench", 3, 16, width=0.125, fused=False)
    kinds = {type(layer).__name__ for layer in plain.layers}
    assert {"Activation", "BatchNormalization"} <= kinds
    assert not {"GELU", "FusedBatchNorm"} & kinds


def test_progressive_resizing_sets_each_epochs_size_and_clears_it_at_the_epochs_end():
    from cnnlab.training.callbacks import ProgressiveResizing

    model = create_model("airbench", 3, 32, width=0.125, train_resize=True)
    layer = model.get_layer("train_resize")
    callback = ProgressiveResizing([(16, 16), (16, 16), (24, 24)], 32)
    callback.set_model(model)
    seen, scales = [], []
    for epoch in range(4):
        callback.on_epoch_begin(epoch)
        seen.append(layer.size.numpy().tolist())
        logs = {}
        callback.on_epoch_end(epoch, logs)
        scales.append(logs["train_scale"])
        assert layer.size.numpy().tolist() == [0, 0]  # a checkpoint trains at full size
    assert seen == [[16, 16], [16, 16], [24, 24], [0, 0]]
    assert scales == [0.5, 0.5, 0.75, 1.0]


@pytest.mark.parametrize(
    "name,schedule,kind",
    [
        ("sgd", "linear", "LinearWarmupDecay"),
        ("adam", "cosine", "WarmupSchedule"),
        ("rmsprop", "step", "WarmupSchedule"),
    ],
)
def test_one_factory_builds_every_optimizer_with_the_schedule_of_its_table(name, schedule, kind):
    cfg = TrainConfig(
        optimizer=name, schedule=schedule, epochs=4, warmup_epochs=1, learning_rate=0.2
    )
    opt = optimizers.make_optimizer(cfg, steps_per_epoch=10)
    assert type(opt).__name__ == {"sgd": "SGD", "adam": "Adam", "rmsprop": "RMSprop"}[name]
    lr = opt.get_config()["learning_rate"]
    assert lr["class_name"] == kind
    assert lr["config"]["total_steps"] == 40 and lr["config"]["warmup_steps"] == 10
    assert lr["config"]["learning_rate"] == 0.2
    fixed = optimizers.make_optimizer(cfg, learning_rate=0.003)  # the range test's use
    assert float(fixed.learning_rate) == pytest.approx(0.003)


def test_the_factory_refuses_what_it_cannot_build():
    cfg = TrainConfig()
    cfg.optimizer = "adagrad"  # past the config's own check, as a hand-edited object might be
    with pytest.raises(ConfigError, match="Unknown optimizer 'adagrad'.*adam, adamw, rmsprop, sgd"):
        optimizers.make_optimizer(cfg, 10)
    with pytest.raises(ConfigError, match="needs steps_per_epoch"):
        optimizers.make_optimizer(TrainConfig())


@pytest.mark.parametrize("shape", [(36, 8), (8, 36)])
def test_orthogonalize_keeps_the_singular_vectors_and_brings_the_values_near_one(shape):
    g = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    g[:, 0] *= 50  # one direction far stronger than the others, as in a real gradient
    o = keras.ops.convert_to_numpy(optimizers.orthogonalize(g, steps=5))
    u, s, vt = np.linalg.svd(g, full_matrices=False)
    inner = u.T @ o @ vt.T  # diagonal when o shares g's singular vectors
    assert np.abs(inner - np.diag(np.diag(inner))).max() < 1e-3
    assert np.all((np.diag(inner) > 0.5) & (np.diag(inner) < 1.6))  # 50x spread became < 3.2x


def test_conv_muon_normalises_and_orthogonalises_kernels_and_steps_the_rest_as_sgd():
    rng = np.random.default_rng(1)
    kernel0 = rng.normal(size=(3, 3, 4, 8)).astype(np.float32)
    bias0 = rng.normal(size=(8,)).astype(np.float32)
    gk = rng.normal(size=kernel0.shape).astype(np.float32)
    gb = rng.normal(size=bias0.shape).astype(np.float32)
    settings = dict(momentum=0.9, nesterov=True, weight_decay=0.1)
    muon = optimizers.ConvMuon(0.5, kernel_learning_rate_ratio=0.2, **settings)
    kernel, bias = keras.Variable(kernel0), keras.Variable(bias0)
    muon.apply_gradients([(keras.ops.convert_to_tensor(gk), kernel), (gb, bias)])
    # The bias: exactly Keras' SGD (decoupled decay included).
    sgd_bias = keras.Variable(bias0)
    keras.optimizers.SGD(0.5, **settings).apply_gradients([(gb, sgd_bias)])
    np.testing.assert_allclose(bias.numpy(), sgd_bias.numpy(), rtol=1e-6)
    # The kernel: rescaled to norm sqrt(out) = sqrt(8), no decay, then a step of
    # lr x ratio = 0.1 along the orthogonalised gradient as a (3*3*4, 8) matrix.
    step = keras.ops.convert_to_numpy(optimizers.orthogonalize(gk.reshape(-1, 8)))
    expected = kernel0 * np.sqrt(8) / np.linalg.norm(kernel0) - 0.1 * step.reshape(kernel0.shape)
    np.testing.assert_allclose(kernel.numpy(), expected, rtol=1e-4, atol=1e-5)
    # A second step rescales again: the kernel's norm stays near sqrt(out).
    muon.apply_gradients([(keras.ops.convert_to_tensor(gk), kernel), (gb, bias)])
    assert np.linalg.norm(kernel.numpy()) == pytest.approx(np.sqrt(8), rel=0.05)


def test_muon_is_a_config_choice_and_reloads_with_its_settings(tmp_path):
    cfg = TrainConfig(optimizer="muon", schedule="linear", epochs=2, learning_rate=1.5)
    opt = optimizers.make_optimizer(cfg, steps_per_epoch=5)
    assert isinstance(opt, optimizers.ConvMuon) and isinstance(opt, keras.optimizers.SGD)
    # Kernels step at 0.24 x sqrt(batch / 1024) at the schedule's peak: 0.06 at batch 64.
    assert opt.kernel_learning_rate_ratio * 1.5 == pytest.approx(0.06)
    assert optimizers.kernel_learning_rate(1024) == pytest.approx(0.24)
    model = keras.Sequential(
        [keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3), keras.layers.Flatten()]
    )
    model.compile(optimizer=opt, loss="mse")
    model.fit(np.ones((4, 8, 8, 3)), np.zeros((4, 144)), verbose=0)
    save_model(model, tmp_path / "m.keras")
    again = keras.saving.load_model(tmp_path / "m.keras")
    assert type(again.optimizer).__name__ == "ConvMuon"
    assert again.optimizer.kernel_momentum == 0.6 and again.optimizer.ns_steps == 3


LOAD_SCRIPT = """
import sys
import cnnlab.export
from cnnlab.models.saving import load_model
for path in sys.argv[1:]:
    model = load_model(path)
    print(type(model.optimizer).__name__)
print(sorted(m for m in sys.modules if m.startswith(("cnnlab.training", "cnnlab.workflows"))))
"""


def test_loading_saved_models_imports_no_training_code(tmp_path):
    x = np.random.default_rng(0).uniform(0, 255, (4, 16, 16, 3)).astype("float32")
    y = keras.utils.to_categorical([0, 1, 0, 1], 2)
    bench = create_model("airbench", 2, 16, 3, width=0.125)
    cfg = TrainConfig(optimizer="sgd", schedule="linear", epochs=2)
    bench.compile(optimizer=optimizers.make_optimizer(cfg, 2), loss="categorical_crossentropy")
    bench.train_on_batch(x, y)
    small = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, activation="softmax")])
    layerwise = optimizers.LAYERWISE[keras.optimizers.Adam](1e-3, lr_multipliers={"x": 0.5})
    small.compile(optimizer=layerwise, loss="categorical_crossentropy")
    small.train_on_batch(np.ones((2, 3)), y[:2])
    paths = [save_model(bench, tmp_path / "a.keras"), save_model(small, tmp_path / "b.keras")]
    proc = subprocess.run(
        [sys.executable, "-c", LOAD_SCRIPT, *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[:2] == ["SGD", "LayerwiseAdam"]
    assert json.loads(lines[2].replace("'", '"')) == []
