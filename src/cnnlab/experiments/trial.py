"""One trial in its own process: ``python -m cnnlab.experiments.trial REQUEST.json``.

Each trial trains in a fresh Python process, so it starts from the same state as
``cnnlab train -c best.yaml`` does and repeats it (several Keras runs in one process
do not: the second run of one config already scores differently). The process
reports each epoch's metric to the study's storage itself, asks the pruner, and
writes what it found to the request's ``result`` file. It dies with its worker
(``PR_SET_PDEATHSIG``), so ``kill -9`` of a sweep leaves no orphan training behind.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
from pathlib import Path
from typing import Any

from cnnlab.experiments._quiet import quiet_tensorflow_import


def _die_with_parent(parent: int) -> None:
    """Ask Linux to SIGKILL this process when its parent dies (no-op elsewhere)."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def run_trial(request: dict[str, Any]) -> dict[str, Any]:
    """Train the trial's run folder; return its best metric, pruning and run details."""
    import optuna
    import yaml

    from cnnlab.experiments.pruning import PruningCallback
    from cnnlab.experiments.space import parse_sweep
    from cnnlab.experiments.study import make_pruner
    from cnnlab.run_folder import RunFolder
    from cnnlab.workflows import fine_tune, train

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec = parse_sweep(request["sweep"], "the sweep")
    storage = optuna.storages.RDBStorage(
        request["storage"],
        engine_kwargs=(
            {"connect_args": {"timeout": 60}} if request["storage"].startswith("sqlite") else {}
        ),
    )
    study = optuna.load_study(
        study_name=spec.name,
        storage=storage,
        pruner=make_pruner(spec),
        sampler=optuna.samplers.RandomSampler(),
    )
    trial = optuna.trial.Trial(study, request["trial_id"])
    pruning = PruningCallback(trial, spec.metric)
    run = fine_tune if spec.command == "finetune" else train
    result = run(request["config"], callbacks=[pruning])
    history = RunFolder(result.run_dir).read_history()
    curve = [v for v in history.get(spec.metric, []) if not math.isnan(v)]
    pick = min if spec.direction == "minimize" else max
    test = (result.metrics or {}).get("test") or {}
    return {
        "value": pick(curve) if curve else None,
        "pruned_at": pruning.pruned_at,
        "reason": pruning.reason,
        "config": yaml.safe_load(RunFolder(result.run_dir).config.read_text()),
        "epochs_done": len(curve),
        "test_accuracy": test.get("accuracy"),
        "train_accuracy": history.get("accuracy"),
        "run_dir": str(result.run_dir),
    }


def main(argv: list[str] | None = None) -> int:
    from cnnlab._io import write_json
    from cnnlab.errors import CnnlabError

    args = sys.argv[1:] if argv is None else argv
    request = json.loads(Path(args[0]).read_text())
    _die_with_parent(int(request["parent"]))
    # Ctrl-C is the worker's to handle: it marks the trial interrupted and ends this process.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    quiet_tensorflow_import()
    try:
        out = run_trial(request)
    except CnnlabError as e:
        out = {"error": str(e), "type": type(e).__name__}
    except Exception as e:  # noqa: BLE001 - the worker records it as the trial's failure
        import traceback

        traceback.print_exc()
        out = {"error": f"{type(e).__name__}: {e}", "type": type(e).__name__}
    write_json(request["result"], out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
