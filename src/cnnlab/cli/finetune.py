"""``cnnlab finetune`` and ``cnnlab lr-find``: the pretrained-backbone recipe and the LR sweep.

Both take ``cnnlab train``'s flags (copied from that command, so they never
drift apart) plus their own.
"""

from __future__ import annotations

import copy

import click

from cnnlab.cli.options import parse_kwargs
from cnnlab.cli.train import train as _train_command

_HELP = {
    "model": "Pretrained backbone (see `cnnlab models list --pretrained`) [mobilenet].",
    "weights": "'imagenet' (Keras' cache, $KERAS_HOME/models), a weights file, or 'none' "
    "[imagenet].",
    "epochs": "Stage-2 epochs: top blocks unfrozen, lower rate [10].",
    "learning_rate": "Stage-1 (head) learning rate [adam/adamw/rmsprop 1e-3, sgd 0.05].",
    "image_size": "Size images are resized to [the backbone's default, e.g. 224].",
    "early_stopping": "Stop a stage after PATIENCE epochs without improvement [off].",
}


def _train_params(keep=None, drop=("resume", "recipe")) -> list[click.Parameter]:
    """Copies of `cnnlab train`'s options, with help adjusted to fine-tuning."""
    out = []
    for param in _train_command.params:
        if param.name in drop or (keep is not None and param.name not in keep):
            continue
        p = copy.copy(param)
        if p.name in _HELP:
            p.help = _HELP[p.name]
        out.append(p)
    return out


@click.command(
    "finetune",
    epilog="""\b
Examples:
  cnnlab finetune --data folder:flowers --image-size 160          # mobilenet, ImageNet weights
  cnnlab finetune --data folder:flowers --model efficientnet_lite0 --epochs 5
  cnnlab finetune --data folder:insects/train --head-only    # frozen features + logistic head
  cnnlab finetune --data folder:photos --model resnet50 --unfreeze 0.5 --layer-decay 0.8
  cnnlab finetune --data folder:photos --weights ~/Downloads/resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5 --model resnet50
  cnnlab lr-find --data folder:flowers --model mobilenet --image-size 160
                                              # pick --learning-rate first

\b
Stage 1 fits a new head on the frozen backbone: on features computed once
(when no augmentation comes before the backbone: "feature path") it is fitted
as logistic regression to convergence, C chosen by k-fold cross-validation.
Stage 2 unfreezes the top blocks (BatchNorm stays frozen) at --stage2-learning-rate
when a validation split can judge it (1,000 images or more, or --val-split
given) and is kept only when it beats stage 1 there. Below 1,000 images no
validation split is carved; with a separate test set no test split is carved.
The run logs what it decided and why ("Decision: ...") and writes decisions.json.
Offline: --weights imagenet reads $KERAS_HOME/models/<file>; a missing file is
named in the error, with the URL to fetch it from.
""",
)
@click.option(
    "--freeze-epochs",
    type=int,
    help="Stage-1 epochs when the head is trained by gradient descent (--head-fit epochs, "
    "or augmentation in stage 1) [10]; 0 skips stage 1.",
)
@click.option(
    "--unfreeze",
    metavar="N|FRACTION|all",
    help="Stage 2 trains the top N blocks, a fraction of them, or all [0.25]; 0 skips it.",
)
@click.option(
    "--stage2-learning-rate", type=float, help="Stage-2 learning rate [stage-1 rate / 10]."
)
@click.option("--stage2-lr", type=float, hidden=True, help="Deprecated name of the above.")
@click.option(
    "--layer-decay",
    type=float,
    help="Layer-wise rates: each unfrozen block below the top gets this factor more [off].",
)
@click.option(
    "--stage1-augment/--no-stage1-augment",
    default=None,
    help="Augment in stage 1 too (runs the backbone every batch) [off].",
)
@click.option(
    "--feature-cache",
    type=click.Choice(["auto", "off"]),
    help="auto: compute frozen-backbone features once when possible [auto].",
)
@click.option(
    "--head-fit",
    type=click.Choice(["auto", "epochs"]),
    help="auto: on cached features, fit the head as logistic regression (L-BFGS, C by k-fold "
    "cross-validation); epochs: train it --freeze-epochs epochs [auto].",
)
@click.option(
    "--head-only",
    is_flag=True,
    default=None,
    help="Stage 1 alone: the frozen-feature logistic-regression classifier, no fine-tuning.",
)
def finetune(config_file, quiet, model_kwargs, **options) -> None:
    """Fine-tune a pretrained backbone in two stages; same run folder as `cnnlab train`."""
    import cnnlab

    options["model_kwargs"] = parse_kwargs(model_kwargs) if model_kwargs else None
    if quiet:
        options["verbose"] = 0
    result = cnnlab.fine_tune(config_file, **options)
    stages = result.metrics.get("stages", {})
    test = result.metrics.get("test")
    if result.evaluation is not None and not quiet:
        click.echo(result.evaluation.report())
    for key, stage in stages.items():
        monitor = result.metrics.get("monitor", "val_accuracy")
        value = stage.get(monitor)
        extra = f", test accuracy {stage['test_accuracy']:.4f}" if "test_accuracy" in stage else ""
        path = f" ({stage['path']} path)" if "path" in stage else ""
        if stage.get("head_fit"):
            path = f" (features path, logistic head C={stage['C']:g})"
        click.echo(
            f"stage {key}{path}: best {monitor} {value:.4f}{extra}"
            if value is not None
            else f"stage {key}: no epochs"
        )
    if result.metrics.get("classifier"):
        click.echo(f"classifier kept: {result.metrics['classifier']}")
    if test:
        click.echo(f"test accuracy {test['accuracy']:.4f}  ({test['num_examples']} images)")
    click.echo(f"run folder: {result.run_dir}")


