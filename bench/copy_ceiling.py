"""In-process figures on the bench database, no HTTP: the COPY ceiling and where time goes.

- copy:      psycopg `COPY` of already-normalized events into a scratch table shaped like
             `events` (same columns, constraints, indexes; no fold trigger), 500 rows per
             transaction like a 500-event batch. The fastest the database takes them.
- normalize: parse + Brevo normalize + payload serialization per event, in one Python
             thread: the CPU the receiver spends per event before any SQL.
- recorder:  ingest.recorder.insert_events (the receiver's own statement, into `events`
             with its trigger) in 500-event calls from one thread, normalization excluded.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import psycopg
from bench_events import EventMaker
from psycopg.types.json import Jsonb

from ingest.database import open_pool
from ingest.events import NormalizedEvent
from ingest.providers import brevo
from ingest.recorder import insert_events

SCRATCH = "bench_copy_events"
COLUMNS = "provider, source, dedup_key, message_id, recipient, event, event_at, problem, payload"
BATCH = 500


@dataclass(frozen=True)
class Rate:
    events: int
    seconds: float

    @property
    def per_s(self) -> float:
        return self.events / self.seconds


def _timed(work: Callable[[], object], events: int) -> Rate:
    start = time.perf_counter()
    work()
    return Rate(events, time.perf_counter() - start)


def _chunks(events: Sequence[NormalizedEvent]) -> list[Sequence[NormalizedEvent]]:
    return [events[i : i + BATCH] for i in range(0, len(events), BATCH)]


def normalized_events(tag: str, count: int) -> list[NormalizedEvent]:
    return [brevo.normalize(p) for p in EventMaker(tag).payloads(count)]


def copy_rate(url: str, events: Sequence[NormalizedEvent]) -> Rate:
    with psycopg.connect(url) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {SCRATCH}")
        # LIKE copies columns, defaults, NOT NULLs, the dedup unique key and the indexes.
        conn.execute(f"CREATE TABLE {SCRATCH} (LIKE events INCLUDING ALL)")
        conn.commit()

        def work() -> None:
            for chunk in _chunks(events):
                with conn.cursor() as cur, cur.copy(f"COPY {SCRATCH} ({COLUMNS}) FROM STDIN") as cp:
                    for e in chunk:
                        # fmt: off
                        cp.write_row((
                            e.provider, e.source, e.dedup_key, e.message_id, e.recipient,
                            e.event, e.event_at, e.problem, Jsonb(e.payload),
                        ))
                        # fmt: on
                conn.commit()

        rate = _timed(work, len(events))
        conn.execute(f"DROP TABLE {SCRATCH}")
        conn.commit()
    return rate


def normalize_rate(tag: str, count: int) -> Rate:
    """Per event: json.loads of its text, brevo.normalize (marshmallow), json.dumps back."""
    maker = EventMaker(tag)
    texts = [maker.event_text(0, n, 1) for n in range(1, count + 1)]

    def work() -> None:
        for text in texts:
            event = brevo.normalize(json.loads(text))
            json.dumps(event.payload, ensure_ascii=False, separators=(",", ":"))

    return _timed(work, count)


def recorder_rate(url: str, events: Sequence[NormalizedEvent]) -> Rate:
    # Autocommit, as the receiver's pool (ingest.wiring): each INSERT commits by itself.
    pool = open_pool(url, size=1, name="bench", autocommit=True)
    try:
        pool.wait()
        return _timed(
            lambda: [insert_events(pool, chunk) for chunk in _chunks(events)], len(events)
        )
    finally:
        pool.close()
