import warnings

import pytest

from cnnlab.config import TrainConfig, resolve_config
from cnnlab.errors import ConfigError


def test_defaults_train_digits():
    cfg = resolve_config()
    assert cfg.data == "builtin:digits"
    assert cfg.model == "simple_cnn"


def test_flags_override_yaml_and_dashes_are_accepted(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("epochs: 3\nbatch-size: 16\nmodel: resnet20\n")
    cfg = resolve_config(path, {"epochs": 7, "model": None})
    assert (cfg.epochs, cfg.batch_size, cfg.model) == (7, 16, "resnet20")


def test_unknown_key_is_refused_with_close_match(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("epoch: 3\n")
    with pytest.raises(ConfigError) as e:
        resolve_config(path)
    msg = str(e.value)
    assert "Unknown config key 'epoch'" in msg and str(path) in msg
    assert "Did you mean: epochs" in msg


def test_bad_values_name_the_field():
    with pytest.raises(ConfigError, match="Bad optimizer: received 'adamm'.*Did you mean: adam"):
        resolve_config(None, {"optimizer": "adamm"})
    with pytest.raises(ConfigError, match="Bad value for epochs: received 'ten'"):
        resolve_config(None, {"epochs": "ten"})
    with pytest.raises(ConfigError, match="Bad image_size: received '3x'"):
        resolve_config(None, {"image_size": "3x"})
    with pytest.raises(ConfigError, match="Bad val_split: received 1.5"):
        resolve_config(None, {"val_split": 1.5})


def test_image_size_forms():
    assert resolve_config(None, {"image_size": "64x48"}).image_size == [64, 48]
    assert resolve_config(None, {"image_size": 32}).image_size == [32, 32]


def test_config_round_trips_through_yaml(tmp_path):
    from cnnlab.config import dump_yaml

    cfg = resolve_config(None, {"epochs": 4, "model_kwargs": {"filters": [8, 16]}})
    path = tmp_path / "config.yaml"
    path.write_text(dump_yaml(cfg.to_dict()))
    assert resolve_config(path) == cfg
    assert isinstance(cfg, TrainConfig)


def test_model_kwargs_flag_parsing():
    from cnnlab.cli.options import parse_kwargs

    assert parse_kwargs(["filters=[32, 64] dropout=0.2", "pool=avg"]) == {
        "filters": [32, 64],
        "dropout": 0.2,
        "pool": "avg",
    }
    with pytest.raises(ConfigError, match="Bad --model-kwargs value 'oops'"):
        parse_kwargs(["oops"])


# ------------------------------------------------------------ one name per idea


def test_old_key_names_still_work_with_a_warning_naming_the_new_key(tmp_path):
    from cnnlab.config import CnnlabDeprecationWarning, dump_yaml

    path = tmp_path / "old.yaml"
    path.write_text("output: my_runs\nepochs: 2\n")
    with pytest.warns(CnnlabDeprecationWarning) as record:
        cfg = resolve_config(path)
    assert [str(w.message) for w in record] == [
        f"'output' in {path} is a deprecated key name; use 'runs_dir' instead "
        "(the old name stops working in the next release)"
    ]
    assert record[0].filename == __file__  # points at the caller's line, not cnnlab's
    assert cfg.runs_dir == "my_runs"
    written = dump_yaml(cfg.to_dict())
    assert "runs_dir: my_runs" in written and "output" not in written
    # the resolved config reads back without any warning
    again = tmp_path / "config.yaml"
    again.write_text(written)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_config(again) == cfg


def test_fine_tuning_and_lr_find_keys_are_renamed_with_a_warning():
    from cnnlab.config import CnnlabDeprecationWarning, normalise_keys

    extra = ("stage2_learning_rate", "start_learning_rate", "end_learning_rate")
    with pytest.warns(CnnlabDeprecationWarning) as record:
        keys = normalise_keys({"stage2-lr": 0.01, "start_lr": 1e-6, "end_lr": 1}, "x", extra)
    assert [str(w.message).split(";")[1] for w in record] == [
        " use 'stage2_learning_rate' instead (the old name stops working in the next release)",
        " use 'start_learning_rate' instead (the old name stops working in the next release)",
        " use 'end_learning_rate' instead (the old name stops working in the next release)",
    ]
    assert str(record[0].message).startswith("'stage2-lr' in x is a deprecated key name")
    assert keys == {
        "stage2_learning_rate": 0.01,
        "start_learning_rate": 1e-6,
        "end_learning_rate": 1,
    }


def test_short_spellings_are_aliases_without_a_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cfg = resolve_config({"lr": 0.01, "opt": "sgd", "sched": "step", "smoothing": 0.1})
    assert (cfg.learning_rate, cfg.optimizer, cfg.schedule, cfg.label_smoothing) == (
        0.01,
        "sgd",
        "step",
        0.1,
    )


def test_two_spellings_of_one_key_with_different_values_are_refused():
    with pytest.raises(ConfigError) as e:
        resolve_config({"learning_rate": 0.1, "lr": 0.2})
    assert str(e.value).startswith(
        "'lr' and another spelling of 'learning_rate' are both given in the config, "
        "with different values (0.2 and 0.1)"
    )
    assert "Keep only 'learning_rate'" in str(e.value)


def test_renamed_model_options_move_to_their_new_names_with_a_warning():
    from cnnlab.config import CnnlabDeprecationWarning

    with pytest.warns(
        CnnlabDeprecationWarning,
        match=r"'width' in model_kwargs \(resnet20\) is "
        "a deprecated model option name; use 'filters' instead",
    ):
        cfg = resolve_config({"model": "resnet20", "model_kwargs": {"width": 8}})
    assert cfg.model_kwargs == {"filters": 8}
    with pytest.warns(CnnlabDeprecationWarning, match="use 'width' instead"):
        cfg = resolve_config({"model": "vgg8_bn", "model_kwargs": {"width_mult": 0.5}})
    assert cfg.model_kwargs == {"width": 0.5}
    # width is a multiplier where it exists (airbench, vgg), so it stays as it is there
    cfg = resolve_config({"model": "airbench", "model_kwargs": {"width": 0.5}})
    assert cfg.model_kwargs == {"width": 0.5}
    with pytest.raises(ConfigError, match="resnet9: both 'width' .* and 'filters' are given"):
        resolve_config({"model": "resnet9", "model_kwargs": {"width": 8, "filters": 8}})


def test_the_old_attribute_name_reads_the_new_one():
    from cnnlab.config import CnnlabDeprecationWarning

    cfg = resolve_config(None, {"runs_dir": "elsewhere"})
    with pytest.warns(CnnlabDeprecationWarning, match="'output' in TrainConfig .* 'runs_dir'"):
        assert cfg.output == "elsewhere"
