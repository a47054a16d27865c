"""Fill the log fast for the read benchmark: generated lifecycles, COPYed into `events`.

The rows are the receiver's own: each payload goes through `brevo.normalize` (its fast
path) and the row carries the NormalizedEvent's real dedup key, so a key collision would
fail the COPY rather than slip in. Two processes generate and COPY disjoint messages
(message numbers k, k+2, k+4 ...) on the 2 cores; each commits every CHUNK rows.

COPY fires the statement trigger that fills `fold_queue` (as an append would): the
loader empties the queue afterwards, since these events stand for an old, folded log.
Then VACUUM ANALYZE, so that replay reads a settled table (hint bits set, statistics),
as it would in production, instead of paying for the load's after-effects.
"""

from __future__ import annotations

import multiprocessing
import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import psycopg
from psycopg.types.json import Jsonb
from read_events import payloads

from ingest.providers import brevo

CHUNK = 20_000
WORKERS = 2
_COPY = (
    "COPY events (provider, source, dedup_key, message_id, recipient, event, event_at,"
    " received_at, problem, payload) FROM STDIN"
)


@dataclass(frozen=True)
class Batch:
    """One loader process's share: messages first, first+step, ...; `events` rows."""

    url: str
    run: str
    first: int
    step: int
    events: int
    start_ms: int
    span_ms: int


def _load_share(share: Batch) -> tuple[int, int]:
    """(events, messages) this process appended."""
    rng = random.Random(share.first)
    written = messages = 0
    last_mid = None
    generated = payloads(share.run, share.first, share.step, share.start_ms, share.span_ms)
    with psycopg.connect(share.url) as conn:
        while written < share.events:
            size = min(CHUNK, share.events - written)
            with conn.cursor() as cur, cur.copy(_COPY) as copy:
                for _ in range(size):
                    e = brevo.normalize(next(generated))
                    if e.message_id != last_mid:
                        messages, last_mid = messages + 1, e.message_id
                    received = e.event_at + timedelta(milliseconds=rng.randrange(50, 2_000))  # type: ignore[operator]
                    copy.write_row(
                        (e.provider, e.source, e.dedup_key, e.message_id, e.recipient,
                         e.event, e.event_at, received, e.problem, Jsonb(e.payload))
                    )  # fmt: skip
            conn.commit()
            written += size
    return written, messages


def _ensure_partitions(url: str, first: datetime, last: datetime) -> None:
    """With a log partitioned by month (events_ensure_month in schema.sql), make the
    months the load covers first, as the receiver would; without one, nothing to do."""
    with psycopg.connect(url, autocommit=True) as conn:
        found = conn.execute("SELECT to_regproc('events_ensure_month') IS NOT NULL").fetchone()
        if not (found and found[0]):
            return
        moments = [first + timedelta(days=28 * n) for n in range((last - first).days // 28 + 1)]
        for moment in [*moments, last]:
            conn.execute("SELECT events_ensure_month(%s)", (moment,))


def load(url: str, run: str, events: int, days: int, first_message: int = 0) -> tuple[int, int]:
    """Append `events` rows (whole lifecycles but maybe the last) over the `days` before
    today; returns (events, messages). `run` keeps message-ids apart between loads."""
    end = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    start_ms = int((end - timedelta(days=days)).timestamp() * 1000)
    span_ms = days * 86_400_000
    _ensure_partitions(url, end - timedelta(days=days), end + timedelta(days=10))
    shares = [
        Batch(url, run, first_message + k, WORKERS, events // WORKERS + (k < events % WORKERS),
              start_ms, span_ms)
        for k in range(WORKERS)
    ]  # fmt: skip
    with multiprocessing.get_context("fork").Pool(WORKERS) as pool:
        results = pool.map(_load_share, shares)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE fold_queue")
        conn.execute("VACUUM ANALYZE events")
    return sum(r[0] for r in results), sum(r[1] for r in results)
