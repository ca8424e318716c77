"""Comparing runs: one table of metrics, settings and times; curves overlaid."""

from __future__ import annotations

import json

import pytest

from cnnlab.errors import RunError
from cnnlab.evaluation.compare import (
    compare_runs,
    differing_settings,
    format_table,
    write_comparison,
)


def test_table_of_two_runs(tiny_run, digits_run):
    rows = compare_runs([tiny_run, digits_run])
    assert [r["run"] for r in rows] == ["tiny", "digits"]
    tiny, digits = rows
    assert (
        tiny["model"] == "simple_cnn" and tiny["image_size"] == "16×16" and tiny["epochs_done"] == 3
    )
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    assert tiny["test_accuracy"] == pytest.approx(metrics["test"]["accuracy"])
    assert tiny["train_seconds"] > 0 and tiny["seconds_per_epoch"] > 0
    assert digits["data"] == "builtin:digits" and digits["epochs_done"] == 1
    diff = differing_settings(rows)
    assert "data" in diff and "epochs" in diff and "model" not in diff
    text = format_table(rows)
    lines = text.splitlines()
    assert lines[0].split() == ["run", "tiny", "digits"]
    assert any(line.startswith("test acc") for line in lines)
    assert any(line.startswith("epochs ") for line in lines)


def test_files_written(tiny_run, digits_run, tmp_path):
    written = write_comparison([tiny_run, digits_run], tmp_path / "cmp")
    assert {p.name for p in written.values()} == {
        "compare.html",
        "compare.png",
        "compare.json",
        "compare.csv",
    }
    html = written["html"].read_text()
    assert 'id="table"' in html and 'id="curves"' in html and "<script" not in html
    assert "data:image/png;base64," in html and "https://" not in html
    csv_lines = written["csv"].read_text().splitlines()
    assert len(csv_lines) == 3 and csv_lines[0].startswith("path,run,model")
    data = json.loads(written["json"].read_text())
    assert [r["run"] for r in data["runs"]] == ["tiny", "digits"]


def test_not_a_run_is_named(tiny_run, tmp_path):
    with pytest.raises(RunError, match=f"{tmp_path} is not a cnnlab run folder"):
        compare_runs([tiny_run, tmp_path])
    with pytest.raises(RunError, match="No run folders to compare"):
        compare_runs([])
