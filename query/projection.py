"""The projection: a tracked message's events, folded, as one row of `messages`.

Shared by the live projector (query.projector) and replay (query.replay), so that both
paths write exactly the same rows: same key -> id, same fold, same column mapping. The
fold itself is pure (query.fold); this module is the only one that reads events for it
and writes its results.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import tuple_row
from sqlalchemy import bindparam, column, func, table, text
from sqlalchemy.dialects.postgresql import insert

from ingest.database import compile_sql
from query.fold import fold
from query.logged import LoggedEvent

# (provider, message_id, recipient): what the log, the queue and the projection key on.
MessageKey = tuple[str, str, str]

LIVE_TABLE = "messages"
REBUILD_TABLE = "messages_rebuild"

# Every column the fold decides, in table order; `folded_at` is set by the database.
COLUMNS = (
    "id", "provider", "message_id", "recipient", "sender", "subject", "tags", "sent_at",
    "status", "status_at", "last_event_at", "first_delivered_at", "first_opened_at",
    "opens", "proxy_opens", "clicks",
)  # fmt: skip

# The columns LoggedEvent needs, in one place for the projector and replay, in the order
# of its fields: a row selected with them (tuple_row) is LoggedEvent's positional arguments.
EVENT_COLUMNS = (
    "id, provider, source, event, event_at, received_at, message_id, recipient, payload, problem"
)

# Keys that every Brevo payload carries and no extractor reads (query.logged.DETAIL_KEYS):
# replay drops them in the database, which halves the JSON it decodes. The row a message
# folds to depends on its payloads only through their details: the rest of a payload only
# tells apart rows that tie on every column, position included, which log rows never do,
# and unknown steps, which no column shows. A test folds both ways and compares.
UNREAD_KEYS = (
    "id", "email", "message-id", "messageId", "date", "event", "ts", "ts_event", "ts_epoch",
    "template_id", "templateId", "X-Mailin-custom",
)  # fmt: skip
_UNREAD = ", ".join(f"'{key}'" for key in UNREAD_KEYS)
# EVENT_COLUMNS for replay, with the payloads trimmed.
TRIMMED_EVENT_COLUMNS = EVENT_COLUMNS.replace(
    "payload", f"payload - CAST(ARRAY[{_UNREAD}] AS text[]) AS payload"
)

_SELECT_EVENTS, _ = compile_sql(
    text(
        f"""
        SELECT {EVENT_COLUMNS}
          FROM events
         WHERE (provider, message_id, recipient) IN (
               SELECT * FROM unnest(CAST(:providers AS text[]), CAST(:message_ids AS text[]),
                                    CAST(:recipients AS text[])))
        """
    )
)


def _key_digest(key: MessageKey) -> bytes:
    # \x1f (unit separator) cannot occur in a normalized message-id or address, so two
    # different keys never join into the same string.
    return hashlib.sha256("\x1f".join(key).encode("utf-8")).digest()


def message_key_id(provider: str, message_id: str, recipient: str) -> str:
    """The message's id in `messages` and in the API: stable across replays."""
    return _key_digest((provider, message_id, recipient)).hex()[:24]


def lock_key(key: MessageKey) -> int:
    """A bigint for pg_advisory_xact_lock. Two keys sharing one (1 in 2**64) only wait for
    each other, they are never folded wrong."""
    return int.from_bytes(_key_digest(key)[:8], "big", signed=True)


def logged_event(row: Mapping[str, Any]) -> LoggedEvent:
    """A row selected with EVENT_COLUMNS (dict_row), as the fold takes it."""
    return LoggedEvent(
        position=row["id"],
        provider=row["provider"],
        source=row["source"],
        event=row["event"],
        event_at=row["event_at"],
        received_at=row["received_at"],
        message_id=row["message_id"],
        recipient=row["recipient"],
        payload=row["payload"],
        problem=row["problem"],
    )


