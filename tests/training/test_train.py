"""End-to-end training: the run folder, no overwrites, resume after SIGKILL, distribution."""

import csv
import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import yaml

import cnnlab
from cnnlab.errors import ConfigError, RunError

TINY = dict(
    model="simple_cnn", model_kwargs={"filters": [8, 16], "dense": [16]}, batch_size=8, verbose=0
)
RUN_FILES = [
    "config.yaml",
    "env.json",
    "classes.json",
    "data.json",
    "split.csv",
    "history.csv",
    "model.keras",
    "metrics.json",
    "checkpoints/last.keras",
    "checkpoints/best.keras",
    "checkpoints/state.json",
    "evaluation-test/metrics.json",
    "evaluation-test/confusion_matrix.png",
    "evaluation-test/classification_report.txt",
]


def test_train_writes_a_complete_run_folder(image_folder, runs_dir):
    result = cnnlab.train(data=f"folder:{image_folder}", epochs=4, runs_dir=str(runs_dir), **TINY)
    run = result.run_dir
    assert run.parent == runs_dir and run.name.endswith("-simple_cnn-16")
    for name in RUN_FILES:
        assert (run / name).is_file(), name
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["image_size"] == [16, 16] and cfg["channels"] == 3 and cfg["epochs"] == 4
    env = json.loads((run / "env.json").read_text())
    assert env["seed"] == 42 and env["versions"]["keras"].startswith("3.")
    assert json.loads((run / "classes.json").read_text()) == ["circle", "square"]
    with open(run / "history.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2, 3]
    assert {
        "loss",
        "accuracy",
        "val_loss",
        "val_accuracy",
        "learning_rate",
        "images_per_second",
    } <= set(rows[0])
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test"]["num_examples"] == 2  # 10% of 24 images, one per class
    with open(run / "split.csv") as f:
        test_labels = sorted(r["label"] for r in csv.DictReader(f) if r["split"] == "test")
    assert test_labels == ["circle", "square"]
    assert result.test_accuracy is not None


def test_without_a_test_split_the_validation_split_is_scored_and_reported(image_folder, runs_dir):
    result = cnnlab.train(
        data=f"folder:{image_folder}", epochs=1, runs_dir=str(runs_dir), test_split=0, **TINY
    )
    run = result.run_dir
    assert "test" not in result.metrics and result.test_accuracy is None
    val = result.metrics["val"]
    assert val["num_examples"] == 2  # 10 % of 24 images
    assert val["data"] == f"folder:{image_folder} (validation split: the run has no test set)"
    assert (run / "evaluation-val" / "metrics.json").is_file()
    assert result.report == run / "report.html" and result.report.is_file()
    assert "val split" in result.report.read_text()
    assert json.loads((run / "metrics.json").read_text())["val"] == val


def test_without_held_out_data_no_report_and_the_log_says_how_to_get_one(
    image_folder, runs_dir, caplog
):
    with caplog.at_level("INFO", logger="cnnlab"):
        result = cnnlab.train(
            data=f"folder:{image_folder}",
            epochs=1,
            runs_dir=str(runs_dir),
            test_split=0,
            val_split=0,
            **{**TINY, "verbose": 2},
        )
    assert result.report is None and not (result.run_dir / "report.html").exists()
    assert result.evaluation is None and (result.run_dir / "model.keras").is_file()
    assert "test" not in result.metrics and "val" not in result.metrics
    assert (
        "No test or validation split, so no report yet: "
        f"`cnnlab evaluate {result.run_dir} --data folder:TEST`"
    ) in caplog.text
    assert "could not be written" not in caplog.text


def test_learns_a_learnable_task(make_folder, runs_dir):
    folder = make_folder("learn", per_class=30)
    result = cnnlab.train(
        data=f"folder:{folder}", epochs=8, runs_dir=str(runs_dir), lr=3e-3, test_split=0.2, **TINY
    )
    assert result.test_accuracy >= 0.9


def test_named_run_is_not_overwritten(image_folder, runs_dir):
    kw = dict(data=f"folder:{image_folder}", epochs=1, runs_dir=str(runs_dir), name="exp1", **TINY)
    cnnlab.train(**kw)
    with pytest.raises(RunError, match=r"exp1 already exists.*--overwrite.*--resume"):
        cnnlab.train(**kw)
    cnnlab.train(**kw, overwrite=True)


@pytest.mark.parametrize(
    "opt,sched", [("sgd", "step"), ("rmsprop", "onecycle"), ("adamw", "constant")]
)
def test_optimizers_and_schedules_train(image_folder, runs_dir, opt, sched):
    result = cnnlab.train(
        data=f"folder:{image_folder}",
        epochs=2,
        runs_dir=str(runs_dir),
        optimizer=opt,
        schedule=sched,
        warmup_epochs=0.5,
        label_smoothing=0.1,
        class_weight="balanced",
        **TINY,
    )
    assert np.isfinite(result.history["loss"]).all()
    # The model was trained (and saved) with the optimizer and schedule asked for.
    optimizer = cnnlab.load_model(result.run_dir / "model.keras").optimizer
    assert type(optimizer).__name__ == {"sgd": "SGD", "rmsprop": "RMSprop", "adamw": "AdamW"}[opt]
    schedule = optimizer.get_config()["learning_rate"]
    assert schedule["registered_name"] == "cnnlab>WarmupSchedule"
    # 18 training images at batch 8: 2 batches an epoch (the last 2 images sit it out).
    assert schedule["config"]["kind"] == sched and schedule["config"]["warmup_steps"] == 1
    assert schedule["config"]["total_steps"] == 4


def test_schedule_shapes():
    from cnnlab.nn.schedules import WarmupSchedule

    def values(s):
        return [float(s(i)) for i in range(0, 101, 10)]

    cos = values(WarmupSchedule(1.0, 100, warmup_steps=10, kind="cosine"))
    assert cos[0] == pytest.approx(0.1) and cos[1] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(cos[1:], cos[2:])) and cos[-1] == pytest.approx(0, abs=1e-6)
    step = values(WarmupSchedule(1.0, 100, kind="step", boundaries=[50, 80], gamma=0.1))
    assert step[4] == 1.0 and step[5] == pytest.approx(0.1) and step[8] == pytest.approx(0.01)
    one = values(WarmupSchedule(1.0, 100, kind="onecycle"))
    assert one[0] == pytest.approx(1 / 25) and max(one) == pytest.approx(1.0, abs=0.05)
    assert one[-1] == pytest.approx(1e-4, rel=1e-3)


