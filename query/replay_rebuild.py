"""Step 1 of `distribmail replay` (query.replay): fold snapshot S of the log into
`messages_rebuild`, then index it.

The log is streamed ordered by (provider, message_id, recipient) through a server-side
cursor: one message's events at a time are folded (query.projection, the live path's own
code) and COPYed into the table, so peak memory is one fetch plus one message. A large log
is cut into key ranges folded by worker processes (one per core: the fold is CPU-bound
Python), each reading snapshot S itself, imported with SET TRANSACTION SNAPSHOT: together
they fold exactly what one reader of S would.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import queue
from collections.abc import Iterator
from typing import Any

import psycopg
from psycopg import IsolationLevel, sql
from psycopg.rows import dict_row, tuple_row

from ingest.database import text_sql
from ingest.errors import DistribmailError
from query.logged import LoggedEvent
from query.progress import Progress
from query.projection import (
    COLUMNS,
    REBUILD_TABLE,
    TRIMMED_EVENT_COLUMNS,
    MessageKey,
    logged_events,
    message_row,
)  # fmt: skip
from query.swap import index_like_live

FETCH_SIZE = 2000
# Below this many events one process folds them all: starting workers costs about a second.
PARALLEL_MIN_EVENTS = 100_000
# Keys sampled to cut the log into ranges of about the same size.
SPLIT_SAMPLE = 20_000

_KEYED = "message_id IS NOT NULL AND recipient IS NOT NULL"  # what the queue trigger keys
# The first statement of the REPEATABLE READ transaction: its snapshot is S, exported for
# the workers (the export lives as long as this transaction).
_COUNT_EVENTS = text_sql(
    f"""
    SELECT CAST(pg_current_snapshot() AS text) AS snapshot, pg_export_snapshot() AS exported,
           (SELECT count(*) FROM events WHERE {_KEYED}) AS n
    """
)
# The first key of each but the first of `parts` equal slices of a sample of the log's
# pages: the boundaries come back, not the sample.
_SPLIT_KEYS = text_sql(
    f"""
    SELECT DISTINCT ON (part) provider, message_id
      FROM (SELECT provider, message_id,
                   ntile(:parts) OVER (ORDER BY provider, message_id) AS part
              FROM events TABLESAMPLE SYSTEM (:percent) WHERE {_KEYED}) AS sample
     WHERE part > 1
     ORDER BY part, provider, message_id
    """
)
# A range of (provider, message_id) is a set of whole messages (the key's first columns).
_FROM, _BELOW = "(provider, message_id) >= (%s, %s)", "(provider, message_id) < (%s, %s)"
_STREAM_EVENTS = (
    f"SELECT {TRIMMED_EVENT_COLUMNS} FROM events WHERE {_KEYED}{{range}}"
    " ORDER BY provider, message_id, recipient"
)
_COPY_REBUILD = f"COPY {REBUILD_TABLE} ({', '.join(COLUMNS)}) FROM STDIN"


def _by_message(cursor: psycopg.Cursor[Any]) -> Iterator[tuple[MessageKey, list[LoggedEvent]]]:
    rows = logged_events(cursor)
    for key, events in itertools.groupby(rows, lambda e: (e.provider, e.message_id, e.recipient)):
        yield key, list(events)  # type: ignore[misc]


Bound = tuple[str, str]  # (provider, message_id): where a key range starts or ends


def _fold_range(
    reader: psycopg.Connection[Any],
    writer: psycopg.Connection[Any],
    bounds: tuple[Bound | None, Bound | None],
    fetch_size: int,
    done: Progress,
) -> tuple[int, int]:
    """Fold the messages in [low, high) of the reader's snapshot into the rebuild, COPY,
    commit; (events, messages). `done(events, messages)` is called after each message."""
    events = messages = 0
    low, high = bounds
    where = (f" AND {_FROM}" if low else "") + (f" AND {_BELOW}" if high else "")
    params = [*(low or ()), *(high or ())]
    stream = reader.cursor(name="distribmail_replay", row_factory=tuple_row)
    stream.itersize = fetch_size
    with stream, writer.cursor() as out, out.copy(_COPY_REBUILD) as copy:
        stream.execute(_STREAM_EVENTS.format(range=where), params)
        for key, logged in _by_message(stream):
            row = message_row(key, logged)
            copy.write_row([row[column] for column in COLUMNS])
            events += len(logged)
            messages += 1
            done(events, messages)
    writer.commit()
    return events, messages


def _split(reader: psycopg.Connection[Any], total: int, parts: int) -> list[Bound]:
    """Up to parts-1 boundaries that cut the log's keys into ranges of about equal size,
    from a sample of its pages (a boundary only has to exist, not to be exact)."""
    percent = min(100.0, 100.0 * SPLIT_SAMPLE / max(total, 1))
    with reader.cursor(row_factory=tuple_row) as cur:
        cur.execute(_SPLIT_KEYS, {"parts": parts, "percent": percent})  # type: ignore[call-overload]
        return sorted(set(cur.fetchall()))


def _worker(
    url: str, exported: str, bounds: tuple[Bound | None, Bound | None], fetch_size: int,
    counter: Any, results: Any,
) -> None:  # fmt: skip
    """A worker process: fold one key range of the exported snapshot into the rebuild."""
    try:
        with psycopg.connect(url) as reader, psycopg.connect(url) as writer:
            reader.isolation_level = IsolationLevel.REPEATABLE_READ
            reader.read_only = True
            reader.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(exported)))

            def done(events: int, messages: int) -> None:
                counter.value = events

            results.put(("ok", _fold_range(reader, writer, bounds, fetch_size, done)))
    except BaseException as e:  # reported to the parent, which raises it there
        results.put(("error", f"{type(e).__name__}: {e}"))


def _fold_in_workers(
    url: str, exported: str, cuts: list[Bound], fetch_size: int, total: int,
    progress: Progress | None,
) -> tuple[int, int]:  # fmt: skip
    """One process per key range. Forked, so that they start at once and whatever the
    main module: a child opens connections of its own and never touches the ones it
    inherits, and multiprocessing ends it with os._exit, so no finalizer of the parent's
    connections runs in it (which would close their sockets under the parent)."""
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    edges: list[Bound | None] = [None, *cuts, None]
    counters = [context.Value("q", 0, lock=False) for _ in range(len(edges) - 1)]
    processes = [
        context.Process(
            target=_worker,
            args=(url, exported, (edges[n], edges[n + 1]), fetch_size, counters[n], results),
            name=f"distribmail-replay-{n + 1}",
        )
        for n in range(len(edges) - 1)
    ]
    answers: list[tuple[str, Any]] = []
    try:
        for process in processes:
            process.start()
        while len(answers) < len(processes):
            if progress is not None:
                progress(sum(counter.value for counter in counters), total)
            try:
                answers.append(results.get(timeout=0.25))
            except queue.Empty:
                if not any(p.is_alive() for p in processes) and results.empty():
                    raise DistribmailError("a replay worker died without an answer") from None
    finally:
        for process in processes:
            if process.is_alive() and len(answers) < len(processes):
                process.terminate()
            process.join()
    failures = [detail for outcome, detail in answers if outcome != "ok"]
    if failures:
        raise DistribmailError(f"a replay worker failed: {failures[0]}")
    return sum(a[1][0] for a in answers), sum(a[1][1] for a in answers)


def rebuild(
    url: str, progress: Progress | None, fetch_size: int, workers: int | None
) -> tuple[int, int, str]:
    """Step 1: stream snapshot S into messages_rebuild, then index it; (events, messages, S)."""
    with psycopg.connect(url) as reader, psycopg.connect(url) as writer:
        reader.isolation_level = IsolationLevel.REPEATABLE_READ
        reader.read_only = True
        with reader.cursor(row_factory=dict_row) as cur:
            first = cur.execute(_COUNT_EVENTS).fetchone()
            if first is None:
                raise RuntimeError("the event count answered no row")
            snapshot, total = first["snapshot"], first["n"]
        if workers is None:
            workers = min(2, os.cpu_count() or 1) if total >= PARALLEL_MIN_EVENTS else 1
        cuts = _split(reader, total, workers) if workers > 1 else []
        if cuts:
            events, messages = _fold_in_workers(
                url, first["exported"], cuts, fetch_size, total, progress
            )
        else:

            def done(events: int, messages: int) -> None:
                if progress is not None:
                    progress(events, total)

            events, messages = _fold_range(reader, writer, (None, None), fetch_size, done)
        if progress is not None:
            progress(events, min(events, total))  # the last figure closes the line
        reader.commit()  # ends the export: every worker has its rows committed
        with writer.transaction():
            index_like_live(writer)
    return events, messages, snapshot
