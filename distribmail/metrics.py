"""Prometheus metrics at GET /metrics (an API token is required, as for /api).

What is counted, and where it comes from:
- `distribmail_webhook_events_total{provider,event,outcome}`: each webhook request's
  events, from its Receipt and its normalized events (an observer the Receiver calls after
  each receive: no extra query, no second normalization on the hot path). `outcome` is
  received, stored, duplicate, spooled or flagged (stored with a problem). `event` is the
  provider's event name when it is a known one, else `other` (the name comes from outside:
  a label per made-up name would grow without bound). The Receipt counts stored and
  duplicate events per request, not per event: a request whose events were all stored (or
  all duplicates, or all spooled) is counted per event name exactly; the rare batch that
  was partly new and partly a repeat counts its stored and duplicate events under
  `event="mixed_batch"`.
- `distribmail_http_request_duration_seconds{route}` and `distribmail_http_requests_total
  {route,method,status}`: the Flask route's rule (`/api/messages/<key>`), never the raw
  path, for the same reason.
- `distribmail_projection_queue_length` and `distribmail_projection_lag_seconds`: read
  when scraped (query.projector.read_lag, one aggregate over fold_queue), so the figure
  is the database's, whichever process projects.
- `distribmail_reconcile_*`: ingest.reconcile's counters.

Under gunicorn every worker is a process of its own: prometheus-client's multiprocess mode
keeps each process's values in files under PROMETHEUS_MULTIPROC_DIR and sums them at
scrape time. `distribmail serve` sets that variable to `<data dir>/prometheus` and cleans
the folder before the workers start (`prepare_multiprocess`), and gunicorn's `child_exit`
hook (`child_exit` below) drops the live gauges of a worker that exited. prometheus_client
chooses its storage when it is first imported, so it is imported here only inside
functions, never at module level: serve imports this module before it sets the variable.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flask import Flask, Response, g, request

from ingest.events import NormalizedEvent
from ingest.pipeline import Receipt
from ingest.providers import PROVIDERS
from ingest.web import ENDPOINT, RECEIVER
from ingest.webhook_wsgi import ROUTE as WEBHOOK_ROUTE
from query.api import POOL as API_POOL
from query.api import ApiAuth
from query.settings import ReadSettings

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry, Counter, Histogram
    from prometheus_client.metrics_core import Metric

log = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
MULTIPROC_FOLDER = "prometheus"
# Latency buckets, in seconds: webhook answers are a few ms; 20 s is our gunicorn timeout.
BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0)
WORKER_SYNC_SECONDS = 15.0


# --- multiprocess folder -------------------------------------------------------------------


def multiprocess_dir(data_dir: Path, env: Mapping[str, str] | None = None) -> Path:
    """PROMETHEUS_MULTIPROC_DIR if set, else `<data dir>/prometheus`; created, and exported
    to this process's environment so that gunicorn's workers inherit it."""
    env = os.environ if env is None else env
    folder = Path(env.get(MULTIPROC_ENV) or data_dir / MULTIPROC_FOLDER).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    os.environ[MULTIPROC_ENV] = str(folder)
    return folder


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's live process
    return True


def clean_multiprocess_dir(folder: Path) -> int:
    """Remove the files of processes that are gone (a previous run); returns how many.

    Files of live processes stay: `distribmail worker` writes its figures to the same
    folder, and it may be running while the web service restarts. (prometheus-client
    names them `<kind>_<pid>.db`.)"""
    removed = 0
    for path in folder.glob("*.db"):
        pid = path.stem.rpartition("_")[2]
        if not pid.isdigit() or not _alive(int(pid)) or int(pid) == os.getpid():
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def prepare_multiprocess(data_dir: Path) -> Path:
    """For `distribmail serve`, before gunicorn starts: set the folder up and clean it."""
    folder = multiprocess_dir(data_dir)
    clean_multiprocess_dir(folder)
    return folder


def child_exit(server: Any, worker: Any) -> None:
    """gunicorn hook: a worker exited; its live gauges must stop counting."""
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)


# --- the metrics (created once per process, on first use) ----------------------------------


@dataclass(frozen=True)
class _Metrics:
    registry: CollectorRegistry  # this process's own values (single-process mode)
    events: Counter
    latency: Histogram
    requests: Counter
    reconcile_runs: Counter
    reconcile_failures: Counter
    reconcile_events: Counter
    # Labelled children by their label values: prometheus_client's .labels() checks and
    # converts its arguments on every call, and the busy paths ask for the same few.
    children: dict[tuple[Any, ...], Any] = field(default_factory=dict)

    def child(self, metric: Counter | Histogram, *values: str) -> Any:
        key = (metric, *values)
        found = self.children.get(key)
        if found is None:
            found = self.children[key] = metric.labels(*values)
        return found


_metrics: _Metrics | None = None
_metrics_lock = threading.Lock()


def _get() -> _Metrics:
    global _metrics
    if _metrics is not None:  # set once, never unset: no lock needed to read it
        return _metrics
    with _metrics_lock:
        if _metrics is None:
            from prometheus_client import CollectorRegistry, Counter, Histogram

            registry = CollectorRegistry()
            _metrics = _Metrics(
                registry=registry,
                events=Counter(
                    "distribmail_webhook_events",
                    "Webhook events by outcome: received, stored, duplicate, spooled, flagged",
                    ["provider", "event", "outcome"],
                    registry=registry,
                ),
                latency=Histogram(
                    "distribmail_http_request_duration_seconds",
                    "Time spent answering a request in the app, by route",
                    ["route"],
                    buckets=BUCKETS,
                    registry=registry,
                ),
                requests=Counter(
                    "distribmail_http_requests",
                    "Requests answered, by route, method and status",
                    ["route", "method", "status"],
                    registry=registry,
                ),
                reconcile_runs=Counter(
                    "distribmail_reconcile_runs", "Reconciliation runs", registry=registry
                ),
                reconcile_failures=Counter(
                    "distribmail_reconcile_failures",
                    "Reconciliation runs that failed",
                    registry=registry,
                ),
                reconcile_events=Counter(
                    "distribmail_reconcile_events",
                    "Events seen by reconciliation: pulled, stored, missed_by_webhook",
                    ["outcome"],
                    registry=registry,
                ),
            )
        return _metrics


# --- webhook events ------------------------------------------------------------------------


def _known_events(provider: str) -> frozenset[str]:
    known: frozenset[str] = getattr(PROVIDERS.get(provider), "KNOWN_EVENTS", frozenset())
    return known


def _event_label(known: frozenset[str], name: str | None) -> str:
    return name if name is not None and name in known else "other"


def observe_receipt(
    provider: str,
    payloads: Sequence[dict[str, Any]],
    events: Sequence[NormalizedEvent] | None,
    receipt: Receipt,
) -> None:
    """The Receiver's observer. Never raises: a metric must not fail a webhook."""
    try:
        _count_receipt(provider, payloads, events, receipt)
    except Exception:
        log.exception("could not count a webhook request in the metrics")