class _StopAfterFirstEpoch(keras.callbacks.Callback):
    """Records the logs it sees and stops the fit after epoch 1, as a pruning callback would."""

    def __init__(self):
        super().__init__()
        self.logs: list[dict] = []

    def on_epoch_end(self, epoch, logs=None):
        self.logs.append(dict(logs or {}))
        self.model.stop_training = True


def test_extra_callbacks_run_after_the_runs_own_and_reach_fit(image_folder, runs_dir):
    extra = _StopAfterFirstEpoch()
    result = cnnlab.train(
        data=f"folder:{image_folder}", epochs=3, runs_dir=str(runs_dir), callbacks=[extra], **TINY
    )
    assert len(extra.logs) == 1 and len(result.history["loss"]) == 1  # fit obeyed it
    # It ran after the run's own callbacks: the epoch's learning rate and throughput are in.
    assert {"learning_rate", "epoch_seconds", "images_per_second"} <= set(extra.logs[0])
    assert result.metrics["epochs_done"] == 1 and (result.run_dir / "model.keras").is_file()


KILL_SCRIPT = textwrap.dedent("""
    import os, signal, sys, keras, cnnlab

    class KillDuringEpoch3(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch
        def on_train_batch_begin(self, batch, logs=None):
            if self.epoch == 2 and batch == 1:
                os.kill(os.getpid(), signal.SIGKILL)

    cnnlab.train(data="folder:" + sys.argv[1], runs_dir=sys.argv[2], name="killed", epochs=5,
                 model="simple_cnn", model_kwargs={"filters": [8], "dense": [8]}, batch_size=4,
                 verbose=0, callbacks=[KillDuringEpoch3()])
""")


