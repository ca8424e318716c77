"""``cnnlab compare``: key metrics, settings and times of several runs, curves overlaid."""

from __future__ import annotations

import click


@click.command(
    epilog="""\b
Examples:
  cnnlab compare runs/*                       # every run; writes ./compare-<time>/
  cnnlab compare runs/a runs/b --output cmp   # cmp/compare.html, .png, .json, .csv
"""
)
@click.argument("runs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option(
    "--output",
    type=click.Path(file_okay=False),
    help="Folder for compare.html/.png/.json/.csv [./compare-<timestamp>].",
)
@click.option("--no-files", is_flag=True, help="Only print the table.")
def compare(runs, output, no_files) -> None:
    """Compare run folders: one table of metrics, settings and times, and their learning curves."""
    import time
    from pathlib import Path

    from cnnlab.evaluation.compare import compare_runs, format_table, write_comparison

    click.echo(format_table(compare_runs(list(runs))))
    if no_files:
        return
    out = Path(output) if output else Path(f"compare-{time.strftime('%Y%m%d-%H%M%S')}")
    written = write_comparison(list(runs), out)
    click.echo(
        f"\ncomparison: {written['html']}  (and "
        + ", ".join(p.name for k, p in written.items() if k != "html")
        + ")"
    )
