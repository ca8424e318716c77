"""``cnnlab data``: look at a data source before training on it."""

from __future__ import annotations

import click

from cnnlab.config import RESIZE_MODES


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
\b
Per-file results are cached (see `cnnlab data cache --help`): a second check
of unchanged files does not read them again.
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
@click.option(
    "--no-cache",
    is_flag=True,
    help="Read every file, even those an earlier check saw unchanged (also: CNNLAB_NO_CACHE=1).",
)
@click.option("--quiet", is_flag=True, help="No progress bar or progress log lines.")
def inspect_cmd(
    spec, data_dir, output, overwrite, fast, no_near, max_distance, strict, no_cache, quiet
) -> None:
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
        cache=False if no_cache else None,
        quiet=quiet,
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


@data.command(
    "pack",
    epilog="""\b
Examples:
  cnnlab data pack folder:/data/cifar10 --to /data/cifar10-tfr
  cnnlab data pack folder:/data/imagenet --to /data/imagenet-tfr --shards 1024 --image-size 160
  cnnlab train --data tfrecord:/data/cifar10-tfr --recipe fast
\b
Writes <split>-NNNNN-of-MMMMM.tfrecord shards, split.csv and index.json
(classes, image size, counts per split, shard list, the source's checksum),
and the dataset check's inspect.html/json. Undecodable files are left out
(listed in index.json). The split is drawn once, here, and every run on
tfrecord:DIR uses it (runs skip the scan and the check). JPEGs are stored as they are; other
formats as PNG; with --image-size every image is resized and re-encoded.
The folder appears only when complete.
""",
)
@click.argument("spec")
@click.option("--to", "to", required=True, type=click.Path(), help="New or empty folder to write.")
@click.option(
    "--shards",
    type=int,
    default=None,
    help="Training shards (val/test: proportional) [about 128 MB each, at least 8].",
)
@click.option(
    "--image-size",
    type=int,
    default=None,
    help="Resize every image to SIZE x SIZE [keep the files as they are].",
)
@click.option(
    "--resize",
    type=click.Choice(RESIZE_MODES),
    default="stretch",
    show_default=True,
    help="How --image-size changes the aspect ratio.",
)
@click.option(
    "--val-split",
    type=float,
    default=0.1,
    show_default=True,
    help="Validation fraction, when the source has no val split.",
)
@click.option(
    "--test-split",
    type=float,
    default=0.1,
    show_default=True,
    help="Test fraction, when the source has no test split.",
)
@click.option("--seed", type=int, default=42, show_default=True, help="Seed of the split.")
@click.option("--overwrite", is_flag=True, help="Replace --to when it holds a packed folder.")
@click.option("--data-dir", help="Folder with archives for builtin datasets.")
@click.option(
    "--no-check",
    is_flag=True,
    help="Skip the dataset check (duplicates, leakage) kept as inspect.html.",
)
@click.option("--quiet", is_flag=True, help="No progress bar or progress log lines.")
def pack_cmd(
    spec,
    to,
    shards,
    image_size,
    resize,
    val_split,
    test_split,
    seed,
    overwrite,
    data_dir,
    no_check,
    quiet,
) -> None:
    """Write a data source as sharded TFRecords plus index.json (for tfrecord:DIR)."""
    from pathlib import Path

    from cnnlab.data.tfrecord import pack

    index = pack(
        spec,
        to,
        shards=shards,
        image_size=image_size,
        resize=resize,
        val_split=val_split,
        test_split=test_split,
        seed=seed,
        overwrite=overwrite,
        quiet=quiet,
        data_dir=data_dir,
        check=not no_check,
    )
    counts = ", ".join(f"{n:,} {s}" for s, n in index["counts"].items())
    shards_n = sum(len(v) for v in index["shards"].values())
    click.echo(f"packed {counts} into {to} ({shards_n} shards, {index['bytes'] / 1e6:.1f} MB)")
    if index["skipped"]["count"]:
        click.echo(f"left out {index['skipped']['count']} undecodable file(s): see index.json")
    for finding in index["check"] or []:
        click.echo(f"data check: {finding} (see {Path(to) / 'inspect.html'})")
    click.echo(f"train on it: cnnlab train --data tfrecord:{to}")


@data.group(
    "cache",
    epilog="""\b
Examples:
  cnnlab data cache info      # where it is, one file per source folder
  cnnlab data cache clear     # delete it all
\b
The pre-flight scan before training and the dataset check keep each file's
result, keyed by its absolute path, size and modification time, so a second
run on unchanged data decodes nothing; a changed, added or removed file is
rescanned alone. Location: $CNNLAB_CACHE_DIR, default ~/.cache/cnnlab/scan/.
Bypass it with CNNLAB_NO_CACHE=1 (or `data inspect --no-cache`).
""",
)
def cache() -> None:
    """The scan cache: per-file results of the scan and the dataset check."""


@cache.command("info")
def cache_info() -> None:
    """Show where the cache is and what it holds."""
    from cnnlab.data.scan_cache import cache_dir, cache_summary

    click.echo(f"scan cache: {cache_dir()}")
    rows = cache_summary()
    for row in rows:
        click.echo(
            f"  {row['file']}  {row['bytes'] / 1e6:.1f} MB  {row['entries']:,} entries  "
            f"{row['folder']}{'' if row['exists'] else '  (folder gone)'}"
        )
    if not rows:
        click.echo("  (empty)")


@cache.command("clear")
def cache_clear() -> None:
    """Delete every cached result (the next scan decodes every file again)."""
    from cnnlab.data.scan_cache import cache_dir, clear_cache

    removed, size = clear_cache()
    click.echo(f"Removed {removed} cache file(s), {size / 1e6:.1f} MB, from {cache_dir()}")
