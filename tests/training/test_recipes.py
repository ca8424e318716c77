"""The fast recipe's parts: which keys it fills, its schedule, alternating flip, translations, lookahead."""

from __future__ import annotations

import csv

import keras
import numpy as np
import pytest
import tensorflow as tf

from cnnlab.config import TrainConfig
from cnnlab.data.augment import Augmenter, AugmentOptions, random_crops
from cnnlab.data.pipeline import make_dataset
from cnnlab.errors import ConfigError
from cnnlab.nn.optimizers import make_optimizer
from cnnlab.nn.schedules import LinearWarmupDecay
from cnnlab.training import recipes


def test_schedule_warms_up_then_decays_linearly():
    s = LinearWarmupDecay(2.0, total_steps=100, warmup_steps=23)
    lr = np.array([float(s(t)) for t in range(101)])
    assert lr[0] == pytest.approx(0.4)  # starts at 0.2 x peak
    assert lr[23] == pytest.approx(2.0)  # peak at the end of warm-up
    assert lr[100] == pytest.approx(0.14)  # ends at 0.07 x peak
    assert np.all(np.diff(lr[:24]) > 0) and np.all(np.diff(lr[23:]) < 0)
    np.testing.assert_allclose(np.diff(lr[:23]), np.diff(lr[:23])[0], rtol=1e-4)  # linear up
    np.testing.assert_allclose(np.diff(lr[23:]), np.diff(lr[23:])[0], rtol=1e-4)  # linear down
    again = LinearWarmupDecay.from_config(s.get_config())
    assert float(again(50)) == pytest.approx(float(s(50)))


def test_fast_weight_decay_shrinks_weights_as_fast_as_airbench94():
    """airbench94 gives PyTorch SGD ``weight_decay = wd / lr`` (L2 through Nesterov momentum);
    the recipe's decoupled Keras decay must shrink weights at the same rate per step."""
    momentum, batch = 0.85, 1024
    kilostep = 1024 * (1 + 1 / (1 - momentum))
    lr_pt, wd = 11.5 / kilostep, 0.0153 * batch / kilostep
    w_pt, buf = 1.0, 0.0
    for _ in range(200):  # PyTorch SGD, zero loss gradient: only the L2 term
        g = (wd / lr_pt) * w_pt
        buf = momentum * buf + g
        w_pt -= lr_pt * (g + momentum * buf)
    cfg, _ = recipes.apply_recipe(TrainConfig(recipe="fast"), set(), (32, 32), 50_000)
    assert cfg.batch_size == batch
    # cnnlab's optimizer for the recipe's config, at its peak rate (the schedule's 1x).
    opt = make_optimizer(cfg, learning_rate=cfg.learning_rate)
    # ConvMuon: SGD for everything but convolution kernels (a 1-D variable here).
    assert type(opt).__name__ == "ConvMuon" and opt.nesterov and opt.momentum == 0.85
    v = keras.Variable(np.ones(4, np.float32))
    for _ in range(200):
        opt.apply_gradients([(keras.ops.zeros(4), v)])
    w_keras = float(v.numpy()[0])
    assert 0.01 < w_pt < 0.2  # airbench's decay is strong: ~1.3 % per step at peak
    assert np.log(w_keras) == pytest.approx(np.log(w_pt), rel=0.05)


def test_fast_batch_size_is_1024_for_cifar_sized_sets_with_or_without_held_out_splits():
    # 50,000 = all of CIFAR-10's training folder; 40,000 = what the default 10 %/10 % splits leave.
    sizes = [recipes.fast_batch_size(n) for n in (50_000, 40_000, 20_000, 1_000, 10)]
    assert sizes == [1024, 1024, 512, 64, 64]


def test_fast_fills_only_keys_not_given():
    cfg = TrainConfig(recipe="fast", epochs=4, data="folder:x")
    cfg2, applied = recipes.apply_recipe(cfg, {"epochs", "data", "recipe"}, (32, 32), 50_000)
    assert cfg2.recipe == "fast" and cfg2.epochs == 4 and "epochs" not in applied
    assert (cfg2.model, cfg2.optimizer, cfg2.schedule, cfg2.batch_size) == (
        "airbench",
        "muon",
        "linear",
        1024,
    )
    assert cfg2.label_smoothing == 0.2 and cfg2.flip == "alternating" and cfg2.random_crop == 2
    assert cfg2.warmup_epochs == pytest.approx(0.92)
    assert cfg2.model_kwargs == {"width": recipes.FAST["width"]}
    # Given keys win, model_kwargs merge over the recipe's.
    cfg = TrainConfig(
        recipe="fast", batch_size=128, learning_rate=0.3, model_kwargs={"tta": 1}, data="folder:x"
    )
    cfg3, _ = recipes.apply_recipe(
        cfg, {"batch_size", "learning_rate", "model_kwargs"}, (32, 32), 50_000
    )
    assert cfg3.batch_size == 128 and cfg3.learning_rate == 0.3
    assert cfg3.model_kwargs == {"width": recipes.FAST["width"], "tta": 1}


