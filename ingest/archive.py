"""`distribmail archive --before YYYY-MM`: old months out of the log, never silently.

Each monthly partition that ended before the given month (and long enough ago) is written
to `<folder>/events-YYYY-MM.jsonl.gz`, one JSON row per line, fsync'd; the file is read
back and its line count checked against the partition before the partition is detached
(kept as a table of its own). Only with --drop is the detached table then dropped.

After archiving, a re-sent or re-pulled event of that month would be stored again (its
twin is no longer in the log to deduplicate against), and a replay no longer sees it: so
only months past Brevo's retries and reconciliation window may go.
"""

from __future__ import annotations

import argparse
import gzip
import logging
import os
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import psycopg
from psycopg import sql

from ingest.errors import BadRequest

log = logging.getLogger(__name__)

# A month must have ended at least this long ago: Brevo retries for hours, reconciliation
# pulls a day, a backfill may pull 90 days.
MIN_AGE = timedelta(days=95)
_PARTITION = re.compile(r"^events_(\d{4})_(\d{2})$")

_SELECT_PARTITIONS = """
    SELECT c.relname AS name
      FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
     WHERE i.inhparent = 'events'::regclass
     ORDER BY c.relname
"""


@dataclass(frozen=True)
class ArchivedMonth:
    partition: str
    file: Path
    rows: int
    dropped: bool


def month_start(text: str) -> date:
    try:
        return datetime.strptime(text, "%Y-%m").date()
    except ValueError:
        raise BadRequest(f"--before takes a month as YYYY-MM, not {text!r}") from None


def months_to_archive(conn: psycopg.Connection, before: date, now: datetime) -> list[str]:
    newest_allowed_end = now - MIN_AGE
    chosen = []
    for (name,) in conn.execute(_SELECT_PARTITIONS).fetchall():
        match = _PARTITION.match(name)
        if not match:
            continue  # the default partition holds undated events: never archived
        first = date(int(match[1]), int(match[2]), 1)
        end = (first.replace(day=28) + timedelta(days=4)).replace(day=1)
        if end <= before:
            if datetime(end.year, end.month, end.day, tzinfo=UTC) > newest_allowed_end:
                raise BadRequest(
                    f"{name} ended less than {MIN_AGE.days} days ago: Brevo could still re-send "
                    "or the API re-serve its events, which would then be stored twice"
                )
            chosen.append(name)
    return chosen


def _export(conn: psycopg.Connection, partition: str, path: Path) -> int:
    partial = path.with_name(path.name + ".partial")
    rows = 0
    query = sql.SQL("SELECT row_to_json(e)::text FROM {} AS e ORDER BY id").format(
        sql.Identifier(partition)
    )
    with conn.transaction(), conn.cursor(name=f"archive_{partition}") as cur:
        cur.itersize = 5000
        cur.execute(query)
        with open(partial, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb") as out:
            for (line,) in cur:
                out.write(line.encode("utf-8") + b"\n")
                rows += 1
            out.close()
            raw.flush()
            os.fsync(raw.fileno())
    os.rename(partial, path)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)
    return rows


def _count_lines(path: Path) -> int:
    with gzip.open(path, "rb") as f:
        return sum(1 for _ in f)


def archive(url: str, before: date, folder: Path, drop: bool = False) -> list[ArchivedMonth]:
    folder.mkdir(parents=True, exist_ok=True)
    done = []
    with psycopg.connect(url, autocommit=True) as conn:
        for partition in months_to_archive(conn, before, datetime.now(UTC)):
            path = folder / f"{partition.replace('_', '-', 1).replace('_', '-')}.jsonl.gz"
            rows = _export(conn, partition, path)
            in_table = conn.execute(
                sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(partition))
            ).fetchone()
            if in_table is None or in_table[0] != rows or _count_lines(path) != rows:
                raise RuntimeError(f"{path} does not hold all of {partition}: nothing detached")
            table = sql.Identifier(partition)
            conn.execute(sql.SQL("ALTER TABLE events DETACH PARTITION {}").format(table))
            if drop:
                conn.execute(sql.SQL("DROP TABLE {}").format(table))
            log.info("archived %s: %d rows to %s%s", partition, rows, path,
                     ", table dropped" if drop else ", table kept detached")  # fmt: skip
            done.append(ArchivedMonth(partition, path, rows, drop))
    return done


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--before", required=True, help="archive months before this (YYYY-MM)")
    parser.add_argument("--to", default=None, help="folder for the files (default <data>/archive)")
    parser.add_argument(
        "--drop", action="store_true", help="drop each month's table once its file is verified"
    )


def run(args: argparse.Namespace) -> int:
    from ingest.database import apply_schema
    from ingest.settings import IngestSettings
    from ingest.wiring import database_url

    settings = IngestSettings.from_env()
    url = database_url(settings)
    apply_schema(url)
    folder = Path(args.to) if args.to else settings.data_dir / "archive"
    done = archive(url, month_start(args.before), folder, drop=args.drop)
    for month in done:
        kept = "dropped" if month.dropped else f"kept as table {month.partition} (detached)"
        print(f"{month.partition}: {month.rows} events -> {month.file}; {kept}")
    if not done:
        print("nothing to archive before", args.before)
    return 0
