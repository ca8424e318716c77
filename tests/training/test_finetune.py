"""fine_tune and lr_find: two stages, frozen BatchNorm, best-of-both-stages, reload, LR sweep.

The backbone is MobileNet at 32 px with "pretrained" weights made at run time
(random convolutions, BatchNorm statistics measured on random images) and
passed as a local weights file, so no test needs the network or ../shared.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import keras
import numpy as np
import pytest

from cnnlab.errors import ConfigError, ModelError, WeightsError
from cnnlab.models.pretrained.applications import (
    BACKBONES,
    batchnorm_layers,
    get_backbone,
    make_backbone,
)
from cnnlab.nn.optimizers import LAYERWISE
from cnnlab.training.finetune import resolve_finetune_config, unfrozen_block_count
from cnnlab.workflows import fine_tune


@pytest.fixture(scope="module")
def backbone_weights(tmp_path_factory) -> Path:
    """MobileNet backbone weights whose BatchNorm layers hold real statistics."""
    base = make_backbone(BACKBONES["mobilenet"], (32, 32, 3))
    for bn in batchnorm_layers(base):
        bn.momentum = 0.0  # one training-mode pass sets the moving statistics
    x = np.random.default_rng(0).uniform(-1, 1, (64, 32, 32, 3)).astype("float32")
    base(x, training=True)
    path = tmp_path_factory.mktemp("weights") / "mobilenet_backbone.weights.h5"
    base.save_weights(path)
    return path


@pytest.fixture
def flowers(make_folder) -> Path:
    return make_folder("flowers", classes=("red", "green", "blue"), per_class=16, size=32)


@pytest.fixture
def tiny_fine_tune(backbone_weights, runs_dir):
    """``fine_tune`` with the test backbone, one epoch per stage, the top block unfrozen."""

    def run(**kwargs):
        options = {"image_size": 32, "batch_size": 8, "verbose": 0, "epochs": 1, **kwargs}
        weights = str(backbone_weights)
        folder = str(runs_dir / "finetune")
        return fine_tune(weights=weights, freeze_epochs=1, unfreeze="1", runs_dir=folder, **options)

    return run


def _bn_state(model) -> list[np.ndarray]:
    return [w.numpy().copy() for bn in batchnorm_layers(get_backbone(model)) for w in bn.weights]


class _Watch(keras.callbacks.Callback):
    """Records, at every epoch, whether the backbone's BatchNorm state moved."""

    def __init__(self, reference: list[np.ndarray]):
        super().__init__()
        self.reference = reference
        self.seen: list[tuple[int, bool]] = []
        self.kernels: dict[int, dict[str, np.ndarray]] = {}

    def on_epoch_end(self, epoch, logs=None):
        if "pooler" not in [layer.name for layer in self.model.layers]:
            return  # stage 1 on the feature path fits the head alone
        state = _bn_state(self.model)
        same = all(np.array_equal(a, b) for a, b in zip(state, self.reference))
        stage = int(logs["stage"])
        self.seen.append((stage, same))
        base = get_backbone(self.model)
        self.kernels[stage] = {
            n: base.get_layer(n).weights[0].numpy().copy() for n in ("conv1", "conv_pw_13")
        }


