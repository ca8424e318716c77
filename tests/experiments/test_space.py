"""The sweep file: search spaces, budgets and their error messages (no training here)."""

from __future__ import annotations

import optuna
import pytest

from cnnlab.errors import ConfigError
from cnnlab.experiments.space import (
    decode_param,
    load_sweep,
    parse_duration,
    parse_sweep,
    suggest,
    trial_config,
)

SWEEP = {
    "name": "demo",
    "trials": 6,
    "epochs": 2,
    "base": {"data": "builtin:digits", "model_kwargs": {"dense": [32]}},
    "space": {
        "optimizer": ["adam", "sgd"],
        "lr": {"low": "1e-4", "high": 1.0e-1, "log": True},  # alias; YAML's 1e-4 is text
        "batch_size": {"low": 16, "high": 64, "step": 16},
        "model_kwargs": {"filters": [[8, 16], [16, 32]], "dropout": {"low": 0.0, "high": 0.5}},
        "model_kwargs.batch_norm": [True, False],
    },
}


def test_space_kinds_and_nested_model_options():
    spec = parse_sweep(SWEEP, "demo.yaml")
    kinds = {p.name: p.kind for p in spec.params}
    assert kinds == {
        "optimizer": "categorical",
        "learning_rate": "float",
        "batch_size": "int",
        "model_kwargs.filters": "categorical",
        "model_kwargs.dropout": "float",
        "model_kwargs.batch_norm": "categorical",
    }
    described = {p.name: p.describe() for p in spec.params}
    assert described["model_kwargs.batch_norm"] == "True, False"  # sweep.html's space table
    assert described["model_kwargs.filters"] == "[8, 16], [16, 32]"
    assert described["learning_rate"] == "float 0.0001 to 0.1 (log)"
    lr = next(p for p in spec.params if p.name == "learning_rate")
    assert (lr.low, lr.high, lr.log) == (1e-4, 0.1, True)
    assert spec.direction == "maximize" and spec.sampler == "tpe"
    assert spec.pruner["type"] == "median"


def test_suggested_values_become_a_trial_config():
    spec = parse_sweep(SWEEP, "demo.yaml")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    for _ in range(5):
        trial = study.ask()
        values = suggest(trial, spec)
        # a list-valued choice is stored as YAML text and comes back as the list
        assert trial.params["model_kwargs.filters"] in ("[8, 16]", "[16, 32]")
        assert values["model_kwargs.filters"] in ([8, 16], [16, 32])
        assert 1e-4 <= values["learning_rate"] <= 0.1
        assert values["batch_size"] in (16, 32, 48, 64)
        config = trial_config(spec, values)
        assert config["epochs"] == 2 and config["data"] == "builtin:digits"
        assert config["model_kwargs"]["dense"] == [32]  # the base's options are kept
        assert config["model_kwargs"]["filters"] == values["model_kwargs.filters"]
        study.tell(trial, 0.5)


def test_grid_enumerates_choices_and_stepped_ranges():
    raw = {
        **SWEEP,
        "sampler": "grid",
        "space": {
            "optimizer": ["adam", "sgd"],
            "batch_size": {"low": 16, "high": 48, "step": 16},
            "model_kwargs": {"filters": [[8], [16]]},
        },
    }
    spec = parse_sweep(raw, "grid.yaml")
    assert spec.grid_space() == {
        "optimizer": ["adam", "sgd"],
        "batch_size": [16, 32, 48],
        "model_kwargs.filters": ["[8]", "[16]"],
    }
    assert spec.grid_size() == 12
    p = next(p for p in spec.params if p.name == "model_kwargs.filters")
    assert decode_param(p, "[16]") == [16]


def test_grid_refuses_a_continuous_range():
    raw = {**SWEEP, "sampler": "grid", "space": {"dropout_rate": None}}
    raw["space"] = {"model_kwargs": {"dropout": {"low": 0.0, "high": 0.5}}}
    with pytest.raises(ConfigError) as e:
        parse_sweep(raw, "grid.yaml")
    assert "Grid search cannot enumerate 'model_kwargs.dropout' in sweep 'demo'" in str(e.value)
    assert "Give 'model_kwargs.dropout' a step" in str(e.value)


def test_unknown_search_key_names_the_file_and_the_closest_key():
    raw = {**SWEEP, "space": {"lerning_rate": [0.1, 0.01]}}
    with pytest.raises(ConfigError) as e:
        parse_sweep(raw, "my.yaml")
    assert "Unknown key 'lerning_rate' in the search space of my.yaml" in str(e.value)
    assert "Did you mean: learning_rate?" in str(e.value)


