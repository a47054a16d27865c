"""The read functions behind the API: the only place on the read API's path with SQL.

Statements are SQLAlchemy Core with named bound parameters. A list request has one of a
few dozen shapes (which filters are present, whether it continues from a cursor); each
shape is compiled once and cached, so that a request pays for binding values, not for
compiling SQL. The days of a period are turned into UTC instants here, in Python, so the
database only ever compares `sent_at` with two bound timestamps and can walk
`messages_sent_idx` (sent_at DESC, id DESC) straight to the first row.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool, PoolTimeout
from sqlalchemy import (
    Column,
    DateTime,
    Integer,
    MetaData,
    Table,
    Text,
    any_,
    bindparam,
    func,
    or_,
    select,
    tuple_,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.sql import ColumnElement

from ingest.database import compile_sql
from ingest.errors import DatabaseUnavailable
from query.fold import MessageState, fold
from query.projection import MessageKey, select_events
from query.statuses import Status

# Mirrors of the tables in schema.sql (which alone holds the DDL), with only the columns
# the read side selects or filters on.
_metadata = MetaData()
_TS = DateTime(timezone=True)

messages = Table(
    "messages",
    _metadata,
    Column("id", Text, primary_key=True),
    Column("provider", Text),
    Column("message_id", Text),
    Column("recipient", Text),
    Column("sender", Text),
    Column("subject", Text),
    Column("tags", ARRAY(Text)),
    Column("sent_at", _TS),
    Column("status", Text),
    Column("status_at", _TS),
    Column("last_event_at", _TS),
    Column("opens", Integer),
    Column("proxy_opens", Integer),
    Column("clicks", Integer),
)

ITEM_COLUMNS = (
    messages.c.id,
    messages.c.provider,
    messages.c.message_id,
    messages.c.recipient,
    messages.c.sender,
    messages.c.subject,
    messages.c.tags,
    messages.c.sent_at,
    messages.c.status,
    messages.c.status_at,
    messages.c.last_event_at,
    messages.c.opens,
    messages.c.proxy_opens,
    messages.c.clicks,
)


# --- what a request asks for --------------------------------------------------------------


@dataclass(frozen=True)
class Period:
    """Whole days `first` to `last` (inclusive) on the wall clock of `zone`.

    A day is from one local midnight to the next, so in Europe/Paris the day of the
    spring change lasts 23 hours and the autumn one 25; a mail belongs to the day its
    `sent_at` falls in once read in `zone` (23:30 UTC on 7 March is 8 March in Paris).
    """

    first: date
    last: date
    zone: ZoneInfo

    @property
    def days(self) -> int:
        return (self.last - self.first).days + 1

    @property
    def start(self) -> datetime:
        """The first instant of the period, in UTC."""
        return _local_midnight(self.first, self.zone)

    @property
    def end(self) -> datetime:
        """The first instant AFTER the period, in UTC (the bound is exclusive)."""
        return _local_midnight(self.last + timedelta(days=1), self.zone)


def _local_midnight(day: date, zone: ZoneInfo) -> datetime:
    # Where a zone skips midnight itself (a few zones change at 00:00), zoneinfo reads the
    # missing wall time with the offset from before the change, i.e. the first instant of
    # the day: the days still tile the time line with neither gap nor overlap.
    return datetime.combine(day, time(0), tzinfo=zone).astimezone(UTC)


@dataclass(frozen=True)
class Filters:
    """What narrows the list and the counts. Text values arrive already normalized the
    way the projection stores them (recipient lower-case, message-id without <>)."""

    period: Period
    statuses: tuple[Status, ...] = ()
    text: str | None = None  # substring of recipient, sender or subject, any case
    recipient: str | None = None
    sender: str | None = None
    message_id: str | None = None
    tag: str | None = None


@dataclass(frozen=True)
class Position:
    """Where a page ended: the (sent_at, id) of its last row. The next page starts strictly
    after it in (sent_at DESC, id DESC) order, which is a total order (id is unique), so
    rows inserted meanwhile, newer or older, neither repeat nor push a row off a page."""

    sent_at: datetime
    id: str


@dataclass(frozen=True)
class Page:
    rows: list[dict[str, Any]]
    next: Position | None


@dataclass(frozen=True)
class Detail:
    row: dict[str, Any]  # the projection's summary, as in the list
    state: MessageState  # the fold of the message's log rows: the steps and their payloads


# --- statements, one per shape ----------------------------------------------------------


@dataclass(frozen=True)
class _Shape:
    statuses: bool
    text: bool
    recipient: bool
    sender: bool
    message_id: bool
    tag: bool

    @classmethod
    def of(cls, filters: Filters) -> _Shape:
        return cls(
            statuses=bool(filters.statuses),
            text=filters.text is not None,
            recipient=filters.recipient is not None,
            sender=filters.sender is not None,
            message_id=filters.message_id is not None,
            tag=filters.tag is not None,
        )


def _conditions(shape: _Shape) -> list[ColumnElement[bool]]:
    m = messages.c
    conditions: list[ColumnElement[bool]] = [
        m.sent_at >= bindparam("start", type_=_TS),
        m.sent_at < bindparam("end", type_=_TS),
    ]
    if shape.statuses:
        # One array parameter, not IN (...): the statement's shape does not depend on how
        # many statuses are asked for.
        conditions.append(m.status == any_(bindparam("statuses", type_=ARRAY(Text))))
    if shape.text:
        pattern = bindparam("pattern", type_=Text)
        conditions.append(
            or_(
                m.recipient.ilike(pattern, escape="\\"),
                m.sender.ilike(pattern, escape="\\"),
                m.subject.ilike(pattern, escape="\\"),
            )
        )
    if shape.recipient:
        conditions.append(m.recipient == bindparam("recipient", type_=Text))
    if shape.sender:
        conditions.append(func.lower(m.sender) == bindparam("sender", type_=Text))
    if shape.message_id:
        conditions.append(m.message_id == bindparam("message_id", type_=Text))
    if shape.tag:
        conditions.append(m.tags.contains(bindparam("tags", type_=ARRAY(Text))))
    return conditions


@lru_cache(maxsize=256)
def _list_sql(shape: _Shape, after: bool) -> str:
    conditions = _conditions(shape)
    if after:
        # A row comparison, which PostgreSQL turns into one index condition on
        # messages_sent_idx: a deep page costs what the first one does.
        after_at = bindparam("after_sent_at", type_=_TS)
        after_id = bindparam("after_id", type_=Text)
        conditions.append(tuple_(messages.c.sent_at, messages.c.id) < tuple_(after_at, after_id))
    statement = (
        select(*ITEM_COLUMNS)
        .where(*conditions)
        .order_by(messages.c.sent_at.desc(), messages.c.id.desc())
        .limit(bindparam("limit", type_=Integer))
    )
    return compile_sql(statement)[0]


@lru_cache(maxsize=128)
def _counts_sql(shape: _Shape) -> str:
    statement = (
        select(messages.c.status, func.count().label("count"))
        .where(*_conditions(shape))
        .group_by(messages.c.status)
    )
    return compile_sql(statement)[0]


_MESSAGE_SQL, _ = compile_sql(select(*ITEM_COLUMNS).where(messages.c.id == bindparam("id")))


def like_pattern(text: str) -> str:
    """`%text%` with LIKE's own wildcards taken literally (`50%_off` finds just that)."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _params(filters: Filters) -> dict[str, Any]:
    params: dict[str, Any] = {"start": filters.period.start, "end": filters.period.end}
    if filters.statuses:
        params["statuses"] = [str(status) for status in filters.statuses]
    if filters.text is not None:
        params["pattern"] = like_pattern(filters.text)
    if filters.recipient is not None:
        params["recipient"] = filters.recipient
    if filters.sender is not None:
        params["sender"] = filters.sender.lower()
    if filters.message_id is not None:
        params["message_id"] = filters.message_id
    if filters.tag is not None:
        params["tags"] = [filters.tag]
    return params


