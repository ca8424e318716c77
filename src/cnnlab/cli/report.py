"""``cnnlab report``: the evaluation report of a run, as one HTML page and a JSON file."""

from __future__ import annotations

import click


@click.command(
    epilog="""\b
Examples:
  cnnlab report runs/20261126-120000-simple_cnn-32          # its test split
  cnnlab report runs/<run> --split val --output reports/val
\b
Sections: summary, learning curves, per-class metrics, confusion matrix,
most-confused pairs, worst mistakes, calibration (ECE, reliability diagram,
temperature scaling), test-time augmentation, Grad-CAM. The page is
self-contained: it opens from disk, offline. `cnnlab train` and
`cnnlab evaluate` write it too.
"""
)
@click.argument("run", type=click.Path(exists=True, file_okay=False))
@click.option(
    "--split",
    default="test",
    show_default=True,
    type=click.Choice(["train", "val", "test"]),
    help="Which split of the run to report on.",
)
@click.option(
    "--output",
    type=click.Path(file_okay=False),
    help="Folder for report.html and report.json [the run folder].",
)
@click.option("-b", "--batch-size", default=128, show_default=True, type=int)
@click.option(
    "--tta-examples",
    default=1000,
    show_default=True,
    type=int,
    help="Largest number of images test-time augmentation is measured on.",
)
def report(run, split, output, batch_size, tta_examples) -> None:
    """Write report.html and report.json for a run folder."""
    from cnnlab.cli.options import show_log
    from cnnlab.evaluation.report import ReportLimits, write_report

    show_log()

    result = write_report(
        run,
        output=output,
        split=split,
        batch_size=batch_size,
        limits=ReportLimits(tta_examples=tta_examples),
    )
    s = result.data["summary"]
    click.echo(
        f"{split}: accuracy {s['accuracy']:.4f}, macro F1 {s['macro_f1']:.4f}, "
        f"ECE {result.data['calibration']['ece']:.4f} on {result.data['num_examples']} images"
    )
    click.echo(f"report: {result.html}  (and {result.json.name}, {result.seconds:.1f} s)")
