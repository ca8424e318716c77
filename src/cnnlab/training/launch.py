"""``cnnlab launch``: a multi-worker cluster of local processes, for one machine and tests.

Starts N copies of a cnnlab command, each with a ``TF_CONFIG`` naming all N on
127.0.0.1 (free ports picked now) and its own task index. Worker 0 is the chief:
its output streams to this terminal; the others' goes to a log file each
(``--logs DIR`` keeps them, else a temporary folder that is deleted). If any
worker fails, all are stopped and the last lines of its log are shown. The exit
status is the chief's (or the failing worker's, when the chief was stopped).

Each worker runs in its own process group and is ended with its whole group
(SIGTERM, then SIGKILL after a grace period), also when the launcher itself is
interrupted, so no training process outlives it. No TensorFlow here.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cnnlab.errors import ConfigError

GRACE_SECONDS = 5.0
COMMANDS = ("train",)  # the commands with a multi-worker loop


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct ports free on ``host`` now (held open together while picked)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def tf_config(addresses: list[str], index: int) -> str:
    """The ``TF_CONFIG`` of worker ``index`` of a cluster of ``addresses``."""
    return json.dumps(
        {"cluster": {"worker": addresses}, "task": {"type": "worker", "index": index}}
    )


def worker_args(args: list[str]) -> list[str]:
    """The command each worker runs: ``args`` with ``--strategy multiworker`` added when
    absent (a resumed run takes it from its config); refuses other strategies and
    commands that have no multi-worker loop."""
    if not args or args[0] not in COMMANDS:
        got = args[0] if args else "nothing"
        raise ConfigError(
            f"cnnlab launch runs a cnnlab command on every worker, got {got!r}",
            expected=f"a command after --, one of: {', '.join(COMMANDS)}",
            fix="Run e.g. `cnnlab launch --workers 2 -- train --data builtin:digits`",
        )
    strategies = [a.split("=", 1)[1] for a in args if a.startswith("--strategy=")]
    strategies += [args[i + 1] for i, a in enumerate(args[:-1]) if a == "--strategy"]
    if any(s != "multiworker" for s in strategies):
        raise ConfigError(
            f"cnnlab launch needs --strategy multiworker, got --strategy {strategies[0]}",
            expected="--strategy multiworker (or no --strategy: launch adds it)",
            fix="Drop --strategy, or pass --strategy multiworker",
        )
    if strategies or "--resume" in args or any(a.startswith("--resume=") for a in args):
        return list(args)
    return [*args, "--strategy", "multiworker"]


def launch(
    args: list[str],
    workers: int,
    *,
    logs: str | os.PathLike | None = None,
    cpus: list[set[int]] | None = None,
    out=None,
) -> int:
    """Run ``cnnlab ARGS`` as ``workers`` local workers; returns the exit status.

    Args:
        args: the command and its options, e.g. ``["train", "--epochs", "5"]``.
        workers: how many processes (2 or more to be useful; 1 is allowed).
        logs: keep each worker's output in ``LOGS/worker-I.log`` (the chief's too).
        cpus: pin worker ``i`` to the cores ``cpus[i]`` (``os.sched_setaffinity``).
        out: where the launcher's own lines go (default stderr).
    """
    out = out or sys.stderr
    if workers < 1:
        raise ConfigError(f"--workers {workers} is not a worker count", expected="1 or more")
    if cpus is not None and len(cpus) != workers:
        raise ConfigError(f"{len(cpus)} CPU sets for {workers} workers", expected="one each")
    command = worker_args(args)
    _exit_on_sigterm()
    folder = Path(logs) if logs else Path(tempfile.mkdtemp(prefix="cnnlab-launch-"))
    folder.mkdir(parents=True, exist_ok=True)
    addresses = [f"127.0.0.1:{p}" for p in free_ports(workers)]
    procs: list[subprocess.Popen] = []
    files = []
    try:
        for i in range(workers):
            env = {**os.environ, "TF_CONFIG": tf_config(addresses, i)}
            log_file = open(folder / f"worker-{i}.log", "wb")  # noqa: SIM115 - closed below
            files.append(log_file)
            procs.append(_start(command, env, log_file, i == 0, cpus[i] if cpus else None))
            print(
                f"cnnlab launch: worker {i} pid {procs[-1].pid} on {addresses[i]}, "
                f"log {folder / f'worker-{i}.log'}",
                file=out,
                flush=True,
            )
        return _supervise(procs, folder, out)
    finally:
        _stop_all(procs)
        for f in files:
            f.close()
        if not logs:
            shutil.rmtree(folder, ignore_errors=True)


def _exit_on_sigterm() -> None:
    """A SIGTERM to the launcher unwinds it (so its ``finally`` stops the workers)."""
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


def _start(command, env, log_file, chief: bool, cpus) -> subprocess.Popen:
    """One worker in its own process group; the chief's output is teed to ours."""

    def pin():
        if cpus:
            os.sched_setaffinity(0, cpus)

    argv = [sys.executable, "-m", "cnnlab.cli.main", *command]
    if chief:
        # A tee: the chief's lines go to our stdout and to its log file.
        proc = subprocess.Popen(
            argv,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=pin if cpus else None,
        )
        proc.tee = _Tee(proc.stdout, log_file)
        return proc
    return subprocess.Popen(
        argv,
        env=env,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=pin if cpus else None,
    )


class _Tee:
    """Copies a pipe to our stdout and a file, in a daemon thread."""

    def __init__(self, pipe, log_file):
        import threading

        self.thread = threading.Thread(target=self._run, args=(pipe, log_file), daemon=True)
        self.thread.start()

    @staticmethod
    def _run(pipe, log_file):
        for line in iter(pipe.readline, b""):
            sys.stdout.buffer.write(line)
            sys.stdout.flush()
            log_file.write(line)
            log_file.flush()


def _supervise(procs: list[subprocess.Popen], folder: Path, out) -> int:
    """Wait for every worker; stop all as soon as one fails. Returns the exit status."""
    while True:
        codes = [p.poll() for p in procs]
        failed = [i for i, c in enumerate(codes) if c not in (None, 0)]
        if failed:
            i = failed[0]
            print(
                f"cnnlab launch: worker {i} exited with status {codes[i]}; stopping the "
                "other workers",
                file=out,
                flush=True,
            )
            if i != 0:
                _show_tail(folder / f"worker-{i}.log", out)
            _stop_all(procs)
            chief = procs[0].poll()
            code = codes[i] if i == 0 or chief in (None, 0) or chief < 0 else chief
            return 128 - code if code < 0 else code  # killed by signal N: 128 + N, as a shell
        if all(c == 0 for c in codes):
            if hasattr(procs[0], "tee"):
                procs[0].tee.thread.join(timeout=5)
            return 0
        time.sleep(0.1)


def _show_tail(path: Path, out, lines: int = 15) -> None:
    try:
        tail = path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return
    for line in tail:
        print(f"  | {line}", file=out)


def _stop_all(procs: list[subprocess.Popen]) -> None:
    """SIGTERM every live worker's process group, then SIGKILL what is left."""
    live = [p for p in procs if p.poll() is None]
    for p in live:
        _signal_group(p, signal.SIGTERM)
    deadline = time.time() + GRACE_SECONDS
    for p in live:
        try:
            p.wait(timeout=max(0.0, deadline - time.time()))
        except subprocess.TimeoutExpired:
            _signal_group(p, signal.SIGKILL)
            p.wait()
    if procs and hasattr(procs[0], "tee"):
        procs[0].tee.thread.join(timeout=2)


def _signal_group(proc: subprocess.Popen, sig) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
