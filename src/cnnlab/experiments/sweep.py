"""``sweep``: an Optuna study whose trials are ordinary cnnlab runs.

    sweeps/20261130-120000-digits-small/
      sweep.yaml        the sweep file as given (``--resume`` reads it)
      sweep.json        study name, storage, when and how it was started
      study.db          the Optuna study (SQLite), unless --storage names another database
      trials/trial-0000/  one run folder per trial: config, history, model, metrics, report
      best.yaml         the best trial's resolved config: ``cnnlab train -c best.yaml``
      trials.csv        one row per trial: number, state, value, parameters, run folder
      sweep.html        the sweep report

Workers share a study through its storage: ``cnnlab sweep --resume SWEEP`` (or
another ``cnnlab sweep -c FILE --storage URL`` on another machine) runs further
trials of the same study; Optuna hands each worker different trials.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from cnnlab._io import read_json, unique_dir, write_json, write_text
from cnnlab.config import dump_yaml
from cnnlab.errors import ConfigError, RunError
from cnnlab.experiments.space import SweepSpec, load_sweep, parse_sweep, suggest, trial_config

log = logging.getLogger("cnnlab")

MAX_CONSECUTIVE_FAILURES = 3


class SweepFolder:
    """Paths inside a sweep folder."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    spec = property(lambda self: self.path / "sweep.yaml")
    info = property(lambda self: self.path / "sweep.json")
    db = property(lambda self: self.path / "study.db")
    trials = property(lambda self: self.path / "trials")
    best = property(lambda self: self.path / "best.yaml")
    csv = property(lambda self: self.path / "trials.csv")
    report = property(lambda self: self.path / "sweep.html")

    @property
    def default_storage(self) -> str:
        return f"sqlite:///{self.db.resolve()}"

    @classmethod
    def open(cls, path: str | Path) -> SweepFolder:
        folder = cls(path)
        if not folder.info.is_file() or not folder.spec.is_file():
            raise RunError(
                f"{folder.path} is not a cnnlab sweep folder (no sweep.json and sweep.yaml)",
                expected="a folder written by `cnnlab sweep`, e.g. sweeps/<time>-<name>",
                fix="Pass the sweep folder that `cnnlab sweep` printed",
            )
        return folder


@dataclass
class SweepResult:
    """What ``sweep`` returns."""

    sweep_dir: Path
    study: Any  # the optuna.Study
    finished: int  # complete + pruned trials in the study
    best_trial: int | None
    best_value: float | None
    best_config: Path | None  # best.yaml
    report: Path | None  # sweep.html


def _read_spec(config) -> SweepSpec:
    if isinstance(config, SweepSpec):
        return config
    if isinstance(config, dict):
        return parse_sweep(config, "the sweep mapping")
    if config is None:
        raise ConfigError("No sweep file given", fix="Pass -c sweep.yaml, or --resume SWEEP")
    return load_sweep(config)


def _check_base(spec: SweepSpec) -> None:
    """Fail before the first trial on a base config that no trial could run."""
    if spec.command != "train":
        return
    from cnnlab.config import resolve_config

    resolve_config(trial_config(spec, {}))


