"""``cnnlab evaluate``: per-class table, confusion matrix and metrics for a trained model."""

from __future__ import annotations

import click


@click.command(
    epilog="""\b
Examples:
  cnnlab evaluate runs/20261126-120000-simple_cnn-32          # its saved test split
  cnnlab evaluate runs/<run> --data folder:cifar10/test       # other labelled images
  cnnlab evaluate model.keras --data csv:holdout.csv --top-k 3
"""
)
@click.argument("model_or_run", type=click.Path(exists=True))
@click.option("--data", help="Score these images instead of the run's saved split.")
@click.option(
    "--split",
    default="test",
    show_default=True,
    type=click.Choice(["train", "val", "test"]),
    help="Which split to score.",
)
@click.option("-b", "--batch-size", default=64, show_default=True, type=int)
@click.option("--top-k", default=5, show_default=True, type=int)
@click.option(
    "--output",
    type=click.Path(file_okay=False),
    help="Folder for the results [<run>/evaluation-<data>, never overwritten].",
)
@click.option("--skip-bad-images", is_flag=True, help="Score without undecodable files.")
@click.option("--data-dir", help="Folder with archives for builtin datasets.")
def evaluate(model_or_run, **options) -> None:
    """Evaluate a run folder or .keras model: loss, accuracy, top-k, per-class P/R/F1."""
    import cnnlab
    from cnnlab.cli.options import show_log

    show_log()
    result = cnnlab.evaluate(model_or_run, **options)
    click.echo(result.report())
    click.echo(
        f"results: {result.output_dir}  (metrics.json, classification_report.txt, "
        "confusion_matrix.png, predictions.csv)"
    )
    if result.report_path:
        click.echo(f"report: {result.report_path}")
