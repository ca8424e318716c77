"""``cnnlab predict``: top-k labels for images and folders of images."""

from __future__ import annotations

import click


@click.command(
    epilog="""\b
Examples:
  cnnlab predict runs/<run> photo.jpg
  cnnlab predict runs/<run>/model.keras photos/ --top-k 5 --format csv > predictions.csv
"""
)
@click.argument("model", type=click.Path(exists=True))
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("-k", "--top-k", default=3, show_default=True, type=int)
@click.option(
    "--format",
    "fmt",
    default="table",
    show_default=True,
    type=click.Choice(["table", "csv", "json"]),
)
@click.option("-b", "--batch-size", default=32, show_default=True, type=int)
def predict(model, paths, top_k, fmt, batch_size) -> None:
    """Classify image files and folders with a run folder or .keras model."""
    from cnnlab.cli.options import show_log
    from cnnlab.evaluation import format_predictions
    from cnnlab.evaluation import predict as run_predict

    show_log()

    rows = run_predict(model, list(paths), top_k=top_k, batch_size=batch_size)
    click.echo(format_predictions(rows, fmt), nl=fmt != "csv")
