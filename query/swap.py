"""Replay's table-level steps: index the rebuilt projection like the live one, compare the
two, and swap the rebuilt one in under the names schema.sql declares.

`messages_rebuild` is created LIKE messages without its indexes: filling it by COPY and
building each index once afterwards (a sort) costs much less than maintaining four
indexes row by row. `index_like_live` then creates, for each live index or index-backed
constraint, one with the same definition under a name of the rebuild's
(messages_rebuild_idx1 ...). After the swap they must carry the live names again
(messages_pkey, messages_sent_idx ...), or the next `CREATE INDEX IF NOT EXISTS` in
schema.sql would build a duplicate. We pair each rebuilt index with the live index that
has the same definition, rather than hard-coding names here that would drift from
schema.sql.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from ingest.database import text_sql
from ingest.errors import DistribmailError
from query.projection import COLUMNS, LIVE_TABLE, REBUILD_TABLE

# The definition without its name and table: "btree (sent_at DESC, id DESC)".
_INDEXES = text_sql(
    """
    SELECT c.relname AS index_name, con.conname AS constraint_name,
           pg_get_constraintdef(con.oid) AS constraint_definition,
           i.indisprimary AS is_primary, i.indisunique AS is_unique,
           regexp_replace(pg_get_indexdef(i.indexrelid), '^.*? USING ', '') AS definition
      FROM pg_index i
      JOIN pg_class c ON c.oid = i.indexrelid
      LEFT JOIN pg_constraint con ON con.conindid = i.indexrelid AND con.conrelid = i.indrelid
     WHERE i.indrelid = CAST(:table_name AS regclass)
     ORDER BY c.relname
    """
)
_DROP_LIVE = text_sql(f"DROP TABLE {LIVE_TABLE}")
_RENAME_REBUILD = text_sql(f"ALTER TABLE {REBUILD_TABLE} RENAME TO {LIVE_TABLE}")

_DIFFERS = " OR ".join(
    [
        "m.id IS NULL",
        "r.id IS NULL",
        f"ROW({', '.join('r.' + c for c in COLUMNS)}) IS DISTINCT FROM"
        f" ROW({', '.join('m.' + c for c in COLUMNS)})",
    ]
)
_JOINED = f"FROM {REBUILD_TABLE} r FULL JOIN {LIVE_TABLE} m ON m.id = r.id WHERE ({_DIFFERS})"
_COUNT_CHANGES = text_sql(
    f"""
    SELECT count(*) FILTER (WHERE m.status IS DISTINCT FROM r.status) AS status_changes,
           count(*) FILTER (WHERE m.status IS NOT DISTINCT FROM r.status) AS other_changes
      {_JOINED}
    """
)
_STATUS_CHANGES = text_sql(
    f"""
    SELECT COALESCE(r.id, m.id) AS id, COALESCE(r.message_id, m.message_id) AS message_id,
           COALESCE(r.recipient, m.recipient) AS recipient, m.status AS old, r.status AS new
      {_JOINED} AND m.status IS DISTINCT FROM r.status
     ORDER BY 1
     LIMIT :shown
    """
)


@dataclass(frozen=True)
class _Index:
    index_name: str
    constraint_name: str | None
    constraint_definition: str | None  # "PRIMARY KEY (id)": how to add it again
    is_primary: bool
    is_unique: bool
    definition: str

    @property
    def shape(self) -> tuple[Any, ...]:
        return (self.is_primary, self.is_unique, self.constraint_name is None, self.definition)


def _indexes(conn: psycopg.Connection[Any], table_name: str) -> list[_Index]:
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(_INDEXES, {"table_name": table_name}).fetchall()  # type: ignore[call-overload]
    return [_Index(**row) for row in rows]


def _pairs(live: list[_Index], rebuilt: list[_Index]) -> list[tuple[_Index, _Index]]:
    unpaired = list(rebuilt)
    pairs = []
    for old in live:
        new = next((index for index in unpaired if index.shape == old.shape), None)
        if new is None:
            raise DistribmailError(
                f"the rebuilt projection has no index like {old.index_name} ({old.definition}):"
                " was schema.sql changed during the replay? Run the replay again."
            )
        unpaired.remove(new)
        pairs.append((old, new))
    return pairs


def index_like_live(conn: psycopg.Connection[Any]) -> None:
    """Build on the rebuilt table every index and index-backed constraint of the live one,
    same definitions (so that swap_tables pairs them), names of the rebuild's own."""
    rebuild = sql.Identifier(REBUILD_TABLE)
    for n, index in enumerate(_indexes(conn, LIVE_TABLE), start=1):
        name = sql.Identifier(f"{REBUILD_TABLE}_idx{n}")
        if index.constraint_name is not None and index.constraint_definition is not None:
            statement = sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {}").format(
                rebuild, name, sql.SQL(index.constraint_definition)
            )
        else:
            unique = sql.SQL("UNIQUE " if index.is_unique else "")
            statement = sql.SQL("CREATE {}INDEX {} ON {} USING {}").format(
                unique, name, rebuild, sql.SQL(index.definition)
            )
        conn.execute(statement)