def test_two_stages_keep_batchnorm_frozen_and_the_run_reloads(
    flowers, runs_dir, backbone_weights, caplog
):
    from cnnlab.models import create_model
    from cnnlab.models.saving import load_model

    caplog.set_level(logging.INFO, logger="cnnlab")
    reference = create_model("mobilenet", 3, 32, weights=str(backbone_weights))
    initial = _bn_state(reference)
    stem0 = get_backbone(reference).get_layer("conv1").weights[0].numpy()
    watch = _Watch(initial)
    result = fine_tune(
        data=f"folder:{flowers}",
        weights=str(backbone_weights),
        image_size=32,
        batch_size=8,
        val_split=0.25,
        test_split=0.25,
        freeze_epochs=2,
        epochs=2,
        unfreeze="1",
        feature_cache="off",
        runs_dir=str(runs_dir),
        verbose=1,
        callbacks=[watch],
    )
    assert "Stage 1 (2 epochs, lr 0.001): backbone path" in caplog.text
    # BatchNorm never moved, in either stage, though both ran the backbone under fit().
    assert [s for s, _ in watch.seen] == [1, 1, 2, 2]
    assert all(same for _, same in watch.seen)
    assert all(np.array_equal(a, b) for a, b in zip(_bn_state(result.model), initial))
    # Stage 2 trained the top block only.
    assert np.array_equal(watch.kernels[2]["conv1"], stem0)
    assert not np.array_equal(watch.kernels[2]["conv_pw_13"], watch.kernels[1]["conv_pw_13"])

    stages = result.metrics["stages"]
    assert stages["1"]["path"] == "backbone" and stages["2"]["unfrozen_blocks"] == ["block_13"]
    assert result.metrics["best_value"] >= stages["1"]["val_accuracy"]
    run = result.run_dir
    for name in (
        "config.yaml",
        "split.csv",
        "history.csv",
        "model.keras",
        "metrics.json",
        "evaluation-test/metrics.json",
        "checkpoints/best.keras",
    ):
        assert (run / name).is_file(), name
    with open(run / "history.csv", newline="") as f:
        assert [int(float(r["stage"])) for r in csv.DictReader(f)] == [1, 1, 2, 2]
    assert "unfreeze: '1'" in (run / "config.yaml").read_text()

    # The saved model predicts exactly as the one in memory, BatchNorm still frozen.
    images = np.random.default_rng(1).uniform(0, 255, (6, 32, 32, 3)).astype("float32")
    reloaded = load_model(run / "model.keras")
    np.testing.assert_allclose(
        reloaded.predict(images, verbose=0), result.model.predict(images, verbose=0), atol=1e-6
    )
    assert reloaded.get_layer("preprocess").mode == "tf"
    assert all(not bn.trainable for bn in batchnorm_layers(get_backbone(reloaded)))


def test_stage2_never_leaves_the_model_worse_and_the_cli_reports_both(
    flowers, runs_dir, backbone_weights, capsys
):
    from cnnlab.cli.main import main

    # A learning rate this large wrecks stage 2; the run must keep stage 1's best epoch.
    flags = "-b 8 --val-split 0.25 --test-split 0.25 --freeze-epochs 4 --lr 0.01 --epochs 2"
    flags += " --unfreeze all --stage2-learning-rate 50 -q"
    code = main(
        ["finetune", "--data", f"folder:{flowers}", "--weights", str(backbone_weights)]
        + ["--image-size", "32", "--runs-dir", str(runs_dir), *flags.split()]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert "stage 1 (features path, logistic head C=" in out and "stage 2: best" in out
    assert "classifier kept: frozen-feature logistic regression" in out
    import json

    run = Path(out.split("run folder: ")[1].strip())
    metrics = json.loads((run / "metrics.json").read_text())
    s1, s2 = metrics["stages"]["1"], metrics["stages"]["2"]
    assert s2["improved_on_stage1"] is False
    # Stage 2 reports its own epochs, not the best so far (which is stage 1's).
    rows = list(csv.DictReader(open(run / "history.csv", newline="")))
    own = {int(r["epoch"]) + 1: float(r["val_accuracy"]) for r in rows if r["stage"] == "2"}
    assert len(own) == 2 and s2["val_accuracy"] == pytest.approx(max(own.values()))
    assert own[s2["best_epoch"]] == max(own.values())
    assert s2["val_accuracy"] < s1["val_accuracy"]  # a rate of 50 wrecks it
    decisions = json.loads((run / "decisions.json").read_text())["decisions"]
    assert any(
        line.startswith("stage 2 not kept: no validation gain (val_accuracy ") for line in decisions
    ), decisions
    assert "head refitted on all 36 training + validation images" in " ".join(decisions)
    assert metrics["best_epoch"] <= 4 and metrics["best_value"] == s1["val_accuracy"]
    assert metrics["test"]["accuracy"] == pytest.approx(s1["test_accuracy"], abs=1e-6)


def test_fine_tune_config_defaults_and_errors():
    cfg, opts = resolve_finetune_config({"unfreeze": "all", "freeze-epochs": 3}, {"epochs": 4})
    assert (cfg.model, cfg.weights, cfg.epochs) == ("mobilenet", "imagenet", 4)
    assert (opts.unfreeze, opts.freeze_epochs) == ("all", 3)
    assert unfrozen_block_count("all", 14) == 14
    assert unfrozen_block_count("0.25", 14) == 4 and unfrozen_block_count("3", 14) == 3
    assert unfrozen_block_count("0", 14) == 0 and unfrozen_block_count("99", 14) == 14
    with pytest.raises(ConfigError, match="Unknown config key 'unfreez'.*Did you mean: unfreeze"):
        resolve_finetune_config(None, {"unfreez": "all"})
    with pytest.raises(ConfigError, match="Bad unfreeze: received 'most'"):
        resolve_finetune_config(None, {"unfreeze": "most"})
    with pytest.raises(ConfigError, match="Bad layer_decay"):
        resolve_finetune_config(None, {"layer_decay": 1.5})


def test_scratch_models_are_refused_and_weights_checked_before_data(tmp_path, monkeypatch):
    with pytest.raises(
        ModelError, match="fine_tune needs a pretrained backbone; received model=simple_cnn"
    ):
        fine_tune(model="simple_cnn", data="folder:/nowhere")
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "empty"))
    monkeypatch.setenv("CNNLAB_OFFLINE", "1")
    with pytest.raises(
        WeightsError, match="resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
    ) as raised:
        fine_tune(model="resnet50", data="folder:/nowhere", runs_dir=str(tmp_path / "runs"))
    assert str(tmp_path / "empty" / "models") in str(raised.value)  # where it looked, named
    assert not (tmp_path / "runs").exists()  # nothing was created


