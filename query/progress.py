"""A progress line on stderr for long jobs (replay): done/total, rate, ETA. No dependency."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

# progress(done, total): called often; implementations decide how often to show it.
Progress = Callable[[int, int], None]


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class StderrProgress:
    """`replay: 120,000/1,000,000 events (12%), 45,210 events/s, ETA 0:00:19`.

    On a terminal the line is redrawn in place a few times a second; into a log file
    (systemd, CI) one line is written every `log_every` seconds instead.
    """

    def __init__(
        self,
        label: str = "replay",
        unit: str = "events",
        stream: TextIO | None = None,
        log_every: float = 10.0,
    ) -> None:
        self.label = label
        self.unit = unit
        self.stream = stream if stream is not None else sys.stderr
        self.interactive = self.stream.isatty()
        self.every = 0.2 if self.interactive else log_every
        self.started = time.monotonic()
        self.shown_at = self.started  # the first line after `every`: a rate worth showing

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        finished = done >= total
        if not finished and now - self.shown_at < self.every:
            return
        self.shown_at = now
        elapsed = max(now - self.started, 1e-6)
        rate = done / elapsed
        percent = 100 * done / total if total else 100.0
        eta = _duration((total - done) / rate) if rate > 0 and not finished else "-"
        line = (
            f"{self.label}: {done:,}/{total:,} {self.unit} ({percent:.0f}%), "
            f"{rate:,.0f} {self.unit}/s, ETA {eta}"
        )
        if finished:
            line = f"{self.label}: {done:,} {self.unit} in {_duration(elapsed)}, {rate:,.0f}/s"
        end = "\n" if finished or not self.interactive else ""
        self.stream.write(("\r\x1b[K" if self.interactive else "") + line + end)
        self.stream.flush()
