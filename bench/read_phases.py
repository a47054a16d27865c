"""The read bench's measurements: replay in a subprocess, API latencies, projector lag.

Each returns plain figures; read_bench.py prints them. Latencies are measured one request
at a time over one kept-alive http.client connection (gunicorn gthread keeps it open),
from just before the request is written to the end of the answer's body.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from loadgen_steady import SteadyResult, run_steady
from read_events import lifecycle

from query.projector import read_lag

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent


def percentile(values: list[float], p: float) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[round(p) - 1]


# --- replay -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ReplayRun:
    events: int
    messages: int
    seconds: float
    peak_mib: float  # the replay process's VmHWM
    workers_peak_mib: float  # the largest of its worker processes, 0 without workers
    start_mib: float  # its VmHWM after the imports, before replaying
    caught_up: int  # messages re-folded after the rebuild (changed since its snapshot)
    step_peaks: dict[str, int]  # KiB: its VmHWM after each step of the replay

    @property
    def per_s(self) -> float:
        return self.events / self.seconds


def run_replay(url: str) -> ReplayRun:
    """query.replay.replay in a fresh process (bench/replay_child.py), so its peak memory
    is its own; this checkout's code (PYTHONPATH), not whatever is installed."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, str(BENCH_DIR / "replay_child.py"), url],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    return ReplayRun(
        answer["events"], answer["messages"], answer["seconds"], answer["peak_kib"] / 1024,
        answer["children_peak_kib"] / 1024, answer["peak_kib_before"] / 1024,
        answer["caught_up"], answer["peak_kib_after"],
    )  # fmt: skip


# --- the read API -----------------------------------------------------------------------


class Client:
    """Sequential GETs over one kept-alive connection, with the API token."""

    def __init__(self, base_url: str, token: str) -> None:
        host, port = base_url.removeprefix("http://").split(":")
        self.conn = http.client.HTTPConnection(host, int(port), timeout=30)
        self.headers = {"Authorization": f"Bearer {token}"}

    def get(self, path: str) -> tuple[float, dict[str, Any]]:
        """(milliseconds, the JSON answer); a non-200 answer raises."""
        started = time.perf_counter()
        self.conn.request("GET", path, headers=self.headers)
        response = self.conn.getresponse()
        body = response.read()
        elapsed = (time.perf_counter() - started) * 1000
        if response.status != 200:
            raise RuntimeError(f"GET {path} answered {response.status}: {body[:300]!r}")
        return elapsed, json.loads(body)

    def timings(self, paths: list[str], warm: int = 20) -> list[float]:
        for path in paths[:warm]:
            self.get(path)
        return [self.get(path)[0] for path in paths]

    def close(self) -> None:
        self.conn.close()


def busiest_day(url: str) -> tuple[str, int]:
    """The day (Europe/Paris, the API's default zone) with the most messages, among the
    loaded days (before today: the lag phase's messages are sent today)."""
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT CAST(CAST(sent_at AT TIME ZONE 'Europe/Paris' AS date) AS text), count(*)"
            " FROM messages WHERE sent_at < CAST(now() AS date) - 1"
            " GROUP BY 1 ORDER BY 2 DESC LIMIT 1"
        ).fetchone()
    if row is None:
        raise RuntimeError("the projection is empty: nothing to read")
    return row[0], row[1]


def message_ids(url: str, day: str, count: int) -> list[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT id FROM messages WHERE CAST(sent_at AT TIME ZONE 'Europe/Paris' AS date)"
            " = CAST(%s AS date) ORDER BY md5(id) LIMIT %s",
            (day, count),
        ).fetchall()
    return [row[0] for row in rows]


def deep_page_path(client: Client, day: str, depth: int) -> str:
    """The path of page `depth` of the day, following next_cursor from the first."""
    path = f"/api/messages?from={day}&to={day}"
    for _ in range(depth - 1):
        _, page = client.get(path)
        if not page.get("next_cursor"):
            break
        path = f"/api/messages?from={day}&to={day}&cursor={page['next_cursor']}"
    return path


# --- projector lag ----------------------------------------------------------------------


@dataclass
class LagResult:
    ages: list[float] = field(default_factory=list)  # oldest unfolded change, seconds
    queue: list[int] = field(default_factory=list)
    webhooks: SteadyResult | None = None


def _sample_lag(url: str, stop: threading.Event, result: LagResult) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        while not stop.is_set():
            lag = read_lag(conn)
            result.ages.append(lag.oldest_age_seconds)
            result.queue.append(lag.queue_length)
            stop.wait(0.1)


def lag_bodies(rate: int, seconds: float, batch: int, run: str) -> list[bytes]:
    """rate*seconds fresh events (new messages' lifecycles, arriving interleaved, as
    webhooks do), `batch` per request body."""
    start_ms = int((datetime.now(UTC) - timedelta(hours=1)).timestamp() * 1000)
    events: list[dict[str, Any]] = []
    n = 0
    while len(events) < rate * seconds:
        events.extend(lifecycle(run, n, start_ms, 86_400_000))
        n += 1
    events = events[: int(rate * seconds)]
    random.Random(run).shuffle(events)
    if batch == 1:
        return [json.dumps(e).encode() for e in events]
    return [json.dumps(events[i : i + batch]).encode() for i in range(0, len(events), batch)]


def measure_lag(
    url: str, base_url: str, webhook_token: str, bodies: list[bytes], request_rate: float
) -> LagResult:
    """Post `bodies` at `request_rate` while sampling the fold_queue every 100 ms; then
    keep sampling until the queue is empty (at most 30 s more)."""
    result = LagResult()
    stop = threading.Event()
    sampler = threading.Thread(target=_sample_lag, args=(url, stop, result), daemon=True)
    sampler.start()
    host, port = base_url.removeprefix("http://").split(":")
    connections = 8 if request_rate > 200 else 2
    result.webhooks = run_steady(
        host, int(port), "/webhooks/brevo", webhook_token, bodies, request_rate, connections
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (not result.queue or result.queue[-1] > 0):
        time.sleep(0.1)
    stop.set()
    sampler.join()
    return result
