"""Evaluation: metrics, reports and plots for a trained model, and prediction."""

from cnnlab.evaluation.evaluate import EvaluationResult, save_evaluation, score, score_run
from cnnlab.evaluation.metrics import compute_metrics, format_report
from cnnlab.evaluation.predict import format_predictions, predict

__all__ = [
    "EvaluationResult",
    "compute_metrics",
    "format_predictions",
    "format_report",
    "predict",
    "save_evaluation",
    "score",
    "score_run",
]
