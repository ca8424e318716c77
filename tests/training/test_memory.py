"""Memory: micro-batches with gradient accumulation, the start-up estimate, the budget."""

from __future__ import annotations

import logging
import re

import keras
import numpy as np
import pytest
import tensorflow as tf
import yaml

import cnnlab
from cnnlab.config import TrainConfig, parse_memory_size
from cnnlab.data.pipeline import split_batches
from cnnlab.errors import ConfigError
from cnnlab.models import create_model
from cnnlab.models.saving import load_model
from cnnlab.nn.optimizers import make_optimizer, optimizer_steps
from cnnlab.nn.schedules import LinearWarmupDecay, PerOptimizerStep
from cnnlab.training import memory, recipes

# No BatchNorm, no dropout, no random augmentation (random flips were seen to differ between
# two runs in one process, 1 pair in 4): the output is a function of the weights and
# the batch alone, so micro-batches must train exactly as the whole batch does.
EXACT = dict(
    model="simple_cnn",
    model_kwargs={
        "filters": [16, 32],
        "convs": 1,
        "dense": [16],
        "batch_norm": False,
        "dropout": 0.0,
        "dense_dropout": 0.0,
    },
    batch_size=64,
    epochs=3,
    optimizer="sgd",
    learning_rate=0.05,
    momentum=0.9,
    weight_decay=1e-3,
    schedule="cosine",
    warmup_epochs=1.0,
    augment="none",
    flip="alternating",  # deterministic (index and epoch), cut after it like any augmentation
    val_split=0.0,
    test_split=0.25,
    seed=3,
    tensorboard=False,
)
LINE = re.compile(
    r"Memory: ~(\d+\.\d) GB estimated peak \(batch (\d+)(?: as (\d+) micro-batches of (\d+))?; "
    r"(?:budget (\d+(?:\.\d)? [GM]B)|no budget)\)"
)