finetune.params = _train_params() + finetune.params


_LR_FIND_KEEP = (
    "config_file",
    "data",
    "data_dir",
    "model",
    "model_kwargs",
    "weights",
    "image_size",
    "channels",
    "resize",
    "val_split",
    "test_split",
    "skip_bad_images",
    "cache",
    "batch_size",
    "optimizer",
    "weight_decay",
    "momentum",
    "nesterov",
    "label_smoothing",
    "seed",
    "runs_dir",
    "output",
    "quiet",
)


@click.command(
    "lr-find",
    epilog="""\b
Examples:
  cnnlab lr-find --data folder:flowers --model mobilenet --image-size 160
  cnnlab lr-find --data builtin:digits --model simple_cnn --steps 80
  cnnlab lr-find --data folder:flowers --model resnet50 --stage full --end-learning-rate 0.1

\b
Trains a throw-away model for --steps batches while the learning rate grows
from --start-learning-rate to --end-learning-rate, then writes lr_find.png (loss against rate),
lr_find.csv and lr_find.json and prints the suggested rate (the minimum of the
smoothed loss / 10). Pass it on as --learning-rate.
""",
)
@click.option("--start-learning-rate", type=float, help="Lowest rate of the sweep [1e-7].")
@click.option("--end-learning-rate", type=float, help="Highest rate of the sweep [1.0].")
@click.option("--start-lr", type=float, hidden=True, help="Deprecated: --start-learning-rate.")
@click.option("--end-lr", type=float, hidden=True, help="Deprecated: --end-learning-rate.")
@click.option(
    "--steps", "num_steps", type=int, default=100, show_default=True, help="Batches in the sweep."
)
@click.option(
    "--stage",
    type=click.Choice(["auto", "head", "full"]),
    default="auto",
    show_default=True,
    help="head: the new head on the frozen backbone (pretrained models); full: every layer.",
)
def lr_find(config_file, quiet, model_kwargs, **options) -> None:
    """Sweep the learning rate, plot loss against it, and suggest one."""
    import cnnlab

    options["model_kwargs"] = parse_kwargs(model_kwargs) if model_kwargs else None
    options["verbose"] = 0 if quiet else 1
    # Options not given are left out, so that lr_find's defaults apply.
    result = cnnlab.lr_find(config_file, **{k: v for k, v in options.items() if v is not None})
    if result.suggestion:
        click.echo(
            f"suggested learning rate: {result.suggestion:.3g}  (loss lowest at "
            f"{result.min_loss_lr:.3g}; steepest descent at "
            f"{result.steepest:.3g})"
            if result.steepest
            else f"suggested learning rate: {result.suggestion:.3g}"
        )
    else:
        click.echo("no suggestion: the sweep was too short; raise --steps or widen the range")
    click.echo(f"plot: {result.plot}")


lr_find.params = _train_params(keep=_LR_FIND_KEEP) + lr_find.params