# --- the read functions -----------------------------------------------------------------


def list_messages(
    pool: ConnectionPool, filters: Filters, limit: int, after: Position | None = None
) -> Page:
    """Up to `limit` messages, newest first, after `after`; `next` is set when more follow."""
    params = _params(filters)
    params["limit"] = limit + 1  # one more than asked: tells whether a next page exists
    if after is not None:
        params["after_sent_at"] = after.sent_at
        params["after_id"] = after.id
    sql = _list_sql(_Shape.of(filters), after is not None)
    with _connection(pool) as conn:
        rows = _fetch(conn, sql, params)
    if len(rows) <= limit:
        return Page(rows, None)
    rows = rows[:limit]
    last = rows[-1]
    return Page(rows, Position(last["sent_at"], last["id"]))


def count_messages(pool: ConnectionPool, filters: Filters) -> dict[Status | None, int]:
    """How many messages of the period match, per current status (None: no status yet)."""
    with _connection(pool) as conn:
        rows = _fetch(conn, _counts_sql(_Shape.of(filters)), _params(filters))
    counts: dict[Status | None, int] = {}
    for row in rows:
        status = _status(row["status"])
        counts[status] = counts.get(status, 0) + row["count"]
    return counts


def get_message(pool: ConnectionPool, message_key: str) -> Detail | None:
    """The message's summary row and the fold of its log rows, or None if unknown."""
    with _connection(pool) as conn:
        found = _fetch(conn, _MESSAGE_SQL, {"id": message_key})
        if not found:
            return None
        row = found[0]
        key: MessageKey = (row["provider"], row["message_id"], row["recipient"])
        # The projector's own read (events_message_idx), so that the detail folds exactly
        # the rows the projection folded, mapped the same way.
        logged = select_events(conn, [key]).get(key, [])
    return Detail(row, fold(logged))


@contextmanager
def _connection(pool: ConnectionPool) -> Iterator[psycopg.Connection[Any]]:
    """A pooled connection; the driver's "cannot reach the database" errors become
    DatabaseUnavailable (503), here and nowhere else."""
    try:
        with pool.connection() as conn:
            yield conn
    except (psycopg.OperationalError, psycopg.InterfaceError, PoolTimeout) as e:
        raise DatabaseUnavailable(f"the database did not answer the read: {e}") from e


def _fetch(
    conn: psycopg.Connection[Any], sql: str, params: Mapping[str, Any]
) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(sql, params)
        return cur.fetchall()


def _status(code: str | None) -> Status | None:
    """A stored code as a Status; a code this version does not know (written by a newer
    projector during a rolling upgrade) reads as no status rather than a crash."""
    try:
        return Status(code) if code is not None else None
    except ValueError:
        return None


def status_of(row: Mapping[str, Any]) -> Status | None:
    return _status(row["status"])
