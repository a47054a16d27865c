"""The log's recorder: the only place on the write side that speaks SQL.

One INSERT ... SELECT per append, from one JSON text for a few events or from binary arrays
for many, so a group of concurrent requests (ingest.group_commit) is one statement, one
round trip (the pool is in autocommit: a single statement is its own transaction, all or
nothing, its trigger included). A large batch is the exception: a few statements in one
transaction, pipelined (insert_stream). ON CONFLICT DO NOTHING on the dedup key turns a
retransmission into a no-op; rowcount counts only the rows inserted.
"""

from __future__ import annotations

import itertools
import json
import logging
import weakref
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg import pq
from psycopg.rows import tuple_row
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from ingest.database import binary_parameters, numbered, text_sql
from ingest.errors import DatabaseUnavailable
from ingest.events import NormalizedEvent, spell_out_unstorable, storable
from ingest.prepared import PreparedStatement, type_oid

log = logging.getLogger(__name__)

# Two forms of the one statement, by the number of events. A few (one webhook, a group of
# them) go as one JSON text: the client builds it in about half the CPU psycopg takes to
# dump nine arrays, and the server reads it a little faster too; it runs through libpq's
# own call (ingest.prepared), which spares the per-statement cost of psycopg's execute,
# paid under load by nearly every webhook. Many (a batch) go as binary arrays, which the
# server unnests faster than it reads JSON (measured at 500 events: 24 against 30 us an
# event), dumped and run by psycopg.
ARRAYS_FROM = 32
# A batch of more events than this is appended a chunk of this many at a time, pipelined
# in one transaction (insert_stream): measured on 500-event batches sent twice a second,
# 51 ms for one statement after normalizing them all, 35 ms in chunks of 125.
STREAM_CHUNK = 125

_INSERT_JSON_SQL = text_sql(
    """
    INSERT INTO events (provider, source, dedup_key, message_id, recipient, event,
                        event_at, problem, payload, received_at)
    SELECT provider, source, decode(dedup_key, 'hex'), message_id, recipient, event,
           event_at, problem, payload, COALESCE(:received_at, now())
      FROM jsonb_to_recordset(CAST(:rows AS jsonb))
           AS appended(provider text, source text, dedup_key text, message_id text,
                       recipient text, event text, event_at timestamptz, problem text,
                       payload jsonb)
    ON CONFLICT ON CONSTRAINT events_dedup_key_unique DO NOTHING
    """
)
_INSERT_ARRAYS_SQL = text_sql(
    """
    INSERT INTO events (provider, source, dedup_key, message_id, recipient, event,
                        event_at, problem, payload, received_at)
    SELECT provider, source, dedup_key, message_id, recipient, event,
           event_at, problem, payload, COALESCE(:received_at, now())
      FROM unnest(CAST(:provider AS text[]), CAST(:source AS text[]),
                  CAST(:dedup_key AS bytea[]), CAST(:message_id AS text[]),
                  CAST(:recipient AS text[]), CAST(:event AS text[]),
                  CAST(:event_at AS timestamptz[]), CAST(:problem AS text[]),
                  CAST(:payload AS jsonb[]))
           AS appended(provider, source, dedup_key, message_id, recipient, event,
                       event_at, problem, payload)
    ON CONFLICT ON CONSTRAINT events_dedup_key_unique DO NOTHING
    """
)
# For a group of requests: which rows were new, to tell each request its own count.
_RETURNING = "\n        RETURNING dedup_key"
_JSON_PARAMETERS = ("received_at", "rows")
_JSON_TYPES = (type_oid("timestamptz"), type_oid("jsonb"))
_APPEND_JSON = PreparedStatement(
    "distribmail_append_json", numbered(_INSERT_JSON_SQL, _JSON_PARAMETERS), _JSON_TYPES
)
_APPEND_JSON_KEYS = PreparedStatement(
    "distribmail_append_json_keys",
    numbered(_INSERT_JSON_SQL.rstrip() + _RETURNING, _JSON_PARAMETERS),
    _JSON_TYPES,
)
_INSERT_ARRAYS = binary_parameters(_INSERT_ARRAYS_SQL)
_INSERT_ARRAYS_KEYS = _INSERT_ARRAYS.rstrip() + _RETURNING

_SPELLED_OUT = (
    "payload held characters jsonb cannot store (U+0000, lone surrogates), kept as \\uXXXX text"
)


_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def _payload_text(event: NormalizedEvent) -> tuple[str, str | None]:
    """The payload as JSON text, serialized once; the rare one jsonb cannot store spelled
    out, and flagged."""
    encoded = _encode(event.payload)
    if "\\u0000" not in encoded and storable(encoded):
        return encoded, event.problem
    spelled = spell_out_unstorable(event.payload)
    if spelled == event.payload:  # only a literal backslash-u0000 in some text: fine as is
        return encoded, event.problem
    return _encode(spelled), "; ".join(p for p in (event.problem, _SPELLED_OUT) if p)