def test_layerwise_rates_scale_each_variable_and_survive_saving():
    inputs = keras.Input((4,))
    x = keras.layers.Dense(3, name="low")(inputs)
    outputs = keras.layers.Dense(2, activation="softmax", name="high")(x)
    model = keras.Model(inputs, outputs)
    low = model.get_layer("low").kernel
    cls = LAYERWISE[keras.optimizers.SGD]
    model.compile(cls(0.1, lr_multipliers={low.path: 0.0}), "categorical_crossentropy")
    before_low, before_high = low.numpy().copy(), model.get_layer("high").kernel.numpy().copy()
    rng = np.random.default_rng(0)
    model.train_on_batch(
        rng.normal(size=(8, 4)), keras.utils.to_categorical(rng.integers(0, 2, 8), 2)
    )
    assert np.array_equal(low.numpy(), before_low)  # multiplier 0: frozen in effect
    assert not np.array_equal(model.get_layer("high").kernel.numpy(), before_high)
    again = cls.from_config(model.optimizer.get_config())
    assert again.lr_multipliers == {low.path: 0.0} and type(again).__name__ == "LayerwiseSGD"


def test_lr_find_sweeps_the_head_and_suggests_a_rate(flowers, tmp_path, backbone_weights, caplog):
    import cnnlab

    caplog.set_level(logging.INFO, logger="cnnlab")
    result = cnnlab.lr_find(
        data=f"folder:{flowers}",
        weights=str(backbone_weights),
        image_size=32,
        batch_size=8,
        num_steps=40,
        start_learning_rate=1e-5,
        end_learning_rate=10.0,
        output_dir=tmp_path / "lr",
        verbose=1,
    )
    assert result.stage == "head" and len(result.learning_rates) >= 11
    assert 1e-5 <= result.learning_rates[0] < result.learning_rates[-1] <= 10.0
    # The suggestion is a tenth of the rate where the smoothed loss was lowest.
    finite = [i for i, v in enumerate(result.smoothed) if np.isfinite(v)]
    lowest = min(finite, key=lambda i: result.smoothed[i])
    assert result.min_loss_lr == pytest.approx(result.learning_rates[lowest])
    assert result.suggestion == pytest.approx(result.min_loss_lr / 10)
    for name in ("lr_find.png", "lr_find.csv", "lr_find.json"):
        assert (tmp_path / "lr" / name).is_file()
    assert "Suggested learning rate" in caplog.text


