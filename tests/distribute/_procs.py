"""Running cnnlab as real OS processes, bounded by a timeout and always cleaned up."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def env_for(tmp: Path) -> dict[str, str]:
    """The workers' environment: quiet TensorFlow, temporary files under ``tmp``."""
    tmp.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "TMPDIR": str(tmp)}
    env.pop("TF_CONFIG", None)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")])
    return env


def start(args: list[str], env: dict, log: Path) -> subprocess.Popen:
    """``python -m cnnlab.cli.main ARGS`` in its own process group, output to ``log``."""
    out = open(log, "wb")  # noqa: SIM115 - the child holds it; closed by the caller's kill
    return subprocess.Popen(
        [sys.executable, "-m", "cnnlab.cli.main", *args],
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        cwd=env["TMPDIR"],
    )


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the process and its whole group (the launcher's workers have their own
    groups: the launcher's ``finally`` ends them on SIGTERM, so SIGTERM first)."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def run(args: list[str], env: dict, log: Path, timeout: float) -> int:
    """Run to the end (or ``timeout`` seconds, then fail); returns the exit status."""
    proc = start(args, env, log)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(
            f"cnnlab {' '.join(args)} ran past {timeout} s:\n"
            + log.read_text(errors="replace")[-3000:]
        ) from None
    finally:
        kill_group(proc)


def worker_pids(launcher_log: Path) -> dict[int, int]:
    """{worker index: pid} from the launcher's "worker I pid P" lines."""
    text = launcher_log.read_text(errors="replace")
    return {int(i): int(p) for i, p in re.findall(r"worker (\d+) pid (\d+)", text)}


def wait_for(predicate, timeout: float, what: str, every: float = 0.05):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