def _jsonb(event: NormalizedEvent) -> tuple[Jsonb, str | None]:
    """For the arrays form: a Jsonb that dumps the text already made (not serialized twice)."""
    payload, problem = _payload_text(event)
    return Jsonb(None, dumps=lambda _: payload), problem


def _row(event: NormalizedEvent) -> str:
    """One event as a JSON object of the statement's columns, its payload pasted in as
    serialized (not serialized twice)."""
    payload, problem = _payload_text(event)
    at = event.event_at
    columns = _encode(
        {
            "provider": event.provider,
            "source": event.source,
            "dedup_key": event.dedup_key.hex(),
            "message_id": event.message_id,
            "recipient": event.recipient,
            "event": event.event,
            "event_at": at.isoformat() if at is not None else None,
            "problem": problem,
        }
    )
    return f'{columns[:-1]},"payload":{payload}}}'


_ENSURE_MONTH = "SELECT events_ensure_month(%(moment)s)"
# Months outside this window are not given a partition: such times are not real (a
# ts_epoch of 1, a year 5138) and their rows go to the default partition.
_OLDEST_MONTH = datetime(2000, 1, 1, tzinfo=UTC)
_FUTURE_DAYS = 400
# Months known to have a partition, per pool (a pool is one database).
_months_with_partition: weakref.WeakKeyDictionary[ConnectionPool, set[tuple[int, int]]] = (
    weakref.WeakKeyDictionary()
)


# SQLSTATE classes that say the server cannot work now, whatever the rows: connection
# exception, insufficient resources, operator intervention (a shutdown), system error.
_UNAVAILABLE_CLASSES = ("08", "53", "57", "58")


def _unavailable(error: psycopg.Error) -> bool:
    """The database is out of reach for now (spool and retry), rather than refusing these
    rows (a key too long for an index, say): errors raised before the server answered
    carry no SQLSTATE (connection failures, a pool timeout)."""
    return error.sqlstate is None or error.sqlstate[:2] in _UNAVAILABLE_CLASSES


@contextmanager
def _unreachable_as_unavailable() -> Iterator[None]:
    """DatabaseUnavailable for an unreachable database; a refusal of the rows goes on as is."""
    try:
        yield
    except (psycopg.OperationalError, psycopg.InterfaceError) as e:  # PoolTimeout included
        if not _unavailable(e):
            raise
        raise DatabaseUnavailable(f"the database did not take the events: {e}") from e


def ensure_partitions(pool: ConnectionPool, events: Sequence[NormalizedEvent]) -> None:
    """Create the monthly partitions a batch needs, once per month and process.

    Without it a row whose month has no partition would land in the default partition,
    and that month's partition could then no longer be created. A failure here is logged,
    not raised: the append itself still stores the rows (in the default partition).
    """
    known = _months_with_partition.setdefault(pool, set())
    for month, moment in sorted(_months_missing(pool, events).items()):
        try:
            with pool.connection() as conn:
                conn.execute(_ENSURE_MONTH, {"moment": moment})
            known.add(month)
        except psycopg.OperationalError:
            raise
        except psycopg.Error as e:
            log.warning("no partition for %04d-%02d (rows go to events_undated): %s", *month, e)


def _months_missing(
    pool: ConnectionPool, events: Sequence[NormalizedEvent]
) -> dict[tuple[int, int], datetime]:
    """The months these events need that this process has not seen a partition for."""
    latest = datetime.now(UTC) + timedelta(days=_FUTURE_DAYS)
    known = _months_with_partition.setdefault(pool, set())
    return {
        (e.event_at.year, e.event_at.month): e.event_at
        for e in events
        if e.event_at is not None
        and (e.event_at.year, e.event_at.month) not in known
        and _OLDEST_MONTH <= e.event_at <= latest
    }


def unique_by_key(events: Sequence[NormalizedEvent]) -> list[NormalizedEvent]:
    """Drop repeats inside one request (first one wins), keeping order."""
    seen: set[bytes] = set()
    unique = []
    for e in events:
        if e.dedup_key not in seen:
            seen.add(e.dedup_key)
            unique.append(e)
    return unique


def _append_json(
    conn: psycopg.Connection[Any],
    events: Sequence[NormalizedEvent],
    received_at: datetime | None,
    keys: bool,
) -> pq.abc.PGresult:
    """The JSON form; with `keys`, the result holds the new rows' dedup keys (binary)."""
    rows = f"[{','.join(map(_row, events))}]".encode(conn.info.encoding)
    at = received_at.isoformat().encode() if received_at is not None else None
    statement = _APPEND_JSON_KEYS if keys else _APPEND_JSON
    return statement.run(conn, [at, rows], pq.Format.BINARY)


