"""Slows down password guessing on the screen's login: after MAX_FAILURES wrong passwords
from one client address within WINDOW_SECONDS, that address is refused (429, with
Retry-After) until its oldest failure of the window is WINDOW_SECONDS old.

Kept in each process's memory: with gunicorn's N workers a client gets at most N times
the allowance, and a restart forgets it. Enough to make guessing a password hopeless
(10 tries in 5 minutes is 2,880 a day per worker), without a table to write to.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable

MAX_FAILURES = 10
WINDOW_SECONDS = 300.0
# Addresses remembered at most: past it, those with no failure left in the window are
# forgotten first, then the ones that failed longest ago.
MAX_CLIENTS = 10_000


class LoginThrottle:
    def __init__(
        self,
        max_failures: int = MAX_FAILURES,
        window: float = WINDOW_SECONDS,
        max_clients: int = MAX_CLIENTS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_failures = max_failures
        self.window = window
        self.max_clients = max_clients
        self._clock = clock
        self._lock = threading.Lock()
        # Failure times per address, oldest first; the dict in order of latest failure.
        self._failures: dict[str, deque[float]] = {}

    def retry_after(self, client: str) -> int:
        """Seconds `client` must wait before it may try again; 0 if it may now."""
        now = self._clock()
        with self._lock:
            times = self._failures.get(client)
            if times is None:
                return 0
            self._forget_old(times, now)
            if len(times) < self.max_failures:
                return 0
            return max(1, math.ceil(times[0] + self.window - now))

    def failed(self, client: str) -> None:
        now = self._clock()
        with self._lock:
            times = self._failures.pop(client, None) or deque()
            self._forget_old(times, now)
            times.append(now)
            self._failures[client] = times  # moved to the end: the latest to fail
            if len(self._failures) > self.max_clients:
                self._shrink(now)

    def succeeded(self, client: str) -> None:
        with self._lock:
            self._failures.pop(client, None)

    def _forget_old(self, times: deque[float], now: float) -> None:
        while times and times[0] <= now - self.window:
            times.popleft()

    def _shrink(self, now: float) -> None:
        for client in [c for c, times in self._failures.items() if times[-1] <= now - self.window]:
            del self._failures[client]
        while len(self._failures) > self.max_clients:
            del self._failures[next(iter(self._failures))]  # the longest ago
