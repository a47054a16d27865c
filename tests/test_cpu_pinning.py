"""serve's workers, one CPU each (distribmail.cpu_pinning): the choice, the pinning, and a
real `distribmail serve` whose workers come up pinned."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from types import SimpleNamespace

import psutil
import pytest

from distribmail import cpu_pinning
from ingest.errors import ConfigError
from ingest.settings import env_switch
from tests.test_serve import request, served  # noqa: F401 (a fixture)


def master_with(*cpus: int | None) -> SimpleNamespace:
    workers = {1000 + n: SimpleNamespace(cpu=cpu) for n, cpu in enumerate(cpus)}
    return SimpleNamespace(WORKERS=workers)


@pytest.mark.parametrize(
    ("allowed", "live", "expected"),
    [
        ({0, 1}, (), 0),
        ({0, 1}, (0,), 1),
        ({0, 1}, (0, 1), 0),
        ({0, 1}, (0, 1, 0), 1),
        ({2, 5, 7}, (2, 7), 5),  # only the CPUs the master may use (taskset, cpuset)
        ({3}, (3, 3), 3),
    ],
)
def test_a_new_worker_takes_the_least_busy_allowed_cpu(monkeypatch, allowed, live, expected):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: allowed)
    worker = SimpleNamespace()
    cpu_pinning.choose_cpu(master_with(*live), worker)
    assert worker.cpu == expected


def test_a_restarted_worker_takes_the_cpu_its_predecessor_left(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    master = master_with(0, 1)
    del master.WORKERS[1000]  # the worker on CPU 0 died
    worker = SimpleNamespace()
    cpu_pinning.choose_cpu(master, worker)
    assert worker.cpu == 0


def test_pinning_sets_the_process_affinity_inherited_by_its_threads():
    # In a child process: pinning this test process would slow the rest of the suite.
    code = (
        "import os, threading, types\n"
        "from distribmail import cpu_pinning\n"
        "cpu = min(os.sched_getaffinity(0))\n"
        "cpu_pinning.pin_to_cpu(None, types.SimpleNamespace(cpu=cpu, pid=os.getpid()))\n"
        "seen = []\n"
        "t = threading.Thread(target=lambda: seen.append(os.sched_getaffinity(0)))\n"
        "t.start(); t.join()\n"
        "print(os.sched_getaffinity(0) == {cpu} == seen[0])\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "True", done.stderr


def test_a_worker_without_a_chosen_cpu_is_left_alone():
    cpu_pinning.pin_to_cpu(None, SimpleNamespace(pid=os.getpid()))  # no cpu: no call
    assert os.sched_getaffinity(0) == set(psutil.Process().cpu_affinity())


def test_the_switch_takes_on_and_off_and_refuses_anything_else():
    assert env_switch({}, "PIN_WORKERS", True) is True
    assert env_switch({"DISTRIBMAIL_PIN_WORKERS": "off"}, "PIN_WORKERS", True) is False
    assert env_switch({"DISTRIBMAIL_PIN_WORKERS": "ON"}, "PIN_WORKERS", False) is True
    with pytest.raises(ConfigError, match="DISTRIBMAIL_PIN_WORKERS must be on or off"):
        env_switch({"DISTRIBMAIL_PIN_WORKERS": "maybe"}, "PIN_WORKERS", True)


def gunicorn_workers(master: int) -> list[psutil.Process]:
    return [p for p in psutil.Process(master).children() if p.name() != "postgres"]


def test_serve_starts_its_workers_pinned_one_per_cpu(served):  # noqa: F811
    process, port, _, _ = served
    assert request(port, "GET", "/healthz")[0] == 200
    # The fixture waits for the first worker only: the second may still be forking.
    deadline = time.monotonic() + 30
    while len(workers := gunicorn_workers(process.pid)) < 2:
        assert time.monotonic() < deadline, [w.cmdline() for w in workers]
        time.sleep(0.1)
    affinities = [tuple(w.cpu_affinity()) for w in workers]
    assert len(affinities) == 2, [w.cmdline() for w in workers]
    assert all(len(cpus) == 1 for cpus in affinities), affinities
    if len(os.sched_getaffinity(0)) >= 2:
        assert affinities[0] != affinities[1]  # the two workers share the CPUs out
