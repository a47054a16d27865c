"""Run one `query.replay.replay` in a process of its own and print what it cost, as JSON.

    python bench/replay_child.py URL

The read bench starts this in a subprocess so that the peak resident memory (VmHWM) is
the replay's alone, not the bench's with its generated events. Memory is read before the
replay too (after the imports), and after each of its steps, so a growth shows where it
comes from; the worker processes it forks are counted through RUSAGE_CHILDREN (the
largest one's ru_maxrss: they do not exec, so that figure is theirs).
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path
from types import ModuleType

import query.replay
import query.replay_rebuild
from query.replay import replay

# VmHWM after each step of the replay, to tell which one a growth of the peak comes from:
# each step as the module that calls it looks it up.
STEPS = (
    (query.replay_rebuild, "_split"),
    (query.replay_rebuild, "_fold_in_workers"),
    (query.replay_rebuild, "_fold_range"),
    (query.replay_rebuild, "index_like_live"),
    (query.replay, "_catch_up_unlocked"),
    (query.replay, "_swap"),
)
peaks: dict[str, int] = {}


def _traced(module: ModuleType, name: str) -> None:
    step = getattr(module, name)

    def run(*args: object, **kwargs: object) -> object:
        try:
            return step(*args, **kwargs)
        finally:
            peaks[name] = _peak_kib()

    setattr(module, name, run)


for _module, _name in STEPS:
    _traced(_module, _name)


def _peak_kib() -> int:
    """This process's VmHWM. Not ru_maxrss: Linux carries that across exec, so a child of
    a big bench process would report the bench's size, not its own."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def main() -> int:
    url = sys.argv[1]
    before = _peak_kib()
    started = time.perf_counter()
    report = replay(url)
    seconds = time.perf_counter() - started
    times = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    answer = {
        "events": report.events,
        "messages": report.messages,
        "caught_up": report.caught_up,
        "seconds": seconds,
        "peak_kib_before": before,
        "peak_kib": _peak_kib(),
        "children_peak_kib": children.ru_maxrss,
        "cpu_seconds": times.ru_utime + times.ru_stime + children.ru_utime + children.ru_stime,
        "peak_kib_after": peaks,
    }
    print(json.dumps(answer), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
