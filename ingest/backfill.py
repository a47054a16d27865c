"""`distribmail backfill`: pull Brevo's event report for a date range into the log.

Pages of `GET /smtp/statistics/events` (oldest first, limit/offset) are appended with
source `api` through the receiver's own `append`, so the log's dedup key makes a second
run, or a page pulled twice after a crash, add nothing. Ranges over 90 days (Brevo's
limit) are cut into chunks; after each page the next offset is written to
`backfill_progress`, so running the same command again after Ctrl-C or a crash resumes
at the page after the last one stored. A page that stays malformed after a few tries is
skipped and reported, by range and offset, and the run goes on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from ingest.brevo_api import BrevoBadResponse, BrevoClient, events_page
from ingest.database import text_sql
from ingest.errors import BadRequest, DatabaseUnavailable, DistribmailError
from ingest.pipeline import Receiver
from ingest.providers import brevo_pull

log = logging.getLogger(__name__)

PROVIDER = "brevo"
CHUNK_DAYS = 90  # Brevo: "The date range can not exceed 90 days"
PAGE_SIZE = 2500  # Brevo's default page; its maximum is 5000
PAGE_ATTEMPTS = 3  # tries for a page that comes back malformed before skipping it
# After this many malformed pages in a row, Brevo is broken rather than one page: stop
# (progress is kept) instead of skipping through the rest of the range.
MAX_SKIPS_IN_A_ROW = 3


@dataclass(frozen=True)
class Chunk:
    start: date
    end: date

    def __str__(self) -> str:
        return f"{self.start.isoformat()}..{self.end.isoformat()}"


def split_range(start: date, end: date, days: int = CHUNK_DAYS) -> list[Chunk]:
    """[start, end] (both included) as consecutive chunks of at most `days` days."""
    chunks = []
    while start <= end:
        last = min(end, start + timedelta(days=days - 1))
        chunks.append(Chunk(start, last))
        start = last + timedelta(days=1)
    return chunks


# --- progress, in backfill_progress (schema.sql) ----------------------------------------

_SELECT_PROGRESS = text_sql(
    """
    SELECT chunk_start, chunk_end, next_offset, done, skipped_offsets
      FROM backfill_progress
     WHERE provider = :provider AND range_start = :range_start AND range_end = :range_end
    """
)
_UPSERT_PROGRESS = text_sql(
    """
    INSERT INTO backfill_progress (provider, range_start, range_end, chunk_start,
                                   chunk_end, next_offset, done, skipped_offsets)
    VALUES (:provider, :range_start, :range_end, :chunk_start,
            :chunk_end, :next_offset, :done, CAST(:skipped_offsets AS integer[]))
    ON CONFLICT (provider, range_start, range_end, chunk_start) DO UPDATE
       SET chunk_end = EXCLUDED.chunk_end, next_offset = EXCLUDED.next_offset,
           done = EXCLUDED.done, skipped_offsets = EXCLUDED.skipped_offsets,
           updated_at = now()
    """
)
_DELETE_PROGRESS = text_sql(
    """
    DELETE FROM backfill_progress
     WHERE provider = :provider AND range_start = :range_start AND range_end = :range_end
    """
)


@dataclass
class ChunkProgress:
    start: date
    end: date
    next_offset: int = 0
    done: bool = False
    skipped_offsets: list[int] = field(default_factory=list)


class ProgressStore:
    """Where a backfill of one requested range stands, chunk by chunk."""

    def __init__(self, pool: ConnectionPool, provider: str, start: date, end: date) -> None:
        self.pool = pool
        self.key = {"provider": provider, "range_start": start, "range_end": end}

    def _run(self, sql: str, params: dict[str, Any]) -> Sequence[dict[str, Any]]:
        try:
            with self.pool.connection() as conn, conn.cursor() as cur:
                cur.execute(sql, params)  # type: ignore[arg-type]
                return cur.fetchall() if cur.description else []  # type: ignore[return-value]
        except (psycopg.OperationalError, psycopg.InterfaceError) as e:
            raise DatabaseUnavailable(f"cannot record the backfill's progress: {e}") from e

    def load(self) -> dict[date, ChunkProgress]:
        rows = self._run(_SELECT_PROGRESS, self.key)
        return {
            row["chunk_start"]: ChunkProgress(
                row["chunk_start"],
                row["chunk_end"],
                row["next_offset"],
                row["done"],
                list(row["skipped_offsets"]),
            )
            for row in rows
        }

    def save(self, progress: ChunkProgress) -> None:
        self._run(
            _UPSERT_PROGRESS,
            {
                **self.key,
                "chunk_start": progress.start,
                "chunk_end": progress.end,
                "next_offset": progress.next_offset,
                "done": progress.done,
                "skipped_offsets": progress.skipped_offsets,
            },
        )

    def clear(self) -> None:
        self._run(_DELETE_PROGRESS, self.key)


@dataclass(frozen=True)
class SkippedPage:
    chunk: Chunk
    offset: int
    reason: str

    def __str__(self) -> str:
        return f"{self.chunk} offset {self.offset}: {self.reason}"


@dataclass
class BackfillReport:
    pages: int = 0
    received: int = 0
    stored: int = 0
    flagged: int = 0
    skipped: list[SkippedPage] = field(default_factory=list)
    resumed_at: str | None = None  # "chunk offset N" when an earlier run was continued
    restarted: bool = False  # the range was complete: pulled again from the start

    @property
    def duplicates(self) -> int:
        return self.received - self.stored

    def summary(self) -> str:
        return (
            f"pages: {self.pages}, events received: {self.received}, stored: {self.stored}, "
            f"duplicates: {self.duplicates}, flagged: {self.flagged}, "
            f"skipped pages: {len(self.skipped)}"
        )


class BackfillStopped(DistribmailError):
    """Brevo failed for good in the middle of a run; what was stored stays stored."""

    status = 503


class Backfill:
    """One run over [start, end]. `position` says where it is, for an interruption message."""

    def __init__(
        self,
        client: BrevoClient,
        receiver: Receiver,
        start: date,
        end: date,
        *,
        page_size: int = PAGE_SIZE,
        chunk_days: int = CHUNK_DAYS,
        show: Callable[[float, str], None] | None = None,
        on_page: Callable[[Backfill], None] | None = None,
        retry_pause: float = 1.0,
    ) -> None:
        if start > end:
            raise BadRequest(f"--from {start} is after --to {end}")
        if not 1 <= page_size <= 5000:
            raise BadRequest(f"the page size must be between 1 and 5000, not {page_size}")
        self.client, self.receiver = client, receiver
        self.start, self.end = start, end
        self.page_size = page_size
        self.chunks = split_range(start, end, chunk_days)
        self.show = show  # (fraction of the range done, what to say): the CLI's bar
        self.on_page = on_page  # called after each stored page (tests interrupt here)
        self.retry_pause = retry_pause
        self.store = ProgressStore(receiver.pool, PROVIDER, start, end)
        self.report = BackfillReport()
        self.position = f"{self.chunks[0]} offset 0"
        self._days = (end - start).days + 1

    def run(self) -> BackfillReport:
        saved = self.store.load()
        wanted = {chunk.start for chunk in self.chunks}
        if saved and wanted <= set(saved) and all(saved[d].done for d in wanted):
            # A finished range asked again: pull it again (new events may have come in for
            # recent days); the dedup key keeps what we already have from doubling.
            self.store.clear()
            saved = {}
            self.report.restarted = True
        for chunk in self.chunks:
            progress = saved.get(chunk.start) or ChunkProgress(chunk.start, chunk.end)
            self.report.skipped.extend(
                SkippedPage(chunk, offset, "skipped by an earlier run of this range")
                for offset in progress.skipped_offsets
            )
            if progress.done:
                self._show(chunk.end)
                continue
            if progress.next_offset and self.report.resumed_at is None:
                self.report.resumed_at = f"{chunk} offset {progress.next_offset}"
            try:
                self._pull_chunk(chunk, progress)
            except DistribmailError as e:  # Brevo down, key revoked, database gone
                raise BackfillStopped(self._stopped(e.message)) from e
        return self.report

    def _stopped(self, why: str) -> str:
        return (
            f"{why}. Stopped at {self.position}; everything before is stored and the "
            "progress saved: run the same command again to resume"
        )

    def _pull_chunk(self, chunk: Chunk, progress: ChunkProgress) -> None:
        offset = progress.next_offset
        step = self.page_size  # how far a skipped page moves us: the last page's real size
        skips_in_a_row = 0
        while True:
            self.position = f"{chunk} offset {offset}"
            events, problem = self._fetch(chunk, offset)
            if problem is not None:
                skips_in_a_row += 1
                if skips_in_a_row >= MAX_SKIPS_IN_A_ROW:
                    raise BrevoBadResponse(f"{skips_in_a_row} malformed pages in a row")
                skipped = SkippedPage(chunk, offset, problem)
                log.error("skipping page %s", skipped)
                self.report.skipped.append(skipped)
                progress.skipped_offsets.append(offset)
                offset += step
                progress.next_offset = offset
                self.store.save(progress)
                continue
            skips_in_a_row = 0
            if not events:  # only an empty page ends a chunk: Brevo may cap `limit` lower
                progress.done = True
                self.store.save(progress)
                self._show(chunk.end)
                return
            stored = self.receiver.append(PROVIDER, brevo_pull.SOURCE, events)
            self._count(events, stored)
            step = len(events)
            offset += len(events)
            progress.next_offset = offset
            self.store.save(progress)
            self._show(_last_day(events) or chunk.start)
            if self.on_page is not None:
                self.on_page(self)

    def _fetch(self, chunk: Chunk, offset: int) -> tuple[list[dict[str, Any]], str | None]:
        """The page's events, or ([], why) when it stayed malformed PAGE_ATTEMPTS times."""
        problem = ""
        for attempt in range(1, PAGE_ATTEMPTS + 1):
            try:
                page = events_page(
                    self.client,
                    chunk.start.isoformat(),
                    chunk.end.isoformat(),
                    offset,
                    self.page_size,
                )
                return page, None
            except BrevoBadResponse as e:
                problem = e.message
                log.warning(
                    "malformed page (%s), attempt %d of %d", problem, attempt, PAGE_ATTEMPTS
                )
                if attempt < PAGE_ATTEMPTS:
                    time.sleep(self.retry_pause * attempt)
        return [], problem

    def _count(self, events: list[dict[str, Any]], stored: int) -> None:
        self.report.pages += 1
        self.report.received += len(events)
        self.report.stored += stored
        self.report.flagged += sum(1 for e in events if brevo_pull.normalize(e).problem)

    def _show(self, day: date) -> None:
        if self.show is None:
            return
        done_days = min(max((day - self.start).days + 1, 0), self._days)
        r = self.report
        self.show(
            done_days / self._days,
            f"{day.isoformat()}  pages {r.pages}  events {r.received}  stored {r.stored}",
        )


def _last_day(events: list[dict[str, Any]]) -> date | None:
    raw = events[-1].get("date")
    moment = brevo_pull.event_time(raw) if isinstance(raw, str) else None
    return moment.date() if moment is not None else None
