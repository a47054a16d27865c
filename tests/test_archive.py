"""`distribmail archive`: old months exported to verified files, then detached, never lost."""

from __future__ import annotations

import gzip
import json
from datetime import date

import psycopg
import pytest

from ingest.archive import archive
from ingest.errors import BadRequest
from tests.payloads import event

MAY_2023 = 1685543827372
NOV_2023 = 1701172800000


@pytest.fixture
def two_old_months(client, auth_headers, db):
    batch = [event(ts_epoch=MAY_2023 + i, email=f"c{i}@example.com") for i in range(3)]
    batch += [event(ts_epoch=NOV_2023, email="late@example.com"), {"event": "undated"}]
    assert client.post("/webhooks/brevo", json=batch, headers=auth_headers).status_code == 200
    assert db.execute("SELECT count(*) FROM events").fetchone()[0] == 5


def partitions(db) -> list[str]:
    rows = db.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = 'events'::regclass ORDER BY 1"
    ).fetchall()
    return [r[0] for r in rows]


def test_archive_exports_then_detaches_the_months_before(
    two_old_months, database_url, db, tmp_path
):
    done = archive(database_url, date(2023, 6, 1), tmp_path / "archive")
    assert [(m.partition, m.rows, m.dropped) for m in done] == [("events_2023_05", 3, False)]
    with gzip.open(done[0].file, "rt") as f:
        lines = f.read().splitlines()
    rows = [json.loads(line) for line in lines]
    assert sorted(r["recipient"] for r in rows) == ["c0@example.com", "c1@example.com",
                                                    "c2@example.com"]  # fmt: skip
    assert rows[0]["payload"]["event"] == "delivered"
    assert "events_2023_05" not in partitions(db)
    assert db.execute("SELECT count(*) FROM events").fetchone()[0] == 2  # Nov and undated
    # Detached, not deleted: the table is still there for the admin.
    assert db.execute("SELECT count(*) FROM events_2023_05").fetchone()[0] == 3


def test_archive_with_drop_removes_the_verified_tables(two_old_months, database_url, db, tmp_path):
    done = archive(database_url, date(2024, 1, 1), tmp_path / "archive", drop=True)
    assert [m.partition for m in done] == ["events_2023_05", "events_2023_11"]
    assert db.execute("SELECT to_regclass('events_2023_05')").fetchone()[0] is None
    assert db.execute("SELECT count(*) FROM events").fetchone()[0] == 1  # the undated one
    assert archive(database_url, date(2024, 1, 1), tmp_path / "archive") == []


def test_recent_months_are_refused(client, auth_headers, database_url, db, tmp_path):
    client.post("/webhooks/brevo", json=event(ts_epoch=MAY_2023), headers=auth_headers)
    this_month = date.today().replace(day=1)
    next_month = date(this_month.year + this_month.month // 12, this_month.month % 12 + 1, 1)
    with pytest.raises(BadRequest, match="less than 95 days ago"):
        archive(database_url, next_month, tmp_path / "archive")
    assert db.execute("SELECT count(*) FROM events").fetchone()[0] == 1


def test_the_archived_table_stays_append_only_until_dropped(two_old_months, database_url, db,
                                                            tmp_path):  # fmt: skip
    archive(database_url, date(2023, 6, 1), tmp_path / "archive")
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        db.execute("TRUNCATE events_2023_05")
