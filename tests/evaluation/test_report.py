"""The evaluation report: written by train and evaluate, every section present, self-contained."""

from __future__ import annotations

import base64
import io
import json
import logging
import re

import numpy as np
import pytest
from PIL import Image

from cnnlab.evaluation.report import SECTION_IDS, ReportLimits, try_write_report, write_report


def _html_images(html: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([^"]+)"', html)]


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
    assert 0 <= data["calibration"]["ece"] <= 1
    assert sum(data["calibration"]["bins"]["count"]) == 6
    assert data["calibration"]["temperature"]["fitted_on"] == "val"
    assert data["tta"]["views"][0] == "identity" and "accuracy_with" in data["tta"]
    assert data["gradcam"]["layer"] == "block2_act2" and data["gradcam"]["examples"]
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
    pngs = _html_images(html)
    assert len(pngs) >= 8  # curves, 2 matrices, reliability, gallery, Grad-CAM
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
    assert len(result.data["mistakes"]["shown"]) <= 1


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
    html = result.html.read_text()
    assert "no mirroring" in html.lower()
    if data["mistakes"]["total"]:
        assert data["mistakes"]["shown"][0]["example"].startswith("builtin:digits #")
        assert html.count('class="card"') >= len(data["mistakes"]["shown"])


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
