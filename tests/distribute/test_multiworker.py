"""--strategy multiworker as real OS processes on 127.0.0.1 (cnnlab launch), each bounded.

What a user relies on: two workers give one run folder and a model as good as
one process's with the same global batch and seed; the workers end with the
same weights; other workers leave nothing on disk; a worker killed with
SIGKILL costs only the unfinished epoch (``--resume``), and history has each
epoch once.
"""

from __future__ import annotations

import csv
import json
import os
import re
import signal

from tests.distribute._procs import (
    env_for,
    kill_group,
    pid_alive,
    run,
    start,
    wait_for,
    worker_pids,
)

DIGITS = ["--data", "builtin:digits", "--no-tensorboard", "--seed", "7"]


def _fingerprints(logs_dir):
    out = {}
    for i in (0, 1):
        text = (logs_dir / f"worker-{i}.log").read_text(errors="replace")
        found = re.findall(rf"Worker {i} of 2 finished: trainable weights ([0-9a-f]+)", text)
        assert found, text[-2000:]
        out[i] = found[-1]
    return out


def test_two_workers_one_run_folder_same_weights_and_accuracy_as_one_process(tmp_path):
    runs, tmp, logs = tmp_path / "runs", tmp_path / "tmp", tmp_path / "logs"
    env = env_for(tmp)
    # No validation split: both runs keep their last epoch (the best-of-180-validation-images
    # pick alone moved test accuracy by 2-3 points between otherwise equal runs).
    args = [
        *DIGITS,
        "--epochs",
        "8",
        "--val-split",
        "0",
        "--learning-rate",
        "0.003",
        "--batch-size",
        "64",
        "--runs-dir",
        str(runs),
    ]
    launcher = tmp_path / "launch.log"
    code = run(
        ["launch", "--workers", "2", "--logs", str(logs), "--", "train", *args, "--name", "two"],
        env,
        launcher,
        timeout=240,
    )
    assert code == 0, launcher.read_text()[-3000:]
    # One run folder, written by the chief; the other worker left nothing behind.
    assert sorted(p.name for p in runs.iterdir()) == ["two"]
    assert [p.name for p in tmp.iterdir()] == [], "a worker left files in its temp folder"
    two = json.loads((runs / "two" / "metrics.json").read_text())
    assert two["multiworker"]["workers"] == 2 and two["replicas"] == 2
    assert (runs / "two" / "model.keras").is_file() and (runs / "two" / "report.html").is_file()
    # Each worker trained on its half of the 1617 training images (32 per step).
    for i in (0, 1):
        text = (logs / f"worker-{i}.log").read_text()
        assert f"Worker {i} of 2: 808 training images per epoch in 26 steps" in text
    prints = _fingerprints(logs)
    assert prints[0] == prints[1] == two["multiworker"]["weights_fingerprint"]
    assert "trainable weights " + prints[1] in (logs / "worker-1.log").read_text()

    # The same run in one fresh process (as the CLI runs it: a test process that already
    # trained other models draws other random numbers for the same seed).
    code = run(["train", *args, "--name", "one"], env, tmp_path / "one.log", timeout=180)
    assert code == 0, (tmp_path / "one.log").read_text()[-3000:]
    one = json.loads((runs / "one" / "metrics.json").read_text())
    assert one["replicas"] == 1
    assert abs(two["test"]["accuracy"] - one["test"]["accuracy"]) <= 0.015, (one, two)
    assert two["test"]["accuracy"] > 0.9


def _history_epochs(path):
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return [int(float(r["epoch"])) for r in csv.DictReader(f)]


def test_sigkill_of_worker_1_in_epoch_3_then_resume_finishes_3_to_5(tmp_path):
    runs, tmp = tmp_path / "runs", tmp_path / "tmp"
    env = env_for(tmp)
    run_dir = runs / "kill"
    launcher_log = tmp_path / "launch.log"
    # Small batches: an epoch lasts long enough (45 steps) to be killed in the middle of.
    launcher = start(
        [
            "launch",
            "--workers",
            "2",
            "--",
            "train",
            *DIGITS,
            "--epochs",
            "5",
            "--batch-size",
            "32",
            "--runs-dir",
            str(runs),
            "--name",
            "kill",
        ],
        env,
        launcher_log,
    )
    try:
        wait_for(
            lambda: len(_history_epochs(run_dir / "history.csv")) == 2, 180, "two finished epochs"
        )
        pids = worker_pids(launcher_log)
        os.kill(pids[1], signal.SIGKILL)
        code = launcher.wait(timeout=60)
    finally:
        kill_group(launcher)
    text = launcher_log.read_text()
    assert code != 0, text[-2000:]
    assert "worker 1 exited with status -9; stopping the other workers" in text
    assert not pid_alive(pids[0]), "the chief outlived the launcher"
    state = json.loads((run_dir / "checkpoints" / "state.json").read_text())
    assert state["epochs_done"] == 2, "the kill did not land in epoch 3"

    resumed_log = tmp_path / "resume.log"
    code = run(
        ["launch", "--workers", "2", "--", "train", "--resume", str(run_dir)],
        env,
        resumed_log,
        timeout=240,
    )
    text = resumed_log.read_text()
    assert code == 0, text[-3000:]
    assert f"Resuming {run_dir} after epoch 2 of 5" in text
    assert re.search(r"Epoch 3/5 .*\n(.*\n)*Epoch 4/5 .*\n(.*\n)*Epoch 5/5", text)
    assert "Epoch 1/5" not in text and "Epoch 2/5" not in text
    assert _history_epochs(run_dir / "history.csv") == [0, 1, 2, 3, 4]
    assert json.loads((run_dir / "checkpoints" / "state.json").read_text())["epochs_done"] == 5
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["epochs_done"] == 5 and metrics["multiworker"]["workers"] == 2