def sweep(
    config: str | Path | dict | SweepSpec | None = None,
    *,
    resume: str | Path | None = None,
    storage: str | None = None,
    trials: int | None = None,
    timeout: float | None = None,
    sweeps_dir: str | Path = "sweeps",
    verbose: int = 1,
) -> SweepResult:
    """Run a hyperparameter sweep: an Optuna study whose trials are cnnlab runs.

    Args:
        config: a sweep file (YAML path), its mapping, or a :class:`SweepSpec`.
        resume: a sweep folder to continue (or to join as another worker).
        storage: an Optuna storage URL (``postgresql://...``, ``sqlite:///...``);
            default: ``study.db`` in the sweep folder.
        trials: finished trials to reach (overrides the file's ``trials``).
        timeout: seconds after which this process starts no new trial.
        sweeps_dir: parent folder of new sweep folders.
        verbose: 0 warnings only, 1 one line per trial, 2 also each trial's epochs.

    Returns:
        A :class:`SweepResult`; ``best.yaml`` and ``sweep.html`` are in its folder.
    """
    from cnnlab.experiments.study import load_study, redact

    _setup_logging(verbose)
    if resume is not None:
        if config is not None:
            raise ConfigError(
                "--resume continues a sweep with its own sweep.yaml; it cannot also take -c",
                fix="Drop -c",
            )
        folder = SweepFolder.open(resume)
        spec = load_sweep(folder.spec)
        info = read_json(folder.info)
        if storage is None:
            if info.get("storage_redacted"):
                raise ConfigError(
                    f"The sweep {folder.path} keeps its study in {info['storage']}, whose "
                    "password is not stored",
                    fix="Pass --storage with the full URL",
                )
            storage = info.get("storage") or folder.default_storage
    else:
        spec = _read_spec(config)
    if trials is not None:
        spec.trials = trials
    if timeout is not None:
        spec.timeout = timeout
    _check_base(spec)
    if resume is None:
        folder = SweepFolder(
            unique_dir(Path(sweeps_dir) / f"{time.strftime('%Y%m%d-%H%M%S')}-{spec.name}")
        )
        folder.path.mkdir(parents=True)
        write_text(folder.spec, yaml.safe_dump(spec.raw, sort_keys=False))
        shown = redact(storage) if storage else None
        write_json(
            folder.info,
            {
                "name": spec.name,
                "storage": shown,
                "storage_redacted": bool(storage and shown != storage),
                "created": time.strftime("%Y-%m-%d %H:%M:%S"),
                "command": spec.command,
            },
        )
        storage = storage or folder.default_storage
    study = load_study(spec, storage)
    log.info(
        "Sweep %s: study '%s' in %s, %s sampler, %s pruner, metric %s (%s)",
        folder.path,
        spec.name,
        redact(storage),
        spec.sampler,
        spec.pruner["type"],
        spec.metric,
        spec.direction,
    )
    try:
        _run_trials(study, spec, folder, storage, verbose)
    except KeyboardInterrupt:
        _requeue_interrupted(study)
        log.warning(
            "Interrupted. Finished trials are kept in the study; continue with: "
            "cnnlab sweep --resume %s",
            folder.path,
        )
        _finish(study, spec, folder)
        raise
    return _finish(study, spec, folder)


def _requeue_interrupted(study) -> None:
    """Queue the parameters of this worker's trial that Ctrl-C stopped (Optuna marked it
    failed) so that ``--resume`` runs them again."""
    from optuna.trial import TrialState

    from cnnlab.experiments.study import RETRY, worker_id

    for t in study.get_trials(deepcopy=False):
        mine = t.user_attrs.get("worker") == worker_id()
        if mine and t.state == TrialState.FAIL and t.user_attrs.get("interrupted"):
            if not any(
                x.system_attrs.get("retry_history", [None])[-1] == t.number
                for x in study.get_trials(deepcopy=False)
            ):
                RETRY(study, t)


def _budget_left(study, spec: SweepSpec, started: float) -> str | None:
    """Why no further trial should start, or None."""
    from optuna.trial import TrialState

    from cnnlab.experiments.study import FINISHED, count

    finished = count(study, FINISHED)
    running = count(study, (TrialState.RUNNING,))
    target = spec.trials
    if spec.sampler == "grid":
        target = min(target or spec.grid_size(), spec.grid_size())
    if target is not None and finished + running >= target:
        if running:
            return f"{finished} trials finished and {running} running in other workers"
        return f"{finished} of {target} trials finished"
    if spec.timeout is not None and time.time() - started >= spec.timeout:
        return f"the time budget of {spec.timeout:.0f} s is spent"
    return None


def _run_trials(study, spec: SweepSpec, folder: SweepFolder, storage: str, verbose: int) -> None:
    import optuna
    from optuna.trial import TrialState

    from cnnlab.experiments.study import recover_dead_trials, worker_id

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # failed trials: cnnlab says why, once
    started = time.time()
    failures = 0
    errors: list[BaseException] = []

    def objective(trial):
        try:
            return _objective(trial, spec, folder, storage, verbose)
        except KeyboardInterrupt:
            trial.set_user_attr("interrupted", True)
            raise
        except Exception as e:  # noqa: BLE001 - recorded; the sweep goes on
            errors.append(e)
            raise

    while True:
        recover_dead_trials(study)
        stop = _budget_left(study, spec, started)
        if stop:
            log.info("Sweep stops: %s", stop)
            return
        errors.clear()
        study.optimize(objective, n_trials=1, catch=(Exception,))
        mine = [
            t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("worker") == worker_id()
        ]
        if mine and mine[-1].state == TrialState.FAIL and errors:
            failures += 1
            e = errors[-1]
            log.warning("Trial %d failed: %s", mine[-1].number, e)
            if failures >= MAX_CONSECUTIVE_FAILURES:
                raise RunError(
                    f"The last {failures} trials of sweep {folder.path} failed; the last one "
                    f"with: {e}",
                    fix="Fix the base config or the search space (see the trials' run folders)",
                ) from e
        else:
            failures = 0