def _array_parameters(
    events: Sequence[NormalizedEvent], received_at: datetime | None
) -> dict[str, Any]:
    payloads, problems = zip(*map(_jsonb, events), strict=True)
    return {
        "received_at": received_at,
        "provider": [e.provider for e in events],
        "source": [e.source for e in events],
        "dedup_key": [e.dedup_key for e in events],
        "message_id": [e.message_id for e in events],
        "recipient": [e.recipient for e in events],
        "event": [e.event for e in events],
        "event_at": [e.event_at for e in events],
        "problem": list(problems),
        "payload": list(payloads),
    }


def _new_keys(conn: psycopg.Connection[Any], events: Sequence[NormalizedEvent]) -> list[bytes]:
    """Append (receive time now) and return the dedup keys of the rows that were new."""
    if len(events) < ARRAYS_FROM:
        result = _append_json(conn, events, None, keys=True)
        return [result.get_value(row, 0) or b"" for row in range(result.ntuples)]
    with conn.cursor(row_factory=tuple_row, binary=True) as cur:
        cur.execute(_INSERT_ARRAYS_KEYS, _array_parameters(events, None))  # type: ignore[arg-type]
        return [key for (key,) in cur]


def insert_events(
    pool: ConnectionPool, events: Sequence[NormalizedEvent], received_at: datetime | None = None
) -> int:
    """Append in one transaction; return how many were new. Raises DatabaseUnavailable.

    `pool` must be in autocommit mode (ingest.wiring): the INSERT commits by itself.
    """
    events = unique_by_key(events)
    if not events:
        return 0
    with _unreachable_as_unavailable():
        ensure_partitions(pool, events)
        with pool.connection() as conn:
            if len(events) < ARRAYS_FROM:
                return _append_json(conn, events, received_at, keys=False).command_tuples or 0
            with conn.cursor() as cur:
                cur.execute(_INSERT_ARRAYS, _array_parameters(events, received_at))  # type: ignore[arg-type]
                return cur.rowcount


def insert_groups(pool: ConnectionPool, groups: Sequence[Sequence[NormalizedEvent]]) -> list[int]:
    """Append several requests' events in one transaction (ingest.group_commit); return how
    many of each request's events were new. An event that two requests of the group both
    carry counts as new for the first one only, as it would had they come one by one."""
    if len(groups) == 1:
        return [insert_events(pool, groups[0])]
    owner: dict[bytes, int] = {}
    events = []
    for index, group in enumerate(groups):
        for e in group:
            if e.dedup_key not in owner:
                owner[e.dedup_key] = index
                events.append(e)
    stored = [0] * len(groups)
    if not events:
        return stored
    with _unreachable_as_unavailable():
        ensure_partitions(pool, events)
        with pool.connection() as conn:
            for key in _new_keys(conn, events):
                stored[owner[key]] += 1
    return stored


class PartitionMissing(Exception):
    """A chunk after the first needs a month with no partition yet. Creating it takes a
    lock on the default partition, which the open transaction may hold by then: nothing
    is stored, and the caller appends the batch the ordinary way."""


def insert_stream(pool: ConnectionPool, chunks: Iterable[Sequence[NormalizedEvent]]) -> int:
    """Append chunk after chunk in one transaction (all or nothing, committed before this
    returns); return how many events were new. Each chunk's statement is sent as soon as
    it is made, so that the server inserts it while the caller makes the next: for a
    large batch, normalizing and inserting overlap instead of adding up. A repeat, in a
    chunk or across chunks, counts as a duplicate, first one wins, as in insert_events.

    Raises DatabaseUnavailable, PartitionMissing, or the database's refusal of a row.
    """
    chunks = iter(chunks)
    first = list(next(chunks, ()))
    sent: list[psycopg.Cursor[Any]] = []
    seen: set[bytes] = set()
    with _unreachable_as_unavailable():
        # Before the transaction: once it holds rows, creating a month could wait on it.
        ensure_partitions(pool, first)
        with pool.connection() as conn, conn.pipeline(), conn.transaction():
            for chunk in itertools.chain([first], chunks):
                fresh = [e for e in unique_by_key(chunk) if e.dedup_key not in seen]
                if not fresh:
                    continue
                if _months_missing(pool, fresh):
                    raise PartitionMissing
                seen.update(e.dedup_key for e in fresh)
                cur = conn.cursor()
                cur.execute(_INSERT_ARRAYS, _array_parameters(fresh, None))  # type: ignore[arg-type]
                sent.append(cur)
                # In pipeline mode libpq keeps the statement in its buffer until a sync:
                # push it to the server now (what does not fit goes with the next one).
                conn.pgconn.flush()
    return sum(cur.rowcount for cur in sent)
