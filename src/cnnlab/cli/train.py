"""``cnnlab train``: every config key is a flag; ``-c config.yaml`` sets defaults."""

from __future__ import annotations

import click

from cnnlab.cli.options import parse_kwargs
from cnnlab.config import (
    AUGMENT_POLICIES,
    OPTIMIZERS,
    PRECISIONS,
    RECIPES,
    RESIZE_MODES,
    SCHEDULES,
    STRATEGIES,
)


@click.command(
    epilog="""\b
Examples:
  cnnlab train                                   # builtin:digits, embedded, ~15 s
  cnnlab train --data folder:cifar10/train --model resnet20 --epochs 30 -b 128
  cnnlab train --data folder:cifar10/train --recipe fast --epochs 10 --model-kwargs width=0.5
                                                 # (scores cifar10/test, the folder beside train/)
  cnnlab train --data csv:labels.csv --image-size 96 --augment standard
  cnnlab train --data folder:cifar10/train --memory-budget 3GB   # micro-batches if needed
  cnnlab train -c config.yaml --learning-rate 3e-4   # flags override the file
  cnnlab train --model simple_cnn --model-kwargs "filters=[32, 64] dropout=0.2"
  cnnlab train --resume runs/20261126-120000-simple_cnn-32   # after a crash
"""
)
@click.option(
    "-c",
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    help="YAML file whose keys are these flags' names (flags override it).",
)
@click.option(
    "--data", help="builtin:NAME, folder:PATH, csv:FILE or tfrecord:DIR [default: builtin:digits]."
)
@click.option("--data-dir", help="Folder with downloaded archives for builtin datasets.")
@click.option(
    "--recipe",
    type=click.Choice(RECIPES),
    help="Defaults for the options not given: fast = airbench94-style training "
    "(airbench model, SGD with ConvMuon kernel steps and the first epochs at 1/2 to 3/4 "
    "size for colour images, lookahead, alternating flips, TTA); auto = fast "
    "for 20-40 px images when no --model is given, else plain [auto].",
)
@click.option(
    "--model",
    help="Architecture name (see `cnnlab models list`) "
    "[default: simple_cnn; airbench under the fast recipe].",
)
@click.option(
    "--model-kwargs",
    multiple=True,
    metavar="KEY=VALUE",
    help="Model option, repeatable; values are YAML (filters=[32,64]).",
)
@click.option("--weights", help="Pretrained weights: 'imagenet' or a file path.")
@click.option("--image-size", help="Size images are resized to: 32 or 64x48 [default: the data's].")
@click.option("--channels", type=int, help="1 or 3 [default: 1 if all images are grayscale].")
@click.option(
    "--resize",
    type=click.Choice(RESIZE_MODES),
    help="Keep aspect ratio by cropping or padding [default: stretch].",
)
@click.option("--val-split", type=float, help="Validation share when the data has none [0.1].")
@click.option("--test-split", type=float, help="Test share when the data has none [0.1].")
@click.option(
    "--test-data",
    help="A separate labelled test set (folder:PATH, csv:FILE) scored "
    "after training, or 'none' [the test/ folder beside a .../train folder].",
)
@click.option(
    "--skip-bad-images",
    is_flag=True,
    default=None,
    help="Train without undecodable files (listed in the run folder).",
)
@click.option(
    "--cache",
    type=click.Choice(["auto", "memory", "none"]),
    help="Cache decoded images in memory [auto: when they fit in 4 GiB].",
)
@click.option(
    "--augment",
    type=click.Choice(AUGMENT_POLICIES),
    help="Augmentation policy for the training split [auto].",
)
@click.option(
    "--flip",
    type=click.Choice(["none", "horizontal", "vertical", "horizontal_and_vertical", "alternating"]),
    help="alternating: each image mirrored every other epoch (fast recipe).",
)
@click.option("--rotation", type=float, help="Random rotation, fraction of a turn (0.05 = 18°).")
@click.option("--zoom", type=float, help="Random zoom factor (0.1 = ±10%).")
@click.option(
    "--translation",
    type=float,
    help="Random shift by whole pixels, up to this fraction of the size.",
)
@click.option("--contrast", type=float, help="Random contrast factor.")
@click.option("--random-crop", type=int, help="Pad by N pixels, then crop back at random.")
@click.option(
    "--progressive-resize",
    type=float,
    metavar="FRACTION",
    help="Train the first FRACTION of the epochs at lower resolution: half of them at 1/2 "
    "of the image side, a fifth at 5/8, the rest at 3/4 (airbench) "
    "[0; fast recipe, colour images: see --recipe].",
)
@click.option("-b", "--batch-size", type=int, help="Images per step [64].")
@click.option(
    "--micro-batch-size",
    type=int,
    help="Compute each batch as micro-batches of this many images, their gradients "
    "accumulated into one step (same effective batch, less memory) [the whole batch, "
    "or what --memory-budget needs].",
)
@click.option(
    "--memory-budget",
    metavar="SIZE",
    help="Peak memory to plan for, e.g. 4GB or 'none'; over it, the largest micro-batch "
    "that fits is chosen [$CNNLAB_MEMORY_BUDGET, else 60% of available memory, 2-4GB].",
)
@click.option("--epochs", type=int, help="Epochs to train [20].")
@click.option(
    "--optimizer",
    "--opt",
    "optimizer",
    type=click.Choice(OPTIMIZERS),
    help="Optimizer [adam]. muon: SGD whose convolution kernels take orthogonalised "
    "steps (the fast recipe's for colour images).",
)
@click.option(
    "--learning-rate",
    "--lr",
    "learning_rate",
    type=float,
    help="Peak learning rate [adam/adamw/rmsprop 1e-3, sgd/muon 0.05].",
)
@click.option("--weight-decay", type=float, help="Decoupled weight decay [0; adamw 0.01].")
@click.option("--momentum", type=float, help="SGD momentum [0.9].")
@click.option("--nesterov/--no-nesterov", default=None, help="Nesterov momentum for SGD [on].")
@click.option(
    "--schedule",
    "--sched",
    "schedule",
    type=click.Choice(SCHEDULES),
    help="LR schedule [cosine; fast recipe: linear warm-up and decay].",
)
@click.option("--warmup-epochs", type=float, help="Linear warm-up length in epochs [0].")
@click.option("--step-epochs", help="Epochs where the step schedule multiplies the LR (10,20).")
@click.option("--step-gamma", type=float, help="Step schedule factor [0.1].")
@click.option(
    "--label-smoothing", "--smoothing", "label_smoothing", type=float, help="Label smoothing [0]."
)
@click.option(
    "--class-weight",
    type=click.Choice(["none", "balanced"]),
    help="Weight classes inversely to their frequency [none].",
)
@click.option(
    "--early-stopping",
    type=int,
    metavar="PATIENCE",
    help="Stop after PATIENCE epochs without improvement [off].",
)
@click.option("--monitor", help="Metric for best checkpoint and early stopping [val_accuracy].")
@click.option("--top-k", type=int, help="k for top-k accuracy [5].")
@click.option("--seed", type=int, help="Seed for splits, initialisation and shuffling [42].")
@click.option(
    "--deterministic",
    is_flag=True,
    default=None,
    help="Deterministic ops (slower; same result every run).",
)
@click.option(
    "--strategy",
    type=click.Choice(STRATEGIES),
    help="tf.distribute strategy [default: one device]; multiworker: the cluster of "
    "TF_CONFIG (see cnnlab launch).",
)
@click.option(
    "--precision",
    type=click.Choice(PRECISIONS),
    help="Compute dtype policy: float32, mixed_bfloat16, or auto (mixed_bfloat16 where the "
    "hardware has bfloat16 units); the saved model is float32 [float32; fast recipe: auto].",
)
@click.option(
    "--backup-dir",
    help="Per-epoch checkpoints go here instead of <run>/checkpoints (a folder every "
    "worker reaches).",
)
@click.option("--runs-dir", help="Parent folder of run folders [runs].")
@click.option("--output", hidden=True, help="Deprecated name of --runs-dir.")
@click.option("--name", help="Run folder name [<timestamp>-<model>-<size>].")
@click.option(
    "--overwrite", is_flag=True, default=None, help="Replace a run folder of the same --name."
)
@click.option(
    "--tensorboard/--no-tensorboard",
    default=None,
    help="TensorBoard event files in <run>/tensorboard/ (tensorboard --logdir runs/) [on].",
)
@click.option("--resume", type=click.Path(file_okay=False), help="Continue this run folder.")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and the final result.")
def train(config_file, resume, quiet, model_kwargs, **options) -> None:
    """Train a CNN and write a run folder with config, split, history, model and metrics."""
    import cnnlab

    options["model_kwargs"] = parse_kwargs(model_kwargs) if model_kwargs else None
    if quiet:
        options["verbose"] = 0
    elif resume:
        options["verbose"] = 1  # how chatty a resumed run is, is the caller's choice
    result = cnnlab.train(config_file, resume=resume, **options)
    if result.run_dir is None:  # a multi-worker run's other workers: the chief reports
        worker = result.metrics.get("multiworker", {})
        click.echo(
            f"worker {worker.get('worker')} of {worker.get('workers')} finished "
            f"(trainable weights {worker.get('weights_fingerprint')})"
        )
        return
    test = result.metrics.get("test")
    if result.evaluation is not None and not quiet:
        click.echo(result.evaluation.report())
    if test:
        click.echo(f"test accuracy {test['accuracy']:.4f}  ({test['num_examples']} images)")
    if result.report:
        click.echo(f"report: {result.report}")
    click.echo(f"run folder: {result.run_dir}")
