"""A sweep survives ``kill -9`` (``--resume`` finishes it, no trial counted twice), and two
workers on one SQLite study run disjoint trials."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import optuna
from optuna.trial import TrialState
from tests.experiments.conftest import (
    BASE,
    cnnlab_cmd,
    only_sweep_folder,
    run_cnnlab,
    write_sweep,
)

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _wait_for(predicate, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _epochs_written(history: Path) -> int:
    try:
        return max(0, len(history.read_text().strip().splitlines()) - 1)
    except OSError:
        return 0


def test_sigkill_mid_trial_then_resume_finishes_without_double_counting(tmp_path):
    config = write_sweep(
        tmp_path / "kill.yaml",
        name="kill-test",
        trials=2,
        epochs=3,
        pruner="none",
        base={**BASE, "tensorboard": False},
    )
    sweeps = tmp_path / "sweeps"
    proc = subprocess.Popen(
        cnnlab_cmd("sweep", "-c", str(config), "--sweeps-dir", str(sweeps)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        folder = _wait_for(lambda: next(iter(sweeps.glob("*")), None), 120, "the sweep folder")
        history = folder / "trials" / "trial-0001" / "history.csv"
        _wait_for(lambda: _epochs_written(history) >= 1, 400, "trial 1's first epoch")
        trainers = _children(proc.pid)
        assert trainers, "the trial trains in a child process"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    # the trial's process dies with its worker: no orphan keeps training
    _wait_for(lambda: not any(_alive(p) for p in trainers), 30, "the trial process to die")
    epochs_at_kill = _epochs_written(history)
    assert epochs_at_kill < 3
    storage = f"sqlite:///{folder / 'study.db'}"
    killed = optuna.load_study(study_name="kill-test", storage=storage).trials[1]
    assert killed.state == TrialState.RUNNING  # as the kill left it

    done = run_cnnlab("sweep", "--resume", str(folder))
    study = optuna.load_study(study_name="kill-test", storage=storage)
    by_number = {t.number: t for t in study.trials}
    finished = [t.number for t in study.trials if t.state in FINISHED]
    assert len(finished) == 2 and len(set(finished)) == 2
    assert by_number[1].state == TrialState.FAIL  # the interrupted trial is never finished
    (retry,) = [t for t in study.trials if t.system_attrs.get("failed_trial") == 1]
    assert retry.state in FINISHED and retry.params == killed.params
    assert sorted(finished) == [0, retry.number]
    assert "Trial 1 was interrupted (its worker" in done.stderr
    assert _epochs_written(history) == epochs_at_kill  # the killed run folder stays as it was
    assert (folder / "trials" / f"trial-{retry.number:04d}" / "metrics.json").is_file()
    assert not list(folder.rglob("tensorboard"))  # tensorboard: false in the base config
    assert "2 finished trials" in done.stdout


def test_two_workers_on_one_sqlite_study_run_disjoint_trials(tmp_path):
    config = write_sweep(tmp_path / "shared.yaml", name="shared", trials=3, epochs=1, pruner="none")
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    procs = [
        subprocess.Popen(
            cnnlab_cmd(
                "sweep", "-c", str(config), "--storage", storage, "--sweeps-dir", str(tmp_path / w)
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for w in ("a", "b")
    ]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    study = optuna.load_study(study_name="shared", storage=storage)
    finished = [t for t in study.trials if t.state in FINISHED]
    assert len(finished) >= 3
    ran = {}
    for w in ("a", "b"):
        folder = only_sweep_folder(tmp_path / w)
        assert json.loads((folder / "sweep.json").read_text())["storage"] == storage
        assert not (folder / "study.db").exists()  # the study lives in the shared database
        ran[w] = {int(p.name.split("-")[1]) for p in (folder / "trials").iterdir()}
    assert ran["a"] and ran["b"], ran  # both workers took trials...
    assert not ran["a"] & ran["b"]  # ...and never the same one
    assert ran["a"] | ran["b"] == {t.number for t in study.trials}
    workers = {t.user_attrs["worker"] for t in study.trials}
    assert len(workers) == 2


def test_workers_starting_together_on_a_new_database_all_open_it(tmp_path):
    """Each creates the tables; the losers find them made and retry (plain Optuna fails
    with "table studies already exists" in most of them)."""
    import sys

    url = f"sqlite:///{tmp_path / 'new.db'}"
    code = f"from cnnlab.experiments.study import open_storage; open_storage({url!r})"
    procs = [
        subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True)
        for _ in range(5)
    ]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 5, errors