def logged_events(rows: Iterable[Sequence[Any]]) -> Iterator[LoggedEvent]:
    """Rows selected with EVENT_COLUMNS (tuple_row), as the fold takes them: cheaper than
    logged_event on a dict, which counts when replay reads the whole log."""
    for row in rows:
        yield LoggedEvent(*row)


def message_row(key: MessageKey, events: Sequence[LoggedEvent]) -> dict[str, Any]:
    """Fold one message from scratch (every event it has) into its `messages` row."""
    state = fold(events)
    # sent_at is NOT NULL (the list is keyed on it): a message known only by unknown or
    # flagged events has no fold time, so it is listed when we first heard of it.
    sent_at: datetime | None = state.sent_at
    if sent_at is None:
        sent_at = min(event.received_at for event in events)
    provider, message_id, recipient = key
    return {
        "id": message_key_id(provider, message_id, recipient),
        "provider": provider,
        "message_id": message_id,
        "recipient": recipient,
        "sender": state.sender,
        "subject": state.subject,
        "tags": list(state.tags),
        "sent_at": sent_at,
        "status": state.status.value if state.status is not None else None,
        "status_at": state.status_at,
        "last_event_at": state.last_event_at,
        "first_delivered_at": state.first_delivered_at,
        "first_opened_at": state.first_opened_at,
        "opens": state.opens,
        "proxy_opens": state.proxy_opens,
        "clicks": state.clicks,
    }


def _upsert_statement(name: str) -> str:
    target = table(name, *(column(c) for c in (*COLUMNS, "folded_at")))
    # clock_timestamp(), not now(): folded_at must be later than the read that produced
    # the row (replay's catch-up relies on it), and now() is the transaction's start.
    values: dict[str, Any] = {c: bindparam(c) for c in COLUMNS}
    values["folded_at"] = func.clock_timestamp()
    statement = insert(target).values(values)
    updates = {c: statement.excluded[c] for c in (*COLUMNS[1:], "folded_at")}
    return compile_sql(statement.on_conflict_do_update(index_elements=["id"], set_=updates))[0]


_UPSERT = {name: _upsert_statement(name) for name in (LIVE_TABLE, REBUILD_TABLE)}


def select_events(
    conn: psycopg.Connection[Any], keys: Iterable[MessageKey]
) -> dict[MessageKey, list[LoggedEvent]]:
    """Every logged event of these messages, in one query (index events_message_idx)."""
    wanted = list(keys)
    found: dict[MessageKey, list[LoggedEvent]] = {}
    if not wanted:
        return found
    providers, message_ids, recipients = (list(part) for part in zip(*wanted, strict=True))
    params = {"providers": providers, "message_ids": message_ids, "recipients": recipients}
    with conn.cursor(row_factory=tuple_row) as cur:
        cur.execute(_SELECT_EVENTS, params)  # type: ignore[call-overload]
        for event in logged_events(cur):
            key = (event.provider, event.message_id, event.recipient)
            found.setdefault(key, []).append(event)  # type: ignore[arg-type]
    return found


def upsert_messages(
    conn: psycopg.Connection[Any], rows: Sequence[dict[str, Any]], into: str = LIVE_TABLE
) -> None:
    """Insert or replace whole rows (a fold is always from scratch, never a delta)."""
    if rows:
        with conn.cursor() as cur:
            cur.executemany(_UPSERT[into], rows)  # type: ignore[arg-type]


def refold(
    conn: psycopg.Connection[Any], keys: Sequence[MessageKey], into: str = LIVE_TABLE
) -> int:
    """Read, fold and write these messages; returns how many rows were written.

    A key without events (cannot happen for a queued key: the log is never deleted from)
    writes nothing rather than an empty row.
    """
    events = select_events(conn, keys)
    rows = [message_row(key, events[key]) for key in sorted(events)]
    upsert_messages(conn, rows, into)
    return len(rows)
