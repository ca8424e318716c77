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
        "filters": [32, 64], "dropout": 0.2, "pool": "avg"}  # fmt: skip
    with pytest.raises(ConfigError, match="Bad --model-kwargs value 'oops'"):
        parse_kwargs(["oops"])
