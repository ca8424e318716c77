"""The evaluation report: one HTML page (and a JSON file with the same numbers) per run.

``write_report(run)`` looks at a trained model from every side a user asks
about, in pictures first:

* learning curves (loss, accuracy, train and validation, learning rate);
* per-class precision, recall, F1 and support with macro and weighted averages;
* the confusion matrix as counts and row-normalised, and the most-confused pairs;
* a gallery of the worst mistakes (highest loss);
* calibration: ECE, a reliability diagram, temperature scaling fitted on validation;
* test-time augmentation: accuracy with and without it;
* Grad-CAM heat maps for a few right and wrong predictions;
* a summary of the data and the run (sizes, model, parameters, time, versions).

The HTML is self-contained (inline CSS, images as base64 PNG, no script, no
link outside the file), so it opens from disk, offline, or as an attachment.
Work that grows with the test set (TTA, gallery, Grad-CAM) is bounded by
:class:`ReportLimits` and the page says when it used a sample.

Written to ``<run>/report.html`` and ``report.json`` at the end of training,
to ``<evaluation folder>/report.*`` by ``evaluate``, and by ``cnnlab report RUN``.

One file per job: ``loading`` (what a report needs from a run folder, a model and
its data), ``analysis`` (the numbers), ``figures`` (the pictures), ``html`` (the
page) and ``build`` (the sections in order, and writing the two files).
"""

from cnnlab.evaluation.report.analysis import ReportLimits, most_confused
from cnnlab.evaluation.report.build import (
    ReportResult,
    build_report,
    try_write_report,
    write_report,
)
from cnnlab.evaluation.report.html import SECTION_IDS, SECTIONS
from cnnlab.evaluation.report.loading import ReportInputs, load_inputs, model_inputs

__all__ = [
    "SECTIONS",
    "SECTION_IDS",
    "ReportInputs",
    "ReportLimits",
    "ReportResult",
    "build_report",
    "load_inputs",
    "model_inputs",
    "most_confused",
    "try_write_report",
    "write_report",
]
