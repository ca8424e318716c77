"""Progress of long stages (scans, checks): a bar on a terminal, plain log lines elsewhere.

On a terminal (the stream's ``isatty()``), a tqdm bar with the rate and the time
left. When the output is a pipe or a file (CI logs, ``nohup``), no bar: one
plain line every ``log_every`` seconds ("Scanning: 12,000 of 60,000 files
(20 %), 1,234 files/s, about 39 s left"), and none at all for stages that end
sooner; the line goes to the ``cnnlab`` logger when it shows INFO (a run's log),
else straight to the stream. ``quiet=True`` shows nothing.

Example:
    >>> with Progress(len(paths), "Scanning", unit="file") as progress:
    ...     for path in paths:
    ...         scan(path)
    ...         progress.update()
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import IO

log = logging.getLogger("cnnlab")


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def _columns(stream) -> int:
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, OSError, ValueError):
        return 0


class Progress:
    """Counts work done out of ``total`` and shows it as a bar (TTY) or periodic log lines."""

    def __init__(
        self,
        total: int,
        desc: str,
        *,
        unit: str = "file",
        quiet: bool = False,
        stream: IO[str] | None = None,
        log_every: float = 10.0,
        logger: logging.Logger | None = None,
    ):
        self.total, self.desc, self.unit = int(total), desc, unit
        self.done = 0
        self.log_every = log_every
        self.logger = logger or log
        self._start = self._last_log = time.monotonic()
        self._bar = None
        self._logged = False
        self.stream = None
        self.mode = "quiet"
        if quiet or self.total <= 0:
            return
        stream = stream if stream is not None else sys.stderr
        self.stream = stream
        isatty = getattr(stream, "isatty", None)
        if isatty is not None and isatty():
            from tqdm import tqdm

            width = _columns(stream)
            self._bar = tqdm(
                total=self.total,
                desc=desc,
                unit=unit,
                unit_scale=self.total >= 10_000,  # 60.0k/60.0k, but 24/24
                file=stream,
                dynamic_ncols=width > 0,
                ncols=None if width > 0 else 80,  # a terminal that reports no size
                mininterval=0.2,
                smoothing=0.1,
            )
            self.mode = "bar"
        else:
            self.mode = "log"

    def update(self, n: int = 1) -> None:
        """Record ``n`` more items done."""
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
        elif self.mode == "log":
            now = time.monotonic()
            if now - self._last_log >= self.log_every and self.done < self.total:
                self._last_log = now
                self._log_line(now)

    def _log_line(self, now: float) -> None:
        elapsed = max(now - self._start, 1e-9)
        rate = self.done / elapsed
        left = (self.total - self.done) / rate if rate > 0 else float("inf")
        eta = f"about {_duration(left)} left" if rate > 0 else "time left unknown"
        self._say(
            f"{self.desc}: {self.done:,} of {self.total:,} {self.unit}s "
            f"({100 * self.done // max(self.total, 1)} %), {rate:,.0f} {self.unit}s/s, {eta}"
        )
        self._logged = True

    def _say(self, line: str) -> None:
        """A log line, or a plain line on the stream when nothing would show the log."""
        if self.logger.isEnabledFor(logging.INFO) and self.logger.hasHandlers():
            self.logger.info(line)
        else:
            print(line, file=self.stream, flush=True)

    def close(self) -> None:
        """End the bar, or log the total time when periodic lines were shown."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self.mode == "log" and self._logged:
            elapsed = time.monotonic() - self._start
            self._say(f"{self.desc}: {self.done:,} {self.unit}s in {_duration(elapsed)}")
            self._logged = False

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