def test_a_small_memory_budget_chooses_micro_batches_and_trains_as_the_whole_batch(
    make_folder, runs_dir, capsys, monkeypatch
):
    """The issue's must-show: the same seed and effective batch, a budget that does not
    fit the whole batch of 64, and the run computes it as 2 micro-batches of 32 whose
    accumulated gradients give the whole batch's weights, losses and predictions."""
    # The first model built in a process gets other initial weights than later ones with
    # the same seed (Keras 3.15: set_random_seed(3), then three create_model calls: the
    # first differs), so one is built before the two runs that must start alike.
    keras.utils.set_random_seed(3)
    create_model("simple_cnn", 2, 32, filters=[16, 32], convs=1, dense=[16])
    # 72 training images: batches of 64 and 8, so a short last batch is cut too.
    folder = make_folder("mem", classes=("a", "b"), per_class=48, size=32)
    common = dict(data=f"folder:{folder}", runs_dir=str(runs_dir), **EXACT)
    whole = cnnlab.train(**common, memory_budget="none")
    est = whole.metrics["memory"]
    assert (est["micro_batch_size"], est["budget_gb"]) == (64, None)
    # What 32 images fewer in a step save, by the estimate's own rule.
    saving = memory.ACTIVATION_FACTOR * 32 * memory.activation_bytes(whole.model)
    assert saving > 4e6  # far above the 1 MB the recorded estimate is rounded to
    budget = est["estimated_peak_gb"] * 1e9 - saving / 2
    monkeypatch.setenv("CNNLAB_MEMORY_BUDGET", f"{budget / 1e6:.0f}MB")
    capsys.readouterr()
    micro = cnnlab.train(**common, verbose=1)

    # It chose the largest micro-batch under the budget, said so, and recorded it.
    err = capsys.readouterr().err
    line = LINE.search(err)
    assert line, err
    assert line.group(2, 3, 4) == ("64", "2", "32")
    assert line.group(5) == memory.format_gb(budget)
    assert "over the budget" in err and "2 micro-batches of 32" in err
    assert micro.config.micro_batch_size == 32
    assert yaml.safe_load((micro.run_dir / "config.yaml").read_text())["micro_batch_size"] == 32
    m = micro.metrics["memory"]
    assert (m["micro_batch_size"], m["budget_from"]) == (32, "CNNLAB_MEMORY_BUDGET")
    assert m["estimated_peak_gb"] * 1e9 <= budget + 1e6 < est["estimated_peak_gb"] * 1e9
    assert m["eval_batch_size"] <= 32

    # ... and trained to the whole batch's result: one optimizer step per batch.
    a = load_model(whole.run_dir / "checkpoints" / "last.keras")
    b = load_model(micro.run_dir / "checkpoints" / "last.keras")
    assert int(a.optimizer.iterations) == int(b.optimizer.iterations) == 2 * 3
    assert b.optimizer.gradient_accumulation_steps == 2
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_allclose(wb, wa, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(micro.history["loss"], whole.history["loss"], rtol=1e-5)
    np.testing.assert_allclose(
        micro.history["learning_rate"], whole.history["learning_rate"], rtol=1e-6
    )
    assert micro.test_accuracy == whole.test_accuracy
    np.testing.assert_allclose(micro.evaluation.probs, whole.evaluation.probs, atol=1e-5)


def test_fast_recipe_micro_batches_step_schedule_and_lookahead_per_batch_and_resume(
    make_folder, runs_dir, capsys
):
    """airbench (BatchNorm, lookahead, TTA) with micro_batch_size: the optimizer steps
    once per batch of 32, the schedule ends where the whole batch's does, the saved
    optimizer reloads with its accumulation, and --resume keeps the micro-batch."""
    folder = make_folder("fast", classes=("a", "b", "c"), per_class=20, size=20)
    common = dict(
        data=f"folder:{folder}",
        recipe="fast",
        epochs=2,
        batch_size=32,
        test_split=0.25,
        model_kwargs={"width": 0.125},
        runs_dir=str(runs_dir),
    )
    whole = cnnlab.train(**common, verbose=0)
    capsys.readouterr()
    micro = cnnlab.train(**common, micro_batch_size=16, verbose=1)
    assert "Memory: ~" in capsys.readouterr().err
    assert micro.config.micro_batch_size == 16 and micro.metrics["memory"]["micro_batch_size"] == 16
    steps = 2 * 2  # 45 training images: batches of 32 and 13 (micro-batches 6 + 7), two epochs
    opt = load_model(micro.run_dir / "checkpoints" / "last.keras").optimizer
    assert optimizer_steps(opt) == (steps, True) and int(opt._iterations) == 2 * steps
    schedule = opt.get_config()["learning_rate"]
    assert schedule["registered_name"] == "cnnlab>PerOptimizerStep"
    # The learning rate of every epoch is the whole batch's (the last: 0.07 x peak).
    np.testing.assert_allclose(micro.history["learning_rate"], whole.history["learning_rate"])
    assert micro.history["learning_rate"][-1] == pytest.approx(0.07 * micro.config.learning_rate)
    # Micro-batches of 16 normalise over 16 images, not 32: close, not equal.
    assert abs(micro.history["loss"][-1] - whole.history["loss"][-1]) < 0.25
    capsys.readouterr()
    resumed = cnnlab.train(resume=micro.run_dir, epochs=3)
    assert "batch 32 as 2 micro-batches of 16" in capsys.readouterr().err
    opt = load_model(resumed.run_dir / "checkpoints" / "last.keras").optimizer
    assert optimizer_steps(opt) == (3 * 2, True)


def test_over_budget_at_the_smallest_micro_batch_is_refused_with_the_numbers(
    make_folder, tmp_path, capsys
):
    from cnnlab.cli.main import main

    folder = make_folder("refuse", classes=("a", "b"), per_class=10, size=20)
    runs = tmp_path / "runs"
    args = ["train", "--data", f"folder:{folder}", "--runs-dir", str(runs), "--epochs", "1"]
    assert main([*args, "--batch-size", "32", "--memory-budget", "0.5GB"]) == 2
    err = capsys.readouterr().err
    m = re.search(
        r"cnnlab: error: Training needs ~(\d+\.\d\d) GB of memory \(estimated\) even with the "
        r"smallest micro-batches of 16 images \(batch 32\), over the memory budget of 0\.50 GB "
        r"\(memory_budget\)\. Expected an estimated peak within the budget; the estimate is "
        r"(\d+\.\d) GB TensorFlow, .* activations, .* weights and optimizer state\. Raise the "
        r"budget \(--memory-budget 8GB",
        err,
    )
    assert m, err
    assert float(m.group(1)) > 0.5 and float(m.group(2)) == memory.OVERHEAD_BYTES / 1e9
    assert not runs.exists()  # refused before a run folder was made
    # A micro-batch that does not divide the batch is refused with divisors that do.
    assert main([*args, "--batch-size", "32", "--micro-batch-size", "12"]) == 2
    err = capsys.readouterr().err
    assert "Bad micro_batch_size: received 12 for batch_size 32" in err
    assert "a divisor of the batch size, e.g. 16" in err


# ---------------------------------------------------------------------- the parts
def test_split_batches_cuts_every_batch_into_equal_parts_in_order():
    ds = tf.data.Dataset.from_tensor_slices((np.arange(10), np.arange(10) * 10)).batch(4)
    parts = list(split_batches(ds, 2))
    assert [len(x) for x, _ in parts] == [2, 2, 2, 2, 1, 1]
    np.testing.assert_array_equal(np.concatenate([x for x, _ in parts]), np.arange(10))
    np.testing.assert_array_equal(np.concatenate([y for _, y in parts]), np.arange(10) * 10)
    assert int(split_batches(ds, 2).cardinality()) == 6
    # A last batch smaller than the parts repeats images instead of leaving one empty.
    short = list(split_batches(tf.data.Dataset.range(5).batch(4), 4))
    assert [b.numpy().tolist() for b in short[4:]] == [[4], [4], [4], [4]]


def test_per_optimizer_step_schedule_sees_optimizer_steps_and_round_trips():
    inner = LinearWarmupDecay(1.0, total_steps=10, warmup_steps=3)
    s = PerOptimizerStep(inner, 4)
    # Keras calls the schedule with the micro-batch counter; the step that applies the
    # gradients (counter 4k+3) sees optimizer step k.
    for k in range(10):
        assert float(s(4 * k + 3)) == pytest.approx(float(inner(k)))
    again = keras.optimizers.schedules.deserialize(keras.optimizers.schedules.serialize(s))
    assert float(again(39)) == pytest.approx(float(inner(9)))


def test_make_optimizer_accumulates_with_a_schedule_in_optimizer_steps():
    cfg = TrainConfig(optimizer="sgd", schedule="linear", epochs=2, learning_rate=0.5)
    opt = make_optimizer(cfg, 5, accumulation_steps=4)
    assert opt.gradient_accumulation_steps == 4 and opt.nesterov
    v = keras.Variable(np.ones(3, np.float32))
    for _ in range(4 * 10):
        opt.apply_gradients([(keras.ops.ones(3), v)])
    assert optimizer_steps(opt) == (10, True)
    assert float(opt.learning_rate) == pytest.approx(0.5 * 0.07)  # the schedule's end


def test_lookahead_blends_only_after_steps_that_applied_gradients():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, use_bias=False)])
    model.compile(optimizer=keras.optimizers.SGD(0.1, gradient_accumulation_steps=2), loss="mse")
    cb = recipes.Lookahead(total_steps=10, every=5)
    cb.set_model(model)
    cb.on_train_begin()
    w0 = model.get_weights()[0].copy()
    model.optimizer._iterations.assign(9)  # 4 steps and half of the 5th: no step applied
    model.set_weights([w0 + 1.0])
    cb.on_train_batch_end(8)
    np.testing.assert_allclose(model.get_weights()[0], w0 + 1.0)
    model.optimizer._iterations.assign(10)  # the 5th step applied: blend as at step 5
    cb.on_train_batch_end(9)
    decay = 0.95**5 * 0.5**3
    np.testing.assert_allclose(
        model.get_weights()[0], decay * w0 + (1 - decay) * (w0 + 1), rtol=1e-5
    )