# The live table's grants to other roles (PUBLIC as grantee 0): a table made LIKE another
# copies none, so a role the service runs as (schema.sql's distribmail_app, an admin's
# read-only role) would lose the projection at the first replay.
_SELECT_GRANTS = text_sql(f"""
    SELECT CASE WHEN a.grantee = 0 THEN NULL ELSE a.grantee::regrole::text END AS grantee,
           a.privilege_type, a.is_grantable
      FROM pg_class AS c, aclexplode(c.relacl) AS a
     WHERE c.oid = '{LIVE_TABLE}'::regclass AND a.grantee <> c.relowner
""")
_PRIVILEGES = {"SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER",
               "MAINTAIN"}  # fmt: skip


def _grant_statements(conn: psycopg.Connection[Any]) -> list[sql.Composed]:
    statements = []
    for row in conn.execute(_SELECT_GRANTS).fetchall():
        grantee, privilege, grantable = _values(row)
        if privilege not in _PRIVILEGES:
            continue
        statements.append(
            sql.SQL("GRANT {} ON {} TO {}{}").format(
                sql.SQL(privilege),
                sql.Identifier(LIVE_TABLE),
                sql.Identifier(grantee) if grantee else sql.SQL("PUBLIC"),
                sql.SQL(" WITH GRANT OPTION" if grantable else ""),
            )
        )
    return statements


def _values(row: Any) -> tuple[Any, ...]:
    return tuple(row.values()) if isinstance(row, dict) else tuple(row)


def swap_tables(conn: psycopg.Connection[Any]) -> None:
    """Inside the caller's transaction (which holds the lock): drop the live table, put
    the rebuilt one in its place with the live one's grants, and give its indexes and
    constraints the live names."""
    pairs = _pairs(_indexes(conn, LIVE_TABLE), _indexes(conn, REBUILD_TABLE))
    grants = _grant_statements(conn)
    try:
        conn.execute(_DROP_LIVE)
    except psycopg.errors.DependentObjectsStillExist as e:
        raise DistribmailError(
            f"cannot replace the messages table: {e.diag.message_detail or e}. Drop the views"
            " or constraints that depend on it (schema.sql recreates ours), then replay."
        ) from e
    conn.execute(_RENAME_REBUILD)
    for grant in grants:
        conn.execute(grant)
    table = sql.Identifier(LIVE_TABLE)
    for old, new in pairs:
        if new.constraint_name is not None and old.constraint_name is not None:
            # Renaming an index-backed constraint renames its index with it.
            conn.execute(
                sql.SQL("ALTER TABLE {} RENAME CONSTRAINT {} TO {}").format(
                    table, sql.Identifier(new.constraint_name), sql.Identifier(old.constraint_name)
                )
            )
            current = old.constraint_name
        else:
            current = new.index_name
        if current != old.index_name:
            conn.execute(
                sql.SQL("ALTER INDEX {} RENAME TO {}").format(
                    sql.Identifier(current), sql.Identifier(old.index_name)
                )
            )


def compare(conn: psycopg.Connection[Any], shown: int) -> tuple[int, list[dict[str, Any]], int]:
    """(rows whose status would change, the first `shown` of them, rows that would change
    only in other columns). A live row missing from either side counts as a change."""
    with conn.cursor(row_factory=dict_row) as cur:
        counts = cur.execute(_COUNT_CHANGES).fetchone()  # type: ignore[call-overload]
        changes = cur.execute(_STATUS_CHANGES, {"shown": shown}).fetchall()  # type: ignore[call-overload]
    if counts is None:
        raise RuntimeError("the comparison query answered no row")
    return counts["status_changes"], changes, counts["other_changes"]
