"""Building the report, section by section, and writing report.html and report.json."""

from __future__ import annotations

import datetime as _dt
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cnnlab._io import write_json, write_text
from cnnlab.errors import RunError
from cnnlab.evaluation.gradcam import find_last_conv_layer
from cnnlab.evaluation.report import analysis as A
from cnnlab.evaluation.report import figures as F
from cnnlab.evaluation.report import html as W
from cnnlab.evaluation.report.analysis import Predictions, ReportLimits
from cnnlab.evaluation.report.loading import ReportInputs, load_inputs, trained_with_flip

log = logging.getLogger("cnnlab")


@dataclass
class ReportResult:
    """Where the report went, and its numbers (the content of report.json)."""

    html: Path
    json: Path
    data: dict
    seconds: float


@dataclass
class _Report:
    """A report being built: its inputs, and the numbers and HTML of the sections so far."""

    inputs: ReportInputs
    preds: Predictions
    limits: ReportLimits
    rng: np.random.Generator
    data: dict[str, Any]
    sections: dict[str, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    mistakes: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    def timed(self, name: str, step: Callable[[_Report], None]) -> None:
        t = time.perf_counter()
        step(self)
        self.timings[name] = time.perf_counter() - t


def _summary(r: _Report) -> None:
    summary = A.summary_numbers(r.inputs)
    r.data["summary"] = summary
    k = r.inputs.evaluation.metrics.get("top_k", 5)
    r.sections["summary"] = W.summary_html(summary, r.inputs.split, r.preds.n, k)


def _curves(r: _Report) -> None:
    history = r.inputs.history
    r.data["history"] = history
    r.sections["curves"] = W.curves_html(history, F.curves_png(history))


def _per_class(r: _Report) -> None:
    m = r.inputs.evaluation.metrics
    per = A.per_class_numbers(m, r.inputs.class_names)
    r.data["per_class"] = per
    r.data["macro avg"] = m["macro avg"]
    r.data["weighted avg"] = m["weighted avg"]
    r.data["accuracy"] = m["accuracy"]
    r.sections["per-class"] = W.per_class_html(per, m)


def _confusion(r: _Report) -> None:
    cm, norm, r.data["confusion_matrix"] = A.confusion_numbers(r.inputs.evaluation.metrics)
    counts_png, norm_png = F.confusion_pngs(cm, norm, r.inputs.class_names)
    r.sections["confusion"] = W.confusion_html(counts_png, norm_png, len(r.inputs.class_names))


def _confused_pairs(r: _Report) -> None:
    cm = np.asarray(r.inputs.evaluation.metrics["confusion_matrix"], np.int64)
    pairs = A.most_confused(cm, r.inputs.class_names, r.limits.confused_pairs)
    r.data["most_confused"] = pairs
    r.sections["confused-pairs"] = W.confused_pairs_html(pairs)


def _mistakes(r: _Report) -> None:
    r.mistakes = A.mistakes_by_loss(r.preds)
    shown = r.mistakes[: r.limits.gallery]
    mistakes = A.mistake_numbers(r.inputs, r.preds, shown)
    r.data["mistakes"] = {"total": len(r.mistakes), "shown": mistakes}
    thumbs = F.thumbnails(r.inputs.bundle, r.inputs.split, shown)
    r.sections["mistakes"] = W.mistakes_html(mistakes, thumbs, len(r.mistakes), r.preds.n)


def _calibration(r: _Report) -> None:
    cal, note = A.calibration_numbers(r.inputs, r.preds, r.limits, r.rng)
    r.data["calibration"] = cal
    png = F.reliability_diagram(cal, r.inputs.split, r.preds.n)
    r.sections["calibration"] = W.calibration_html(cal, png, r.inputs.split, note)


def _tta(r: _Report) -> None:
    flip = trained_with_flip(r.inputs.data_json, r.inputs.bundle)
    tta = A.tta_numbers(r.inputs, r.preds, flip, r.limits, r.rng)
    r.data["tta"] = tta
    r.sections["tta"] = W.tta_html(tta, flip, r.preds.n)


def _gradcam(r: _Report) -> None:
    rows, n_wrong = A.gradcam_rows(r.preds, r.mistakes, r.limits, r.rng)
    gc: dict[str, Any] = {"layer": None, "examples": []}
    try:
        gc["layer"] = find_last_conv_layer(r.inputs.model)
        x, maps_pred, maps_true = A.gradcam_maps(r.inputs, r.preds, rows, n_wrong, gc["layer"])
        cards = []
        for i, row in enumerate(rows):
            example = A.gradcam_example(r.inputs, r.preds, int(row))
            map_true = None if example["correct"] else maps_true[i]
            pngs = F.gradcam_pngs(x[i], maps_pred[i], map_true)
            cards.append(
                (example["correct"], W.gradcam_card(example, pngs, maps_pred[i], map_true))
            )
            gc["examples"].append(example)
        r.sections["gradcam"] = W.gradcam_html(gc["layer"], cards, r.inputs.bundle.image_size)
    except Exception as e:  # noqa: BLE001 - an exotic model must not cost the rest of the report
        gc["error"] = f"{type(e).__name__}: {e}"
        r.sections["gradcam"] = W.gradcam_unavailable(gc["error"])
    r.data["gradcam"] = gc


def build_report(inputs: ReportInputs, limits: ReportLimits | None = None) -> tuple[dict, dict]:
    """Compute every number and picture of the report: ``(data for JSON, HTML per section)``."""
    limits = limits or ReportLimits()
    preds = Predictions.of(inputs.evaluation)
    data = {
        "split": inputs.split,
        "num_examples": preds.n,
        "generated": _dt.datetime.now().isoformat(timespec="seconds"),
    }
    r = _Report(inputs, preds, limits, np.random.default_rng(limits.seed), data)
    _summary(r)
    r.timed("curves", _curves)
    _per_class(r)
    r.timed("confusion", _confusion)
    _confused_pairs(r)
    r.timed("mistakes", _mistakes)
    r.timed("calibration", _calibration)
    r.timed("tta", _tta)
    r.timed("gradcam", _gradcam)
    notes = [inputs.note] if inputs.note else []
    data["notes"] = notes
    r.sections["summary"] += W.notes_html(notes)
    data["timings_seconds"] = {key: round(v, 3) for key, v in r.timings.items()}
    data["limits"] = asdict(limits)
    return data, r.sections


def write_report(
    run: str | os.PathLike | None = None,
    *,
    output: str | os.PathLike | None = None,
    model=None,
    bundle=None,
    evaluation=None,
    split: str = "test",
    batch_size: int = 128,
    limits: ReportLimits | None = None,
) -> ReportResult:
    """Write ``report.html`` and ``report.json`` for a run (or a model with its data).

    Args:
        run: the run folder (history, config, versions and, unless given, model and data).
        output: folder for the two files; default: the run folder.
        model, bundle, evaluation: pass them when already in memory (skips reloading).
        split: the split to report on when ``evaluation`` is not given.

    Example:
        >>> result = write_report("runs/20261126-120000-simple_cnn-32")
        >>> result.html
        PosixPath('runs/20261126-120000-simple_cnn-32/report.html')
    """
    t0 = time.perf_counter()
    out_dir = Path(output) if output is not None else (Path(run) if run is not None else None)
    if out_dir is None:
        raise RunError(
            "write_report needs a run folder or an output folder", fix="Pass run=... or output=..."
        )
    inputs = load_inputs(
        run, model=model, bundle=bundle, evaluation=evaluation, split=split, batch_size=batch_size
    )
    load_seconds = time.perf_counter() - t0
    data, sections = build_report(inputs, limits)
    data["timings_seconds"] = {"load_and_score": round(load_seconds, 3), **data["timings_seconds"]}
    seconds = time.perf_counter() - t0
    data["timings_seconds"]["total"] = round(seconds, 3)
    page = W.render_page(data, sections, seconds)
    out_dir.mkdir(parents=True, exist_ok=True)
    html_path = write_text(out_dir / "report.html", page)
    json_path = write_json(out_dir / "report.json", data)
    return ReportResult(html_path, json_path, data, seconds)


def try_write_report(run: str | os.PathLike | None = None, **kwargs) -> Path | None:
    """:func:`write_report`, but a failure is a logged warning, never an exception.

    Called at the end of training and evaluation, where the model and metrics
    are already saved and a report problem must not turn success into a crash.

    Example:
        >>> try_write_report(run.path, model=final, bundle=bundle, evaluation=evaluation)
    """
    try:
        result = write_report(run, **kwargs)
    except KeyboardInterrupt:
        raise
    except Exception as e:
        log.warning(
            "The HTML report could not be written (%s: %s); rerun `cnnlab report %s` "
            "(CNNLAB_DEBUG=1 shows the traceback)",
            type(e).__name__,
            e,
            run or "RUN",
        )
        if os.environ.get("CNNLAB_DEBUG", "") not in ("", "0", "false"):
            log.exception("report failure")
        return None
    log.info("Report: %s (%.1f s)", result.html, result.seconds)
    return result.html
