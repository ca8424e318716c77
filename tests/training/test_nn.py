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
        schedules.WarmupSchedule,
        schedules.LinearWarmupDecay,
        *optimizers.LAYERWISE.values(),
    ]
    assert [keras.saving.get_registered_name(c) for c in named] == [
        "cnnlab>DiracInit",
        "cnnlab>ScaledBias",
        "cnnlab>PatchWhitening",
        "cnnlab>TTAViews",
        "cnnlab>TTAPool",
        "cnnlab>WarmupSchedule",
        "cnnlab>LinearWarmupDecay",
        "cnnlab>LayerwiseAdam",
        "cnnlab>LayerwiseAdamW",
        "cnnlab>LayerwiseSGD",
        "cnnlab>LayerwiseRMSprop",
    ]


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
