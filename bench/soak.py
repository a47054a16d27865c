"""Soak: steady webhook load with reads alongside, for minutes; is memory flat, is anything lost?

    /work/venv/bin/python bench/soak.py                 # 10 minutes, 300 events/s
    /work/venv/bin/python bench/soak.py --minutes 1 --warmup 0.25   # a quick look

Starts an embedded PostgreSQL and `distribmail serve --workers 2` on it in a temporary
folder (bench_servers.Servers, deleted at the end), then, open loop (requests leave on a
schedule, a slow answer does not slow the schedule down):

- webhooks: single events and batches, every event unique; the events of a mail come as
  request, delivered, opened, so the projector folds real histories;
- reads: the list of today, its counts, and the detail of a mail from the last list;
- every 10 s: each gunicorn worker's RSS (psutil), the projection lag (the oldest row of
  `fold_queue`), and a progress line.

At the end it waits for the projection to catch up and checks that every event answered
2xx is in the log exactly once. PASS needs: after the warm-up, every worker's RSS within
--max-growth percent of its first post-warm-up sample; no error (any answer that is not
2xx, any connection error, a worker that restarted); lag at most --max-lag seconds; no
event lost or duplicated.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import secrets
import signal
import statistics
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType

import psutil
import psycopg
import requests
from bench_servers import Servers

MESSAGE_ID = "<soak.{run}.{mail}@smtp-relay.mailin.fr>"
STEPS = ("request", "delivered", "opened")


@dataclass
class Tally:
    """What the load saw; every method is called from several threads."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    acked: int = 0  # events answered 2xx
    stored: int = 0  # the answers' "stored" + "spooled"
    duplicates: int = 0
    sent: int = 0
    reads: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    webhook_ms: list[float] = field(default_factory=list)
    read_ms: list[float] = field(default_factory=list)
    behind_s: float = 0.0  # how far the schedule ran late, at worst

    def error(self, what: str) -> None:
        with self.lock:
            self.errors[what] += 1


