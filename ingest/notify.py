"""Wakes the projectors after appends, off the request's commit path.

A NOTIFY inside the append's transaction makes every commit queue on PostgreSQL's single
notification lock (measured: two thirds of busy backends waiting on it with 8 concurrent
single-event appends). So the append only pokes this per-process thread, which sends at
most one NOTIFY every COALESCE_SECONDS on a connection of its own. A lost NOTIFY costs
nothing but latency: projectors also poll the queue.
"""

from __future__ import annotations

import logging
import threading

import psycopg

log = logging.getLogger(__name__)

FOLD_CHANNEL = "distribmail_fold"
COALESCE_SECONDS = 0.05


class FoldNotifier:
    def __init__(self, url: str) -> None:
        self._url = url
        self._poked = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def poke(self) -> None:
        """Called after a commit that stored events; never blocks, never raises."""
        self._poked.set()
        if self._thread is None:
            self._start()

    def _start(self) -> None:
        thread = threading.Thread(target=self._run, name="fold-notifier", daemon=True)
        self._thread = thread
        thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._poked.set()

    def _run(self) -> None:
        conn: psycopg.Connection | None = None
        while not self._stop.is_set():
            self._poked.wait()
            if self._stop.is_set():
                break
            self._poked.clear()
            try:
                if conn is None or conn.closed:
                    conn = psycopg.connect(self._url, autocommit=True, connect_timeout=3)
                conn.execute(f"NOTIFY {FOLD_CHANNEL}")
            except psycopg.Error as e:
                log.debug("could not notify the projectors (they will poll): %s", e)
                if conn is not None:
                    conn.close()
                conn = None
            self._stop.wait(COALESCE_SECONDS)
        if conn is not None:
            conn.close()
