"""Read-side benchmark (issue 3): replay, the read API and the projector on a large log.

    /work/venv/bin/python bench/read_bench.py                     # 1,000,000 then 3,000,000
    /work/venv/bin/python bench/read_bench.py --sizes 200000 --replays 1 --lag-seconds 10

For each size, in one embedded PostgreSQL in a temporary folder: grow the log to that
many events (generated Brevo lifecycles, about 5 events a message over --days days,
COPYed with the receiver's own normalization and dedup keys), replay it into `messages`
in a subprocess (events/s, peak memory), serve it with `distribmail serve` (projector
off) and time GET /api/messages (a busy day's first page, and its page --depth) and GET
/api/messages/<id> one request at a time, then serve again with the projector on and
post --lag-rate events/s to the webhook while sampling the fold_queue's oldest age every
100 ms. Prints a table and PASS/FAIL per target. A script that prints figures, not a test.
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import sys
import time
from dataclasses import dataclass, field

from bench_servers import Servers, print_report, run_then_stop, say, stop_process
from ingest_bench import machine_load, wait_for_quiet
from read_log import load
from read_phases import (
    REPO,
    Client,
    LagResult,
    ReplayRun,
    busiest_day,
    deep_page_path,
    lag_bodies,
    measure_lag,
    message_ids,
    percentile,
    run_replay,
)

from ingest.database import apply_schema

# The targets.
REPLAY_TARGET = 50_000  # events/s
MEMORY_GROWTH_LIMIT = 1.25  # peak RSS at the largest size over the smallest: "does not grow"
LIST_P95_MS = 20.0
DETAIL_P95_MS = 10.0
LAG_TARGET_S = 1.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sizes", default="1000000,3000000", help="log sizes in events, ascending")
    p.add_argument("--events", type=int, action="append", help="a log size (repeatable)")
    p.add_argument("--days", type=int, default=60, help="days the messages are spread over")
    p.add_argument("--replays", type=int, default=3, help="replays per size (median)")
    p.add_argument("--requests", type=int, default=400, help="requests per API case")
    p.add_argument("--depth", type=int, default=20, help="page number of the deep page")
    p.add_argument("--lag-rate", type=int, default=1000, help="events/s posted to the webhook")
    p.add_argument("--lag-batch", type=int, default=10, help="events per webhook request")
    p.add_argument("--lag-seconds", type=float, default=30, help="seconds of webhook load")
    p.add_argument("--quiet-wait", type=float, default=60, help="seconds to wait for quiet")
    args = p.parse_args(argv)
    args.sizes = sorted(args.events or [int(n) for n in args.sizes.split(",")])
    return args


@dataclass
class SizeResult:
    size: int
    messages: int = 0
    load_seconds: float = 0.0
    replays: list[ReplayRun] = field(default_factory=list)
    day: str = ""
    day_messages: int = 0
    first_page_ms: list[float] = field(default_factory=list)
    deep_page_ms: list[float] = field(default_factory=list)
    detail_ms: list[float] = field(default_factory=list)
    lag: LagResult | None = None
    loads: list[str] = field(default_factory=list)  # load average after each phase

    def replay_rate(self) -> float:
        return statistics.median(r.per_s for r in self.replays)

    def peak_mib(self) -> float:
        return max(max(r.peak_mib, r.workers_peak_mib) for r in self.replays)


def measure_size(args: argparse.Namespace, servers: Servers, url: str, r: SizeResult) -> None:
    api_token, hook_token = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    for n in range(1, args.replays + 1):
        say(f"bench: replay {n}/{args.replays} of {r.size:,} events")
        r.replays.append(run_replay(url))
        last = r.replays[-1]
        say(f"bench:   {last.per_s:,.0f} events/s in {last.seconds:.1f} s, peak"
            f" {last.peak_mib:.0f} MiB (workers {last.workers_peak_mib:.0f} MiB),"
            f" {last.caught_up} caught up; KiB after each step: {last.step_peaks}")  # fmt: skip
    r.loads.append(f"replay: {machine_load()}")

    env = {"DISTRIBMAIL_API_TOKENS": api_token, "DISTRIBMAIL_PROJECTOR": "off",
           "PYTHONPATH": str(REPO)}  # fmt: skip
    base, server = servers.start_receiver(hook_token, env)
    try:
        client = Client(base, api_token)
        r.day, r.day_messages = busiest_day(url)
        first = f"/api/messages?from={r.day}&to={r.day}"
        say(f"bench: API on {r.day} ({r.day_messages:,} messages)")
        r.first_page_ms = client.timings([first] * args.requests)
        deep = deep_page_path(client, r.day, args.depth)
        r.deep_page_ms = client.timings([deep] * args.requests)
        ids = message_ids(url, r.day, args.requests)
        r.detail_ms = client.timings([f"/api/messages/{key}" for key in ids])
        client.close()
    finally:
        stop_process(server)
    r.loads.append(f"api: {machine_load()}")

    say(f"bench: projector lag at {args.lag_rate:,} events/s for {args.lag_seconds:g} s")
    bodies = lag_bodies(args.lag_rate, args.lag_seconds, args.lag_batch, f"lag{r.size}")
    base, server = servers.start_receiver(hook_token, {"PYTHONPATH": str(REPO)})
    try:
        r.lag = measure_lag(url, base, hook_token, bodies, args.lag_rate / args.lag_batch)
    finally:
        stop_process(server)
    r.loads.append(f"lag: {machine_load()}")


def report(args: argparse.Namespace, results: list[SizeResult]) -> int:
    lines: list[str] = []
    w = lines.append
    w("")
    w("distribmail read bench: embedded PostgreSQL, distribmail serve (gunicorn gthread"
      f" 2 workers x 8 threads), messages over {args.days} days; replay medians of"
      f" {args.replays} runs, each in a fresh process")  # fmt: skip
    w(f"machine: {machine_load()} at the end")
    w("")
    w(f"{'log events':>12}{'messages':>10}{'replay ev/s':>13}{'runs':>22}{'peak MiB':>10}"
      f"{'workers MiB':>12}{'load s':>8}")  # fmt: skip
    for r in results:
        runs = ", ".join(f"{x.per_s / 1000:.1f}k" for x in r.replays)
        workers = max(x.workers_peak_mib for x in r.replays)
        last = r.replays[-1]  # the log also holds the earlier sizes' lag-phase events
        peak = max(x.peak_mib for x in r.replays)
        w(f"{last.events:>12,}{last.messages:>10,}{r.replay_rate():>13,.0f}{runs:>22}"
          f"{peak:>10.0f}{workers:>12.0f}{r.load_seconds:>8.0f}")  # fmt: skip
    w("")
    w(f"{'API, sequential, keep-alive':<44}{'n':>6}{'p50 ms':>8}{'p95 ms':>8}{'max ms':>8}")
    for r in results:
        w(f"log {r.size:,}: busiest day {r.day}, {r.day_messages:,} messages")
        for label, values in (
            ("  GET /api/messages, first page", r.first_page_ms),
            (f"  GET /api/messages, page {args.depth}", r.deep_page_ms),
            ("  GET /api/messages/<id>", r.detail_ms),
        ):
            w(f"{label:<44}{len(values):>6}{percentile(values, 50):>8.1f}"
              f"{percentile(values, 95):>8.1f}{max(values):>8.1f}")  # fmt: skip
    w("")
    w(f"projector lag (fold_queue oldest age, every 100 ms) at {args.lag_rate:,} events/s,"
      f" {args.lag_batch} per request, {args.lag_seconds:g} s")  # fmt: skip
    for r in results:
        lag = r.lag
        if lag is None or lag.webhooks is None:
            continue
        hooks = lag.webhooks
        w(f"  log {r.size:,}: lag p50 {percentile(lag.ages, 50):.2f} s, p95"
          f" {percentile(lag.ages, 95):.2f} s, max {max(lag.ages):.2f} s; queue max"
          f" {max(lag.queue)}; {len(lag.ages)} samples; webhooks {len(hooks.latencies_ms)}"
          f" answered, p99 {hooks.percentile(99):.1f} ms,"
          f" {hooks.errors + hooks.missed} errors")  # fmt: skip
    for r in results:
        w(f"  load average, log {r.size:,}: " + "; ".join(r.loads))
    w("")
    checks = []
    for r in results:
        rate = r.replay_rate()
        checks.append((f"replay >= {REPLAY_TARGET:,} events/s, log {r.size:,}",
                       rate >= REPLAY_TARGET, f"median {rate:,.0f}"))  # fmt: skip
    if len(results) > 1:
        small, large = results[0], results[-1]
        growth = large.peak_mib() / small.peak_mib()
        checks.append((f"peak memory flat ({large.size:,} vs {small.size:,} events)",
                       growth <= MEMORY_GROWTH_LIMIT,
                       f"{large.peak_mib():.0f} / {small.peak_mib():.0f} MiB"
                       f" = {growth:.2f}"))  # fmt: skip
    for r in results:
        for label, values, target in (
            ("list, first page", r.first_page_ms, LIST_P95_MS),
            (f"list, page {args.depth}", r.deep_page_ms, LIST_P95_MS),
            ("detail", r.detail_ms, DETAIL_P95_MS),
        ):
            p95 = percentile(values, 95)
            checks.append((f"{label} p95 < {target:g} ms, log {r.size:,}", p95 < target,
                           f"p95 {p95:.1f} ms"))  # fmt: skip
        if r.lag is not None:
            p95 = percentile(r.lag.ages, 95)
            worst = max(r.lag.ages)
            checks.append((f"projector lag p95 < {LAG_TARGET_S:g} s, log {r.size:,}",
                           p95 < LAG_TARGET_S, f"p95 {p95:.2f} s, max {worst:.2f} s"))  # fmt: skip
    return print_report(lines, checks, 52)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    servers = Servers(workers=2, threads=8)
    return run_then_stop(servers, lambda: run_sizes(args, servers))


def run_sizes(args: argparse.Namespace, servers: Servers) -> int:
    results: list[SizeResult] = []
    say(f"bench: folder {servers.folder}")
    wait_for_quiet(args.quiet_wait)
    url = servers.start_database()
    apply_schema(url)
    events = messages = 0
    for size in args.sizes:
        r = SizeResult(size)
        say(f"bench: growing the log to {size:,} events")
        t = time.perf_counter()
        added, new = load(url, f"s{size}", size - events, args.days, first_message=messages)
        r.load_seconds = time.perf_counter() - t
        events, messages = events + added, messages + new
        r.messages = messages
        measure_size(args, servers, url, r)
        results.append(r)
    return report(args, results)


if __name__ == "__main__":
    sys.exit(main())
