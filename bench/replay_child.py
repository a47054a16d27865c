"""Run one `query.replay.replay` in a process of its own and print what it cost, as JSON.

    python bench/replay_child.py URL

The read bench starts this in a subprocess so that the peak resident memory (VmHWM,
`ru_maxrss`) is the replay's alone, not the bench's with its generated events. Memory is
read before the replay too (after the imports), so the growth due to the log is visible;
processes the replay starts (if any) are counted through RUSAGE_CHILDREN.
"""

from __future__ import annotations

import json
import resource
import sys
import time

from query.replay import replay


def _peak_kib(who: int) -> int:
    return resource.getrusage(who).ru_maxrss  # KiB on Linux


def main() -> int:
    url = sys.argv[1]
    before = _peak_kib(resource.RUSAGE_SELF)
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
        "peak_kib": _peak_kib(resource.RUSAGE_SELF),
        "children_peak_kib": children.ru_maxrss,
        "cpu_seconds": times.ru_utime + times.ru_stime + children.ru_utime + children.ru_stime,
    }
    print(json.dumps(answer), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