def test_sigkill_during_epoch_3_then_resume_finishes_4_and_5(image_folder, runs_dir, tmp_path):
    script = tmp_path / "kill.py"
    script.write_text(KILL_SCRIPT)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    first = subprocess.run(
        [sys.executable, str(script), str(image_folder), str(runs_dir)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert first.returncode == -9, first.stderr[-2000:]
    run = runs_dir / "killed"
    state = json.loads((run / "checkpoints" / "state.json").read_text())
    assert state["epochs_done"] == 2 and not (run / "model.keras").exists()

    second = subprocess.run(
        [sys.executable, "-m", "cnnlab.cli.main", "train", "--resume", str(run)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = second.stdout + second.stderr
    assert second.returncode == 0, out[-3000:]
    assert "Resuming" in out and "after epoch 2 of 5" in out
    assert "Epoch 3/5" in out and "Epoch 1/5" not in out and "Epoch 2/5" not in out
    with open(run / "history.csv") as f:
        epochs = [int(r["epoch"]) for r in csv.DictReader(f)]
    assert epochs == [0, 1, 2, 3, 4]
    for name in RUN_FILES:
        assert (run / name).is_file(), name
    assert json.loads((run / "checkpoints" / "state.json").read_text())["epochs_done"] == 5


def test_history_csv_has_no_empty_val_columns_and_appends_under_its_header(tmp_path):
    from cnnlab.training.callbacks import HistoryCSV

    def epoch(path, validates, number, logs):
        logger = HistoryCSV(path, validates=validates)
        logger.on_train_begin()
        logger.on_epoch_end(number, logs)
        logger.on_train_end()

    path = tmp_path / "history.csv"
    epoch(path, False, 0, {"loss": 1.0, "accuracy": 0.5})
    # A resumed run whose logs gained one key and lost another: its row stays under
    # the file's header rather than shifting the columns.
    epoch(path, False, 1, {"loss": 0.5, "learning_rate": 0.1})
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    assert rows == [["epoch", "accuracy", "loss"], ["0", "0.5", "1.0"], ["1", "NA", "0.5"]]
    # With validation data the columns are Keras' own.
    epoch(tmp_path / "v.csv", True, 0, {"loss": 1.0, "val_loss": 2.0})
    assert (tmp_path / "v.csv").read_text().splitlines()[0] == "epoch,loss,val_loss"


def test_resume_refuses_config_changes(image_folder, runs_dir):
    result = cnnlab.train(data=f"folder:{image_folder}", epochs=1, runs_dir=str(runs_dir), **TINY)
    with pytest.raises(
        ConfigError,
        match=r"--resume continues .* cannot also change model.*"
        r"only epochs, verbose, early_stopping alongside --resume",
    ):
        cnnlab.train(resume=result.run_dir, model="resnet20")
    with pytest.raises(RunError, match="already finished all 1 epochs.*--epochs"):
        cnnlab.train(resume=result.run_dir)


MIRRORED_SCRIPT = textwrap.dedent("""
    import sys, tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import cnnlab
    from cnnlab.training import get_strategy
    print("replicas", get_strategy("mirrored").num_replicas_in_sync)
    r = cnnlab.train(data="folder:" + sys.argv[1], runs_dir=sys.argv[2], epochs=2, batch_size=8,
                     strategy="mirrored", model="simple_cnn",
                     model_kwargs={"filters": [8], "dense": [8]}, verbose=0)
    print("accuracy", r.test_accuracy)
""")


def test_mirrored_strategy_on_two_logical_cpus(image_folder, runs_dir, tmp_path):
    script = tmp_path / "mirrored.py"
    script.write_text(MIRRORED_SCRIPT)
    proc = subprocess.run(
        [sys.executable, str(script), str(image_folder), str(runs_dir)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "replicas 2" in proc.stdout
    assert "accuracy" in proc.stdout
    (run,) = runs_dir.iterdir()
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["strategy"] == "MirroredStrategy" and metrics["replicas"] == 2


def test_missing_weights_fail_before_a_run_folder_exists(
    image_folder, runs_dir, tmp_path, monkeypatch
):
    from cnnlab.errors import WeightsError

    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "empty_keras_home"))
    monkeypatch.setenv("CNNLAB_OFFLINE", "1")
    with pytest.raises(WeightsError, match="mobilenet_1_0_224_tf_no_top.h5"):
        cnnlab.train(
            data=f"folder:{image_folder}",
            model="mobilenet",
            weights="imagenet",
            image_size=32,
            epochs=1,
            runs_dir=str(runs_dir),
            verbose=0,
        )
    assert not runs_dir.exists()


# ---------------------------------------------------------------- a separate test set
def test_test_folder_beside_train_is_the_test_set_and_nothing_is_carved(
    make_folder, runs_dir, capsys
):
    import logging

    from cnnlab.workflows import evaluate

    train_dir = make_folder("set/train", per_class=12)
    test_dir = make_folder("set/test", per_class=5, seed=1)
    logging.getLogger("cnnlab").setLevel(logging.WARNING)  # as in a fresh process
    result = cnnlab.train(
        data=f"folder:{train_dir}", epochs=1, runs_dir=str(runs_dir), **{**TINY, "verbose": 2}
    )
    err = capsys.readouterr().err
    assert f"cnnlab: Test set: folder:{test_dir}, the folder beside the training folder" in err
    assert result.config.test_data == f"folder:{test_dir}" and result.config.test_split == 0.0
    with open(result.run_dir / "split.csv") as f:
        parts = [r["split"] for r in csv.DictReader(f)]
    assert parts.count("test") == 0 and len(parts) == 24  # all 24 training images: train or val
    test = result.metrics["test"]
    assert test["num_examples"] == 10 and test["data"] == f"folder:{test_dir}"
    assert (result.run_dir / "evaluation-test" / "metrics.json").is_file()
    assert (result.run_dir / "report.html").is_file()
    # `cnnlab evaluate RUN` scores the same test set again
    again = evaluate(result.run_dir, output=result.run_dir / "again")
    assert again.metrics["num_examples"] == 10
    assert again.metrics["accuracy"] == pytest.approx(test["accuracy"])


def test_test_data_none_or_a_test_split_carves_from_the_training_folder(make_folder, runs_dir):
    train_dir = make_folder("set/train", per_class=10)
    make_folder("set/test", per_class=5, seed=1)
    for extra in ({"test_data": "none"}, {"test_split": 0.2}):
        result = cnnlab.train(
            data=f"folder:{train_dir}", epochs=1, runs_dir=str(runs_dir), **extra, **TINY
        )
        assert result.config.test_data is None
        assert result.metrics["test"]["num_examples"] == (4 if "test_split" in extra else 2)
        assert result.metrics["test"]["data"] == f"folder:{train_dir} (held-out split)"


def test_test_data_and_a_test_split_together_is_a_config_error(make_folder, runs_dir):
    train_dir = make_folder("set/train", per_class=6)
    other = make_folder("elsewhere", per_class=3)
    with pytest.raises(
        ConfigError,
        match=r"Both test_data \(folder:.*elsewhere\) and test_split "
        r"\(0.2\) are given.*Drop --test-split, or pass --test-data none",
    ):
        cnnlab.train(
            data=f"folder:{train_dir}",
            test_data=f"folder:{other}",
            test_split=0.2,
            epochs=1,
            runs_dir=str(runs_dir),
            **TINY,
        )
    assert not runs_dir.exists()


def test_mixed_precision_trains_resumes_in_bfloat16_and_ships_a_float32_model(
    image_folder, runs_dir
):
    from cnnlab.models.precision import model_precision
    from cnnlab.models.saving import load_model

    common = dict(data=f"folder:{image_folder}", runs_dir=str(runs_dir), name="bf16", **TINY)
    first = cnnlab.train(epochs=1, precision="mixed_bfloat16", **common)
    assert "precision: mixed_bfloat16" in (first.run_dir / "config.yaml").read_text()
    assert model_precision(first.model) == "float32"
    assert model_precision(load_model(first.run_dir / "model.keras")) == "float32"
    # The checkpoint keeps the training policy, so a resumed run goes on in bfloat16.
    checkpoint = load_model(first.run_dir / "checkpoints" / "last.keras")
    assert model_precision(checkpoint) == "mixed_bfloat16"
    again = cnnlab.train(resume=first.run_dir, epochs=2)
    assert again.config.precision == "mixed_bfloat16"
    assert len(again.history["loss"]) == 2
    assert model_precision(load_model(again.run_dir / "model.keras")) == "float32"
    assert again.metrics["test"]["accuracy"] == pytest.approx(again.test_accuracy)
