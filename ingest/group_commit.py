"""Group commit: requests that arrive while an append is running share the next transaction.

A single-event webhook costs the database one commit (a WAL flush) and the process one
statement whose parameters psycopg must dump; under load that per-request cost, not the
rows, is the bottleneck. So requests queue here, and whoever finds a writer slot free
writes everything queued in one statement, then hands its slot to a waiting request if
more arrived meanwhile (leader/follower: no extra thread, and a lone request writes its
own rows at once, with no added delay).

What each request is promised does not change: its events are all stored or none
(a group is one transaction), and it is answered only after that commit. A group that
fails for any reason but an unreachable database is retried one request at a time, so
that one request the database refuses cannot fail the others.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


class _Pending(Generic[Item, Result]):
    __slots__ = ("item", "size", "result", "error", "done", "has_slot", "_wake", "_signalled")

    def __init__(self, item: Item, size: int) -> None:
        self.item = item
        self.size = size
        self.result: Result | None = None
        self.error: BaseException | None = None
        self.done = False
        self.has_slot = False  # this request's thread may write groups
        # A bare lock held from the start, released to wake the waiting thread: the
        # cheapest wake-up CPython has (an Event builds a Condition and a lock per wait).
        self._wake = threading.Lock()
        self._wake.acquire()
        self._signalled = False

    def signal(self) -> None:
        """Wake the request's thread (if it sleeps, or when it next would); lock held."""
        if not self._signalled:
            self._signalled = True
            self._wake.release()

    def sleep(self) -> None:
        """Until signalled; then `rearm` (under the lock) before the next sleep."""
        self._wake.acquire()

    def rearm(self) -> None:
        self._signalled = False


class GroupCommitter(Generic[Item, Result]):
    """Runs `write_group(items) -> results` (one result per item, in order) for the items
    queued at the time, at most `writers` groups at once, each of at most `max_size`
    (by the sizes given to submit) unless one item alone is larger.

    `write_group` raising an exception that `fails_all(error)` accepts fails every item of
    the group with it (the database is unreachable: retrying each would only wait N times);
    any other exception makes each item be written alone, so each gets its own outcome.
    """

    def __init__(
        self,
        write_group: Callable[[Sequence[Item]], Sequence[Result]],
        fails_all: Callable[[BaseException], bool],
        writers: int = 1,
        max_size: int = 1000,
    ) -> None:
        self._write_group = write_group
        self._fails_all = fails_all
        self._max_size = max(1, max_size)
        self._lock = threading.Lock()
        self._queue: deque[_Pending[Item, Result]] = deque()
        self._free_writers = max(1, writers)

    def submit(self, item: Item, size: int = 1) -> Result:
        """Write `item` (perhaps with others) and return its result, or raise its error."""
        pending: _Pending[Item, Result] = _Pending(item, size)
        with self._lock:
            self._queue.append(pending)
            if self._free_writers > 0:
                self._free_writers -= 1
                pending.has_slot = True
        while True:
            # Every change to done and has_slot is made under the lock, and every signal
            # after it: a signal that comes between this check and the sleep is kept
            # (the lock stays released), so no wake-up is lost.
            with self._lock:
                if pending.done:
                    if pending.has_slot:
                        self._hand_over_slot(pending)
                    break
                leading = pending.has_slot
            if not leading:
                pending.sleep()
                with self._lock:
                    pending.rearm()
            elif not self._write_next_group():
                with self._lock:
                    # Nothing was queued, yet ours is not done: another writer has it
                    # in flight. Give the slot up and wait like any other request.
                    if not pending.done:
                        self._hand_over_slot(pending)
        if pending.error is not None:
            raise pending.error
        return pending.result  # type: ignore[return-value]

    def _hand_over_slot(self, holder: _Pending[Item, Result]) -> None:
        """Pass `holder`'s writer slot to a queued request, or free it; lock held."""
        holder.has_slot = False
        for waiting in self._queue:
            if not waiting.has_slot:
                waiting.has_slot = True
                waiting.signal()
                return
        self._free_writers += 1

    def _take_group(self) -> list[_Pending[Item, Result]]:
        with self._lock:
            group: list[_Pending[Item, Result]] = []
            size = 0
            while self._queue:
                head = self._queue[0]
                if group and size + head.size > self._max_size:
                    break
                self._queue.popleft()
                group.append(head)
                size += head.size
            return group

    def _write_next_group(self) -> bool:
        """Write the queued items that fit in one group; False if none were queued."""
        group = self._take_group()
        if not group:
            return False
        try:
            self._settle(group)
        finally:
            with self._lock:
                for pending in group:
                    pending.done = True
                    pending.signal()
        return True

    def _settle(self, group: list[_Pending[Item, Result]]) -> None:
        """Give every item of the group its result or its error; never raises."""
        try:
            results = self._write_group([p.item for p in group])
        except BaseException as e:
            if len(group) == 1 or self._fails_all(e) or not isinstance(e, Exception):
                for pending in group:
                    pending.error = e
                return
            for pending in group:
                try:
                    (pending.result,) = self._write_group([pending.item])
                except BaseException as alone:
                    pending.error = alone
            return
        for pending, result in zip(group, results, strict=True):
            pending.result = result
