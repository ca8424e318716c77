"""``cnnlab sweep``: a search over any train/finetune keys, one run folder per trial."""

from __future__ import annotations

import click


@click.command(
    epilog="""\b
Examples:
  cnnlab sweep -c sweeps/digits-small.yaml          # 8 trials on builtin:digits, ~2 min
  cnnlab sweep -c sweeps/cifar10-small.yaml         # the optimiser/regularisation study
  cnnlab sweep --resume sweeps/20261130-120000-digits-small   # after Ctrl-C or a crash
  cnnlab sweep -c sweep.yaml --storage postgresql://user:pw@db/optuna   # one per machine
  cnnlab train -c sweeps/<sweep>/best.yaml          # train the best configuration
"""
)
@click.option(
    "-c",
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    help="Sweep file: base config, search space, budgets (see the README).",
)
@click.option(
    "--resume",
    type=click.Path(file_okay=False),
    help="Continue this sweep folder (or join it as another worker).",
)
@click.option(
    "--storage", help="Optuna storage URL shared by workers [sqlite: study.db in the sweep folder]."
)
@click.option("--trials", type=int, help="Finished trials to reach [the file's `trials`].")
@click.option("--timeout", help="Start no trial after this long: 1800, 30m, 2h [none].")
@click.option(
    "--sweeps-dir", default="sweeps", show_default=True, help="Parent folder of sweep folders."
)
@click.option("-v", "--verbose", is_flag=True, help="Also show each trial's epochs.")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and the final result.")
def sweep(config_file, resume, storage, trials, timeout, sweeps_dir, verbose, quiet) -> None:
    """Search hyperparameters with Optuna; every trial is a run folder under the sweep."""
    import cnnlab
    from cnnlab.experiments.space import parse_duration

    seconds = parse_duration(timeout, "--timeout") if timeout is not None else None
    result = cnnlab.sweep(
        config_file,
        resume=resume,
        storage=storage,
        trials=trials,
        timeout=seconds,
        sweeps_dir=sweeps_dir,
        verbose=0 if quiet else 2 if verbose else 1,
    )
    if result.best_trial is not None:
        click.echo(f"best trial {result.best_trial}: {result.best_value:.4f}")
        click.echo(f"best config: {result.best_config}")
    if result.report:
        click.echo(f"report: {result.report}")
    click.echo(f"sweep folder: {result.sweep_dir}  ({result.finished} finished trials)")
