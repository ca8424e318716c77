"""``cnnlab data``: look at a data source before training on it."""

from __future__ import annotations

import click


@click.group()
def data() -> None:
    """Inspect data sources."""


@data.command(
    "inspect",
    epilog="""\b
Examples:
  cnnlab data inspect folder:photos                # writes ./inspect-photos/
  cnnlab data inspect folder:cifar10 --output checks/cifar10
  cnnlab data inspect csv:labels.csv --fast        # JPEGs decoded at reduced scale
  cnnlab data inspect folder:photos --strict       # exit status 1 on leakage or bad files
\b
Checks: images per class and split, imbalance, sizes and colour modes,
undecodable files, extension vs real format, EXIF rotation, exact and near
duplicates (resized / re-encoded copies) within and across splits, and names
every train/test leakage pair. Writes inspect.html, inspect.json and
duplicates.csv (leakage.csv when there is leakage).
""",
)
@click.argument("spec")
@click.option("--data-dir", help="Folder with archives for builtin datasets.")
@click.option(
    "--output",
    type=click.Path(file_okay=False),
    help="Folder for inspect.html/json and the CSVs [./inspect-<name>, never overwritten].",
)
@click.option("--overwrite", is_flag=True, help="Replace the results already in --output.")
@click.option(
    "--fast",
    is_flag=True,
    help="Decode JPEGs at reduced scale (several times faster on large photos; "
    "truncated files may go unnoticed).",
)
@click.option("--no-near", is_flag=True, help="Skip the near-duplicate (perceptual hash) search.")
@click.option(
    "--max-distance",
    type=int,
    default=None,
    help="Largest pHash Hamming distance (of 63 bits) for a near duplicate [10].",
)
@click.option(
    "--strict",
    is_flag=True,
    help="Exit with status 1 when files cannot be decoded, copies leak across splits "
    "or copies carry different labels.",
)
def inspect_cmd(spec, data_dir, output, overwrite, fast, no_near, max_distance, strict) -> None:
    """Check a data source: counts, sizes, bad files, EXIF rotation, duplicates, leakage."""
    from pathlib import Path

    from cnnlab.data.inspect import DEFAULT_HASH_DISTANCE, default_output_dir, inspect_data
    from cnnlab.errors import DataError

    out = Path(output) if output else default_output_dir(spec)
    if output and (out / "inspect.json").exists() and not overwrite:
        raise DataError(
            f"{out} already holds the results of a data check (inspect.json)",
            fix="Choose another --output, or pass --overwrite to replace them",
        )
    report = inspect_data(
        spec,
        data_dir=data_dir,
        full_decode=not fast,
        near_duplicates=not no_near,
        max_distance=DEFAULT_HASH_DISTANCE if max_distance is None else max_distance,
    )
    click.echo(report.format_text())
    written = report.write(out)
    click.echo(
        f"\nresults: {written['html']}  (and inspect.json, "
        + ", ".join(p.name for k, p in written.items() if k not in ("html", "json"))
        + ")"
    )
    if strict and (report.undecodable or report.leakage or report.label_conflicts):
        click.get_current_context().exit(1)