@pytest.mark.parametrize(
    "entry, message",
    [
        ({"low": 0.5, "high": 0.1}, "is an empty or bad range"),
        ({"low": 0.0, "high": 1.0, "log": True}, "a log range needs low > 0"),
        ({"low": "a", "high": 1}, "low, high and step must be numbers"),
        (0.1, "Move a fixed value of 'weight_decay' to `base:`"),
        ({"low": 0.0}, "a range with low and high"),
    ],
)
def test_bad_ranges_are_explained(entry, message):
    with pytest.raises(ConfigError) as e:
        parse_sweep({**SWEEP, "space": {"weight_decay": entry}}, "bad.yaml")
    assert message in str(e.value)
    assert "weight_decay" in str(e.value)


def test_top_level_typos_and_bad_choices():
    with pytest.raises(ConfigError) as e:
        parse_sweep({**SWEEP, "trails": 5}, "t.yaml")
    assert "Unknown key(s) trails in the sweep file t.yaml. Did you mean: trials" in str(e.value)
    with pytest.raises(ConfigError) as e:
        parse_sweep({**SWEEP, "model": "resnet20"}, "t.yaml")
    assert "'model' is a config key of cnnlab train: put it under `base:` in t.yaml" in str(e.value)
    with pytest.raises(ConfigError) as e:
        parse_sweep({**SWEEP, "sampler": "bayes"}, "t.yaml")
    assert "Bad sampler in t.yaml: received 'bayes'" in str(e.value)
    with pytest.raises(ConfigError) as e:
        parse_sweep({**SWEEP, "pruner": "hyperband"}, "t.yaml")
    assert "Bad pruner in t.yaml" in str(e.value) and "median, halving, none" in str(e.value)
    with pytest.raises(ConfigError) as e:
        parse_sweep({k: v for k, v in SWEEP.items() if k != "space"}, "t.yaml")
    assert "The sweep file t.yaml has no search space" in str(e.value)


def test_budgets_and_durations():
    assert parse_duration("30m", "x") == 1800
    assert parse_duration("1h30m", "x") == 5400
    assert parse_duration(90, "x") == 90
    with pytest.raises(ConfigError, match="Bad timeout in x: received 'soon'"):
        parse_duration("soon", "x")
    spec = parse_sweep({**SWEEP, "trials": None, "timeout": "10m"}, "t.yaml")
    assert spec.trials is None and spec.timeout == 600  # wall time alone is a budget
    spec = parse_sweep({k: v for k, v in SWEEP.items() if k != "trials"}, "t.yaml")
    assert spec.trials == 20  # neither given: 20 trials


def test_loss_metrics_are_minimised_and_the_file_name_is_the_default_name(tmp_path):
    path = tmp_path / "my-study.yaml"
    path.write_text("metric: val_loss\nspace:\n  optimizer: [adam, sgd]\n")
    spec = load_sweep(path)
    assert spec.name == "my-study" and spec.direction == "minimize"


def test_options_chosen_together_merge_into_model_kwargs():
    raw = {
        **SWEEP,
        "space": {
            "model_kwargs": [
                {"dropout": 0.0, "dense_dropout": 0.0},
                {"dropout": 0.1, "dense_dropout": 0.3},
            ],
            "model_kwargs.batch_norm": [True, False],
        },
    }
    spec = parse_sweep(raw, "together.yaml")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    config = trial_config(spec, suggest(trial, spec))
    kwargs = config["model_kwargs"]
    assert kwargs["dense"] == [32]  # the base's option stays
    assert (kwargs["dropout"], kwargs["dense_dropout"]) in ((0.0, 0.0), (0.1, 0.3))
    assert kwargs["batch_norm"] in (True, False)
    assert trial.params["model_kwargs"] in (
        "{dropout: 0.0, dense_dropout: 0.0}",
        "{dropout: 0.1, dense_dropout: 0.3}",
    )


def test_finetune_sweeps_search_finetune_keys_and_train_sweeps_refuse_them():
    raw = {"base": {"data": "builtin:digits"}, "space": {"freeze_epochs": [1, 2]}}
    spec = parse_sweep({**raw, "command": "finetune"}, "f.yaml")
    assert [p.name for p in spec.params] == ["freeze_epochs"]
    with pytest.raises(ConfigError, match="Unknown key 'freeze_epochs' in the search space of t"):
        parse_sweep(raw, "t.yaml")
