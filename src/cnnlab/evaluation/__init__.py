"""Evaluation: metrics, reports and plots for a trained model, and prediction."""

from cnnlab.evaluation.evaluate import EvaluationResult, evaluate, save_evaluation, score
from cnnlab.evaluation.metrics import compute_metrics, format_report
from cnnlab.evaluation.predict import format_predictions, predict

__all__ = ["EvaluationResult", "evaluate", "save_evaluation", "score", "compute_metrics",
           "format_report", "format_predictions", "predict"]  # fmt: skip
