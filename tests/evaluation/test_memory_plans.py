"""Every command that runs a model states its memory on start and bounds it: evaluate and
predict shrink their batch to fit the budget, or refuse when nothing fits."""

from __future__ import annotations

import logging
import re

import numpy as np
import pytest

import cnnlab
from cnnlab.errors import ConfigError
from cnnlab.memory import MEMORY_BUDGET_ENV, Estimate, fit_batch

SHRUNK = re.compile(
    r"Memory: scoring at batch 64 needs ~(\d\.\d\d) GB, over the budget of (\d\.\d\d) GB: "
    r"running batches of (\d+)"
)


def test_fit_batch_halves_to_the_largest_power_of_two_that_fits_or_refuses():
    def estimate(batch):
        return Estimate("scoring", batch, {"overhead": 1e9, "activations": batch * 1e8}, 3e9)

    assert fit_batch(estimate, 64, "fix").batch_size == 16  # 1 GB + 1.6 GB
    assert fit_batch(estimate, 24, "fix").batch_size == 16  # 24 -> 16, not 12
    assert fit_batch(estimate, 8, "fix").batch_size == 8
    with pytest.raises(ConfigError) as e:
        fit_batch(estimate, 64, "Pass a smaller --batch-size", shrink=False)
    assert str(e.value) == (
        "Scoring needs ~7.40 GB of memory (estimated) at batch 64, over the memory budget "
        "of 3.00 GB (the default: 60% of the memory available, within 2-4 GB). Expected an "
        "estimated peak within the budget; the estimate is 1.0 GB overhead, 6.4 GB "
        "activations. Pass a smaller --batch-size, or raise the budget "
        "(CNNLAB_MEMORY_BUDGET=8GB, or none for none)."
    )


def test_evaluate_states_its_memory_and_shrinks_its_batch_to_the_budget(
    tiny_run, tmp_path, monkeypatch, caplog
):
    from cnnlab.evaluation.memory import plan_inference
    from cnnlab.models.saving import load_for_inference

    monkeypatch.setenv(MEMORY_BUDGET_ENV, "none")
    with caplog.at_level(logging.INFO, logger="cnnlab"):
        whole = cnnlab.evaluate(tiny_run, batch_size=64, output=tmp_path / "whole")
    assert re.search(
        r"Memory: ~\d\.\d GB estimated peak \(scoring, batch 64; no budget\)", caplog.text
    )
    # A budget between the estimates at batch 8 and batch 16: batches of 8, same results.
    model = load_for_inference(tiny_run).model
    at = {b: plan_inference(model, b, (16, 16), 3).total for b in (8, 16)}
    budget = (at[8] + at[16]) / 2
    monkeypatch.setenv(MEMORY_BUDGET_ENV, f"{budget / 1e6:.3f}MB")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="cnnlab"):
        small = cnnlab.evaluate(tiny_run, batch_size=64, output=tmp_path / "small")
    m = SHRUNK.search(caplog.text)
    assert m, caplog.text
    assert m.group(3) == "8" and float(m.group(2)) == round(budget / 1e9, 2)
    assert float(m.group(1)) == round(plan_inference(model, 64, (16, 16), 3).total / 1e9, 2)
    assert "(scoring, batch 8; budget" in caplog.text
    np.testing.assert_allclose(small.probs, whole.probs, atol=1e-5)
    assert small.metrics["accuracy"] == whole.metrics["accuracy"]


def test_evaluate_and_predict_refuse_a_budget_nothing_fits(tiny_run, tmp_path, monkeypatch, capsys):
    from cnnlab.cli.main import main

    monkeypatch.setenv(MEMORY_BUDGET_ENV, "0.5GB")  # under TensorFlow's own 0.9 GB
    assert main(["evaluate", str(tiny_run)]) == 2
    err = capsys.readouterr().err
    assert re.search(
        r"cnnlab: error: Scoring needs ~\d\.\d\d GB of memory \(estimated\) at batch 1, over "
        r"the memory budget of 0\.50 GB \(\$CNNLAB_MEMORY_BUDGET\)\. Expected an estimated "
        r"peak within the budget; the estimate is 0\.9 GB overhead, .*Pass a smaller "
        r"--batch-size, or raise the budget",
        err,
    ), err
    image = next((tiny_run.parent.parent / "images").rglob("*.png"))
    assert main(["predict", str(tiny_run), str(image)]) == 2
    assert "cnnlab: error: Prediction needs ~" in capsys.readouterr().err
    monkeypatch.setenv(MEMORY_BUDGET_ENV, "3GB")  # the command line states its estimate
    assert main(["predict", str(tiny_run), str(image)]) == 0
    out = capsys.readouterr()
    assert re.search(
        r"cnnlab: Memory: ~\d\.\d GB estimated peak \(prediction, batch 32; budget 3\.0 GB\)",
        out.err,
    ), out.err
    assert "Memory" not in out.out  # stdout holds the predictions alone
