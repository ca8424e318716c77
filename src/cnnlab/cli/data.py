"""``cnnlab data``: look at a data source before training on it."""

from __future__ import annotations

import click


@click.group()
def data() -> None:
    """Inspect data sources."""


@data.command("inspect", epilog="""\b
Examples:
  cnnlab data inspect folder:photos
  cnnlab data inspect csv:labels.csv
  cnnlab data inspect builtin:digits
""")
@click.argument("spec")
@click.option("--data-dir", help="Folder with archives for builtin datasets.")
def inspect_cmd(spec, data_dir) -> None:
    """Classes and counts per split, image sizes and modes, undecodable files."""
    from collections import Counter

    from cnnlab.data import open_source, scan_images

    source = open_source(spec, data_dir)
    click.echo(f"{spec}: {len(source)} images, {source.num_classes} classes")
    parts = sorted(set(source.parts) - {""}) or ["(unsplit)"]
    counts = {p: Counter(source.labels[(source.parts == p) if p != "(unsplit)" else slice(None)])
              for p in parts}  # fmt: skip
    width = max(len(c) for c in source.class_names)
    click.echo(f"{'class':<{width}}  " + "  ".join(f"{p:>9}" for p in parts))
    for i, name in enumerate(source.class_names):
        click.echo(f"{name:<{width}}  " + "  ".join(f"{counts[p].get(i, 0):>9}" for p in parts))
    per_class = Counter(source.labels)
    click.echo(f"imbalance (largest / smallest class): "
               f"{max(per_class.values()) / max(1, min(per_class.values())):.2f}")  # fmt: skip
    if not source.is_files:
        click.echo(f"in memory: {source.images.shape[1]}x{source.images.shape[2]}x"
                   f"{source.images.shape[3]} uint8")  # fmt: skip
        return
    infos = scan_images(list(source.paths))
    good = [i for i in infos if i.ok]
    sizes = Counter(f"{i.width}x{i.height}" for i in good).most_common(5)
    modes = Counter(i.mode for i in good).most_common()
    click.echo("sizes (most common): " + ", ".join(f"{s} ×{n}" for s, n in sizes))
    click.echo("colour modes: " + ", ".join(f"{m} ×{n}" for m, n in modes))
    mismatched = [i for i in good if i.extension_mismatch]
    if mismatched:
        click.echo(f"{len(mismatched)} file(s) whose extension disagrees with their format "
                   "(they load fine):")  # fmt: skip
        for i in mismatched[:20]:
            click.echo(f"  {i.path}: really {i.format}")
    bad = [i for i in infos if not i.ok]
    if bad:
        click.echo(f"{len(bad)} file(s) cannot be decoded (train with --skip-bad-images to leave them out):")
        for i in bad:
            click.echo(f"  {i.path}: {i.problem}")
    else:
        click.echo("every file decodes")
