"""``cnnlab launch``: run a command as a multi-worker cluster of local processes."""

from __future__ import annotations

import click


@click.command(context_settings={"ignore_unknown_options": True})
@click.option(
    "--workers",
    "-n",
    type=int,
    default=2,
    show_default=True,
    help="Worker processes to start on 127.0.0.1.",
)
@click.option(
    "--logs",
    type=click.Path(file_okay=False),
    help="Keep every worker's output in LOGS/worker-I.log [temporary].",
)
@click.option(
    "--pin/--no-pin",
    default=False,
    help="Pin worker i to CPU core i (fair comparisons on one machine).",
)
@click.argument("command", nargs=-1, type=click.UNPROCESSED, required=True)
def launch(workers, logs, pin, command) -> int:
    """Start WORKERS copies of a cnnlab command as one tf.distribute cluster.

    \b
    Every worker gets a TF_CONFIG naming all of them (free ports on 127.0.0.1);
    worker 0 is the chief: it writes the run folder and its output is shown here.
    If one worker dies, all are stopped; the exit status is the chief's.
    \b
      cnnlab launch --workers 2 -- train --data builtin:digits --epochs 5
      cnnlab launch --workers 2 -- train --resume runs/<run>     # after a crash
    \b
    On several machines, set TF_CONFIG on each host and run the same
    `cnnlab train --strategy multiworker ...` there (README: Multi-worker training).
    """
    import os

    from cnnlab.training.launch import launch as run

    cpus = None
    if pin:
        cores = sorted(os.sched_getaffinity(0))
        cpus = [{cores[i % len(cores)]} for i in range(workers)]
    return run(list(command), workers, logs=logs, cpus=cpus)
