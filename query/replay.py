"""`distribmail replay`: rebuild the projection from the log alone, aside, then swap it in.

The method, and why nothing that arrives during the rebuild is missed
----------------------------------------------------------------------
1. Open a REPEATABLE READ snapshot S and stream the log ordered by (provider, message_id,
   recipient) through a server-side cursor: one message's events at a time are folded
   (query.projection, the live path's own code) and COPYed into `messages_rebuild`. Peak
   memory is one fetch plus one message, whatever the size of the log. The live projector
   keeps running on `messages` meanwhile. A large log is split into key ranges folded by
   worker processes (one per core: the fold is CPU-bound Python), each reading snapshot S
   itself, imported with SET TRANSACTION SNAPSHOT: together they fold exactly what one
   reader of S would. The table's indexes are built once the COPYs are done. This step
   is query.replay_rebuild; the rest is here.
2. Catch up. An event E committed after S (so missing from the rebuild) wrote a queue row
   in its own transaction. At any later moment that row is either still in `fold_queue`
   (or deleted by a projector that has not committed: still visible to us), or a live
   projector read E and committed a new version of the message's `messages` row, after
   E's commit. Either way a row of fold_queue or of messages was written by a transaction
   that S does not see. So we re-fold into the rebuild every message having such a row
   (`pg_visible_in_snapshot` on its xmin). Each pass first takes its own snapshot, the
   next pass looks for rows newer than it, and so on: the passes shrink, the last is short.
3. Swap, in one transaction: LOCK messages IN EXCLUSIVE MODE (readers go on; projector
   writes wait, and the lock waits for those in flight to commit), one last catch-up pass,
   then drop the old table and rename the rebuilt one and its indexes and constraints to
   the names schema.sql declares (it stays idempotent). A projector blocked on the lock
   resolves `messages` again once it gets it, and writes into the new table; its queue
   rows were still visible to our last pass if it had not committed.

xmin is a 32-bit xid and `xmin::text::xid8` would carry epoch 0: wrong once the cluster
has wrapped around once. We rebuild the full xid from the statement's own snapshot
(a visible row's xid is within 2**32 below its xmax); a frozen or very old row can only
come out as older than it is, so visible, and such rows are in S anyway. We chose xids
over a clock (`folded_at >= start`): no margin for clock steps, and a queue left full by
a stopped projector is not re-folded by every pass when S already holds it.

A replay killed at any point leaves `messages` untouched (the swap is one transaction);
the next run drops the stale `messages_rebuild` first. Two replays at once are refused.
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import IsolationLevel
from psycopg.rows import dict_row

from ingest.database import text_sql
from ingest.errors import DistribmailError
from query.progress import Progress, StderrProgress
from query.projection import REBUILD_TABLE, refold
from query.replay_rebuild import FETCH_SIZE, rebuild
from query.swap import compare, swap_tables

log = logging.getLogger(__name__)

REPLAY_LOCK_KEY = 0x7265706C  # "repl": one replay at a time, held for the whole run
REFOLD_CHUNK = 500
# Catch-up passes before taking the lock: stop early once a pass finds this few messages.
PASSES_BEFORE_LOCK = 3
SMALL_PASS = 200
SWAP_ATTEMPTS = 3


class ReplayRunning(DistribmailError):
    status = 409


@dataclass(frozen=True)
class StatusChange:
    id: str
    message_id: str
    recipient: str
    old: str | None  # None: no status, or no row at all in the live projection
    new: str | None


@dataclass(frozen=True)
class ReplayReport:
    dry_run: bool
    events: int  # events folded from the snapshot
    messages: int  # rows of the rebuilt projection (before catch-up)
    caught_up: int  # messages re-folded for events that arrived during the rebuild
    seconds: float
    # Dry runs only: rows whose status would change (exact), the first few of them, and
    # rows with the same status but another column different (counters, times ...).
    status_changes: int | None = None
    changes: tuple[StatusChange, ...] = ()
    other_changes: int | None = None


_SNAPSHOT = text_sql("SELECT CAST(pg_current_snapshot() AS text) AS snapshot")
_TRY_LOCK = text_sql("SELECT pg_try_advisory_lock(:key) AS locked")
_DROP_REBUILD = text_sql(f"DROP TABLE IF EXISTS {REBUILD_TABLE}")
_CREATE_REBUILD = text_sql(
    f"CREATE TABLE {REBUILD_TABLE} (LIKE messages INCLUDING ALL EXCLUDING INDEXES)"
)
_ANALYZE_REBUILD = text_sql(f"ANALYZE {REBUILD_TABLE}")
_LOCK_LIVE = text_sql("LOCK TABLE messages IN EXCLUSIVE MODE")
_LOCK_TIMEOUT = text_sql("SET LOCAL lock_timeout = '10s'")
# Messages with a queue row or a live row written by a transaction `since` does not see.
# full_xid: the 64-bit xid of a row, from its 32-bit xmin and this statement's xmax.
_CHANGED_SINCE = text_sql(
    """
    WITH current AS (
        SELECT CAST(CAST(pg_snapshot_xmax(pg_current_snapshot()) AS text) AS bigint) AS xmax
    ), written AS (
        SELECT provider, message_id, recipient, xmin FROM messages
         UNION ALL
        SELECT provider, message_id, recipient, xmin FROM fold_queue
    ), dated AS (
        SELECT provider, message_id, recipient,
               xmax - ((xmax % 4294967296) - CAST(CAST(xmin AS text) AS bigint)
                       + 4294967296) % 4294967296 AS full_xid
          FROM written, current
    )
    SELECT DISTINCT provider, message_id, recipient
      FROM dated
     WHERE NOT pg_visible_in_snapshot(CAST(CAST(full_xid AS text) AS xid8),
                                      CAST(:since AS pg_snapshot))
    """
)


def _snapshot(conn: psycopg.Connection[Any]) -> str:
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(_SNAPSHOT).fetchone()
    if row is None:
        raise RuntimeError("SELECT pg_current_snapshot() answered no row")
    return row["snapshot"]  # type: ignore[no-any-return]


def _catch_up(conn: psycopg.Connection[Any], since: str) -> tuple[int, str]:
    """Step 2: re-fold into the rebuild the messages written after snapshot `since`;
    (messages re-folded, the snapshot this pass started from, for the next one)."""
    snapshot = _snapshot(conn)  # before the query and the reads: they see all it sees
    with conn.cursor() as cur:
        keys = sorted(tuple(row) for row in cur.execute(_CHANGED_SINCE, {"since": since}))
    for start in range(0, len(keys), REFOLD_CHUNK):
        refold(conn, keys[start : start + REFOLD_CHUNK], into=REBUILD_TABLE)  # type: ignore[arg-type]
    return len(keys), snapshot


def _catch_up_unlocked(conn: psycopg.Connection[Any], since: str) -> tuple[int, str]:
    caught_up = 0
    for _ in range(PASSES_BEFORE_LOCK):
        with conn.transaction():
            found, since = _catch_up(conn, since)
        caught_up += found
        if found < SMALL_PASS:
            break
    return caught_up, since


def _swap(conn: psycopg.Connection[Any], since: str) -> int:
    """Step 3, in one transaction; returns the messages re-folded under the lock.

    The lock waits at most lock_timeout (a long reader, a stuck projector) so that the
    requests queued behind our lock never wait long; then we roll back and try again.
    """
    for attempt in range(1, SWAP_ATTEMPTS + 1):
        try:
            with conn.transaction():
                conn.execute(_LOCK_TIMEOUT)
                conn.execute(_LOCK_LIVE)
                found, _ = _catch_up(conn, since)
                swap_tables(conn)
            return found
        except psycopg.errors.LockNotAvailable:
            if attempt == SWAP_ATTEMPTS:
                raise DistribmailError(
                    "replay could not lock the messages table to swap it in (a transaction"
                    " keeps it busy: see pg_stat_activity); the live projection is untouched"
                ) from None
            log.warning("replay: messages is busy, swap attempt %d failed; retrying", attempt)
    raise AssertionError("unreachable")


def _drop_rebuild(conn: psycopg.Connection[Any]) -> None:
    """After a swap the table no longer exists; after a failure it is left for the next
    run to drop if the connection is gone too."""
    try:
        conn.execute(_DROP_REBUILD)
    except psycopg.Error as e:
        log.warning("replay: could not drop %s (the next replay will): %s", REBUILD_TABLE, e)


def replay(
    url: str,
    dry_run: bool = False,
    progress: Progress | None = None,
    fetch_size: int = FETCH_SIZE,
    changes_shown: int = 50,
    workers: int | None = None,
) -> ReplayReport:
    """Rebuild `messages` from the log and swap it in (or, dry, only say what would change).

    `workers`: processes folding the log; None: one per core (at most 2) for a large log."""
    started = time.monotonic()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.isolation_level = IsolationLevel.READ_COMMITTED
        with conn.cursor(row_factory=dict_row) as cur:
            if not cur.execute(_TRY_LOCK, {"key": REPLAY_LOCK_KEY}).fetchone()["locked"]:  # type: ignore[index]
                raise ReplayRunning("another replay is running on this database; wait for it")
        conn.execute(_DROP_REBUILD)  # left by a replay that was killed
        conn.execute(_CREATE_REBUILD)
        try:
            events, messages, since = rebuild(url, progress, fetch_size, workers)
            caught_up, since = _catch_up_unlocked(conn, since)
            conn.execute(_ANALYZE_REBUILD)  # the swapped-in table comes with statistics
            if dry_run:
                status_changes, changes, other_changes = compare(conn, changes_shown)
                return ReplayReport(
                    True, events, messages, caught_up, time.monotonic() - started,
                    status_changes, tuple(StatusChange(**c) for c in changes), other_changes,
                )  # fmt: skip
            caught_up += _swap(conn, since)
        finally:
            _drop_rebuild(conn)
    log.info("replay: %d events, %d messages, %d caught up", events, messages, caught_up)
    return ReplayReport(False, events, messages, caught_up, time.monotonic() - started)


def add_replay_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="build aside and report what would change, touch nothing",
    )
    parser.add_argument("--show", type=int, default=50, help="status changes listed (dry run)")
    parser.add_argument("--quiet", action="store_true", help="no progress line on stderr")


def run_replay(args: argparse.Namespace) -> int:
    from ingest.database import apply_schema
    from ingest.settings import IngestSettings
    from ingest.wiring import database_url

    url = database_url(IngestSettings.from_env())
    apply_schema(url)
    progress = None if args.quiet else StderrProgress()
    report = replay(url, dry_run=args.dry_run, progress=progress, changes_shown=args.show)
    print(
        f"replay: {report.events:,} events folded into {report.messages:,} messages in"
        f" {report.seconds:.1f}s; {report.caught_up:,} re-folded for events that came meanwhile"
    )
    if not report.dry_run:
        print("replay: the rebuilt projection is live")
        return 0
    print(
        f"dry run: {report.status_changes:,} message(s) would change status,"
        f" {report.other_changes:,} other(s) would change in other columns; nothing was touched"
    )
    for change in report.changes:
        print(f"  {change.id}  {change.old or '-'} -> {change.new or '-'}"
              f"  {change.message_id} {change.recipient}")  # fmt: skip
    if report.status_changes and report.status_changes > len(report.changes):
        print(f"  ... and {report.status_changes - len(report.changes):,} more")
    return 0
