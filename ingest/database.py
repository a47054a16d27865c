"""Connections: one pool per process, the schema, and SQLAlchemy Core statements compiled once.

We build statements with SQLAlchemy Core (named bound parameters, no string pasting) and
run them on psycopg connections from psycopg_pool, so that the hot path pays neither an
ORM nor a second pool.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool
from sqlalchemy import text
from sqlalchemy.dialects import postgresql
from sqlalchemy.sql import ClauseElement

from ingest.errors import ConfigError, DatabaseUnavailable

log = logging.getLogger(__name__)

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "schema.sql"
DIALECT = postgresql.psycopg.dialect()  # type: ignore[attr-defined]

# Held while the schema is applied, so that workers starting together do not race.
SCHEMA_LOCK_KEY = 0x6D61696C  # "mail"


def compile_sql(statement: ClauseElement) -> tuple[str, dict[str, Any]]:
    """SQL text in psycopg's %(name)s style and its bound parameters."""
    compiled = statement.compile(dialect=DIALECT)
    return str(compiled), dict(compiled.params)


def text_sql(statement: str) -> str:
    """A textual statement with :name parameters, in psycopg's %(name)s style."""
    return compile_sql(text(statement))[0]


def binary_parameters(sql: str) -> str:
    """Ask psycopg for binary parameters (%(name)b): for arrays of JSON its text dumper
    escapes every character in Python, which measured as 42% of a 500-event append."""
    return re.sub(r"%\((\w+)\)s", r"%(\1)b", sql)


def numbered(sql: str, names: Sequence[str]) -> str:
    """A statement's %(name)s (or %(name)b) parameters as libpq's $1, $2 ... in the order
    of `names`; for statements run through libpq itself (ingest.prepared)."""
    for number, name in enumerate(names, 1):
        sql = re.sub(rf"%\({name}\)[sb]", f"${number}", sql)
    left = re.search(r"%\((\w+)\)[sb]", sql)
    if left:
        raise ValueError(f"parameter {left.group(1)!r} has no number")
    return sql


def open_pool(
    url: str,
    size: int = 8,
    timeout: float = 3.0,
    name: str = "distribmail",
    autocommit: bool = False,
) -> ConnectionPool:
    """A pool that opens lazily: the service starts (and spools) even when the database is down."""
    pool = ConnectionPool(
        url,
        min_size=1,
        max_size=max(1, size),
        timeout=timeout,
        name=name,
        open=False,
        kwargs={
            "connect_timeout": max(1, int(timeout)),
            "row_factory": dict_row,
            "autocommit": autocommit,
        },
    )
    pool.open(wait=False)
    return pool


def apply_schema(url: str, strict: bool = False) -> None:
    """Apply schema.sql (idempotent) in one transaction.

    A service running as a role that does not own the tables (least privilege, README)
    cannot apply it: when the tables are there it goes on with a warning, the owner applies
    upgrades with `distribmail db init`. With `strict` (that command), any refusal raises.
    """
    sql = SCHEMA_PATH.read_text(encoding="utf-8")
    try:
        with psycopg.connect(url, autocommit=False) as conn:
            try:
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK_KEY,))
                conn.execute(sql)  # type: ignore[arg-type]
            except psycopg.errors.InsufficientPrivilege as e:
                conn.rollback()
                tables = conn.execute("SELECT to_regclass('events') IS NOT NULL").fetchone()
                if strict or not (tables and tables[0]):
                    raise ConfigError(
                        f"this database user may not apply the schema ({e.diag.message_primary}):"
                        " run `distribmail db init` as the owner of the tables"
                    ) from e
                log.warning(
                    "schema not applied: this user does not own the tables; apply upgrades"
                    " as the owner with `distribmail db init`"
                )
                return
    except psycopg.OperationalError as e:
        raise DatabaseUnavailable(f"cannot reach the database to apply the schema: {e}") from e
    log.info("schema applied")
