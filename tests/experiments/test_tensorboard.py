"""TensorBoard event files: what the callback writes, read back with TensorBoard's own
reader, and ``--no-tensorboard`` turning them off."""

from __future__ import annotations

import keras
import numpy as np
from tensorboard.backend.event_processing import event_accumulator
from tests.experiments.conftest import run_cnnlab

from cnnlab.training.callbacks import EpochStats
from cnnlab.training.tensorboard import TensorBoardLogger


def _read(folder):
    acc = event_accumulator.EventAccumulator(
        str(folder), size_guidance={event_accumulator.TENSORS: 0}
    )
    acc.Reload()
    return {
        tag: (acc.SummaryMetadata(tag).plugin_data.plugin_name, [e.step for e in acc.Tensors(tag)])
        for tag in acc.Tags()["tensors"]
    }


def test_callback_writes_epoch_scalars_and_a_confusion_matrix(tmp_path):
    import tensorflow as tf

    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4, 4, 1)).astype("float32")
    y = keras.utils.to_categorical(rng.integers(0, 3, 64), 3)
    val = tf.data.Dataset.from_tensor_slices((x[:16], y[:16])).batch(8)
    model = keras.Sequential(
        [
            keras.Input((4, 4, 1)),
            keras.layers.Flatten(),
            keras.layers.Dense(3, activation="softmax"),
        ]
    )
    model.compile("adam", "categorical_crossentropy", metrics=["accuracy"])
    logger = TensorBoardLogger(tmp_path, val, ["a", "b", "c"])
    model.fit(x, y, validation_data=val, epochs=3, verbose=0, callbacks=[EpochStats(64), logger])
    train = _read(tmp_path / "tensorboard" / "train")
    validation = _read(tmp_path / "tensorboard" / "validation")
    for tag in (
        "epoch_loss",
        "epoch_accuracy",
        "epoch_learning_rate",
        "epoch_images_per_second",
        "epoch_seconds",
    ):
        assert train[tag] == ("scalars", [0, 1, 2]), tag
    assert validation["epoch_loss"] == ("scalars", [0, 1, 2])
    assert validation["epoch_accuracy"] == ("scalars", [0, 1, 2])
    assert "epoch_val_loss" not in train and "epoch_val_loss" not in validation
    assert validation["confusion_matrix"] == ("images", [2])


def test_no_tensorboard_flag_writes_no_event_files(tmp_path):
    run_cnnlab(
        "train",
        "--data",
        "builtin:digits",
        "--epochs",
        "1",
        "--model",
        "simple_cnn",
        "--model-kwargs",
        "filters=[8] dense=[16]",
        "--runs-dir",
        str(tmp_path),
        "--no-tensorboard",
        "-q",
    )
    (run,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert (run / "history.csv").is_file()
    assert not (run / "tensorboard").exists()
    assert "tensorboard: false" in (run / "config.yaml").read_text()
