"""Reconciliation: pull the last hours of Brevo's event report and append what we missed.

A webhook can be lost for good (brevo.md section 5: Brevo discards an event after a 5xx or
four failed retries), so the worker pulls recent events now and then through the same
append path as `backfill` (source `api`: the fold merges each with its webhook twin).
What it counts is the reason it exists: pulled events newly stored for which the log has
no webhook event of the same step (message-id, recipient, twin event name, same second).

The report's `startDate`/`endDate` are whole days, so we pull yesterday and today and keep
the events inside the window. The window ends `settle` minutes ago: a webhook may still
be on its way (batched webhooks wait up to 5 minutes), and an event counted as missed
must have had its chance; the next run picks up what the margin left out.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from ingest.brevo_api import BrevoClient, BrevoSettings, events_page
from ingest.database import text_sql
from ingest.errors import DatabaseUnavailable, DistribmailError
from ingest.pipeline import Receiver
from ingest.providers import brevo_pull
from ingest.settings import env_float, env_int

log = logging.getLogger(__name__)

PROVIDER = "brevo"
PAGE_SIZE = 2500
WEBHOOK_SOURCES = ("webhook", "spool")

_API_NAMES, _WEBHOOK_NAMES = zip(
    *((api, hook) for api, hooks in brevo_pull.WEBHOOK_TWINS.items() for hook in hooks),
    strict=True,
)

# Of the rows this append stored (its keys, stamped with its own received_at), those with
# no webhook row of the same step in the same second. The webhook has milliseconds, the
# API truncates to the second (as query.fold assumes when it merges the two).
_COUNT_MISSED = text_sql(
    """
    SELECT count(*) AS missed
      FROM events AS a
     WHERE a.dedup_key = ANY(CAST(:keys AS bytea[]))
       AND a.received_at = :received_at
       AND a.problem IS NULL
       AND NOT EXISTS (
             SELECT 1
               FROM events AS w
               JOIN unnest(CAST(:api_names AS text[]), CAST(:webhook_names AS text[]))
                    AS twin(api_name, webhook_name) ON twin.webhook_name = w.event
              WHERE twin.api_name = a.event
                AND w.provider = a.provider
                AND w.source = ANY(CAST(:webhook_sources AS text[]))
                AND w.message_id = a.message_id
                AND w.recipient = a.recipient
                AND w.event_at >= a.event_at
                AND w.event_at < a.event_at + interval '1 second')
    """
)

_counters = {"runs": 0, "failures": 0, "pulled": 0, "stored": 0, "missed_by_webhook": 0}
_counters_lock = threading.Lock()


def counters() -> dict[str, int]:
    """Totals since the process started, for /metrics."""
    with _counters_lock:
        return dict(_counters)


def missed_by_webhook_total() -> int:
    with _counters_lock:
        return _counters["missed_by_webhook"]


def _add(**amounts: int) -> None:
    with _counters_lock:
        for name, amount in amounts.items():
            _counters[name] += amount


@dataclass(frozen=True)
class ReconcileResult:
    window_start: datetime
    window_end: datetime
    pulled: int  # events in the report for the days pulled
    in_window: int  # of those, inside the window (or without a readable time)
    stored: int  # new in the log
    missed_by_webhook: int  # new, and no webhook event of the same step


def _count_missed(receiver: Receiver, keys: list[bytes], received_at: datetime) -> int:
    params = {
        "keys": keys,
        "received_at": received_at,
        "api_names": list(_API_NAMES),
        "webhook_names": list(_WEBHOOK_NAMES),
        "webhook_sources": list(WEBHOOK_SOURCES),
    }
    try:
        with receiver.pool.connection() as conn, conn.cursor() as cur:
            cur.execute(_COUNT_MISSED, params)  # type: ignore[arg-type]
            row: Any = cur.fetchone()
    except (psycopg.OperationalError, psycopg.InterfaceError) as e:
        raise DatabaseUnavailable(f"cannot count what reconciliation found: {e}") from e
    return int(row["missed"])


def reconcile(
    client: BrevoClient,
    receiver: Receiver,
    *,
    hours: float = 24,
    settle: timedelta = timedelta(minutes=10),
    now: datetime | None = None,
    page_size: int = PAGE_SIZE,
) -> ReconcileResult:
    """Pull [now - hours, now - settle] from Brevo, append it, count what the webhook missed."""
    now = now or datetime.now(UTC)
    start, end = now - timedelta(hours=hours), now - settle
    first_day = min(start.date(), (now - timedelta(days=1)).date()).isoformat()
    last_day = now.date().isoformat()
    pulled = in_window = stored = missed = 0
    offset = 0
    while True:
        page = events_page(client, first_day, last_day, offset, page_size)
        if not page:
            break
        offset += len(page)
        pulled += len(page)
        keyed = [(p, brevo_pull.normalize(p)) for p in page]
        # An event without a readable time is kept: stored (flagged) rather than lost.
        kept = [(p, e) for p, e in keyed if e.event_at is None or start <= e.event_at < end]
        if not kept:
            continue
        in_window += len(kept)
        # Our own receive time marks the rows this append stored, for the count below.
        received_at = datetime.now(UTC)
        stored += receiver.append(PROVIDER, brevo_pull.SOURCE, [p for p, _ in kept], received_at)
        missed += _count_missed(receiver, [e.dedup_key for _, e in kept], received_at)
    _add(runs=1, pulled=pulled, stored=stored, missed_by_webhook=missed)
    log.info(
        "reconciliation %s..%s: %d event(s) pulled, %d new in the log, %d the webhook "
        "never brought",
        start.isoformat(timespec="seconds"),
        end.isoformat(timespec="seconds"),
        in_window,
        stored,
        missed,
    )
    return ReconcileResult(start, end, pulled, in_window, stored, missed)


class Reconciler:
    """A daemon thread that reconciles every `every` seconds; start it from the worker."""

    def __init__(
        self,
        run_once: Callable[[], ReconcileResult],
        every: float,
        stop: threading.Event | None = None,
    ) -> None:
        self._run_once = run_once
        self._every = every
        self._stop = stop or threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def from_env(
        cls, receiver: Receiver, env: Mapping[str, str] | None = None
    ) -> Reconciler | None:
        """None (off) without DISTRIBMAIL_BREVO_API_KEY, or with DISTRIBMAIL_RECONCILE_EVERY=0.

        DISTRIBMAIL_RECONCILE_EVERY (minutes, default 30), DISTRIBMAIL_RECONCILE_HOURS
        (window, default 24), DISTRIBMAIL_RECONCILE_SETTLE (minutes, default 10). Brevo
        allows a few hundred report calls an hour: keep the period in minutes, not seconds.
        """
        env = os.environ if env is None else env
        settings = BrevoSettings.from_env(env)
        every = env_float(env, "RECONCILE_EVERY", 30.0)
        if not settings.api_key or every <= 0:
            return None
        hours = env_int(env, "RECONCILE_HOURS", 24)
        settle = timedelta(minutes=env_float(env, "RECONCILE_SETTLE", 10.0))
        stop = threading.Event()
        # The client's waits (backoff, a 429's reset) end early when the worker stops us.
        client = BrevoClient(settings, sleep=stop.wait)
        return cls(
            lambda: reconcile(client, receiver, hours=hours, settle=settle), every * 60, stop
        )

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="reconciler", daemon=True)
            self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._run_once()
            except DistribmailError as e:  # Brevo down, key refused: the message says it all
                _add(failures=1)
                log.error("reconciliation failed: %s; next try in %.0fs", e.message, self._every)
            except Exception:  # the thread must outlive one bad run: logged, counted, retried
                _add(failures=1)
                log.exception("reconciliation failed; next try in %.0fs", self._every)
            self._stop.wait(self._every)
