"""Open-loop load at a constant rate, latency measured from the intended send time.

wrk measures a closed loop: when the server stalls, wrk stops sending, and the requests it
did not send never show up as slow (coordinated omission). Here request k is due at
start + k / rate whatever happened before; its latency runs from that due time to the end
of its answer, so a stall shows in every request it delayed. wrk2 does this in C but is
not packaged in Debian; at 1,000 requests/s a few Python threads, each with its own
kept-alive http.client connection, are cheap enough (bodies are built before the clock
starts).
"""

from __future__ import annotations

import http.client
import statistics
import threading
import time
from dataclasses import dataclass, field

# How long past the end of the schedule late requests are still sent.
GRACE_SECONDS = 5.0


@dataclass
class SteadyResult:
    intended_rate: float  # requests/s
    batch: int
    latencies_ms: list[float] = field(default_factory=list)
    errors: int = 0
    missed: int = 0  # slots never sent: the server fell too far behind the schedule
    seconds: float = 0.0
    stored: int = 0

    @property
    def achieved_rate(self) -> float:
        return len(self.latencies_ms) / self.seconds if self.seconds else 0.0

    def over(self, ms: float) -> int:
        return sum(latency > ms for latency in self.latencies_ms)

    def percentile(self, p: float) -> float:
        if len(self.latencies_ms) < 2:
            return self.latencies_ms[0] if self.latencies_ms else float("nan")
        # Inclusive method: p99 of n samples interpolates between the two highest ranks.
        cuts = statistics.quantiles(self.latencies_ms, n=1000, method="inclusive")
        return cuts[round(p * 10) - 1]


def _worker(
    host: str,
    port: int,
    path: str,
    headers: dict[str, str],
    bodies: list[bytes],
    slots: range,
    start: float,
    interval: float,
    result: SteadyResult,
    lock: threading.Lock,
    give_up_at: float,
) -> None:
    conn = http.client.HTTPConnection(host, port, timeout=10)
    latencies: list[float] = []
    errors = 0
    stored = 0
    missed = 0
    for k in slots:
        if time.perf_counter() > give_up_at:
            # An overloaded server would otherwise stretch the phase without end.
            missed += 1
            continue
        due = start + k * interval
        delay = due - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        try:
            conn.request("POST", path, body=bodies[k], headers=headers)
            response = conn.getresponse()
            answer = response.read()
            finished = time.perf_counter()
        except (OSError, http.client.HTTPException):
            errors += 1
            conn.close()  # http.client reconnects on the next request
            continue
        if response.status != 200:
            errors += 1
            continue
        latencies.append((finished - due) * 1000)
        # Cheap parse of {"received":n,"stored":n,...}: no json import on the hot path.
        marker = answer.find(b'"stored":')
        if marker >= 0:
            digits = answer[marker + 9 :].split(b",")[0].split(b"}")[0]
            stored += int(digits)
    conn.close()
    with lock:
        result.latencies_ms.extend(latencies)
        result.errors += errors
        result.missed += missed
        result.stored += stored


def run_steady(
    host: str,
    port: int,
    path: str,
    token: str,
    bodies: list[bytes],
    rate: float,
    connections: int,
) -> SteadyResult:
    """Send `bodies` at `rate` requests/s; connection j sends slots j, j+C, j+2C ..."""
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
    batch = bodies[0].count(b'"event":') if bodies else 0
    result = SteadyResult(intended_rate=rate, batch=batch)
    lock = threading.Lock()
    interval = 1.0 / rate
    # A little head start so that every thread is waiting before the first slot is due.
    start = time.perf_counter() + 0.2
    give_up_at = start + len(bodies) * interval + GRACE_SECONDS
    threads = [
        threading.Thread(
            target=_worker,
            args=(host, port, path, headers, bodies, range(j, len(bodies), connections)),
            kwargs={
                "start": start,
                "interval": interval,
                "result": result,
                "lock": lock,
                "give_up_at": give_up_at,
            },
            daemon=True,
        )
        for j in range(connections)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    result.seconds = time.perf_counter() - start
    return result
