"""``cnnlab sweep`` end to end: the study, the trial run folders, best.yaml, the report,
TensorBoard files; and ``cnnlab train -c best.yaml`` repeating the best trial."""

from __future__ import annotations

import csv

import optuna
import pytest
import yaml
from optuna.trial import TrialState
from tensorboard.backend.event_processing import event_accumulator
from tests.experiments.conftest import run_cnnlab

from cnnlab.run_folder import read_history


def _study(folder):
    return optuna.load_study(study_name="digits-test", storage=f"sqlite:///{folder / 'study.db'}")


def test_sweep_writes_study_trial_runs_best_yaml_and_report(digits_sweep):
    folder, proc = digits_sweep
    study = _study(folder)
    states = [t.state for t in study.trials]
    assert len(states) == 8 and set(states) <= {TrialState.COMPLETE, TrialState.PRUNED}
    runs = sorted(p.name for p in (folder / "trials").iterdir())
    assert runs == [f"trial-{i:04d}" for i in range(8)]
    for t in study.trials:
        run = folder / "trials" / f"trial-{t.number:04d}"
        for name in ("config.yaml", "history.csv", "metrics.json", "model.keras", "report.html"):
            assert (run / name).is_file(), (run, name)
        assert t.user_attrs["run_dir"] == str(run.resolve())
        history = read_history(run / "history.csv")
        assert [t.intermediate_values[k] for k in sorted(t.intermediate_values)] == pytest.approx(
            history["val_accuracy"], abs=1e-6
        )
        if t.state == TrialState.PRUNED:  # stopped after the epoch the pruner said so
            assert len(history["val_accuracy"]) == t.user_attrs["pruned_at_epoch"] < 2
            assert f"Trial {t.number} pruned after epoch 1: val_accuracy" in proc.stderr
        else:
            assert t.value == pytest.approx(max(history["val_accuracy"]))
    best = study.best_trial
    text = (folder / "best.yaml").read_text()
    assert text.startswith(
        f"# Best trial {best.number} of sweep 'digits-test': val_accuracy "
        f"{best.value:.4f}\n# Repeat it: cnnlab train -c best.yaml\n"
    )
    config = yaml.safe_load(text)
    assert "runs_dir" not in config and "name" not in config and "verbose" not in config
    trial_config = yaml.safe_load(
        (folder / "trials" / f"trial-{best.number:04d}" / "config.yaml").read_text()
    )
    assert config == {k: v for k, v in trial_config.items() if k in config}
    with open(folder / "trials.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["trial"]) for r in rows] == list(range(8))
    assert (folder / "sweep.html").stat().st_size > 20_000
    assert f"best trial {best.number}: {best.value:.4f}" in proc.stdout
    assert "8 finished trials" in proc.stdout


def test_best_yaml_repeats_the_best_trial(digits_sweep, tmp_path):
    folder, _ = digits_sweep
    best = _study(folder).best_trial
    run_cnnlab("train", "-c", str(folder / "best.yaml"), "--runs-dir", str(tmp_path), "-q")
    (run,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    again = max(read_history(run / "history.csv")["val_accuracy"])
    assert abs(again - best.value) <= 0.01, (again, best.value)


def test_trial_run_folders_hold_tensorboard_scalars_and_the_confusion_matrix(digits_sweep):
    folder, _ = digits_sweep
    run = folder / "trials" / "trial-0000"
    epochs = len(read_history(run / "history.csv")["val_accuracy"])
    found = {}
    for split in ("train", "validation"):
        acc = event_accumulator.EventAccumulator(
            str(run / "tensorboard" / split), size_guidance={event_accumulator.TENSORS: 0}
        )
        acc.Reload()
        for tag in acc.Tags()["tensors"]:
            plugin = acc.SummaryMetadata(tag).plugin_data.plugin_name
            found[(split, tag)] = (plugin, [e.step for e in acc.Tensors(tag)])
    scalars = {
        key
        for key, (plugin, steps) in found.items()
        if plugin == "scalars" and steps == list(range(epochs))
    }
    assert {
        ("train", "epoch_loss"),
        ("train", "epoch_accuracy"),
        ("train", "epoch_learning_rate"),
        ("train", "epoch_images_per_second"),
        ("validation", "epoch_loss"),
        ("validation", "epoch_accuracy"),
    } <= scalars
    assert found[("validation", "confusion_matrix")][0] == "images"