def test_finetune_config_accepts_train_aliases_and_refuses_typos(tmp_path):
    path = tmp_path / "ft.yaml"
    path.write_text("lr: 0.01\nstage2-learning-rate: 0.001\n")
    cfg, opts = resolve_finetune_config(path)
    assert cfg.learning_rate == 0.01 and opts.stage2_learning_rate == 0.001
    path.write_text("unfreez: 2\n")
    with pytest.raises(ConfigError, match="Unknown config key 'unfreez'.*Did you mean: unfreeze"):
        resolve_finetune_config(path)
    with pytest.raises(ConfigError, match="see `cnnlab finetune --help`"):
        resolve_finetune_config(path)


def test_fine_tune_scores_the_test_folder_beside_train(make_folder, tiny_fine_tune):
    classes = ("red", "green", "blue")
    train_dir = make_folder("petals/train", classes=classes, per_class=8, size=32)
    test_dir = make_folder("petals/test", classes=classes[:2], per_class=3, size=32, seed=2)
    result = tiny_fine_tune(data=f"folder:{train_dir}")
    assert result.config.test_data == f"folder:{test_dir}" and result.config.test_split == 0.0
    test = result.metrics["test"]
    assert test["num_examples"] == 6 and test["data"] == f"folder:{test_dir}"
    with open(result.run_dir / "split.csv", newline="") as f:
        assert not any(r["split"] == "test" for r in csv.DictReader(f))


# ---------------------------------------------------------------- train and fine_tune agree
def _run_both(folder, runs_dir, tiny_fine_tune, **split):
    import cnnlab

    common = dict(data=f"folder:{folder}", image_size=32, batch_size=8, epochs=1, verbose=1)
    trained = cnnlab.train(
        model="simple_cnn",
        model_kwargs={"filters": [8], "dense": [8]},
        runs_dir=str(runs_dir / "train"),
        **common,
        **split,
    )
    tuned = tiny_fine_tune(**common, **split)
    return trained, tuned


def test_fine_tune_result_report_is_the_written_report(flowers, tiny_fine_tune):
    result = tiny_fine_tune(data=f"folder:{flowers}", test_split=0.25)
    assert result.report == result.run_dir / "report.html"
    html = result.report.read_text()
    assert result.report.is_file() and "test split" in html
    assert "classifier kept" in html and "frozen-feature logistic regression (C=" in html
    assert "stage 2 skipped: 36 images: too few" in html
    assert (result.run_dir / "report.json").is_file()


def test_without_a_test_split_train_and_fine_tune_both_report_the_validation_split(
    flowers, runs_dir, tiny_fine_tune
):
    trained, tuned = _run_both(flowers, runs_dir, tiny_fine_tune, test_split=0, val_split=0.25)
    expected = f"folder:{flowers} (validation split: the run has no test set)"
    for result in (trained, tuned):
        run = result.run_dir
        assert "test" not in result.metrics and result.test_accuracy is None
        assert result.metrics["val"]["data"] == expected
        assert result.metrics["val"]["num_examples"] == 12  # a quarter of 48 images
        assert (run / "evaluation-val" / "metrics.json").is_file()
        assert result.report == run / "report.html" and "val split" in result.report.read_text()
    assert set(trained.metrics["val"]) == set(tuned.metrics["val"])


def test_without_held_out_data_train_and_fine_tune_both_log_how_to_get_a_report(
    flowers, runs_dir, tiny_fine_tune, caplog
):
    caplog.set_level(logging.INFO, logger="cnnlab")
    trained, tuned = _run_both(flowers, runs_dir, tiny_fine_tune, test_split=0, val_split=0)
    for result in (trained, tuned):
        assert result.report is None and result.evaluation is None
        assert not (result.run_dir / "report.html").exists()
        assert {"test", "val"}.isdisjoint(result.metrics)
        assert (
            "No test or validation split, so no report yet: "
            f"`cnnlab evaluate {result.run_dir} --data folder:TEST`"
        ) in caplog.text
    assert "could not be written" not in caplog.text