def test_memory_sizes_and_the_budget_they_resolve_to(monkeypatch):
    assert parse_memory_size("4GB") == 4e9 and parse_memory_size("3.5 GiB") == 3.5 * 1024**3
    assert parse_memory_size("800MB") == 8e8 and parse_memory_size(2) == 2e9
    assert parse_memory_size("none") is None and parse_memory_size("off") is None
    with pytest.raises(ConfigError, match=r"Bad memory_budget: received '4 parsecs'.*4GB"):
        TrainConfig().replace(memory_budget="4 parsecs")
    with pytest.raises(ConfigError, match="Bad micro_batch_size"):
        TrainConfig().replace(micro_batch_size=0)
    monkeypatch.delenv(memory.MEMORY_BUDGET_ENV, raising=False)
    monkeypatch.setattr("cnnlab.memory.available_memory", lambda: 20e9)
    assert memory.resolve_budget() == (4e9, "default")  # 60 % of 20 GB, capped at 4 GB
    monkeypatch.setattr("cnnlab.memory.available_memory", lambda: 5e9)
    assert memory.resolve_budget() == (3e9, "default")
    monkeypatch.setattr("cnnlab.memory.available_memory", lambda: 1e9)
    assert memory.resolve_budget() == (2e9, "default")  # never below the floor
    monkeypatch.setenv(memory.MEMORY_BUDGET_ENV, "1.5GB")
    assert memory.resolve_budget() == (1.5e9, memory.MEMORY_BUDGET_ENV)
    assert memory.resolve_budget("none") == (None, "memory_budget")  # the config wins