def test_fast_with_optimizer_sgd_is_the_previous_recipe_and_adam_keeps_its_own_rate():
    cfg = TrainConfig(recipe="fast", optimizer="sgd", epochs=13, data="folder:x")
    old, _ = recipes.apply_recipe(cfg, {"optimizer", "epochs", "data", "recipe"}, (32, 32), 50_000)
    assert (old.optimizer, old.epochs, old.learning_rate, old.momentum) == ("sgd", 13, 1.5, 0.85)
    assert type(make_optimizer(old, learning_rate=1.5)).__name__ == "SGD"
    cfg = TrainConfig(recipe="fast", optimizer="adam", data="folder:x")
    adam, _ = recipes.apply_recipe(cfg, {"optimizer", "data", "recipe"}, (32, 32), 50_000)
    assert adam.optimizer == "adam" and adam.learning_rate is None  # Adam's default 1e-3


def test_auto_is_fast_for_small_images_only_and_leaves_digits_alone():
    cfg = TrainConfig()  # recipe auto, digits
    same, applied = recipes.apply_recipe(cfg, set(), (8, 8), 1400)
    assert applied == {} and same.recipe == "plain" and same.model == "simple_cnn"
    fast, _ = recipes.apply_recipe(TrainConfig(data="builtin:mnist"), {"data"}, (28, 28), 54_000, 1)
    assert fast.recipe == "fast" and fast.flip == "none"  # no mirrored digits
    # Grayscale gets the lighter default, colour the wider and longer one.
    assert (fast.model_kwargs["width"], fast.epochs) == (
        recipes.FAST_GRAY["width"],
        recipes.FAST_GRAY["epochs"],
    )
    colour, _ = recipes.apply_recipe(TrainConfig(data="folder:x"), {"data"}, (32, 32), 50_000, 3)
    assert (colour.model_kwargs["width"], colour.epochs) == (
        recipes.FAST["width"],
        recipes.FAST["epochs"],
    )
    assert recipes.FAST_GRAY["width"] < recipes.FAST["width"]
    # Muon's kernel steps for colour; grayscale keeps SGD, which scored higher there.
    assert (fast.optimizer, colour.optimizer) == ("sgd", "muon")
    # Progressive resizing for colour; grayscale keeps every epoch at full size.
    assert (fast.progressive_resize, colour.progressive_resize) == (0.0, 0.65)
    assert fast.model_kwargs["tta_flip"] is False
    chosen, _ = recipes.apply_recipe(TrainConfig(model="resnet20"), {"model"}, (32, 32), 50_000)
    assert chosen.recipe == "plain"  # a model given by name keeps its usual training


def test_explicit_keys_reads_overrides_dicts_and_aliases():
    assert recipes.explicit_keys({"epochs": 3, "lr": 0.1}, {"batch_size": 8, "seed": None}) == {
        "epochs",
        "learning_rate",
        "batch_size",
    }
    assert recipes.explicit_keys(TrainConfig(epochs=3), None) == {"epochs"}


def test_unknown_recipe_is_a_config_error():
    with pytest.raises(ConfigError, match="recipe"):
        TrainConfig().replace(recipe="fastest")


def test_alternating_flip_flips_each_image_every_other_epoch():
    n = 18  # batches of 10 and 8: a short last batch that training keeps
    images = np.zeros((n, 4, 4, 1), np.uint8)
    images[:, :, 0] = 200  # bright left column: mirrored images have it on the right
    images[:, 0, 1, 0] = np.arange(n)  # tag each image with its index
    aug = Augmenter(AugmentOptions(flip="alternating"), (4, 4), 1, seed=3)
    ds = make_dataset(
        np.zeros(n),
        num_classes=2,
        image_size=(4, 4),
        channels=1,
        images=images,
        batch_size=10,
        training=True,
        augmenter=aug,
    )
    seen = []
    for _ in range(4):
        flipped = {}
        for x, _y in ds:
            for im in x.numpy():
                f = im[0, 3, 0] == 200
                flipped[int(im[0, 2 if f else 1, 0])] = bool(f)
        seen.append([flipped[i] for i in range(n)])
    seen = np.array(seen)
    assert 0 < seen[0].sum() < n  # a random part is flipped in the first epoch
    assert np.all(seen[1] != seen[0]) and np.all(seen[2] == seen[0]) and np.all(seen[3] == seen[1])