# ---------------------------------------------------------------- cnnlab lr-find
def test_lr_find_cli_writes_the_sweep_and_prints_the_suggestion(image_folder, runs_dir, capsys):
    import json

    from cnnlab.cli.main import main

    flags = "--model simple_cnn -b 8 --steps 12 --start-learning-rate 1e-4"
    flags += " --end-learning-rate 0.01 -q"
    code = main(
        ["lr-find", "--data", f"folder:{image_folder}", "--runs-dir", str(runs_dir)]
        + ["--model-kwargs", "filters=[8] dense=[8]", *flags.split()]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    (folder,) = runs_dir.iterdir()
    assert folder.name.endswith("-lr-find-simple_cnn-16")
    assert f"plot: {folder / 'lr_find.png'}" in out
    sweep = json.loads((folder / "lr_find.json").read_text())
    assert sweep["stage"] == "full" and sweep["model"] == "simple_cnn"
    assert (sweep["start_learning_rate"], sweep["end_learning_rate"]) == (1e-4, 0.01)
    assert sweep["steps_run"] == 12 and sweep["batch_size"] == 8
    with open(folder / "lr_find.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 12 and float(rows[0]["learning_rate"]) == pytest.approx(1e-4)
    assert float(rows[-1]["learning_rate"]) == pytest.approx(0.01)
    if sweep["suggestion"] is None:
        assert "no suggestion: the sweep was too short" in out
    else:
        assert f"suggested learning rate: {sweep['suggestion']:.3g}" in out


def test_lr_find_refuses_a_bad_range_before_loading_anything(tmp_path):
    import cnnlab

    with pytest.raises(
        ConfigError,
        match=r"Bad learning-rate range: received 1.0 to 0.1.*"
        r"0 < start_learning_rate < end_learning_rate",
    ):
        cnnlab.lr_find(
            data="folder:/nowhere",
            model="simple_cnn",
            start_learning_rate=1.0,
            end_learning_rate=0.1,
        )


# ---------------------------------------------------------------- the logistic-regression head
def _linear_classifier(dim: int, classes: int):
    inputs = keras.Input((4, 4, dim))
    x = keras.layers.GlobalAveragePooling2D(name="pooler")(inputs)
    x = keras.layers.Dropout(0.2, name="head_dropout")(x)
    outputs = keras.layers.Dense(classes, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs)


@pytest.mark.parametrize("classes", [2, 4])
def test_logistic_head_separates_separable_features_and_the_keras_head_agrees(classes):
    from cnnlab.training.linear_head import fit_logistic_head, has_linear_head, write_head

    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(classes), 15)
    centres = rng.normal(0, 3, (classes, 16))
    feats = (centres[y] + rng.normal(0, 0.5, (len(y), 16))).astype("float32")
    labels = np.eye(classes)[y]
    fit = fit_logistic_head(feats, labels, seed=0)
    assert fit.accuracy(feats, labels) == 1.0 and fit.n == len(y)
    assert fit.folds == 5 and set(fit.cv_accuracy) >= {0.01, 1.0, 10.0}
    assert fit.cv_log_loss[fit.c] == min(fit.cv_log_loss.values())
    assert set(fit.cv_accuracy) == set(fit.cv_log_loss)
    model = _linear_classifier(16, classes)
    assert has_linear_head(model)
    write_head(model, fit)
    images = np.repeat(np.repeat(feats[:, None, None, :], 4, 1), 4, 2)  # pools back to feats
    np.testing.assert_allclose(
        model.predict(images, verbose=0), fit.predict_proba(feats), atol=1e-5
    )


def test_logistic_head_never_predicts_a_class_without_training_images():
    from cnnlab.training.linear_head import fit_logistic_head

    rng = np.random.default_rng(1)
    y = np.repeat([0, 2], 6)  # class 1 of 3 is missing; 6 per class: 5 folds
    feats = np.eye(3)[y] * 4 + rng.normal(0, 0.1, (12, 3))
    fit = fit_logistic_head(feats, np.eye(3)[y], seed=0)
    probs = fit.predict_proba(np.vstack([feats, [[0, 4, 0]]]))
    assert probs.shape == (13, 3) and probs[:, 1].max() < 1e-6
    assert (probs[:12].argmax(1) == y).all()
    few = fit_logistic_head(feats[:7], np.eye(3)[y[:7]], seed=0)  # one image of class 2
    assert few.folds == 0 and few.c == 1.0  # no cross-validation: scikit-learn's default C


def test_c_path_stops_once_held_out_log_loss_rises_and_large_sets_take_3_folds():
    from cnnlab.training.linear_head import C_GRID, choose_c, fold_count

    rng = np.random.default_rng(3)
    y = np.repeat([0, 1], 20)
    x = rng.normal(0, 1, (40, 50)) + 0.3 * y[:, None]  # weak signal, many features
    c, folds, accuracy, log_loss = choose_c(x, y, None, seed=0)
    tried = list(log_loss)
    assert tried == sorted(tried) and tried[0] == min(C_GRID) and folds == 5
    assert c < 1 and 10.0 not in log_loss  # the large Cs past the minimum are not fitted
    after = [v for k, v in log_loss.items() if k > c]
    assert len(after) == 2 and all(v > log_loss[c] for v in after)  # stopped 2 rises later
    assert fold_count(np.repeat(np.arange(5), 200)) == 5  # 1,000 images: 5 folds
    assert fold_count(np.repeat(np.arange(5), 201)) == 3  # above 1,000: 3
    assert fold_count(np.repeat(np.arange(5), [2, 300, 300, 300, 300])) == 2


def test_stage2_must_win_a_paired_test_not_a_few_images():
    from cnnlab.training.finetune import paired_gain

    stage1 = np.array([1] * 400 + [0] * 32, bool)  # 432 validation images
    few = stage1.copy()
    few[[400, 401, 402, 403, 404, 405]] = True  # fixes 6 ...
    few[[0, 1, 2]] = False  # ... breaks 3: +3 net, the flowers5 MobileNet case
    assert paired_gain(stage1, few) == (6, 3, False)
    many = stage1.copy()
    many[400:420] = True  # fixes 20, breaks 3: 17 >= 1.645 * sqrt(23)
    many[[0, 1, 2]] = False
    assert paired_gain(stage1, many) == (20, 3, True)
    assert paired_gain(many, stage1) == (3, 20, False)  # a loss is never kept


def test_validation_is_carved_only_to_judge_stage_2():
    from cnnlab.training.finetune import plan_validation

    assert plan_validation(245, 0.1, False, True) == (
        0.0,
        "245 images: too few to judge stage 2 on a validation split (needs 1,000)",
    )
    assert plan_validation(3000, 0.1, False, True) == (0.1, None)
    assert plan_validation(3000, 0.1, False, False) == (0.0, "head only")
    assert plan_validation(245, 0.25, True, True) == (0.25, None)  # asked for: kept
    assert plan_validation(3000, 0.0, True, True) == (0.0, "no validation split to judge it on")
    with pytest.raises(ConfigError, match="Bad head_fit: received 'lbfgs'"):
        resolve_finetune_config(None, {"head_fit": "lbfgs"})


def test_small_set_with_a_test_folder_spends_every_image_on_the_head_and_says_so(
    make_folder, tiny_fine_tune, caplog
):
    import json

    caplog.set_level(logging.INFO, logger="cnnlab")
    classes = ("red", "green", "blue")
    train_dir = make_folder("petals/train", classes=classes, per_class=8, size=32)
    make_folder("petals/test", classes=classes, per_class=3, size=32, seed=2)
    result = tiny_fine_tune(data=f"folder:{train_dir}", verbose=1)
    with open(result.run_dir / "split.csv", newline="") as f:
        assert {r["split"] for r in csv.DictReader(f)} == {"train"}  # no val, no test carved
    decisions = json.loads((result.run_dir / "decisions.json").read_text())
    lines = decisions["decisions"]
    assert lines[1] == (
        "24 training images: no validation split (the head's C is cross-validated on them)"
    )
    assert lines[2].startswith("24 images: 5-fold model selection of C over [0.0001, 0.0003,")
    assert lines[2].endswith("; head refitted on all 24")
    assert lines[3] == (
        "stage 2 skipped: 24 images: too few to judge stage 2 on a validation split (needs 1,000)"
    )
    assert lines[4].startswith("kept: stage 1, the frozen-feature logistic-regression")
    assert decisions["validation_images"] == 0 and decisions["stage2"] == "skipped"
    assert result.metrics["decisions"] == lines
    assert result.metrics["classifier"] == decisions["classifier"]
    assert result.metrics["classifier"].startswith("frozen-feature logistic regression (C=")
    assert "2" not in result.metrics["stages"] and result.metrics["test"]["num_examples"] == 9
    assert "Decision: stage 2 skipped: 24 images" in caplog.text


def test_head_only_cli_gives_the_frozen_feature_classifier(
    flowers, runs_dir, backbone_weights, capsys
):
    import json

    from cnnlab.cli.main import main

    code = main(
        ["finetune", "--data", f"folder:{flowers}", "--weights", str(backbone_weights)]
        + ["--image-size", "32", "--runs-dir", str(runs_dir), "-b", "8", "--head-only", "-q"]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert "classifier kept: frozen-feature logistic regression (C=" in out
    assert "stage 2" not in out
    run = Path(out.split("run folder: ")[1].strip())
    decisions = json.loads((run / "decisions.json").read_text())
    assert "stage 2 skipped: --head-only" in decisions["decisions"]
    assert decisions["validation_images"] == 0  # nothing to judge: no validation carved
    assert not list((run / "checkpoints").glob("*.keras")) and not (run / "history.csv").exists()


def test_stage2_micro_batches_train_as_the_whole_batch(flowers, tiny_fine_tune, caplog):
    # BatchNorm is frozen, the head has no dropout and nothing is augmented: a batch of 8
    # computed as 2 micro-batches of 4 must train exactly as the whole batch.
    common = dict(
        data=f"folder:{flowers}",
        val_split=0.25,
        test_split=0.25,
        augment="none",
        model_kwargs={"dropout": 0.0},
        epochs=2,
        seed=5,
    )
    whole = tiny_fine_tune(**common, name="whole")
    caplog.set_level(logging.INFO, logger="cnnlab")
    split = tiny_fine_tune(**common, micro_batch_size=4, name="split", verbose=1)
    assert "Memory: ~" in caplog.text and "(batch 8 as 2 micro-batches of 4;" in caplog.text
    assert split.metrics["memory"]["micro_batch_size"] == 4
    assert whole.metrics["memory"]["micro_batch_size"] == 8
    rows = [
        [r for r in result.history["val_loss"]][-2:] for result in (whole, split)
    ]  # stage 2's two epochs
    np.testing.assert_allclose(rows[0], rows[1], rtol=1e-4)


def test_a_planned_validation_split_is_redrawn_without_scanning_again(make_folder, monkeypatch):
    import cnnlab.data as data
    from cnnlab.config import TrainConfig
    from cnnlab.workflows.skeleton import data_from_config

    folder = make_folder("many", classes=("a", "b"), per_class=20, size=8)
    cfg = TrainConfig(data=f"folder:{folder}", image_size=(8, 8), val_split=0.0, test_split=0.2)
    bundle = data_from_config(cfg)
    scans = []
    monkeypatch.setattr(data, "scan_images", lambda *a, **k: scans.append(a) or [])
    bundle.redraw_split(0.25, cfg.test_split)
    assert scans == []
    monkeypatch.undo()
    fresh = data_from_config(cfg.replace(val_split=0.25))
    for split in ("train", "val", "test"):
        assert list(bundle.examples(split)["paths"]) == list(fresh.examples(split)["paths"])
    assert len(bundle.examples("val")["labels"]) == 10  # a quarter of all 40
