"""``cnnlab models``: list and describe the registered architectures."""

from __future__ import annotations

import click


@click.group()
def models() -> None:
    """List and describe architectures."""


@models.command(
    "list",
    epilog="""\b
Examples:
  cnnlab models list
  cnnlab models list 'resnet*'
  cnnlab models list --pretrained            # and whether their weights are here now
  KERAS_HOME=/data/keras cnnlab models list --pretrained 'efficientnet*'
""",
)
@click.argument("pattern", default="*")
@click.option(
    "--pretrained",
    is_flag=True,
    help="Only pretrained backbones, with whether their ImageNet weights are available "
    "offline right now ($KERAS_HOME/models).",
)
def list_cmd(pattern, pretrained) -> None:
    """Registered models matching a glob PATTERN."""
    from cnnlab.models import get_spec, list_models

    names = list_models(pattern, pretrained=True if pretrained else None)
    if not names:
        click.echo(f"no model matches {pattern!r}")
        return
    width = max(len(n) for n in names)
    if pretrained:
        from cnnlab.models.pretrained.weights import cache_dir, weights_status

        statuses = [weights_status(n) for n in names]
        have = sum(s.available for s in statuses)
        click.echo(f"weights cache: {cache_dir()}  ({have} of {len(names)} available now)")
        for n, st in zip(names, statuses):
            spec = get_spec(n)
            mark = "yes" if st.available else "no "
            click.echo(
                f"{n:<{width}}  {spec.default_image_size:>4}px  weights {mark}  {st.describe()}"
            )
        return
    for n in names:
        spec = get_spec(n)
        click.echo(
            f"{n:<{width}}  {spec.family:<14} {spec.default_image_size:>4}px  {spec.description}"
        )


@models.command("info")
@click.argument("name")
@click.option("--num-classes", default=10, show_default=True, type=int)
@click.option("--image-size", default=None, type=int)
@click.option("--channels", default=3, show_default=True, type=int)
def info_cmd(name, num_classes, image_size, channels) -> None:
    """Options, defaults and parameter count of one model."""
    from cnnlab.models import create_model, get_spec

    spec = get_spec(name)
    click.echo(f"{spec.name}: {spec.description}")
    click.echo(
        f"family {spec.family}; default image size {spec.default_image_size}, "
        f"minimum {spec.min_image_size}"
    )
    click.echo("options (model_kwargs):")
    for key, default in spec.options().items():
        click.echo(f"  {key} = {default!r}")
    model = create_model(name, num_classes, image_size or spec.default_image_size, channels)
    click.echo(
        f"parameters: {model.count_params():,} ({num_classes} classes, "
        f"{model.input_shape[1]}x{model.input_shape[2]}x{channels})"
    )
