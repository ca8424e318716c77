"""``evaluate``: score a trained model, save the results and write the report."""

from __future__ import annotations

from typing import Any

from cnnlab.evaluation.evaluate import EvaluationResult, score_run

__all__ = ["evaluate"]


def evaluate(model_or_run, data: str | None = None, **options: Any) -> EvaluationResult:
    """Evaluate a run folder or ``.keras`` model and write its report.

    Without ``data``, a run is scored on the split it saved (its held-out test
    images by default). With ``data`` (a spec), every image of that source is
    scored, or its ``split`` if it has train/val/test parts. Class names are
    matched by name, so a test folder may hold a subset of classes.

    Args:
        model_or_run: a run folder or a ``.keras`` file.
        data: labelled images to score instead of the run's saved split.
        **options: ``split`` (test), ``batch_size`` (64), ``top_k`` (5), ``output``
            (the results folder), ``skip_bad_images``, ``data_dir``: those of
            :func:`cnnlab.evaluation.evaluate.score_run`.

    Results and ``report.html`` are written to ``<run>/evaluation-<tag>/`` (never
    over an earlier one) or to ``output``; ``report_path`` is the report's path
    (None when it could not be written: a failed report only warns).

    Example:
        >>> result = evaluate("runs/20261126-120000-simple_cnn-32")
        >>> print(result.report())
    """
    from cnnlab.evaluation.report import try_write_report

    scored = score_run(model_or_run, data, **options)
    result = scored.result
    result.report_path = try_write_report(
        scored.loaded.run_dir,
        output=result.output_dir,
        model=scored.loaded.model,
        bundle=scored.bundle,
        evaluation=result,
        split=scored.split,
    )
    return result
