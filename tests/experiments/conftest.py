"""Sweeps on builtin:digits, run through the ``cnnlab`` command as a user runs them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

# Small and quick: 8x8 digits, a two-block CNN, two epochs per trial. Without deterministic
# ops two runs of one config differ by a few points on this CPU (measured: 0.883 and 0.944).
BASE = {
    "data": "builtin:digits",
    "model": "simple_cnn",
    "model_kwargs": {"dense": [32]},
    "batch_size": 64,
    "seed": 1,
    "deterministic": True,  # so that best.yaml repeats the best trial exactly
}
SPACE = {
    "optimizer": ["adam", "rmsprop"],
    "learning_rate": {"low": 3.0e-3, "high": 3.0e-2, "log": True},
    "model_kwargs": {"filters": [[8, 16], [16, 32]], "dropout": {"low": 0.0, "high": 0.3}},
}


def write_sweep(path: Path, **fields) -> Path:
    raw = {
        "name": "digits-test",
        "trials": 8,
        "epochs": 2,
        "seed": 0,
        "base": dict(BASE),
        "space": SPACE,
        **fields,
    }
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def cnnlab_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "cnnlab.cli.main", *args]


def run_cnnlab(*args: str, timeout: float = 600, cwd: Path | None = None):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run(
        cnnlab_cmd(*args), capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def only_sweep_folder(sweeps_dir: Path) -> Path:
    folders = [p for p in sweeps_dir.iterdir() if p.is_dir()]
    assert len(folders) == 1, folders
    return folders[0]


@pytest.fixture(scope="session")
def digits_sweep(tmp_path_factory):
    """The must-show sweep: 8 trials of 2 epochs on digits, median pruning from epoch 1."""
    root = tmp_path_factory.mktemp("sweep")
    config = write_sweep(
        root / "digits.yaml", pruner={"type": "median", "warmup_epochs": 0, "startup_trials": 2}
    )
    proc = run_cnnlab("sweep", "-c", str(config), "--sweeps-dir", str(root / "sweeps"))
    return only_sweep_folder(root / "sweeps"), proc
