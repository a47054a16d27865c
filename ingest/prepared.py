"""One statement run through libpq's own blocking call, prepared once per connection.

For the webhook's append, psycopg's `cursor.execute` costs more CPU than the server's
answer takes to come: its cursor, parameter adaptation, prepared-statement bookkeeping and
generator-driven wait cost about 70 us a statement in Python, against about 20 us for
libpq's PQexecPrepared on the same connection (measured on this project's 2-core machine,
a one-row SELECT). Under load that is one statement per small group of webhooks, so the
difference is paid by nearly every request. libpq's call lets go of the interpreter's
lock while it waits for the server, as psycopg's wait does.

Parameters go as text (the server parses them by the declared types), results come in
the format asked for. Errors are psycopg's own exceptions, with their SQLSTATE, as
`cursor.execute` would raise them.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import errors, pq

# SQLSTATE invalid_sql_statement_name: the server forgot the statement (DISCARD ALL, a
# pooler in between); prepare it again.
_NOT_PREPARED = "26000"
# duplicate_prepared_statement: it is there already.
_ALREADY_PREPARED = "42P05"
_OK = (pq.ExecStatus.COMMAND_OK, pq.ExecStatus.TUPLES_OK)


def type_oid(name: str) -> int:
    """The OID of one of PostgreSQL's built-in types ("jsonb", "timestamptz")."""
    return psycopg.postgres.types[name].oid


class PreparedStatement:
    def __init__(self, name: str, sql: str, param_types: Sequence[int]) -> None:
        self.name = name.encode()
        self.sql = sql.encode()
        self.param_types = list(param_types)
        # The connections it is prepared on; a connection the pool replaced is dropped.
        self._prepared_on: weakref.WeakSet[psycopg.Connection[Any]] = weakref.WeakSet()
        self._lock = threading.Lock()

    def run(
        self,
        conn: psycopg.Connection[Any],
        params: Sequence[bytes | None],
        result_format: pq.Format = pq.Format.TEXT,
    ) -> pq.abc.PGresult:
        """Execute with `params` (text, None for NULL) on `conn`, held by the caller alone."""
        with conn.lock:
            if conn not in self._prepared_on:
                self._prepare(conn)
            result = self._execute(conn, params, result_format)
            if _sqlstate(result) == _NOT_PREPARED:
                self._prepare(conn)
                result = self._execute(conn, params, result_format)
        _raise_unless_ok(conn, result)
        return result

    def _execute(
        self, conn: psycopg.Connection[Any], params: Sequence[bytes | None], result_format: int
    ) -> pq.abc.PGresult:
        # Raises OperationalError (no SQLSTATE) when libpq gets no result: connection lost.
        # None is sent as NULL (psycopg's own calls rely on it; its stub leaves it out).
        return conn.pgconn.exec_prepared(self.name, params, None, result_format)  # type: ignore[arg-type]

    def _prepare(self, conn: psycopg.Connection[Any]) -> None:
        result = conn.pgconn.prepare(self.name, self.sql, self.param_types)
        if _sqlstate(result) != _ALREADY_PREPARED:
            _raise_unless_ok(conn, result)
        with self._lock:
            self._prepared_on.add(conn)


def _sqlstate(result: pq.abc.PGresult) -> str | None:
    if result.status != pq.ExecStatus.FATAL_ERROR:
        return None
    code = result.error_field(pq.DiagnosticField.SQLSTATE)
    return code.decode() if code else None


def _raise_unless_ok(conn: psycopg.Connection[Any], result: pq.abc.PGresult) -> None:
    if result.status in _OK:
        return
    if conn.pgconn.status == pq.ConnStatus.BAD:
        # The server went away during the call: libpq reports it as a result without a
        # SQLSTATE; psycopg raises OperationalError for it, and so do we.
        message = result.get_error_message(conn.info.encoding)
        raise psycopg.OperationalError(f"the connection to the server was lost: {message}")
    raise errors.error_from_result(result, encoding=conn.info.encoding)