def _count_receipt(
    provider: str,
    payloads: Sequence[dict[str, Any]],
    events: Sequence[NormalizedEvent] | None,
    receipt: Receipt,
) -> None:
    if events is None:  # spooled before normalizing: only the (rare) spool path pays this
        normalize = PROVIDERS[provider].normalize
        events = [normalize(p, "webhook") for p in payloads]
    known = _known_events(provider)
    names: dict[str, int] = {}  # events of the request by event label
    flagged: dict[str, int] = {}
    for event in events:
        name = _event_label(known, event.event)
        names[name] = names.get(name, 0) + 1
        if event.problem:
            flagged[name] = flagged.get(name, 0) + 1
    metrics = _get()
    counter = metrics.events
    for name, n in names.items():
        metrics.child(counter, provider, name, "received").inc(n)
    for name, n in flagged.items():
        metrics.child(counter, provider, name, "flagged").inc(n)
    outcomes = {
        "stored": receipt.stored,
        "duplicate": receipt.duplicates,
        "spooled": receipt.spooled,
    }
    for outcome, n in outcomes.items():
        if n == 0:
            continue
        if n == receipt.received:  # every event of the request had this outcome
            for name, count in names.items():
                metrics.child(counter, provider, name, outcome).inc(count)
        else:
            metrics.child(counter, provider, "mixed_batch", outcome).inc(n)


# --- reconciliation ------------------------------------------------------------------------

_reconcile_seen: dict[str, int] = {}
_reconcile_lock = threading.Lock()


def sync_reconcile_counters() -> None:
    """Add what ingest.reconcile counted since the last call to this process's counters.

    reconcile keeps plain totals of the process it runs in; turning them into counters
    here (rather than reporting the totals) is what lets gunicorn's multiprocess mode sum
    the web workers' and `distribmail worker`'s figures into one series."""
    from ingest import reconcile

    metrics = _get()
    with _reconcile_lock:
        totals = reconcile.counters()
        delta = {k: v - _reconcile_seen.get(k, 0) for k, v in totals.items()}
        _reconcile_seen.update(totals)
    if delta.get("runs", 0) > 0:
        metrics.reconcile_runs.inc(delta["runs"])
    if delta.get("failures", 0) > 0:
        metrics.reconcile_failures.inc(delta["failures"])
    for outcome in ("pulled", "stored", "missed_by_webhook"):
        if delta.get(outcome, 0) > 0:
            metrics.reconcile_events.labels(outcome).inc(delta[outcome])


