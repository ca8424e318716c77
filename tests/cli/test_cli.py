"""The CLI as a user runs it: help, errors as one paragraph, train → evaluate → predict."""

import json
import os
import subprocess
import sys

from cnnlab.cli.main import main


def run_cli(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "cnnlab.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )


def test_help_is_instant_and_has_examples():
    # Instant = TensorFlow and Keras are never imported (Python lists every import it makes).
    proc = run_cli("train", "--help", env={"PYTHONPROFILEIMPORTTIME": "1"})
    assert proc.returncode == 0
    imported = [line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines()]
    assert "cnnlab.cli.train" in imported  # the import list is there to read
    assert not [m for m in imported if m.split(".")[0] in ("tensorflow", "keras")]
    assert (
        "Examples:" in proc.stdout and "--resume" in proc.stdout and "--model-kwargs" in proc.stdout
    )


def test_errors_are_one_paragraph_without_traceback(tmp_path):
    proc = run_cli("train", "--data", f"folder:{tmp_path / 'missing'}")
    assert proc.returncode == 2
    assert proc.stderr.startswith("cnnlab: error: Data folder ")
    assert "does not exist" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cli("train", "--model", "resnet21")
    assert "Unknown model 'resnet21'. Did you mean: " in proc.stderr and "resnet20" in proc.stderr
    config = tmp_path / "c.yaml"
    config.write_text("epochz: 3\n")
    proc = run_cli("train", "-c", str(config))
    assert "Unknown config key 'epochz'" in proc.stderr and "Did you mean: epochs" in proc.stderr


def test_debug_variable_shows_traceback(tmp_path):
    proc = run_cli("train", "--data", f"folder:{tmp_path / 'missing'}", env={"CNNLAB_DEBUG": "1"})
    assert "Traceback" in proc.stderr and "DataError" in proc.stderr


def test_train_evaluate_predict_through_the_cli(image_folder, tmp_path, capsys):
    runs = tmp_path / "runs"
    code = main(
        [
            "train",
            "--data",
            f"folder:{image_folder}",
            "--epochs",
            "2",
            "--runs-dir",
            str(runs),
            "--model-kwargs",
            "filters=[8, 8] dense=[8]",
            "-b",
            "8",
            "--name",
            "cli",
            "-q",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert "test accuracy" in out and f"run folder: {runs / 'cli'}" in out
    assert main(["evaluate", str(runs / "cli"), "--data", f"folder:{image_folder}"]) == 0
    out = capsys.readouterr().out
    assert "precision" in out and "macro avg" in out and "confusion_matrix.png" in out
    assert main(["predict", str(runs / "cli"), str(image_folder / "circle"), "-k", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 12 and "circle" in lines[0] and "square" in lines[0]
    assert main(["models", "list", "resnet*"]) == 0
    assert "resnet20" in capsys.readouterr().out


def test_offline_builtin_dataset_fails_with_a_sentence(tmp_path, monkeypatch, capsys):
    import keras

    def offline():
        raise Exception(
            "URL fetch failure on https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
        )

    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setattr(keras.datasets.cifar10, "load_data", offline)
    assert main(["train", "--data", "builtin:cifar10", "--runs-dir", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cnnlab: error: builtin:cifar10 is not on this machine")
    assert f"cifar-10-python.tar.gz in {tmp_path / 'datasets'}" in err and "--data-dir" in err
    assert not (tmp_path / "runs").exists()  # no empty run folder left behind


def test_help_shows_the_long_names_with_their_short_aliases(capsys):
    assert main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    for option in (
        "--learning-rate, --lr",
        "--optimizer, --opt",
        "--schedule, --sched",
        "--label-smoothing, --smoothing",
        "--runs-dir TEXT",
        "--precision [auto|float32|mixed_bfloat16]",
    ):
        assert option in out
    assert "--output" not in out  # the deprecated name still works, but is not advertised
    assert main(["finetune", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--stage2-learning-rate" in out and "--stage2-lr" not in out
    assert main(["lr-find", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--start-learning-rate" in out and "--end-learning-rate" in out
    assert "--start-lr" not in out and "--output" not in out and "--runs-dir" in out


def test_an_old_style_config_still_trains_and_is_written_back_in_new_names(
    image_folder, tmp_path, capsys
):
    import yaml

    from cnnlab.models.saving import load_model

    runs = tmp_path / "runs"
    old = tmp_path / "old.yaml"
    old.write_text(
        f"data: folder:{image_folder}\noutput: {runs}\nname: old\nmodel: resnet20\n"
        "model_kwargs: {width: 4}\nepochs: 1\nbatch-size: 8\nlr: 0.01\nopt: sgd\n"
        "sched: constant\n"
    )
    assert main(["train", "-c", str(old), "-q"]) == 0
    captured = capsys.readouterr()
    assert f"run folder: {runs / 'old'}" in captured.out
    warnings = [line for line in captured.err.splitlines() if line.startswith("cnnlab: warning")]
    assert warnings == [
        f"cnnlab: warning: 'output' in {old} is a deprecated key name; use 'runs_dir' instead "
        "(the old name stops working in the next release)",
        "cnnlab: warning: 'width' in model_kwargs (resnet20) is a deprecated model option name; "
        "use 'filters' instead (the old name stops working in the next release)",
    ]
    written = yaml.safe_load((runs / "old" / "config.yaml").read_text())
    assert "output" not in written and written["runs_dir"] == str(runs)
    assert written["model_kwargs"] == {"filters": 4}
    assert (written["learning_rate"], written["optimizer"], written["schedule"]) == (
        0.01,
        "sgd",
        "constant",
    )
    assert load_model(runs / "old" / "model.keras").get_layer("stem_conv").filters == 4
    # data.json names things as the config and the Python API do
    summary = json.loads((runs / "old" / "data.json").read_text())
    assert summary["data"] == f"folder:{image_folder}"
    assert summary["class_names"] == ["circle", "square"]
    assert "spec" not in summary and "classes" not in summary
    # The deprecated flag: same warning, same meaning.
    code = main(
        [
            "train",
            "-c",
            str(old),
            "--output",
            str(tmp_path / "flag"),
            "--epochs",
            "1",
            "--name",
            "flag",
            "-q",
        ]
    )
    assert code == 0
    err = capsys.readouterr().err
    assert (
        "cnnlab: warning: 'output' in the arguments is a deprecated key name; use 'runs_dir'" in err
    )
    assert (tmp_path / "flag" / "flag" / "model.keras").is_file()


def test_models_info_names_the_options_and_counts_the_parameters(capsys):
    from cnnlab.models import create_model

    assert main(["models", "info", "resnet20", "--num-classes", "3", "--image-size", "16"]) == 0
    out = capsys.readouterr().out.splitlines()
    params = create_model("resnet20", 3, 16, 3).count_params()
    assert out[0] == "resnet20: CIFAR ResNet-20 (6n+2, 16-32-64 filters)"
    assert out[1] == "family resnet_cifar; default image size 32, minimum 8"
    assert out[2:7] == [
        "options (model_kwargs):",
        "  filters = 16",
        "  dropout = 0.0",
        "  mean = None",
        "  std = None",
    ]
    assert out[7] == f"parameters: {params:,} (3 classes, 16x16x3)"
    assert main(["models", "info", "resnet21"]) == 2
    assert "cnnlab: error: Unknown model 'resnet21'. Did you mean: " in capsys.readouterr().err
