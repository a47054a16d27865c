"""Who used the two cores during a phase: receiver workers, PostgreSQL, load generator, others,
and the hypervisor.

The load generator shares the cores with the server, and other jobs on the machine can
too; without this split a slow figure cannot be told from a busy machine. On a virtual
machine the host may also run other guests on our cores: Linux counts that time as
"steal" (measured here: 12% of one core on average over a 100 s phase, up to 48% in a
second, when the steady batches' median doubled). Percentages are of one core (200% =
both cores busy).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import psutil


def _tree_seconds(pid: int) -> float:
    """CPU seconds of a process and its live children (gunicorn master+workers, postmaster)."""
    try:
        root = psutil.Process(pid)
        total = 0.0
        for p in [root, *root.children(recursive=True)]:
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.NoSuchProcess:
                pass
        return total
    except psutil.NoSuchProcess:
        return 0.0


def _own_seconds() -> float:
    """This process (the steady generator's threads) plus its finished children (wrk)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _busy_seconds() -> tuple[float, float, float]:
    """(busy, wall-ish total, stolen) CPU seconds of the whole machine, all cores summed;
    busy includes the stolen time."""
    t = psutil.cpu_times()
    idle = t.idle + getattr(t, "iowait", 0.0)
    total = sum(t)
    return total - idle, total, getattr(t, "steal", 0.0)


def machine_busy_percent(seconds: float) -> float:
    """Busy CPU of the whole machine over `seconds`, in percent of one core."""
    before = _busy_seconds()[:2]
    time.sleep(seconds)
    after = _busy_seconds()[:2]
    wall = (after[1] - before[1]) / (psutil.cpu_count() or 1)
    return 100 * (after[0] - before[0]) / wall if wall > 0 else 0.0


@dataclass(frozen=True)
class CpuSplit:
    """Percent of one core, averaged over the phase."""

    machine: float
    server: float  # the gunicorn under load, master and workers
    postgres: float
    loadgen: float
    stolen: float  # by the hypervisor, for other guests

    FIELDS = ("machine", "server", "postgres", "loadgen", "stolen")

    @property
    def other(self) -> float:
        return max(0.0, self.machine - self.server - self.postgres - self.loadgen - self.stolen)

    def describe(self, events_per_s: float = 0.0) -> str:
        text = (
            f"machine {self.machine:.0f}% = gunicorn {self.server:.0f}% + postgres"
            f" {self.postgres:.0f}% + load generator {self.loadgen:.0f}% + other {self.other:.0f}%"
            f" + stolen by the host {self.stolen:.0f}%"
        )
        if events_per_s > 0:
            # CPU per event is what a busy machine skews least: it says what the rate
            # would be with the cores to ourselves.
            per_event = 1e4 / events_per_s  # percent of a core -> microseconds per event
            text += (
                f"; per event {self.server * per_event:.0f} us gunicorn"
                f" + {self.postgres * per_event:.0f} us postgres"
            )
        return text


class CpuMeter:
    """Snapshot before a phase, `split()` after it."""

    def __init__(self, postgres_pid: int) -> None:
        self._postgres_pid = postgres_pid
        self._server_pid = 0
        self._start: tuple[float, ...] = ()

    def _sample(self) -> tuple[float, ...]:
        busy, total, stolen = _busy_seconds()
        return (
            busy,
            total,
            stolen,
            _tree_seconds(self._server_pid),
            _tree_seconds(self._postgres_pid),
            _own_seconds(),
        )

    def start(self, server_pid: int) -> None:
        """`server_pid`: the gunicorn master under load (the receiver or the bare app)."""
        self._server_pid = server_pid
        self._start = self._sample()

    def split(self) -> CpuSplit:
        end = self._sample()
        busy, total, stolen, server, postgres, own = (
            b - a for a, b in zip(self._start, end, strict=True)
        )
        # cpu_times totals are summed over cores: wall seconds = total / cores.
        wall = total / (psutil.cpu_count() or 1)

        def pct(seconds: float) -> float:
            return 100 * seconds / wall if wall > 0 else 0.0

        return CpuSplit(pct(busy), pct(server), pct(postgres), pct(own), pct(stolen))