def start_worker_metrics(data_dir: Path, every: float = WORKER_SYNC_SECONDS) -> threading.Thread:
    """For `distribmail worker`: write its reconciliation figures to the folder the web
    service's /metrics reads (same data dir), every `every` seconds. Call it before
    anything imports prometheus_client."""
    multiprocess_dir(data_dir)

    def loop() -> None:
        while True:
            sync_reconcile_counters()
            time.sleep(every)

    thread = threading.Thread(target=loop, name="distribmail-metrics", daemon=True)
    thread.start()
    return thread


# --- scrape --------------------------------------------------------------------------------


class _ScrapeTime:
    """Figures read when /metrics is asked for: the projection's lag."""

    def __init__(self, app: Flask) -> None:
        self.app = app

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import GaugeMetricFamily

        from query.projector import read_lag

        pool = self.app.extensions.get(API_POOL)
        if pool is None and RECEIVER in self.app.extensions:
            pool = self.app.extensions[RECEIVER].pool
        readable = GaugeMetricFamily(
            "distribmail_projection_lag_readable",
            "1 when the projection's lag could be read from the database at this scrape",
        )
        try:
            if pool is None:
                raise LookupError("no database pool in this app")
            with pool.connection(timeout=2) as conn:
                lag = read_lag(conn)
        except Exception as e:  # the figures are then absent; the reason is in the log
            log.warning("metrics: projection lag not read: %s", type(e).__name__)
            readable.add_metric([], 0)
            yield readable
            return
        readable.add_metric([], 1)
        yield readable
        yield GaugeMetricFamily(
            "distribmail_projection_queue_length",
            "Messages waiting in fold_queue to be re-folded",
            value=lag.queue_length,
        )
        yield GaugeMetricFamily(
            "distribmail_projection_lag_seconds",
            "Age of the oldest unfolded change (0 when the queue is empty)",
            value=lag.oldest_age_seconds,
        )


class _Forward:
    """This process's registry, inside the registry of one scrape (single-process mode)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterator[Metric]:
        yield from self.registry.collect()


def render(app: Flask) -> bytes:
    from prometheus_client import CollectorRegistry, generate_latest, multiprocess

    sync_reconcile_counters()
    registry = CollectorRegistry()
    if os.environ.get(MULTIPROC_ENV):
        multiprocess.MultiProcessCollector(registry)
    else:
        registry.register(_Forward(_get().registry))  # type: ignore[arg-type]
    registry.register(_ScrapeTime(app))  # type: ignore[arg-type]
    return generate_latest(registry)


# --- wiring --------------------------------------------------------------------------------


def install_metrics(app: Flask, env: Mapping[str, str]) -> None:
    """GET /metrics behind the API tokens, request timing, and the webhook observer.

    Call it after the receiver and the read API are mounted (it finds them in
    app.extensions)."""
    from prometheus_client import CONTENT_TYPE_LATEST

    metrics = _get()
    auth = ApiAuth(tuple(t.encode() for t in ReadSettings.from_env(env).api_tokens))
    receiver = app.extensions.get(RECEIVER)
    if receiver is not None and hasattr(receiver, "observers"):
        receiver.observers.append(observe_receipt)

    def metrics_page() -> Response:
        auth.check(request.headers.get("Authorization"))
        return Response(render(app), content_type=CONTENT_TYPE_LATEST)

    app.add_url_rule("/metrics", "metrics", metrics_page, methods=["GET"])

    def count(route: str, method: str, status: int, started: float) -> None:
        metrics.child(metrics.latency, route).observe(time.perf_counter() - started)
        metrics.child(metrics.requests, route, method, str(status)).inc()

    @app.before_request
    def start_timer() -> None:
        g.metrics_started = time.perf_counter()

    @app.after_request
    def time_request(response: Response) -> Response:
        started = g.get("metrics_started")
        if started is not None:
            rule = request.url_rule
            route = rule.rule if rule is not None else "unmatched"
            count(route, request.method, response.status_code, started)
        return response

    # The webhook's POST, served before Flask (ingest.webhook_wsgi), under its route's name.
    def time_webhook(environ: dict[str, Any]) -> Callable[[int, list[tuple[str, str]]], None]:
        started = time.perf_counter()
        return lambda status, headers: count(WEBHOOK_ROUTE, "POST", status, started)

    endpoint = app.extensions.get(ENDPOINT)
    if endpoint is not None:
        endpoint.hooks.append(time_webhook)
