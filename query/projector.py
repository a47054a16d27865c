"""The projector: keeps `messages` current by re-folding the messages the log touched.

Why this never skips an event committed late
--------------------------------------------
The log's `id` is arrival order, not commit order: a transaction T1 that appended event A
(id 10) may commit after T2 appended B (id 11). A reader that remembers "folded up to id
11" would never look at A again. So we do not follow positions at all. The events
trigger (schema.sql) writes one `fold_queue` row per touched message inside the append's
own transaction, and one projector batch, in one READ COMMITTED transaction:

1. deletes up to N queue rows (FOR UPDATE SKIP LOCKED). A queue row becomes visible
   exactly when its events commit, atomically: before that, no projector can see it;
   after that, every statement that sees it also sees the events it stands for;
2. takes pg_advisory_xact_lock on each distinct message, in sorted order;
3. reads ALL events of those messages in a statement that starts after 1 and 2, so its
   snapshot sees every event whose queue row it deleted (they committed together), and
   everything a previous holder of the same message lock had seen (that holder committed
   before releasing it);
4. folds each message from scratch and upserts its row, then commits.

A queue row therefore disappears only in a transaction whose later read sees its event;
if that transaction fails, the delete rolls back and the row comes back for the next
batch. An event committed after step 3 brought its own queue row, still in the queue.

Several projectors (threads in each web worker, `distribmail worker` processes) may run at
once. SKIP LOCKED hands them disjoint queue rows, but two rows for the same message may
go to two of them: the advisory lock makes the second wait for the first to commit, and
READ COMMITTED gives its read a fresh snapshot after the wait, so the later writer always
folds a superset of what the earlier one folded, never a stale set over a newer row.
Locks are taken in one sorted order, so two projectors never deadlock. Nothing here may
run under REPEATABLE READ: a snapshot taken before the wait would bring the stale
overwrite back.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import IsolationLevel
from psycopg.rows import dict_row, tuple_row

from ingest.database import text_sql
from ingest.notify import FOLD_CHANNEL
from query.projection import LIVE_TABLE, MessageKey, lock_key, refold

log = logging.getLogger(__name__)

CHANNEL = FOLD_CHANNEL  # notified by the writers after their commits (ingest.notify)
# While idle, how often the stop flag is checked between notification waits.
STOP_CHECK_SECONDS = 0.1
RECONNECT_BACKOFF_SECONDS = 2.0

_TAKE_BATCH = text_sql(
    """
    DELETE FROM fold_queue
     WHERE id IN (SELECT id FROM fold_queue ORDER BY id LIMIT :limit
                  FOR UPDATE SKIP LOCKED)
    RETURNING provider, message_id, recipient
    """
)

# unnest keeps the array's order and a volatile function in the select list runs once per
# row as the rows come: the locks are taken one by one in the order sorted by Python.
_LOCK_MESSAGES = text_sql(
    """
    SELECT pg_advisory_xact_lock(k)
      FROM unnest(CAST(:lock_keys AS bigint[])) WITH ORDINALITY AS locks(k, n)
     ORDER BY n
    """
)

_SELECT_LAG = text_sql(
    """
    SELECT count(*) AS queued,
           COALESCE(EXTRACT(EPOCH FROM clock_timestamp() - min(queued_at)), 0) AS oldest
      FROM fold_queue
    """
)


@dataclass(frozen=True)
class BatchResult:
    queue_rows: int  # queue rows taken (and deleted)
    messages: int  # distinct messages folded


@dataclass(frozen=True)
class ProjectionLag:
    queue_length: int
    oldest_age_seconds: float  # 0 when the queue is empty

    def to_json(self) -> dict[str, Any]:
        return {
            "queue_length": self.queue_length,
            "oldest_age_seconds": round(self.oldest_age_seconds, 3),
        }


def read_lag(conn: psycopg.Connection[Any]) -> ProjectionLag:
    """How far the projection is behind the log: for /readyz and /metrics."""
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(_SELECT_LAG).fetchone()  # type: ignore[call-overload]
    if row is None:  # an aggregate always answers one row
        raise RuntimeError("the fold_queue lag query answered no row")
    return ProjectionLag(int(row["queued"]), float(row["oldest"]))


def _lock_in_order(conn: psycopg.Connection[Any], keys: list[MessageKey]) -> None:
    ordered = sorted({lock_key(key) for key in keys})
    conn.execute(_LOCK_MESSAGES, {"lock_keys": ordered})  # type: ignore[call-overload]


def project_batch(conn: psycopg.Connection[Any], limit: int = 500) -> BatchResult:
    """One batch in one transaction (see the module doc). `conn` must be in autocommit
    mode (it is put in READ COMMITTED here); the transaction is ours."""
    if conn.isolation_level != IsolationLevel.READ_COMMITTED:
        conn.isolation_level = IsolationLevel.READ_COMMITTED
    with conn.transaction(), conn.cursor(row_factory=tuple_row) as cur:
        taken = cur.execute(_TAKE_BATCH, {"limit": limit}).fetchall()  # type: ignore[call-overload]
        keys: list[MessageKey] = sorted({(row[0], row[1], row[2]) for row in taken})
        if not keys:
            return BatchResult(0, 0)
        _lock_in_order(conn, keys)
        folded = refold(conn, keys, into=LIVE_TABLE)
    return BatchResult(len(taken), folded)


def drain(conn: psycopg.Connection[Any], batch_size: int = 500) -> int:
    """Fold batches until the queue (as far as we can take it) is empty; messages folded."""
    folded = 0
    while True:
        result = project_batch(conn, batch_size)
        folded += result.messages
        if result.queue_rows < batch_size:
            return folded


class Projector:
    """The projection loop: LISTEN, drain the queue, wait for a NOTIFY or the poll timeout.

    Runs on its own connection (a LISTEN needs a session of its own), in a thread of the
    web app (`start`) or in the foreground of `distribmail worker` (`run`).
    """

    def __init__(self, url: str, batch_size: int = 500, poll_interval: float = 1.0) -> None:
        self.url = url
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self.folded = 0  # messages folded since start, for logs and metrics
        self.lag: ProjectionLag | None = None
        self.lag_read_at: float | None = None  # time.monotonic() of the last lag reading
        self.last_error: str | None = None
        self.failures = 0  # batches or connections that failed and were retried
        self.started_at = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="distribmail-projector", daemon=True)
        self._thread.start()

    def stop_soon(self) -> None:
        """Ask the loop to stop after the current batch (safe from a signal handler)."""
        self._stop.set()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def is_running(self) -> bool:
        if self._thread is not None:
            return self._thread.is_alive()
        return not self._stop.is_set()

    def run(self) -> None:
        """Loop until stopped; a lost connection is reopened after a pause, never fatal."""
        while not self._stop.is_set():
            try:
                with psycopg.connect(self.url, autocommit=True, connect_timeout=5) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self.last_error = None
                    self._serve(conn)
            except Exception as e:  # a thread that dies silently would stop the projection
                self.last_error = type(e).__name__
                self.failures += 1
                log.warning("projector: %s: %s; retrying in %.0fs", type(e).__name__, e,
                            RECONNECT_BACKOFF_SECONDS)  # fmt: skip
                self._stop.wait(RECONNECT_BACKOFF_SECONDS)

    def _serve(self, conn: psycopg.Connection[Any]) -> None:
        while not self._stop.is_set():
            while not self._stop.is_set():
                result = project_batch(conn, self.batch_size)
                self.folded += result.messages
                self._read_lag(conn, at_most_every=self.poll_interval)
                if result.queue_rows < self.batch_size:
                    break
            self._read_lag(conn, at_most_every=self.poll_interval)
            self._wait(conn)

    def _read_lag(self, conn: psycopg.Connection[Any], at_most_every: float) -> None:
        now = time.monotonic()
        if self.lag_read_at is None or now - self.lag_read_at >= at_most_every:
            self.lag = read_lag(conn)
            self.lag_read_at = now

    def _wait(self, conn: psycopg.Connection[Any]) -> None:
        # Notifications that came during the batches are kept by psycopg and returned
        # first, so a wake-up between the last batch and this wait is not lost; the poll
        # timeout covers anything else (e.g. a NOTIFY lost with a reconnection).
        deadline = time.monotonic() + self.poll_interval
        while not self._stop.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            for _ in conn.notifies(timeout=min(remaining, STOP_CHECK_SECONDS), stop_after=1):
                return
