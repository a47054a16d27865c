"""ingest.prepared: a statement run through libpq itself behaves as psycopg's execute does."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import errors, pq

from ingest import recorder
from ingest.database import numbered, open_pool
from ingest.errors import DatabaseUnavailable
from ingest.prepared import PreparedStatement, type_oid
from ingest.providers import PROVIDERS
from tests.payloads import event

ADD = PreparedStatement("test_add", "SELECT $1::int + $2::int", [type_oid("int4")] * 2)


@pytest.fixture
def conn(database_url):
    with psycopg.connect(database_url, autocommit=True) as conn:
        yield conn


def test_numbered_turns_named_parameters_into_positions():
    sql = "SELECT %(b)s, %(a)b, %(b)s"
    assert numbered(sql, ["a", "b"]) == "SELECT $2, $1, $2"
    with pytest.raises(ValueError, match="'b' has no number"):
        numbered(sql, ["a"])


def test_a_statement_is_prepared_once_per_connection_and_runs_with_text_and_null(conn):
    assert ADD.run(conn, [b"2", b"40"]).get_value(0, 0) == b"42"
    assert ADD.run(conn, [b"1", None]).get_value(0, 0) is None
    prepared = conn.execute("SELECT count(*) FROM pg_prepared_statements WHERE name = 'test_add'")
    assert prepared.fetchone()[0] == 1


def test_a_statement_the_server_forgot_is_prepared_again(conn):
    ADD.run(conn, [b"1", b"1"])
    conn.execute("DEALLOCATE ALL")
    assert ADD.run(conn, [b"3", b"4"]).get_value(0, 0) == b"7"


def test_a_statement_error_is_psycopgs_own_exception(conn):
    divide = PreparedStatement("test_divide", "SELECT 1 / $1::int", [type_oid("int4")])
    with pytest.raises(errors.DivisionByZero) as raised:
        divide.run(conn, [b"0"])
    assert raised.value.sqlstate == "22012"
    assert conn.pgconn.transaction_status == pq.TransactionStatus.IDLE  # usable again
    assert divide.run(conn, [b"2"]).get_value(0, 0) == b"0"


def test_a_connection_lost_during_the_call_is_an_operational_error(conn, db):
    ADD.run(conn, [b"1", b"1"])
    db.execute("SELECT pg_terminate_backend(%s)", (conn.info.backend_pid,))
    with pytest.raises(psycopg.OperationalError) as raised:
        ADD.run(conn, [b"1", b"1"])
    assert recorder._unavailable(raised.value)


def test_the_recorder_reports_a_lost_connection_as_an_unavailable_database(database_url, db):
    one = [PROVIDERS["brevo"].normalize(event(message_id="<lost@x>"), "webhook")]
    with open_pool(database_url, size=1, autocommit=True) as pool:
        with pool.connection() as held:
            pid = held.info.backend_pid
        db.execute("SELECT pg_terminate_backend(%s)", (pid,))
        with pytest.raises(DatabaseUnavailable):
            recorder.insert_events(pool, one)
        # The pool let the dead connection go: the next append gets a fresh one.
        assert recorder.insert_events(pool, one) == 1
    assert db.execute("SELECT count(*) FROM events").fetchone()[0] == 1