def _objective(trial, spec: SweepSpec, folder: SweepFolder, storage: str, verbose: int) -> float:
    """One trial: sample, train its run folder in a fresh process, return the best metric."""
    import optuna

    from cnnlab.experiments.study import worker_id

    trial.set_user_attr("worker", worker_id())
    trial.set_user_attr("interrupted", False)  # a retry starts with its original's attributes
    values = suggest(trial, spec)
    config = trial_config(spec, values)
    # verbose 2 shows each trial's epochs; below that, one line per trial
    config.update(
        runs_dir=str(folder.trials.resolve()),
        name=f"trial-{trial.number:04d}",
        verbose=2 if verbose >= 2 else 0,
    )
    trial.set_user_attr("run_dir", str((folder.trials / config["name"]).resolve()))
    log.info("Trial %d: %s", trial.number, ", ".join(f"{k}={v}" for k, v in values.items()))
    out = _run_in_process(trial, spec, config, storage)
    if "error" in out:
        error = RunError if out.get("type") == "RunError" else ConfigError
        raise error(f"Trial {trial.number} ({trial.user_attrs['run_dir']}): {out['error']}")
    trial.set_user_attr("config", out["config"])
    trial.set_user_attr("epochs_done", out["epochs_done"])
    for key in ("test_accuracy", "train_accuracy"):
        if out.get(key) is not None:
            trial.set_user_attr(key, out[key])
    if out["pruned_at"] is not None:
        log.info("Trial %d %s", trial.number, out["reason"])
        trial.set_user_attr("pruned_at_epoch", out["pruned_at"])
        raise optuna.TrialPruned(out["reason"])
    if out["value"] is None:
        raise RunError(f"Trial {trial.number} recorded no {spec.metric}")
    log.info("Trial %d finished: best %s %.4f", trial.number, spec.metric, out["value"])
    return float(out["value"])


def _run_in_process(trial, spec: SweepSpec, config: dict, storage: str) -> dict[str, Any]:
    """Run :mod:`cnnlab.experiments.trial` on this trial and return its result file."""
    import os
    import subprocess
    import sys
    import tempfile

    with tempfile.TemporaryDirectory(prefix="cnnlab-trial-") as tmp:
        request, result = Path(tmp) / "request.json", Path(tmp) / "result.json"
        write_json(
            request,
            {
                "sweep": spec.raw,
                "storage": storage,
                "trial_id": trial._trial_id,
                "config": config,
                "result": str(result),
                "parent": os.getpid(),
            },
        )
        proc = subprocess.run(
            [sys.executable, "-m", "cnnlab.experiments.trial", str(request)],
            stdin=subprocess.DEVNULL,
        )
        if proc.returncode == 130 or proc.returncode == -2:
            raise KeyboardInterrupt
        if not result.is_file():
            return {
                "error": f"the trial's process ended with exit status {proc.returncode}",
                "type": "RunError",
            }
        return read_json(result)


def _finish(study, spec: SweepSpec, folder: SweepFolder) -> SweepResult:
    """best.yaml, trials.csv and sweep.html from the study as it stands."""
    from cnnlab.experiments.report import try_write_report, write_trials_csv
    from cnnlab.experiments.study import FINISHED, best_config, count

    found = best_config(study, spec)
    best_path = None
    if found is not None:
        best, config = found
        cmd = "finetune" if spec.command == "finetune" else "train"
        header = (
            f"# Best trial {best.number} of sweep '{spec.name}': {spec.metric} "
            f"{best.value:.4f}\n# Repeat it: cnnlab {cmd} -c best.yaml\n"
        )
        best_path = write_text(folder.best, header + dump_yaml(config))
    write_trials_csv(study, spec, folder.csv)
    report = try_write_report(study, spec, folder)
    finished = count(study, FINISHED)
    if found is not None:
        log.info(
            "Best trial %d: %s %.4f; config %s",
            found[0].number,
            spec.metric,
            found[0].value,
            best_path,
        )
    log.info("Sweep folder: %s (%d finished trials)", folder.path, finished)
    return SweepResult(
        folder.path,
        study,
        finished,
        found[0].number if found else None,
        found[0].value if found else None,
        best_path,
        report,
    )


def _setup_logging(verbose: int) -> None:
    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("cnnlab: %(message)s"))
        log.addHandler(handler)
    log.setLevel(logging.INFO if verbose else logging.WARNING)
