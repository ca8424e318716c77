"""``cnnlab export``: a run's model to deployment formats, each checked for parity."""

from __future__ import annotations

import click

FORMAT_HELP = "all, or a comma list of: keras, savedmodel, tflite, tflite-fp16, tflite-int8, onnx"


@click.command(
    epilog="""\b
Examples:
  cnnlab export runs/<run>                         # every format, into runs/<run>/export/
  cnnlab export runs/<run> --format onnx,tflite-int8 --output deploy/
  cnnlab export runs/<run>/model.keras --data folder:holdout/
"""
)
@click.argument("model_or_run", type=click.Path(exists=True))
@click.option("-f", "--format", "formats", default="all", show_default=True, help=FORMAT_HELP)
@click.option(
    "-o", "--output", type=click.Path(file_okay=False), help="Folder for the files [<run>/export]."
)
@click.option(
    "--data", help="Check parity on these labelled images instead of the run's held-out split."
)
@click.option(
    "--max-images",
    default=512,
    show_default=True,
    type=int,
    help="Images the parity check runs on.",
)
@click.option(
    "--representative-images",
    default=200,
    show_default=True,
    type=int,
    help="Training images (stratified by class) that calibrate int8.",
)
@click.option("--data-dir", help="Folder with archives for builtin datasets.")
def export(
    model_or_run, formats, output, data, max_images, representative_images, data_dir
) -> None:
    """Export a run folder or .keras model and check each file against the Keras model."""
    import cnnlab
    from cnnlab.cli.options import show_log
    from cnnlab.export.exporter import ExportParityError

    show_log()

    try:
        result = cnnlab.export_model(
            model_or_run,
            formats,
            output,
            data=data,
            data_dir=data_dir,
            max_images=max_images,
            representative_images=representative_images,
        )
    except ExportParityError as e:
        click.echo(e.result.table())  # the figures first, the error and its fix last
        raise
    click.echo(result.table())
    click.echo(f"files: {result.output_dir}  (labels.txt, export.json)")
