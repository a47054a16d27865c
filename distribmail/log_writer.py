"""Writes log lines from a thread of its own, a tenth of a second at a time.

Under load every request writes its request line. Written by the request's own thread,
that is a write to stderr per request under the handler's lock, and the write lets go of
the interpreter's lock, so the eight threads of a worker queue on both in turn (measured
in process: 13 us a line with one thread writing, 53 us with eight; eight threads serving
webhooks spent 253 us of CPU a request with it, 214 us with this writer). Here the request
only appends its line to a queue; the writer thread writes what has gathered in one write,
every FLUSH_SECONDS.

What that changes for the reader:
- lines of INFO and below reach the output up to FLUSH_SECONDS late;
- a WARNING or worse is written at once by its own thread, after the lines queued before
  it, so that the order holds and a crash's last words are not held back;
- at exit, `flush` (logging.shutdown calls it) writes what is left; a process killed
  with SIGKILL loses at most its last FLUSH_SECONDS of INFO lines;
- if the output blocks, the queue stops growing at MAX_PENDING lines: past it, the request
  thread writes them itself (and so waits, as without this writer).
"""

from __future__ import annotations

import contextlib
import threading
from collections import deque
from collections.abc import Callable
from typing import TextIO

FLUSH_SECONDS = 0.1
MAX_PENDING = 10_000


class BackgroundWriter:
    def __init__(
        self,
        stream: Callable[[], TextIO],
        every: float = FLUSH_SECONDS,
        max_pending: int = MAX_PENDING,
    ) -> None:
        self._stream = stream  # asked each time: whoever replaced sys.stderr is followed
        self._every = every
        self._max_pending = max_pending
        # deque.append and popleft are atomic: the request threads take no lock.
        self._pending: deque[str] = deque()
        self._write_lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="log-writer", daemon=True)
        self._thread.start()

    def put(self, line: str) -> None:
        """Queue a line (with its newline) for the next write."""
        self._pending.append(line)
        if len(self._pending) > self._max_pending:
            self.flush()

    def write_now(self, line: str) -> None:
        """Write what is queued, then `line`, before returning."""
        with self._write_lock:
            self._write(self._drain() + line)

    def flush(self) -> None:
        """Write what is queued, before returning."""
        with self._write_lock:
            text = self._drain()
            if text:
                self._write(text)

    def stop(self) -> None:
        """Write what is queued and end the thread."""
        self._stopped.set()
        self._thread.join()
        self.flush()

    def _drain(self) -> str:
        pending = self._pending
        lines = []
        while pending:
            lines.append(pending.popleft())
        return "".join(lines)

    def _write(self, text: str) -> None:
        stream = self._stream()
        stream.write(text)
        stream.flush()

    def _run(self) -> None:
        while not self._stopped.wait(self._every):
            # A closed or broken output: a log writer has nowhere to report it. The lines
            # are dropped rather than kept until memory runs out; the next flush tries the
            # output again.
            with contextlib.suppress(Exception):
                self.flush()
