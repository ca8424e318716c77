"""Mixed precision: which policy ``auto`` picks, models built under it, the float32 model shipped."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from cnnlab.errors import ConfigError
from cnnlab.models import create_model
from cnnlab.models import precision as precision_mod
from cnnlab.models.precision import dtype_policy, model_precision, resolve_precision, to_float32


@pytest.mark.parametrize(
    "flags, expected",
    [
        (["avx2", "avx512f", "avx512_bf16"], "mixed_bfloat16"),
        (["avx2", "amx_bf16"], "mixed_bfloat16"),
        (["avx2", "avx512f", "fma"], "float32"),
        ([], "float32"),  # no /proc/cpuinfo (macOS, Windows)
    ],
)
def test_auto_picks_bfloat16_only_where_the_cpu_computes_it_natively(monkeypatch, flags, expected):
    monkeypatch.setattr(precision_mod, "cpu_flags", lambda: flags)
    assert resolve_precision("auto") == expected
    assert resolve_precision("float32") == "float32"
    assert resolve_precision("mixed_bfloat16") == "mixed_bfloat16"


def test_dtype_policy_applies_to_models_built_inside_and_is_put_back():
    before = keras.config.dtype_policy().name
    with dtype_policy("mixed_bfloat16"):
        model = create_model("airbench", 3, 16, 3, width=0.125)
    assert keras.config.dtype_policy().name == before
    assert model_precision(model) == "mixed_bfloat16"
    assert model.get_layer("whiten").compute_dtype == "bfloat16"
    assert all(w.dtype == "float32" for w in model.weights)  # weights stay float32
    assert model(np.zeros((2, 16, 16, 3), "float32")).dtype == "float32"  # so do the outputs


def test_the_shipped_model_is_float32_with_the_same_weights_and_optimizer_state():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (32, 16, 16, 3)).astype("float32")
    y = keras.utils.to_categorical(rng.integers(0, 3, 32), 3)
    with dtype_policy("mixed_bfloat16"):
        trained = create_model("airbench", 3, 16, 3, width=0.125, tta=0)
    trained.compile(
        optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
        loss="categorical_crossentropy",
        metrics=["accuracy"],
    )
    trained.fit(x, y, batch_size=16, epochs=1, verbose=0)

    shipped = to_float32(trained)
    assert model_precision(shipped) == "float32"
    assert all(layer.compute_dtype == "float32" for layer in shipped.layers)
    for a, b in zip(shipped.get_weights(), trained.get_weights()):
        np.testing.assert_array_equal(a, b)
    # bfloat16 has 8 significant bits: the float32 outputs agree to that precision.
    np.testing.assert_allclose(
        shipped.predict(x, verbose=0), trained.predict(x, verbose=0), atol=0.05
    )
    assert int(shipped.optimizer.iterations.numpy()) == 2  # the optimizer state came along
    for a, b in zip(shipped.optimizer.variables, trained.optimizer.variables):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    shipped.fit(x, y, batch_size=16, epochs=1, verbose=0)  # and it trains on
    assert to_float32(shipped) is shipped  # float32 already: unchanged


def test_a_bad_precision_is_refused_with_the_choices():
    from cnnlab.config import resolve_config

    with pytest.raises(ConfigError, match="Bad precision: received 'bf16'") as e:
        resolve_config(None, {"precision": "bf16"})
    assert "auto, float32, mixed_bfloat16" in str(e.value)


def test_fine_tuning_and_lr_find_refuse_mixed_precision_as_a_user_gives_it():
    from cnnlab.training.finetune import resolve_finetune_config

    for command in ("finetune", "lr-find"):
        with pytest.raises(ConfigError) as e:
            resolve_finetune_config({"precision": "mixed_bfloat16"}, {}, command=command)
        assert f"precision mixed_bfloat16 given to `cnnlab {command}`" in str(e.value)
        assert "Drop precision (or set it to float32)" in str(e.value)
    assert resolve_finetune_config({"precision": "float32"}, {})[0].precision == "float32"


def test_cnnlab_finetune_refuses_a_config_with_mixed_precision(tmp_path, capsys):
    from cnnlab.cli.main import main

    config = tmp_path / "ft.yaml"
    config.write_text("precision: mixed_bfloat16\n")
    argv = ["finetune", "--data", "builtin:digits", "-c", str(config)]
    assert main([*argv, "--runs-dir", str(tmp_path / "runs")]) == 2
    assert "precision mixed_bfloat16 given to `cnnlab finetune`" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_a_compiled_model_that_never_trained_ships_with_a_fresh_optimizer():
    with dtype_policy("mixed_bfloat16"):
        model = create_model("airbench", 3, 16, 3, width=0.125, tta=0)
    model.compile(
        optimizer=keras.optimizers.SGD(0.01, momentum=0.9), loss="categorical_crossentropy"
    )
    shipped = to_float32(model)  # the optimizer had no slots to copy
    assert model_precision(shipped) == "float32"
    assert int(shipped.optimizer.iterations.numpy()) == 0