def test_estimate_grows_with_the_micro_batch_and_the_largest_divisor_that_fits_is_chosen():
    model = create_model("airbench", 10, 32, width=0.75)
    # 1,308 KB of layer outputs per image: the calibration's per-image number.
    assert memory.activation_bytes(model) == pytest.approx(1.308e6, rel=0.01)
    assert memory.tta_views(model) == 6
    inputs = memory.MemoryInputs(1024, (32, 32), 3, held_bytes=0.4e9, lookahead=True)
    est = {m: memory.estimate_memory(model, inputs, m) for m in (1024, 512, 256)}
    assert est[1024].total > est[512].total > est[256].total
    assert est[1024].activations == pytest.approx(2 * est[512].activations)
    # Scoring never sets the peak: its batch keeps it under the training step's.
    assert all(e.inference <= e.activations for e in est.values())
    assert est[1024].eval_batch_size == 256
    budget = (est[512].total + est[256].total) / 2
    chosen = memory.choose_micro_batch(model, inputs, budget)
    assert chosen.micro_batch_size == 256 and chosen.micro_batches == 4
    assert chosen.line() == (
        f"Memory: ~{est[256].total / 1e9:.1f} GB estimated peak "
        f"(batch 1024 as 4 micro-batches of 256; budget {budget / 1e9:.1f} GB)"
    )
    assert memory.micro_batch_candidates(96) == [96, 48, 32, 24, 16]
    with pytest.raises(ConfigError, match="over the memory budget of 0.80 GB"):
        memory.choose_micro_batch(model, inputs, 0.8e9, "memory_budget")


def test_lr_find_refuses_micro_batches_and_plans_whole_batches(monkeypatch, caplog):
    from cnnlab.training.finetune import resolve_finetune_config

    with pytest.raises(ConfigError, match=r"micro_batch_size given to `cnnlab lr-find`"):
        resolve_finetune_config(None, {"micro_batch_size": 8}, command="lr-find")
    cfg, _ = resolve_finetune_config({"batch_size": 16, "memory_budget": "2GB"})
    assert cfg.micro_batch_size is None and cfg.memory_budget == "2GB"
    assert resolve_finetune_config({"micro_batch_size": 8})[0].micro_batch_size == 8

    # Whole batches: stage 2 keeps only its trained layers' outputs; over a budget the
    # user set, refused; over the default one, a warning.
    model = create_model("simple_cnn", 10, 32, filters=[32, 64])
    bundle = cnnlab.load_data("builtin:digits", image_size=32, channels=3, val_split=0.0)
    cfg = TrainConfig(batch_size=64, optimizer="adam")
    every = memory.plan_whole_batches(model, cfg, bundle)
    top = memory.plan_whole_batches(model, cfg, bundle, model.layers[-3:])
    assert top.activations < every.activations and every.micro_batches == 1
    with pytest.raises(ConfigError) as e:
        memory.plan_whole_batches(model, cfg.replace(memory_budget="0.5GB"), bundle)
    assert re.match(
        r"Training needs ~\d\.\d\d GB of memory \(estimated\) even with whole batches of 64 "
        r"images \(batch 64\), over the memory budget of 0\.50 GB \(memory_budget\)",
        str(e.value),
    )
    monkeypatch.delenv(memory.MEMORY_BUDGET_ENV, raising=False)
    monkeypatch.setattr("cnnlab.memory.available_memory", lambda: 0.5e9)  # default: 2 GB floor
    monkeypatch.setattr(memory, "OVERHEAD_BYTES", 3e9)
    with caplog.at_level(logging.INFO, logger="cnnlab"):
        memory.plan_whole_batches(model, cfg, bundle)
    assert "over the default budget of 2.0 GB" in caplog.text
