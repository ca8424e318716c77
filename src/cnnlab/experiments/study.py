"""The Optuna side of a sweep: storage, sampler, pruner, trial recovery, the pruning callback.

A study lives in a database (SQLite in the sweep folder by default, any URL
Optuna accepts with ``--storage``). Every trial records the worker that runs it
(``host:pid``) and beats a heartbeat into the database, so a trial whose process
died (Ctrl-C, ``kill -9``, a lost machine) is marked failed and run again with
the same parameters, and is never counted as finished.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import time
import warnings
from typing import Any

import optuna
from optuna.trial import TrialState

from cnnlab.errors import ConfigError
from cnnlab.experiments.space import SweepSpec

log = logging.getLogger("cnnlab")

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
# Keys of a trial's config that place its run folder or set its chattiness; best.yaml drops them.
PLACEMENT_KEYS = ("runs_dir", "output", "name", "overwrite", "verbose")
HEARTBEAT_SECONDS = 10
GRACE_SECONDS = 60  # a trial silent this long on another machine is taken as dead
RETRIES = 2  # runs of one parameter set interrupted by a dead worker before giving up on it
# Queues a dead worker's trial again (same parameters, state WAITING), RETRIES times at most.
with warnings.catch_warnings():  # "experimental" since Optuna 2.8: the documented way to retry
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
    RETRY = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=RETRIES)


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def open_storage(url: str):
    """An RDB storage with heartbeats; SQLite waits for the lock instead of failing at once
    when several workers write."""
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        kwargs = {"connect_args": {"timeout": 60}}
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # cnnlab logs what happens itself
    for attempt in range(5):
        try:
            with warnings.catch_warnings():  # heartbeats are "experimental" since Optuna 2.9
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(
                    url,
                    engine_kwargs=kwargs,
                    heartbeat_interval=HEARTBEAT_SECONDS,
                    grace_period=GRACE_SECONDS,
                    heartbeat_stale_trial_callback=RETRY,
                )
        except Exception as e:  # noqa: BLE001 - sqlalchemy's OperationalError, re-raised below
            # Workers starting together on a new database all create its tables; the
            # losers find them made ("table studies already exists", "UNIQUE constraint
            # failed: alembic_version") and only need to open it again.
            racing = type(e).__module__.startswith("sqlalchemy") and (
                "already exists" in str(e) or "UNIQUE constraint" in str(e) or "locked" in str(e)
            )
            if not racing or attempt == 4:
                raise
            time.sleep(0.5 + attempt)
    raise AssertionError("unreachable")


def make_sampler(spec: SweepSpec, seed: int):
    if spec.sampler == "grid":
        return optuna.samplers.GridSampler(spec.grid_space(), seed=seed)
    if spec.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    startup = min(10, max(3, (spec.trials or 30) // 3))
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup, constant_liar=True)


def make_pruner(spec: SweepSpec):
    p = spec.pruner
    warmup = int(p.get("warmup_epochs", 1))
    if p["type"] == "none":
        return optuna.pruners.NopPruner()
    if p["type"] == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=max(1, warmup), reduction_factor=int(p.get("reduction_factor", 3))
        )
    return optuna.pruners.MedianPruner(
        n_startup_trials=int(p.get("startup_trials", 3)), n_warmup_steps=warmup
    )


def study_identity(spec: SweepSpec) -> dict[str, Any]:
    """What must agree for two workers (or a resumed run) to share one study."""
    raw = spec.raw
    return {k: raw.get(k) for k in ("command", "base", "space", "epochs", "metric")}


def load_study(spec: SweepSpec, storage_url: str, seed: int | None = None):
    """Create the study, or join the one of the same name in ``storage_url``."""
    storage = open_storage(storage_url)
    existing = [s.study_name for s in optuna.study.get_all_study_summaries(storage)]
    joined = spec.name in existing
    if seed is None:
        seed = spec.seed
        if joined:  # another worker (or an earlier run) drew the first samples from this seed
            seed = spec.seed + 1000 * (os.getpid() % 1000) + 7
    study = optuna.create_study(
        storage=storage,
        study_name=spec.name,
        direction=spec.direction,
        sampler=make_sampler(spec, seed),
        pruner=make_pruner(spec),
        load_if_exists=True,
    )
    identity = study_identity(spec)
    stored = study.user_attrs.get("sweep")
    if stored is None:
        study.set_user_attr("sweep", identity)
    elif stored != identity:
        diff = [k for k in identity if identity[k] != stored.get(k)]
        raise ConfigError(
            f"The study '{spec.name}' in {redact(storage_url)} was started with a different "
            f"sweep file (they differ in: {', '.join(diff)})",
            expected="the same base, space, command, epochs and metric in every worker",
            fix="Use the study's own sweep file, or give this sweep another `name:`",
        )
    return study


def redact(url: str) -> str:
    """The storage URL without its password."""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recover_dead_trials(study) -> list[int]:
    """Fail the running trials whose worker process on this machine is gone, and queue
    their parameters again; returns their numbers.

    Trials of live workers, and of other machines, are left alone (the heartbeat fails
    those after its grace period).
    """
    host = socket.gethostname()
    recovered = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = str(t.user_attrs.get("worker", ""))
        name, _, pid = worker.rpartition(":")
        if name != host or not pid.isdigit() or (_pid_alive(int(pid)) and int(pid) != os.getpid()):
            continue
        try:
            study._storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another worker got there first
        RETRY(study, study._storage.get_trial(t._trial_id))
        log.warning(
            "Trial %d was interrupted (its worker %s is gone): marked failed, "
            "its parameters are queued again (%d retries at most)",
            t.number,
            worker,
            RETRIES,
        )
        recovered.append(t.number)
    with warnings.catch_warnings():  # "experimental" since Optuna 2.9, and what it is for
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)  # other machines' trials, after their grace
    return recovered


def best_config(study, spec: SweepSpec) -> tuple[Any, dict[str, Any]] | None:
    """The best complete trial and its resolved config (placement keys dropped)."""
    done = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.value is not None and "config" in t.user_attrs
    ]
    if not done:
        return None
    pick = min if spec.direction == "minimize" else max
    best = pick(done, key=lambda t: t.value)
    config = {k: v for k, v in best.user_attrs["config"].items() if k not in PLACEMENT_KEYS}
    return best, config


def count(study, states) -> int:
    return len(study.get_trials(deepcopy=False, states=states))
