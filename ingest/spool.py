"""A durable local spool for when the database does not answer.

Brevo discards an event on any 5xx, so when the append fails we write the request's events
to a file in the data folder, fsync it (and its folder) and only then answer 200. The
spool drains into the log by itself: each file is re-appended through the same path (same
dedup keys, so a file appended twice is harmless) and deleted only after that commit.
Several processes may drain at once: an exclusive flock on a file makes the others skip it.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SUFFIX = ".json"
# A file that keeps failing for a reason other than an unreachable database is moved
# here after this many tries, kept for an operator, never deleted.
MAX_ATTEMPTS = 5


@dataclass(frozen=True)
class SpooledRequest:
    provider: str
    source: str
    received_at: datetime
    payloads: list[dict[str, Any]]


class Spool:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.failed = folder / "failed"

    def write(self, request: SpooledRequest) -> Path:
        """Write durably; returns the file. Raises OSError when the disk cannot take it."""
        self.folder.mkdir(parents=True, exist_ok=True)
        body = json.dumps(
            {
                "provider": request.provider,
                "source": request.source,
                "received_at": request.received_at.isoformat(),
                "payloads": request.payloads,
            },
            ensure_ascii=False,
        ).encode("utf-8", "surrogatepass")
        # Sortable names: drained oldest first.
        name = f"{request.received_at.strftime('%Y%m%dT%H%M%S%f')}-{uuid.uuid4().hex}"
        partial = self.folder / f".{name}.partial"
        final = self.folder / f"{name}{SUFFIX}"
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            try:
                view = memoryview(body)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(partial, final)
        except BaseException:
            # A full disk: the partial file would keep the space it took, and the disk full,
            # after the drain has emptied the spool.
            partial.unlink(missing_ok=True)
            raise
        self._fsync_folder()
        return final

    def _fsync_folder(self) -> None:
        fd = os.open(self.folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def pending(self) -> list[Path]:
        if not self.folder.is_dir():
            return []
        return sorted(self.folder.glob(f"*{SUFFIX}"))

    @staticmethod
    def read(path: Path) -> SpooledRequest:
        data = json.loads(path.read_bytes().decode("utf-8", "surrogatepass"))
        return SpooledRequest(
            provider=data["provider"],
            source=data["source"],
            received_at=datetime.fromisoformat(data["received_at"]),
            payloads=data["payloads"],
        )

    @contextmanager
    def claimed(self, path: Path) -> Iterator[bool]:
        """Hold an exclusive lock on a spool file; yields False when another drainer has it."""
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            yield False
            return
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            # Another drainer may have committed and deleted it between our glob and lock.
            yield path.exists()
        finally:
            os.close(fd)

    def drain(
        self, append: Callable[[SpooledRequest], Any], is_unavailable: Callable[[Exception], bool]
    ) -> int:
        """Append every pending file; stop at the first sign the database is still down.

        Returns how many files were drained.
        """
        drained = 0
        for path in self.pending():
            with self.claimed(path) as mine:
                if not mine:
                    continue
                try:
                    append(self.read(path))
                except Exception as e:
                    if is_unavailable(e):
                        return drained
                    self._count_failure(path, e)
                    continue
                path.unlink()
                self._fsync_folder()
                drained += 1
        return drained

    def _count_failure(self, path: Path, error: Exception) -> None:
        tries = path.with_suffix(".tries")
        count = int(tries.read_text()) + 1 if tries.exists() else 1
        log.error("spool file %s could not be appended (try %d): %s", path.name, count, error)
        if count >= MAX_ATTEMPTS:
            self.failed.mkdir(exist_ok=True)
            path.rename(self.failed / path.name)
            tries.unlink(missing_ok=True)
            log.error(
                "spool file %s moved to %s for an operator to look at", path.name, self.failed
            )
        else:
            tries.write_text(str(count))


class SpoolDrainer:
    """A daemon thread per process that drains the spool every few seconds."""

    def __init__(self, drain_once: Callable[[], int], every: float) -> None:
        self._drain_once = drain_once
        self._every = every
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="spool-drainer", daemon=True)
            self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                drained = self._drain_once()
                if drained:
                    log.info("drained %d spooled request(s) into the log", drained)
            except Exception:
                log.exception("spool drain failed; will try again")
            self._wake.wait(self._every)
            self._wake.clear()
