"""When a sweep stops starting trials: its trial count (other workers' running trials
included), its wall time, and the size of a grid. No training here."""

from __future__ import annotations

import time

import optuna
import pytest

from cnnlab.errors import ConfigError
from cnnlab.experiments.space import parse_sweep
from cnnlab.experiments.study import load_study
from cnnlab.experiments.sweep import _budget_left

RAW = {
    "name": "b",
    "base": {"data": "builtin:digits"},
    "space": {"optimizer": ["adam", "sgd"], "batch_size": [32, 64]},
}


def _study(finished: int, running: int = 0):
    study = optuna.create_study(direction="maximize")
    for _ in range(finished):
        study.tell(study.ask(), 0.5)
    for _ in range(running):
        study.ask()
    return study


def test_trial_budget_counts_finished_and_running_trials():
    spec = parse_sweep({**RAW, "trials": 3}, "b.yaml")
    assert _budget_left(_study(2), spec, time.time()) is None
    assert _budget_left(_study(3), spec, time.time()) == "3 of 3 trials finished"
    assert _budget_left(_study(2, running=1), spec, time.time()) == (
        "2 trials finished and 1 running in other workers"
    )


def test_wall_time_budget():
    spec = parse_sweep({**RAW, "trials": None, "timeout": "1m"}, "b.yaml")
    assert _budget_left(_study(50), spec, time.time() - 30) is None  # no trial limit
    assert _budget_left(_study(0), spec, time.time() - 61) == "the time budget of 60 s is spent"


def test_grid_stops_when_every_cell_is_done():
    spec = parse_sweep({**RAW, "sampler": "grid", "trials": 100}, "b.yaml")
    assert spec.grid_size() == 4
    assert _budget_left(_study(3), spec, time.time()) is None
    assert _budget_left(_study(4), spec, time.time()) == "4 of 4 trials finished"


def test_a_worker_with_another_sweep_file_cannot_join_the_study(tmp_path):
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    load_study(parse_sweep(RAW, "a.yaml"), url)
    load_study(parse_sweep(RAW, "a.yaml"), url)  # the same file joins
    other = parse_sweep({**RAW, "space": {"optimizer": ["adam", "rmsprop"]}}, "b.yaml")
    with pytest.raises(ConfigError) as e:
        load_study(other, url)
    assert (
        f"The study 'b' in {url} was started with a different sweep file (they differ "
        "in: space)" in str(e.value)
    )
    assert "give this sweep another `name:`" in str(e.value)