def test_random_crops_translate_each_image_by_at_most_pad():
    tf.random.set_seed(0)
    x = np.zeros((64, 9, 9, 1), np.float32)
    x[:, 4, 4] = 1.0
    out = random_crops(tf.constant(x), 2).numpy()
    pos = np.array([np.unravel_index(np.argmax(o[..., 0]), (9, 9)) for o in out])
    assert np.all(np.abs(pos - 4) <= 2)
    assert len({tuple(p) for p in pos}) > 5  # offsets differ per image, not per batch


def test_random_crops_flip_mirrors_a_random_half_and_leaves_the_rest():
    tf.random.set_seed(1)
    x = np.tile(np.arange(5, dtype=np.float32)[None, None, :, None], (200, 3, 1, 1))
    out = random_crops(tf.constant(x), 0, flip="horizontal").numpy()
    mirrored = np.all(out == x[:, :, ::-1], axis=(1, 2, 3))
    assert np.all(mirrored | np.all(out == x, axis=(1, 2, 3)))
    assert 60 < mirrored.sum() < 140


def test_translation_shifts_whole_pixels_up_to_its_fraction_of_the_size():
    tf.random.set_seed(2)
    aug = Augmenter(AugmentOptions(translation=0.1), (20, 20), 1, seed=0)
    assert aug.shift_pad == (2, 2) and aug.describe() == "translation"
    x = np.zeros((64, 20, 20, 1), np.float32)
    x[:, 10, 10] = 255.0
    out = aug(tf.constant(x)).numpy()
    assert set(np.unique(out)) == {0.0, 255.0}  # moved, not resampled
    pos = np.array([np.unravel_index(np.argmax(o[..., 0]), (20, 20)) for o in out])
    assert np.all(np.abs(pos - 10) <= 2) and len({tuple(p) for p in pos}) > 10


def test_lookahead_averages_towards_a_slow_copy():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, use_bias=False)])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    cb = recipes.Lookahead(total_steps=10, every=5)
    cb.set_model(model)
    cb.on_train_begin()
    w0 = model.get_weights()[0].copy()
    model.optimizer.iterations.assign(5)
    model.set_weights([w0 + 1.0])
    cb.on_train_batch_end(4)
    decay = 0.95**5 * 0.5**3
    np.testing.assert_allclose(
        model.get_weights()[0], decay * w0 + (1 - decay) * (w0 + 1), rtol=1e-5
    )
    model.optimizer.iterations.assign(10)
    slow = model.get_weights()[0].copy()
    model.set_weights([w0 + 5.0])
    cb.on_train_batch_end(9)  # last step: the slow copy becomes the model
    np.testing.assert_allclose(model.get_weights()[0], slow, rtol=1e-5)


