"""sweep.html in headless Chromium: every section renders, nothing is fetched, no console
error, and clicking a column header sorts the trials table. Skipped without Chromium."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import optuna
import pytest
from tests.evaluation._chromium import _open, _start, check_page, find_chromium

from cnnlab.experiments.report import SECTION_IDS

pytestmark = pytest.mark.skipif(find_chromium() is None, reason="chromium is not installed")

CLICK_AND_READ = """(() => {
  const table = document.querySelector('table.sortable');
  const th = Array.from(table.tHead.rows[0].cells).find(c => c.textContent === %s);
  const read = () => Array.from(table.tBodies[0].rows).map(r => r.cells[0].textContent);
  th.click(); const first = read(); th.click(); const second = read();
  return JSON.stringify([first, second]);
})()"""


def _click_sort(html: Path, column: str) -> list[list[str]]:
    """Click ``column``'s header twice; the trial numbers in row order after each click."""
    profile = tempfile.mkdtemp(prefix="cnnlab-chromium-")
    proc, pipe = _start(find_chromium(), profile, 1280)
    try:
        sid = _open(pipe, html.resolve().as_uri(), 1280, 60)
        ev = pipe.send(
            "Runtime.evaluate",
            {"expression": CLICK_AND_READ % json.dumps(column), "returnByValue": True},
            session=sid,
        )
        return json.loads(ev["result"]["value"])
    finally:
        proc.kill()
        proc.wait()
        os.close(pipe.w)
        os.close(pipe.r)
        shutil.rmtree(profile, ignore_errors=True)


def test_sweep_report_renders_and_sorts_in_chromium(digits_sweep, tmp_path):
    folder, _ = digits_sweep
    page = check_page(folder / "sweep.html", SECTION_IDS, screenshot=tmp_path / "sweep.png")
    assert page.errors == []
    assert page.network_requests == []
    assert all(page.sections[s] > 40 for s in SECTION_IDS), page.sections
    # progress, importances, one slice per parameter (4), learning curves
    assert page.images["total"] >= 7 and page.images["broken"] == 0

    study = optuna.load_study(study_name="digits-test", storage=f"sqlite:///{folder / 'study.db'}")
    # a pruned trial shows its last epoch's value
    values = {
        str(t.number): round(
            t.value if t.value is not None else t.intermediate_values[max(t.intermediate_values)], 4
        )
        for t in study.trials
    }
    ascending, descending = _click_sort(folder / "sweep.html", "val_accuracy")
    assert [values[n] for n in ascending] == sorted(values.values())
    assert [values[n] for n in descending] == sorted(values.values(), reverse=True)


def test_sweep_report_marks_pruned_trials(digits_sweep):
    folder, _ = digits_sweep
    study = optuna.load_study(study_name="digits-test", storage=f"sqlite:///{folder / 'study.db'}")
    html = (folder / "sweep.html").read_text()
    pruned = [t for t in study.trials if t.state == optuna.trial.TrialState.PRUNED]
    assert html.count("<td>pruned</td>") == len(pruned)
    assert html.count("<td>complete</td>") == 8 - len(pruned)
    assert f'<div class="v">{len(pruned)}</div><div class="k">pruned</div>' in html
