"""The CLI as a user runs it: help, errors as one paragraph, train → evaluate → predict."""

import os
import subprocess
import sys
import time

from cnnlab.cli.main import main


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "cnnlab.cli.main", *args], capture_output=True,
                          text=True, timeout=300, env={**os.environ, **(env or {})})  # fmt: skip


def test_help_is_instant_and_has_examples():
    t0 = time.time()
    proc = run_cli("train", "--help")
    assert proc.returncode == 0
    assert time.time() - t0 < 5
    assert "Examples:" in proc.stdout and "--resume" in proc.stdout and "--model-kwargs" in proc.stdout
    assert "tensorflow" not in proc.stderr.lower()


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
    code = main(["train", "--data", f"folder:{image_folder}", "--epochs", "2", "--output", str(runs),
                 "--model-kwargs", "filters=[8, 8] dense=[8]", "-b", "8", "--name", "cli", "-q"])
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
        raise Exception("URL fetch failure on https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz")

    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setattr(keras.datasets.cifar10, "load_data", offline)
    assert main(["train", "--data", "builtin:cifar10", "--output", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cnnlab: error: builtin:cifar10 is not on this machine")
    assert f"cifar-10-python.tar.gz in {tmp_path / 'datasets'}" in err and "--data-dir" in err
    assert not (tmp_path / "runs").exists()  # no empty run folder left behind