def test_fast_recipe_trains_end_to_end_and_records_itself(make_folder, runs_dir):
    import cnnlab
    from cnnlab.models.saving import load_model

    folder = make_folder("small", classes=("a", "b", "c"), per_class=16, size=20)
    result = cnnlab.train(
        data=f"folder:{folder}",
        recipe="fast",
        epochs=2,
        val_split=0.0,
        test_split=0.25,
        model_kwargs={"width": 0.125},
        runs_dir=str(runs_dir),
        verbose=0,
    )
    cfg = result.config
    assert (cfg.recipe, cfg.model, cfg.schedule, cfg.flip, cfg.batch_size) == (
        "fast",
        "airbench",
        "linear",
        "alternating",
        64,
    )
    # The reported accuracy is the saved model's on the 12 held-out images, row by row.
    with open(result.run_dir / "evaluation-test" / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == result.metrics["test"]["num_examples"] == 12
    right = sum(r["true"] == r["predicted"] for r in rows)
    assert result.test_accuracy == pytest.approx(right / 12)
    kernel = result.model.get_layer("whiten").kernel.numpy()
    assert not np.allclose(np.abs(kernel).sum(axis=(0, 1, 2)), 1.0)  # fitted, not the identity
    reloaded = load_model(result.run_dir / "model.keras")
    assert reloaded.get_layer("pooler").level == 2
    schedule = reloaded.optimizer.get_config()["learning_rate"]  # the optimizer came back too
    assert schedule["registered_name"] == "cnnlab>LinearWarmupDecay"
    assert "recipe: fast" in (result.run_dir / "config.yaml").read_text()
    # Progressive resizing: the first of the 2 epochs at 16 px (3/4 of 20 is under the
    # floor of 16), the second at full size; the saved model trains at full size.
    assert cfg.progressive_resize == 0.65
    with open(result.run_dir / "history.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [float(r["train_scale"]) for r in rows] == [0.8, 1.0]
    # No validation split, so no columns of "NA" for validation metrics.
    assert not [key for key in rows[0] if key.startswith("val_")]
    assert reloaded.get_layer("train_resize").size.numpy().tolist() == [0, 0]


def test_progressive_resizing_grows_the_side_from_a_half_to_three_quarters():
    from cnnlab.training.callbacks import (
        low_resolution,
        low_resolution_epochs,
        low_resolution_sizes,
    )

    assert low_resolution((32, 32), 0.75) == (24, 24)
    assert low_resolution((28, 40), 0.75) == (21, 30)
    assert low_resolution((20, 20), 0.5) == (16, 16)  # never under 16 pixels
    assert low_resolution((16, 16), 0.5) == (16, 16)  # nothing to gain: no resizing
    # Half of the low-resolution epochs at 1/2 of the side, a fifth at 5/8, the rest at 3/4.
    assert [h for h, _ in low_resolution_sizes((32, 32), 10)] == [16] * 5 + [20] * 2 + [24] * 3
    assert [h for h, _ in low_resolution_sizes((32, 32), 4)] == [16, 16, 20, 24]
    assert low_resolution_sizes((64, 48), 1) == [(32, 24)]
    assert low_resolution_sizes((32, 32), 0) == []
    # The last epoch always trains at full size.
    assert [low_resolution_epochs(0.5, n) for n in (1, 2, 3, 10, 12)] == [0, 1, 1, 5, 6]
    assert low_resolution_epochs(0.9, 2) == 1 and low_resolution_epochs(0.0, 10) == 0
    assert low_resolution_epochs(0.29, 100) == 29  # 0.29 * 100 is 28.999... in floating point


def test_progressive_resize_on_a_model_that_cannot_train_smaller_names_the_fix(
    make_folder, runs_dir
):
    import cnnlab

    folder = make_folder("small", classes=("a", "b"), per_class=8, size=20)
    with pytest.raises(ConfigError) as err:
        cnnlab.train(
            data=f"folder:{folder}",
            model="simple_cnn",
            progressive_resize=0.5,
            epochs=1,
            runs_dir=str(runs_dir),
            verbose=0,
        )
    message = str(err.value)
    assert "progressive_resize 0.5 needs a model that can train at a lower resolution" in message
    assert "'simple_cnn' has no TrainingResize layer" in message
    assert "--progressive-resize 0" in message
    with pytest.raises(ConfigError, match="Bad progressive_resize: received 1.5"):
        TrainConfig(progressive_resize=1.5).replace()


def test_training_pipeline_mixes_classes_of_sorted_data_larger_than_the_shuffle_buffer():
    n = 25_000  # above the 20,000-image shuffle buffer, sorted by class like a folder
    labels = np.repeat(np.arange(10), n // 10)
    images = np.zeros((n, 2, 2, 1), np.uint8)
    ds = make_dataset(
        labels,
        num_classes=10,
        image_size=(2, 2),
        channels=1,
        images=images,
        batch_size=256,
        training=True,
    )
    _, y = next(iter(ds))
    assert len(set(np.argmax(y.numpy(), 1))) == 10


def test_fast_recipe_drops_the_validation_split_unless_asked_and_keeps_the_test_split(
    make_folder, runs_dir
):
    import cnnlab
    from cnnlab.data.sources import open_source
    from cnnlab.data.splits import make_split

    folder = make_folder("small", classes=("a", "b"), per_class=20, size=20)
    common = dict(
        data=f"folder:{folder}",
        recipe="fast",
        epochs=1,
        test_split=0.25,
        model_kwargs={"width": 0.125},
        runs_dir=str(runs_dir),
        verbose=0,
    )
    result = cnnlab.train(**common)
    assert result.config.val_split == 0.0
    counts = {"train": 0, "val": 0, "test": 0}
    with open(result.run_dir / "split.csv") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        counts[r["split"]] += 1
    assert counts == {"train": 30, "val": 0, "test": 10}
    # the same test images as a split drawn with the default validation share
    drawn = make_split(open_source(f"folder:{folder}"), 0.1, 0.25, 42)
    expected = sorted(str(p) for p in open_source(f"folder:{folder}").paths[drawn.indices("test")])
    assert sorted(r["path"] for r in rows if r["split"] == "test") == expected
    watched = cnnlab.train(**common, val_split=0.1)
    assert watched.config.val_split == 0.1 and "val_accuracy" in watched.history


def test_fast_recipe_pipeline_builds_without_the_outer_graph_seed_warning():
    import warnings

    import keras

    keras.utils.set_random_seed(5)  # as every cnnlab run does
    aug = Augmenter(AugmentOptions(flip="alternating", random_crop=1), (4, 4), 1, seed=5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = make_dataset(
            np.zeros(6),
            num_classes=2,
            image_size=(4, 4),
            channels=1,
            images=np.zeros((6, 4, 4, 1), np.uint8),
            batch_size=3,
            training=True,
            augmenter=aug,
        )
    assert not [w for w in caught if "outer graph" in str(w.message)]
    assert sum(1 for _ in ds) == 2


def test_whitening_bias_trains_for_the_first_epochs_then_freezes_without_a_retrace_per_epoch():
    from cnnlab.models import create_model

    model = create_model("airbench", 3, 16, 3, width=0.125, tta=0)
    model.compile(optimizer=keras.optimizers.SGD(0.5), loss="categorical_crossentropy")
    x = np.random.default_rng(0).uniform(0, 255, (32, 16, 16, 3)).astype("float32")
    y = keras.utils.to_categorical(np.arange(32) % 3, 3)
    whiten = model.get_layer("whiten")
    biases, traced, trainable_at_end = [whiten.bias.numpy().copy()], [], []
    freeze = recipes.FreezeWhiteningBias(from_epoch=2)
    record = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: (
            biases.append(whiten.bias.numpy().copy()),
            traced.append(model.train_function),
            trainable_at_end.append(whiten.trainable),
        )
    )
    model.fit(x, y, batch_size=16, epochs=4, callbacks=[freeze, record], verbose=0)
    moved = [not np.allclose(a, b) for a, b in zip(biases, biases[1:])]
    assert moved == [True, True, False, False]
    # A checkpoint written at an epoch's end sees a trainable layer (its optimizer
    # keeps the bias's slots for a resumed run); the frozen function is traced once.
    assert trainable_at_end == [True] * 4 and whiten.trainable
    assert traced[2] is traced[3] and traced[1] is not traced[2]


def test_fast_recipe_freezes_the_whitening_bias_after_30_percent_of_the_epochs():
    cfg = TrainConfig(recipe="fast", model="airbench", epochs=10)
    freeze = [
        cb for cb in recipes.callbacks(cfg, 49) if isinstance(cb, recipes.FreezeWhiteningBias)
    ]
    assert [cb.from_epoch for cb in freeze] == [3]
    assert recipes.callbacks(cfg.replace(epochs=1), 49)[1].from_epoch == 1


def test_a_fast_run_resumed_past_the_freeze_keeps_its_optimizer_and_a_still_bias(
    make_folder, runs_dir, recwarn
):
    import cnnlab
    from cnnlab.models.saving import load_model

    folder = make_folder("small", classes=("a", "b"), per_class=12, size=20)
    # Batches of 6: three whole steps an epoch (18 training images), so the lookahead
    # average follows them and no short last batch is dropped.
    common = dict(recipe="fast", model_kwargs={"width": 0.125}, batch_size=6, verbose=0)
    common["test_split"] = 0.25
    first = cnnlab.train(data=f"folder:{folder}", epochs=1, runs_dir=str(runs_dir), **common)
    last = load_model(first.run_dir / "checkpoints" / "last.keras")
    assert last.get_layer("whiten").trainable  # saved trainable: the optimizer keeps its slots
    bias = last.get_layer("whiten").bias.numpy()
    # Resumed to 4 epochs, the bias freezes from epoch round(0.3 * 4) = 1: all the new ones.
    again = cnnlab.train(resume=first.run_dir, epochs=4)
    assert len(again.history["loss"]) == 4
    np.testing.assert_allclose(again.model.get_layer("whiten").bias.numpy(), bias, rtol=1e-6)
    assert not [w for w in recwarn if "Skipping variable loading" in str(w.message)]