class EventSource:
    """Unique events: event n is step n % 3 of mail n // 3, at base + n ms."""

    def __init__(self) -> None:
        self.run = secrets.token_hex(4)
        self.base_ms = int(time.time() * 1000)
        self._next = 0
        self._lock = threading.Lock()

    def take(self, count: int) -> list[dict[str, object]]:
        with self._lock:
            first, self._next = self._next, self._next + count
        return [self.event(n) for n in range(first, first + count)]

    def event(self, n: int) -> dict[str, object]:
        ts = self.base_ms + n
        return {
            "id": 814119,
            "event": STEPS[n % 3],
            "email": f"client{n // 3 % 997}@example.com",
            "message-id": MESSAGE_ID.format(run=self.run, mail=n // 3),
            "ts_epoch": ts,
            "ts_event": ts // 1000,
            "subject": f"Devis {n // 3}",
            "tags": ["soak"],
            "reason": "sent",
        }


def paced(rate: float, stop: threading.Event, tally: Tally, work: Callable[[], None]) -> None:
    """Call `work()` `rate` times a second on a fixed schedule until `stop`."""
    interval = 1.0 / rate
    due = time.monotonic()
    while not stop.is_set():
        late = time.monotonic() - due
        if late < 0:
            stop.wait(-late)
            continue
        with tally.lock:
            tally.behind_s = max(tally.behind_s, late)
        work()
        due += interval


def post(session: requests.Session, url: str, token: str, events: list, tally: Tally) -> None:  # type: ignore[type-arg]
    body = events[0] if len(events) == 1 else events
    started = time.perf_counter()
    with tally.lock:
        tally.sent += len(events)
    try:
        answer = session.post(
            url + "/webhooks/brevo",
            data=json.dumps(body),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            timeout=30,
        )
    except requests.RequestException as e:
        tally.error(f"webhook {type(e).__name__}")
        return
    elapsed = (time.perf_counter() - started) * 1000
    if answer.status_code // 100 != 2:
        tally.error(f"webhook HTTP {answer.status_code}")
        return
    receipt = answer.json()
    with tally.lock:
        tally.acked += len(events)
        tally.stored += receipt.get("stored", 0) + receipt.get("spooled", 0)
        tally.duplicates += receipt.get("duplicates", 0)
        tally.webhook_ms.append(elapsed)


class Reader:
    """List, counts, detail, in turn, with the read API's token."""

    def __init__(self, url: str, token: str, tally: Tally) -> None:
        self.url, self.tally = url, tally
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {token}"
        self.ids: list[str] = []
        self.turn = 0

    def __call__(self) -> None:
        self.turn += 1
        if self.turn % 3 == 1:
            path = "/api/messages?limit=50"
        elif self.turn % 3 == 2:
            path = "/api/messages/counts"
        elif self.ids:
            path = f"/api/messages/{random.choice(self.ids)}"
        else:
            return
        started = time.perf_counter()
        try:
            answer = self.session.get(self.url + path, timeout=30)
        except requests.RequestException as e:
            self.tally.error(f"read {type(e).__name__}")
            return
        elapsed = (time.perf_counter() - started) * 1000
        if answer.status_code != 200:
            self.tally.error(f"read {path.split('?')[0][:20]} HTTP {answer.status_code}")
            return
        if path.startswith("/api/messages?"):
            self.ids = [item["id"] for item in answer.json()["items"]] or self.ids
        with self.tally.lock:
            self.tally.reads += 1
            self.tally.read_ms.append(elapsed)


def read_lag(database_url: str) -> tuple[int, float]:
    with psycopg.connect(database_url, connect_timeout=5) as conn:
        row = conn.execute(
            "SELECT count(*), COALESCE(EXTRACT(EPOCH FROM now() - min(queued_at)), 0)"
            " FROM fold_queue"
        ).fetchone()
    assert row is not None
    return int(row[0]), float(row[1])


def booted_workers(master: int, count: int) -> dict[int, psutil.Process]:
    """gunicorn's workers once all `count` are up (/readyz answers after the first one)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        children = psutil.Process(master).children()
        if len(children) >= count:
            return {p.pid: p for p in children}
        time.sleep(0.2)
    raise RuntimeError(f"gunicorn did not start {count} workers within 60 s")


def percentile(values: list[float], p: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the load")
    parser.add_argument("--warmup", type=float, default=2.0, help="minutes not judged for RSS")
    parser.add_argument("--rate", type=float, default=300.0, help="webhook events per second")
    parser.add_argument("--batch-share", type=float, default=0.8, help="share sent in batches")
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--reads", type=float, default=6.0, help="read requests per second")
    parser.add_argument("--sample-every", type=float, default=10.0, help="seconds")
    parser.add_argument("--max-growth", type=float, default=10.0, help="RSS growth, percent")
    parser.add_argument("--max-lag", type=float, default=30.0, help="projection lag, seconds")
    args = parser.parse_args()

    def interrupted(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    servers = Servers(workers=2, threads=8)
    try:
        return soak(servers, args)
    finally:
        servers.close()


def soak(servers: Servers, args: argparse.Namespace) -> int:
    webhook_token, api_token = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
    database_url = servers.start_database()
    url, master = servers.start_receiver(webhook_token, {"DISTRIBMAIL_API_TOKENS": api_token})
    workers = booted_workers(master.pid, 2)
    print(
        f"soak: {args.minutes:g} min, {args.rate:g} events/s ({args.batch_share:.0%} in "
        f"batches of {args.batch_size}), {args.reads:g} reads/s; workers {sorted(workers)}"
    )

    tally, source, stop = Tally(), EventSource(), threading.Event()
    singles_rate = args.rate * (1 - args.batch_share)
    batch_rate = args.rate * args.batch_share / args.batch_size

    def poster(size: int) -> Callable[[], None]:
        session = requests.Session()
        return lambda: post(session, url, webhook_token, source.take(size), tally)

    loads: list[tuple[float, Callable[[], None]]] = []
    for _ in range(2):  # two threads each for singles and batches: one slow answer is not a stall
        loads += [(singles_rate / 2, poster(1)), (batch_rate / 2, poster(args.batch_size))]
    loads.append((args.reads, Reader(url, api_token, tally)))
    threads = [
        threading.Thread(target=paced, args=(rate, stop, tally, work), daemon=True)
        for rate, work in loads
        if rate > 0
    ]
    started = time.monotonic()
    for thread in threads:
        thread.start()

    rss: dict[int, list[tuple[float, int]]] = {pid: [] for pid in workers}
    lags: list[float] = []
    end = started + args.minutes * 60
    next_sample = started
    try:
        while time.monotonic() < end:
            now = time.monotonic()
            if now >= next_sample:
                next_sample += args.sample_every
                elapsed = now - started
                current = {p.pid for p in psutil.Process(master.pid).children()}
                if current != set(workers):
                    tally.error(f"workers changed: {sorted(workers)} -> {sorted(current)}")
                for pid, process in workers.items():
                    with contextlib.suppress(psutil.NoSuchProcess):
                        rss[pid].append((elapsed, process.memory_info().rss))
                queued, lag = read_lag(database_url)
                lags.append(lag)
                memory = " ".join(f"{s[-1][1] / 2**20:.1f}" for s in rss.values() if s)
                print(
                    f"  {elapsed:5.0f}s sent {tally.sent:7,} acked {tally.acked:7,} reads "
                    f"{tally.reads:5,} errors {sum(tally.errors.values())} | rss MiB {memory} | "
                    f"queue {queued} lag {lag:.1f}s",
                    flush=True,
                )
            time.sleep(max(0.0, min(next_sample, end) - time.monotonic()))
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=35)
    return report(args, tally, rss, lags, database_url, time.monotonic() - started)


def report(
    args: argparse.Namespace,
    tally: Tally,
    rss: dict[int, list[tuple[float, int]]],
    lags: list[float],
    database_url: str,
    seconds: float,
) -> int:
    deadline = time.monotonic() + 120
    while read_lag(database_url)[0] and time.monotonic() < deadline:
        time.sleep(0.5)
    caught_up_in = 120 - (deadline - time.monotonic())
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT count(*), count(DISTINCT dedup_key), count(*) FILTER (WHERE problem IS NULL)"
            " FROM events"
        ).fetchone()
        messages = conn.execute("SELECT count(*) FROM messages").fetchone()
    assert row is not None and messages is not None
    rows, distinct, understood = row
    failures = []

    print(
        f"\nsoak: {seconds / 60:.1f} min; {tally.sent:,} events sent, {tally.acked:,} answered 2xx,"
        f" {rows:,} rows in the log ({distinct:,} distinct, {understood:,} understood),"
        f" {messages[0]:,} messages projected"
    )
    # A request cut short by the end of the load (or an error) may be in the log unacked:
    # rows may exceed acked by those, never fall short of it.
    lost = max(0, tally.acked - rows)
    if lost or rows != distinct or tally.duplicates:
        failures.append(
            f"lost {lost}, duplicated {rows - distinct}, {tally.duplicates} dup answers"
        )
    print(
        f"  webhooks: p50 {percentile(tally.webhook_ms, 50):.1f} ms, p95 "
        f"{percentile(tally.webhook_ms, 95):.1f} ms, max {max(tally.webhook_ms, default=0):.0f} ms;"
        f" schedule late at worst {tally.behind_s:.2f} s"
    )
    print(
        f"  reads:    {tally.reads:,}, p50 {percentile(tally.read_ms, 50):.1f} ms, p95 "
        f"{percentile(tally.read_ms, 95):.1f} ms, max {max(tally.read_ms, default=0):.0f} ms"
    )

    print(f"\nmemory (RSS MiB; warm-up = first sample after {args.warmup:g} min):")
    print(f"  {'worker':>8} {'warm-up':>8} {'final':>8} {'max':>8} {'growth':>8}")
    warmup_s = args.warmup * 60
    for pid, samples in rss.items():
        judged = [value for at, value in samples if at >= warmup_s]
        if not judged:
            failures.append(f"worker {pid}: no RSS sample after the warm-up")
            continue
        first, last, top = judged[0], judged[-1], max(judged)
        growth = (last - first) / first * 100
        print(
            f"  {pid:>8} {first / 2**20:8.1f} {last / 2**20:8.1f} {top / 2**20:8.1f} {growth:7.1f}%"
        )
        curve = " ".join(f"{value / 2**20:.0f}" for _, value in samples)
        print(f"           curve: {curve}")
        if (top - first) / first * 100 > args.max_growth:
            failures.append(f"worker {pid}: RSS grew {(top - first) / first * 100:.1f}%")

    print(
        f"\nprojection lag: p50 {statistics.median(lags) if lags else 0:.1f} s, p95 "
        f"{percentile(lags, 95):.1f} s, max {max(lags, default=0):.1f} s "
        f"({len(lags)} samples); caught up {caught_up_in:.1f} s after the load"
    )
    if max(lags, default=0) > args.max_lag:
        failures.append(f"projection lag reached {max(lags):.1f} s")
    if read_lag(database_url)[0]:
        failures.append("the projection did not catch up within 120 s")

    print(f"\nerrors: {dict(tally.errors) or 'none'}")
    if tally.errors:
        failures.append(f"{sum(tally.errors.values())} error(s)")
    print("\n" + ("PASS" if not failures else "FAIL: " + "; ".join(failures)))
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
