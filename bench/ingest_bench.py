"""Ingest benchmark: the Brevo receiver over loopback HTTP, beside its two ceilings.

    /work/venv/bin/python bench/ingest_bench.py [--duration 10] [--reps 3]

Starts an embedded PostgreSQL, `distribmail serve` and a bare Flask app (same gunicorn
settings) in a temporary folder, loads them with wrk (keep-alive), then a constant-rate
generator, then measures COPY in-process; prints figures and PASS/FAIL per target, and
stops everything whatever happens. A script that prints figures, not a test.

The targets are the receiver's: it runs with DISTRIBMAIL_PROJECTOR=off, as when the
projector is a `distribmail worker` of its own. Beside it, on a database of its own, the
service as installed (the projector folding inside the same processes) is loaded the same
way and reported for information, with the time its projector took to catch up.
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import copy_ceiling
import psycopg
from bench_events import EventMaker, base_ts_ms
from bench_servers import Servers, print_report, run_then_stop, say
from cpu_meter import CpuMeter, CpuSplit, machine_busy_percent
from loadgen_steady import SteadyResult, run_steady
from loadgen_wrk import LoadResult, WrkMissing, run_wrk, wrk_path

from ingest.embedded import SERVER_SETTINGS
from ingest.settings import env_switch

PATH = "/webhooks/brevo"

# The targets.
SINGLE_RATIO_TARGET = 0.5  # receiver single-event req/s over the bare endpoint's
BATCH_EVENTS_TARGET = 20_000  # events/s with 500-event batches
STEADY_RATE = 1_000  # events/s
STEADY_P99_TARGET_MS = 50.0

# The receiver the targets are about: without the projector, which a deployment can run as
# `distribmail worker` apart.
RECEIVER_ALONE = {"DISTRIBMAIL_PROJECTOR": "off"}
INSTALLED_DATABASE = "distribmail_installed"

# Below this (percent of one core, whole machine) nothing else is running to speak of.
QUIET_PERCENT = 25.0


def _extra_env(args: argparse.Namespace) -> dict[str, str]:
    return dict(item.split("=", 1) for item in args.receiver_env)


def _pinned(args: argparse.Namespace) -> bool:
    """Whether serve pins its workers to CPUs with the receiver's environment: the bare
    app is then pinned too."""
    return env_switch({**os.environ, **_extra_env(args)}, "PIN_WORKERS", True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--duration", type=float, default=10, help="seconds per wrk phase")
    p.add_argument("--reps", type=int, default=3, help="repetitions of each wrk phase (median)")
    p.add_argument(
        "--steady-seconds", type=float, default=20, help="seconds of the steady single events"
    )
    p.add_argument(
        "--steady-batches",
        type=int,
        default=200,
        help="batches sent in the steady batch phase (2 a second at 1,000 events/s): a p99"
        " of fewer than 100 samples is only their maximum",
    )
    p.add_argument("--batch", type=int, default=500, help="events per batch request")
    p.add_argument("--workers", type=int, default=2, help="gunicorn workers (both servers)")
    p.add_argument("--threads", type=int, default=8, help="gunicorn threads (both servers)")
    p.add_argument("--connections", type=int, default=16, help="wrk connections, single events")
    p.add_argument("--batch-connections", type=int, default=4, help="wrk connections, batches")
    p.add_argument("--copy-events", type=int, default=100_000, help="events for the COPY ceiling")
    p.add_argument(
        "--receiver-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment for `distribmail serve`, e.g. DISTRIBMAIL_PROJECTOR=off",
    )
    p.add_argument(
        "--no-spread",
        action="store_true",
        help="leave out SO_REUSEPORT (as serve's defaults do): how wrk's connections fall"
        " over the workers is then left to chance, for both servers",
    )
    p.add_argument(
        "--no-all-in-one",
        action="store_true",
        help="skip the phases of the service as installed (projector in the same processes)",
    )
    p.add_argument(
        "--quiet-wait",
        type=float,
        default=60,
        help="seconds to wait at most for the machine to be idle before starting",
    )
    p.add_argument(
        "--profile",
        type=Path,
        help="folder for py-spy flame graphs of the receiver's workers (figures then skew)",
    )
    return p.parse_args(argv)


@contextmanager
def profiled(folder: Path | None, name: str, pids: list[int], seconds: float) -> Iterator[None]:
    """py-spy record each worker during the phase, when asked to."""
    if folder is None:
        yield
        return
    folder.mkdir(parents=True, exist_ok=True)
    spy = str(Path(sys.executable).parent / "py-spy")
    recorders = [
        subprocess.Popen(
            # fmt: off
            [
                spy,
                "record",
                "--pid",
                str(pid),
                "--duration",
                str(int(seconds)),
                "--rate",
                "200",
                "--nonblocking",
                "--format",
                "speedscope",
                "-o",
                str(folder / f"{name}-{pid}.json"),
            ],
            # fmt: on
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for pid in pids
    ]
    try:
        yield
    finally:
        for r in recorders:
            r.wait(timeout=seconds + 30)


@dataclass
class Phase:
    """One row of the results: wrk repetitions (medians over them) and their CPU split."""

    name: str
    runs: list[LoadResult] = field(default_factory=list)
    cpu: list[CpuSplit] = field(default_factory=list)

    def median(self, value: Callable[[LoadResult], float]) -> float:
        return statistics.median(value(r) for r in self.runs)

    def median_cpu(self) -> CpuSplit:
        return CpuSplit(
            *(statistics.median(getattr(c, f) for c in self.cpu) for f in CpuSplit.FIELDS)
        )


@dataclass
class Results:
    bare: Phase
    single: Phase
    bare_batch: Phase
    batch: Phase
    steady: dict[str, tuple[SteadyResult, CpuSplit]] = field(default_factory=dict)
    # The service as installed, projector included: phases and its catch-up seconds.
    all_in_one: list[Phase] = field(default_factory=list)
    catch_up_s: dict[str, list[float]] = field(default_factory=dict)
    copy_rates: list[float] = field(default_factory=list)
    normalize_rates: list[float] = field(default_factory=list)
    recorder_rate: float = 0.0
    rows: dict[str, int] = field(default_factory=dict)


def run_bench(args: argparse.Namespace, servers: Servers) -> int:
    token = secrets.token_urlsafe(24)
    say(f"bench: folder {servers.folder}")
    wait_for_quiet(args.quiet_wait)
    url_db = servers.start_database()
    extra_env = _extra_env(args)
    receiver_url, receiver = servers.start_receiver(token, {**RECEIVER_ALONE, **extra_env})
    bare_url, bare_server = servers.start_bare(pin=_pinned(args))
    say(f"bench: receiver {receiver_url}, bare app {bare_url}")
    installed: tuple[str, subprocess.Popen[bytes], str] | None = None
    if not args.no_all_in_one:
        url_installed = servers.create_database(INSTALLED_DATABASE)
        installed_url, installed_server = servers.start_receiver(
            token, extra_env, name="installed", database_url=url_installed
        )
        installed = (installed_url, installed_server, url_installed)
        say(f"bench: service as installed (projector in-app) {installed_url}")
    meter = CpuMeter(servers.postgres_pid())

    def wrk(phase: Phase, url: str, server_pid: int, tag: str, batch: int) -> None:
        connections = args.connections if batch == 1 else args.batch_connections
        meter.start(server_pid)
        phase.runs.append(
            run_wrk(url, PATH, token, batch, tag, base_ts_ms(), args.duration, connections)
        )
        phase.cpu.append(meter.split())

    # Warm up each (imports, first pool connections, PostgreSQL caches); not reported.
    for url in (bare_url, receiver_url, *(installed[:1] if installed else ())):
        run_wrk(url, PATH, token, 1, "warm", base_ts_ms(), 2, connections=args.connections)
    if installed:
        wait_folded(installed[2])

    r = Results(
        Phase("bare Flask, 1 event/request"),
        Phase("receiver, 1 event/request"),
        Phase(f"bare Flask, {args.batch} events/request"),
        Phase(f"receiver, {args.batch} events/request"),
    )
    if installed:
        r.all_in_one = [
            Phase("as installed, 1 event/request"),
            Phase(f"as installed, {args.batch} events/request"),
        ]
    workers = servers.worker_pids(receiver)
    for rep in range(1, args.reps + 1):
        # Side by side in each repetition, so that the ratio compares like with like.
        say(f"bench: repetition {rep}/{args.reps}")
        profile = args.profile if rep == 1 else None
        wrk(r.bare, bare_url, bare_server.pid, f"bare{rep}", 1)
        with profiled(profile, "single", workers, args.duration):
            wrk(r.single, receiver_url, receiver.pid, f"single{rep}", 1)
        wrk(r.bare_batch, bare_url, bare_server.pid, f"barebatch{rep}", args.batch)
        with profiled(profile, "batch", workers, args.duration):
            wrk(r.batch, receiver_url, receiver.pid, f"batch{rep}", args.batch)
        if installed:
            # Last in the repetition, and waited for: its projector's catch-up must not
            # run into the next phase.
            for phase, size in zip(r.all_in_one, (1, args.batch), strict=True):
                wrk(phase, installed[0], installed[1].pid, f"installed{rep}", size)
                r.catch_up_s.setdefault(phase.name, []).append(wait_folded(installed[2]))

    say(f"bench: steady {STEADY_RATE} events/s")
    host, port = receiver_url.removeprefix("http://").split(":")
    for tag, size in (("steadysingle", 1), ("steadybatch", args.batch)):
        request_rate = STEADY_RATE / size
        count = args.steady_batches if size > 1 else max(1, int(request_rate * args.steady_seconds))
        maker = EventMaker(tag)
        bodies = [maker.body(0, k, size) for k in range(1, count + 1)]
        # Enough connections to absorb a stall without leaving slots unsent on time (as
        # many as the closed loop's for single events).
        connections = args.connections if size == 1 else 2
        meter.start(receiver.pid)
        result = run_steady(host, int(port), PATH, token, bodies, request_rate, connections)
        r.steady[tag] = (result, meter.split())

    say("bench: COPY ceiling and in-process figures")
    for rep in range(1, args.reps + 1):
        events = copy_ceiling.normalized_events(f"copy{rep}", args.copy_events)
        r.copy_rates.append(copy_ceiling.copy_rate(url_db, events).per_s)
        r.normalize_rates.append(copy_ceiling.normalize_rate(f"norm{rep}", 20_000).per_s)
    events = copy_ceiling.normalized_events("recorder", args.copy_events)
    r.recorder_rate = copy_ceiling.recorder_rate(url_db, events).per_s
    r.rows = stored_rows(url_db)
    return report(args, r)


def wait_folded(url: str, at_most: float = 300) -> float:
    """Seconds until the projector of the database at `url` has folded everything queued."""
    started = time.monotonic()
    with psycopg.connect(url, autocommit=True) as conn:
        while time.monotonic() - started < at_most:
            left = conn.execute("SELECT count(*) FROM fold_queue").fetchone()
            if left is not None and left[0] == 0:
                break
            time.sleep(0.1)
    return time.monotonic() - started


def wait_for_quiet(at_most: float) -> None:
    """Other jobs on these two cores skew every figure: give them a chance to finish."""
    deadline = time.monotonic() + at_most
    while True:
        busy = machine_busy_percent(2.0)
        if busy < QUIET_PERCENT:
            say(f"bench: machine quiet ({busy:.0f}% of one core busy); {machine_load()}")
            return
        if time.monotonic() >= deadline:
            say(f"bench: WARNING machine busy ({busy:.0f}% of one core) by other jobs;"
                " figures will be low, see 'other' in the cpu split")  # fmt: skip
            return
        say(f"bench: waiting for the machine to be quiet ({busy:.0f}% of one core busy)")


def machine_load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min) {five:.2f} (5 min) on {os.cpu_count()} cores"


def stored_rows(url: str) -> dict[str, int]:
    """Rows in `events` per phase tag (the second dot-part of the bench message-ids)."""
    with psycopg.connect(url) as conn:
        found = conn.execute(
            "SELECT split_part(message_id, '.', 2), count(*) FROM events"
            " WHERE message_id LIKE 'bench.%' GROUP BY 1"
        ).fetchall()
        total = conn.execute("SELECT count(*) FROM events").fetchone()
    rows = {str(tag): int(n) for tag, n in found}
    rows["*"] = int(total[0]) if total else 0
    return rows


def report(args: argparse.Namespace, r: Results) -> int:
    lines: list[str] = []
    w = lines.append
    w("")
    w(
        f"distribmail ingest bench: gunicorn gthread {args.workers} workers x {args.threads}"
        f" threads; wrk keep-alive, {args.connections} connections (single) /"
        f" {args.batch_connections} (batch); {args.reps} x {args.duration:g} s per phase, medians"
    )
    if not args.no_spread:
        w(
            "both servers with SO_REUSEPORT (gunicorn reuse_port), so that the kernel spreads"
            " wrk's connections over the workers alike for both"
        )
    pinning = "one CPU per worker (serve's default)" if _pinned(args) else "none"
    w(f"workers pinned, both servers alike: {pinning}")
    w(f"machine: {machine_load()} at the end")
    w(
        "receiver: distribmail serve with DISTRIBMAIL_PROJECTOR=off (the receiver alone; the"
        f" projector runs apart), extra environment {args.receiver_env or 'none'}"
    )
    w(f"database: embedded PostgreSQL with serve's settings {SERVER_SETTINGS}")
    w("cpu: percent of one core (200% = both), median over the repetitions")
    w("")
    header = f"{'req/s':>9}{'events/s':>10}{'p50 ms':>8}{'p99 ms':>8}{'max ms':>8}{'errors':>7}"
    w(f"{'closed loop (wrk)':<36}{header}")
    for p in (r.bare, r.single, r.bare_batch, r.batch):
        events_per_s = p.median(lambda x: x.events_per_s)
        w(
            f"{p.name:<36}{p.median(lambda x: x.requests_per_s):>9.0f}{events_per_s:>10.0f}"
            f"{p.median(lambda x: x.p50_ms):>8.1f}{p.median(lambda x: x.p99_ms):>8.1f}"
            f"{p.median(lambda x: x.max_ms):>8.1f}{sum(x.errors for x in p.runs):>7}"
        )
        w(f"  cpu: {p.median_cpu().describe(events_per_s)}")
    for p in (r.single, r.batch):
        w(f"  {p.name}, events/s per repetition: " + ", ".join(
            f"{x.events_per_s:.0f}" for x in p.runs))  # fmt: skip
    pairs = zip(r.single.runs, r.bare.runs, strict=True)
    ratios = [s.requests_per_s / b.requests_per_s for s, b in pairs]
    w("  receiver/bare req/s per repetition: " + ", ".join(f"{x:.2f}" for x in ratios))
    if r.all_in_one:
        w("for information, the service as installed (projector folding in the same processes,")
        w("its own database), loaded the same way; then the wait for its projector to catch up")
        for p in r.all_in_one:
            events_per_s = p.median(lambda x: x.events_per_s)
            w(
                f"{p.name:<36}{p.median(lambda x: x.requests_per_s):>9.0f}{events_per_s:>10.0f}"
                f"{p.median(lambda x: x.p50_ms):>8.1f}{p.median(lambda x: x.p99_ms):>8.1f}"
                f"{p.median(lambda x: x.max_ms):>8.1f}{sum(x.errors for x in p.runs):>7}"
            )
            w(f"  cpu: {p.median_cpu().describe(events_per_s)}")
            w("  projector caught up " + ", ".join(
                f"{x:.1f}" for x in r.catch_up_s[p.name]) + " s after the load")  # fmt: skip
    w("")
    w(f"{f'open loop, steady {STEADY_RATE} events/s':<36}{header}{'samples':>8}")
    w("  (latency from each request's scheduled time; errors include requests never sent"
      " because the server fell behind)")  # fmt: skip
    for tag, label in (("steadysingle", "1"), ("steadybatch", str(args.batch))):
        s, cpu = r.steady[tag]
        w(
            f"{f'receiver, {label} event(s)/request':<36}{s.achieved_rate:>9.1f}"
            f"{s.achieved_rate * s.batch:>10.0f}{s.percentile(50):>8.1f}{s.percentile(99):>8.1f}"
            f"{max(s.latencies_ms, default=0):>8.1f}{s.errors + s.missed:>7}"
            f"{len(s.latencies_ms):>8}"
        )
        w(f"  cpu: {cpu.describe(s.achieved_rate * s.batch)}")
    w("")
    copy = statistics.median(r.copy_rates)
    w(f"{'in-process, no HTTP':<44}{'events/s':>10}")
    w(f"{'psycopg COPY, 500-row transactions':<44}{copy:>10.0f}   repetitions: "
      + ", ".join(f"{x:.0f}" for x in r.copy_rates))  # fmt: skip
    w(f"{'recorder.insert_events, 500 per call':<44}{r.recorder_rate:>10.0f}   one connection")
    normalize = statistics.median(r.normalize_rates)
    w(f"{'json.loads + brevo.normalize + json.dumps':<44}{normalize:>10.0f}   one thread")
    w("")
    # Proof that the loads stored new events rather than taking the duplicate path. The
    # database can hold a little more than was acknowledged: requests still in flight when
    # wrk stopped were stored but not counted.
    runs = r.single.runs + r.batch.runs
    acked = sum((x.requests - x.errors) * x.batch for x in runs)
    in_db = sum(n for tag, n in r.rows.items() if tag.startswith(("single", "batch")))
    w(
        f"stored: wrk phases acknowledged {acked} events, answered stored="
        f"{sum(x.stored for x in runs)} duplicates={sum(x.duplicates for x in runs)};"
        f" rows in events for those phases {in_db} (whole table {r.rows['*']})"
    )
    w("")
    bare_rps = r.bare.median(lambda x: x.requests_per_s)
    single_rps = r.single.median(lambda x: x.requests_per_s)
    batch_eps = r.batch.median(lambda x: x.events_per_s)
    (sb, _), (ss, _) = r.steady["steadybatch"], r.steady["steadysingle"]
    checks = [
        (
            f"(a) single-event req/s >= {SINGLE_RATIO_TARGET:.0%} of bare Flask",
            single_rps >= SINGLE_RATIO_TARGET * bare_rps,
            f"{single_rps:.0f} / {bare_rps:.0f} = {single_rps / bare_rps:.0%}",
        ),
        (
            f"(b) {args.batch}-event batches >= {BATCH_EVENTS_TARGET} events/s",
            batch_eps >= BATCH_EVENTS_TARGET,
            f"{batch_eps:.0f} events/s ({batch_eps / copy:.0%} of COPY)",
        ),
        (
            f"(b) p99 < {STEADY_P99_TARGET_MS:g} ms, batches at steady {STEADY_RATE} events/s",
            sb.percentile(99) < STEADY_P99_TARGET_MS and not (sb.errors or sb.missed),
            f"p99 {sb.percentile(99):.1f} ms, {len(sb.latencies_ms)} requests,"
            f" {sb.over(STEADY_P99_TARGET_MS)} over {STEADY_P99_TARGET_MS:g} ms",
        ),
        (
            f"(extra) p99 < {STEADY_P99_TARGET_MS:g} ms, single events at {STEADY_RATE}/s",
            ss.percentile(99) < STEADY_P99_TARGET_MS and not (ss.errors or ss.missed),
            f"p99 {ss.percentile(99):.1f} ms, {len(ss.latencies_ms)} requests,"
            f" {ss.over(STEADY_P99_TARGET_MS)} over {STEADY_P99_TARGET_MS:g} ms",
        ),
    ]
    return print_report(lines, checks, 60)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        wrk_path()
    except WrkMissing as e:
        say(f"bench: {e}")
        return 2
    servers = Servers(args.workers, args.threads, spread=not args.no_spread)
    return run_then_stop(servers, lambda: run_bench(args, servers))


if __name__ == "__main__":
    sys.exit(main())
