"""The evaluation report: written by train and evaluate, every section present, self-contained."""

from __future__ import annotations

import base64
import csv
import io
import json
import logging
import math
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnnlab.data import open_source
from cnnlab.evaluation.evaluate import EvaluationResult
from cnnlab.evaluation.metrics import compute_metrics
from cnnlab.evaluation.report import SECTION_IDS, ReportLimits, try_write_report, write_report


def _html_images(html: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([^"]+)"', html)]


def _section(html: str, sid: str) -> str:
    return html.split(f'<section id="{sid}">', 1)[1].split("</section>", 1)[0]


def _test_predictions(run: Path) -> list[dict]:
    """The rows of the run's own evaluation-test/predictions.csv (example, true, ...)."""
    with open(run / "evaluation-test" / "predictions.csv", newline="") as f:
        return list(csv.DictReader(f))


def _planted(run: Path, conf: list[float], p_true: list[float | None]) -> EvaluationResult:
    """An evaluation of the run's test split with planted probabilities.

    Row i predicts its true class with probability ``conf[i]`` when ``p_true[i]`` is None;
    otherwise it predicts the next class with ``conf[i]`` and gives the true class
    ``p_true[i]``. What is left is spread evenly over the other classes.
    """
    rows = _test_predictions(run)
    names = json.loads((run / "classes.json").read_text())
    y = np.array([names.index(r["true"]) for r in rows])
    k = len(names)
    probs = np.zeros((len(y), k))
    for i, t in enumerate(y):
        probs[i, t if p_true[i] is None else (t + 1) % k] = conf[i]
        if p_true[i] is not None:
            probs[i, t] = p_true[i]
        rest = probs[i] == 0
        probs[i, rest] = (1 - probs[i].sum()) / rest.sum()
    metrics = compute_metrics(y, probs, names, top_k=2)
    return EvaluationResult(metrics, probs, y, names, [r["example"] for r in rows])


def _ece_by_hand(conf: np.ndarray, correct: np.ndarray, n_bins: int = 15) -> float:
    """Equal-width bins, right-closed: |accuracy - confidence| weighted by the bin's share."""
    bins = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)
    return sum(
        (bins == b).mean() * abs(correct[bins == b].mean() - conf[bins == b].mean())
        for b in set(bins.tolist())
    )


def test_training_writes_the_report(tiny_run):
    html = (tiny_run / "report.html").read_text()
    data = json.loads((tiny_run / "report.json").read_text())
    for sid in SECTION_IDS:
        assert f'<section id="{sid}">' in html
    # the same numbers as the run's own evaluation
    ev = json.loads((tiny_run / "evaluation-test" / "metrics.json").read_text())
    assert data["accuracy"] == pytest.approx(ev["accuracy"])
    assert data["num_examples"] == ev["num_examples"] == 6
    counts = np.array(data["confusion_matrix"]["counts"])
    assert counts.shape == (3, 3) and counts.sum() == 6
    assert np.allclose(
        np.array(data["confusion_matrix"]["row_normalised"]).sum(1)[counts.sum(1) > 0], 1
    )
    assert [r["class"] for r in data["per_class"]] == ["circle", "square", "star"]
    assert data["macro avg"]["f1-score"] == pytest.approx(ev["macro avg"]["f1-score"])
    assert len(data["history"]["loss"]) == 3 and "val_accuracy" in data["history"]
    # ECE from the confidences and right/wrong answers of the run's predictions.csv
    preds = _test_predictions(tiny_run)
    conf = np.array([float(r["confidence"]) for r in preds])
    correct = np.array([r["true"] == r["predicted"] for r in preds])
    assert data["calibration"]["ece"] == pytest.approx(_ece_by_hand(conf, correct), abs=1e-4)
    assert sum(data["calibration"]["bins"]["count"]) == 6
    assert data["calibration"]["temperature"]["fitted_on"] == "val"
    assert data["calibration"]["temperature"]["num_fit_examples"] == 6
    assert data["tta"]["views"][0] == "identity" and "accuracy_with" in data["tta"]
    assert data["tta"]["accuracy_without"] == pytest.approx(ev["accuracy"])
    n_wrong = int((~correct).sum())
    assert data["gradcam"]["layer"] == "block2_act2"
    assert [e["correct"] for e in data["gradcam"]["examples"]] == [True] * min(4, 6 - n_wrong) + [
        False
    ] * min(4, n_wrong)
    s = data["summary"]
    assert s["model"] == "simple_cnn" and s["parameters"] > 0 and s["image_size"] == [16, 16]
    assert s["split_sizes"]["train"] == 48 and s["versions"]["keras"]
    wrong = data["mistakes"]["shown"]
    assert data["mistakes"]["total"] == 6 - round(6 * data["accuracy"])
    assert [m["loss"] for m in wrong] == sorted((m["loss"] for m in wrong), reverse=True)


def test_html_is_self_contained(tiny_run):
    html = (tiny_run / "report.html").read_text()
    assert "<script" not in html.lower()
    # nothing is fetched: every src/href is a data URI or an in-page anchor
    for url in re.findall(r'(?:src|href)="([^"]*)"', html):
        assert url.startswith(("data:", "#")), url
    assert not re.search(r"url\(|@import|https?://", html)
    data = json.loads((tiny_run / "report.json").read_text())
    pngs = _html_images(html)
    # curves, 2 matrices, reliability; a thumbnail per mistake shown; Grad-CAM: the input and
    # the map for the prediction, plus the map for the true class on a mistake
    gradcam = sum(2 if e["correct"] else 3 for e in data["gradcam"]["examples"])
    assert len(pngs) == 4 + len(data["mistakes"]["shown"]) + gradcam
    for png in pngs:
        with Image.open(io.BytesIO(png)) as im:
            im.load()
            assert im.format == "PNG"


def test_report_command_rewrites_from_the_run_folder(tiny_run, tmp_path):
    out = tmp_path / "again"
    result = write_report(tiny_run, output=out, limits=ReportLimits(gallery=1, tta_examples=4))
    assert result.html == out / "report.html" and result.json.is_file()
    before = json.loads((tiny_run / "report.json").read_text())
    assert result.data["accuracy"] == pytest.approx(before["accuracy"])
    assert result.data["tta"]["num_examples"] == 4 and result.data["tta"]["subsampled"]
    assert "random sample of 4" in result.html.read_text()
    assert len(result.data["mistakes"]["shown"]) == min(1, before["mistakes"]["total"])


def test_evaluate_writes_a_report_next_to_its_results(tiny_run, tmp_path):
    import cnnlab

    res = cnnlab.evaluate(tiny_run, split="val", output=tmp_path / "ev")
    assert (tmp_path / "ev" / "report.html").is_file()
    data = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert data["split"] == "val" and data["accuracy"] == pytest.approx(res.accuracy)
    assert data["calibration"]["temperature"] is None  # no fitting on the split it scores


def test_builtin_source_is_reloaded_for_the_gallery(digits_run, tmp_path):
    # in-memory images: the report reloads builtin:digits and the saved split from the run
    result = write_report(digits_run, output=tmp_path, limits=ReportLimits(tta_examples=50))
    data = result.data
    assert data["summary"]["data"] == "builtin:digits" and data["num_examples"] == 180
    assert data["tta"]["views"] == [
        "identity",
        "shift(1,0)",
        "shift(-1,0)",
        "shift(0,1)",
        "shift(0,-1)",
    ]
    assert "no mirroring" in result.html.read_text().lower()
    assert data["accuracy"] == pytest.approx(
        json.loads((digits_run / "evaluation-test" / "metrics.json").read_text())["accuracy"]
    )


def test_planted_predictions_give_the_hand_computed_report(tiny_run, tmp_path):
    # Six test images; confidence and answer per row (15 bins of 1/15):
    #   0.9 right, 0.9 wrong (p_true .04) -> bin (.867, .933]: accuracy .5, gap .4
    #   0.7 right, 0.7 right              -> bin (.667, .733]: accuracy 1,  gap .3
    #   0.5 wrong (p_true .2), 0.5 right  -> bin (.467, .533]: accuracy .5, gap 0
    # ECE = (2 * .4 + 2 * .3 + 2 * 0) / 6
    conf = [0.9, 0.9, 0.7, 0.7, 0.5, 0.5]
    p_true = [None, 0.04, None, None, 0.2, None]
    planted = _planted(tiny_run, conf, p_true)
    result = write_report(tiny_run, output=tmp_path, evaluation=planted)
    data, html = result.data, result.html.read_text()
    cal = data["calibration"]
    assert cal["ece"] == pytest.approx(1.4 / 6)
    assert cal["nll"] == pytest.approx(-np.mean(np.log([0.9, 0.04, 0.7, 0.7, 0.2, 0.5])))
    assert sum(cal["bins"]["count"]) == 6 and sorted(c for c in cal["bins"]["count"] if c) == [
        2,
        2,
        2,
    ]
    assert "ECE</div>" in html and f"{100 * 1.4 / 6:.2f} %" in _section(html, "calibration")
    assert data["accuracy"] == pytest.approx(4 / 6)
    assert data["tta"]["accuracy_without"] == data["tta"]["per_view"]["identity"] == 4 / 6
    # the gallery: both mistakes, highest loss first, each with its own image
    names = planted.names
    mistakes = data["mistakes"]
    assert mistakes["total"] == 2
    assert [m["example"] for m in mistakes["shown"]] == [names[1], names[4]]
    assert [m["confidence"] for m in mistakes["shown"]] == pytest.approx([0.9, 0.5])
    assert [m["p_true"] for m in mistakes["shown"]] == pytest.approx([0.04, 0.2])
    assert [m["loss"] for m in mistakes["shown"]] == pytest.approx(
        [-math.log(0.04), -math.log(0.2)]
    )
    gallery = _section(html, "mistakes")
    assert gallery.count('class="card"') == 2
    assert "The 2 highest-loss mistakes of 2 (33.3 % of 6)" in gallery
    for png, name in zip(_html_images(gallery), [names[1], names[4]]):
        with Image.open(io.BytesIO(png)) as shown, Image.open(name) as original:
            assert np.array_equal(
                np.asarray(shown.convert("RGB")), np.asarray(original.convert("RGB"))
            )
    # Grad-CAM: the four right answers, then the two mistakes (worst first)
    examples = data["gradcam"]["examples"]
    assert [e["example"] for e in examples] == [names[i] for i in (0, 2, 3, 5, 1, 4)]
    assert [e["correct"] for e in examples] == [True] * 4 + [False] * 2
    assert _section(html, "gradcam").count('class="card"') == 6


def test_gallery_reloads_in_memory_images(digits_run, tmp_path):
    # Five planted mistakes among the 180 builtin:digits test images: the gallery names them
    # by dataset index, in the order of the run's own predictions.csv, worst first.
    n = len(_test_predictions(digits_run))
    conf = [0.8] * 5 + [0.9] * (n - 5)
    p_true = [0.1, 0.02, 0.15, 0.05, 0.12] + [None] * (n - 5)
    planted = _planted(digits_run, conf, p_true)
    limits = ReportLimits(gallery=3, tta_examples=20, gradcam_correct=1, gradcam_wrong=1)
    result = write_report(digits_run, output=tmp_path, evaluation=planted, limits=limits)
    shown = result.data["mistakes"]["shown"]
    assert result.data["mistakes"]["total"] == 5
    assert [m["example"] for m in shown] == [
        f"builtin:digits #{planted.names[i]}" for i in (1, 3, 0)
    ]
    gallery = _section(result.html.read_text(), "mistakes")
    assert gallery.count('class="card"') == 3
    digits = open_source("builtin:digits").images
    for png, i in zip(_html_images(gallery), (1, 3, 0)):
        with Image.open(io.BytesIO(png)) as im:  # the very digit the row stands for
            assert np.array_equal(np.asarray(im), digits[int(planted.names[i]), ..., 0])


def test_a_failing_report_only_warns(tmp_path, caplog):
    (tmp_path / "config.yaml").write_text("data: folder:/nonexistent\nmodel: simple_cnn\n")
    with caplog.at_level(logging.WARNING, logger="cnnlab"):
        assert try_write_report(tmp_path) is None
    assert "report could not be written" in caplog.text
    assert f"cnnlab report {tmp_path}" in caplog.text


def test_not_a_run_folder(tmp_path):
    from cnnlab.errors import RunError

    with pytest.raises(RunError, match="is not a cnnlab run folder"):
        write_report(tmp_path)


def test_a_model_without_convolution_still_gets_a_report(tiny_run, tmp_path):
    import keras

    from cnnlab.evaluation.report import load_inputs

    bundle = load_inputs(tiny_run).bundle
    inp = keras.Input((16, 16, 3))
    out = keras.layers.Dense(3, activation="softmax", name="predictions")(
        keras.layers.Flatten()(keras.layers.Rescaling(1 / 255)(inp))
    )
    mlp = keras.Model(inp, out, name="mlp")
    planted = _planted(tiny_run, [0.9] * 6, [None, 0.05, None, None, None, None])
    result = write_report(tiny_run, output=tmp_path, model=mlp, bundle=bundle, evaluation=planted)
    gc = result.data["gradcam"]
    assert gc["layer"] is None and gc["examples"] == []
    assert gc["error"] == (
        "ModelError: Model mlp has no convolutional layer for Grad-CAM. Expected a CNN with "
        "at least one Conv2D layer (or a convolutional backbone)."
    )
    html = result.html.read_text()
    assert "Grad-CAM is not available for this model (ModelError: Model mlp" in html
    # the rest of the report is there, on the planted predictions
    assert result.data["accuracy"] == pytest.approx(5 / 6)
    assert result.data["mistakes"]["total"] == 1 and "accuracy_with" in result.data["tta"]
    for sid in SECTION_IDS:
        assert f'<section id="{sid}">' in html
