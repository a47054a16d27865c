"""One CPU per gunicorn worker (DISTRIBMAIL_PIN_WORKERS, on by default for `serve`).

A worker runs Python on one core at a time whatever its threads (the interpreter lock),
and its threads hand that lock to each other on every request: when they float over the
cores, each hand-over may wake a thread on another, idle, core, and the cores sit idle
in the gaps. Kept on one CPU, the threads of a worker hand over in place, and the
workers share the CPUs evenly. Measured on this 2-core machine, 2 workers x 8 threads,
16 connections: the receiver 2,400-2,600 -> 3,000-3,300 single-event requests/s, with
the CPUs idle 25% -> 7% of the time; the bare Flask endpoint 7,300 -> 7,900 requests/s.

The CPUs are the ones the master may run on (taskset, a cgroup's cpuset), handed out so
that each holds as few live workers as possible: a worker started again after a crash
takes the CPU its predecessor left. PostgreSQL and everything else still run anywhere.
The price: a pinned worker cannot move off a CPU that something else keeps busy, which
showed in the bench as a longer tail (docs/scaling.md); DISTRIBMAIL_PIN_WORKERS=off then.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from typing import Any

log = logging.getLogger(__name__)


def choose_cpu(server: Any, worker: Any) -> None:
    """gunicorn's pre_fork hook (in the master): the least busy of the allowed CPUs."""
    allowed = sorted(os.sched_getaffinity(0))
    taken = Counter(getattr(live, "cpu", None) for live in server.WORKERS.values())
    worker.cpu = min(allowed, key=lambda cpu: (taken[cpu], cpu))


def pin_to_cpu(server: Any, worker: Any) -> None:
    """gunicorn's post_fork hook (in the new worker, before it starts any thread, so that
    all of them inherit it)."""
    cpu = getattr(worker, "cpu", None)
    if cpu is None:
        return
    try:
        os.sched_setaffinity(0, {cpu})
    except OSError as e:  # a CPU taken away meanwhile: run unpinned rather than not at all
        log.warning("worker %s not pinned to CPU %s: %s", worker.pid, cpu, e)
