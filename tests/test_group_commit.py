"""Group commit (ingest.group_commit): requests that arrive while an append runs share the
next one, and each still gets its own outcome. The writer here is a plain function run by
real threads, so that the test can hold a group open and see exactly what was grouped."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Sequence

import pytest

from ingest.group_commit import GroupCommitter

WAIT = 10  # seconds: far more than any step here needs; a hang fails instead of blocking


class Unreachable(Exception):
    """Stands for DatabaseUnavailable: fails a whole group, no retries."""


class Recorder:
    """A writer that records its groups, can be held open, and refuses the item 'bad'."""

    def __init__(self) -> None:
        self.groups: list[list[str]] = []
        self.hold = threading.Event()
        self.hold.set()
        self.entered = threading.Event()
        self.unreachable = False
        self.active = 0
        self.most_active = 0
        self._lock = threading.Lock()

    def write(self, items: Sequence[str]) -> list[str]:
        with self._lock:
            self.active += 1
            self.most_active = max(self.most_active, self.active)
            self.groups.append(list(items))
        try:
            self.entered.set()
            assert self.hold.wait(WAIT)
            if self.unreachable:
                raise Unreachable("database down")
            if "bad" in items:
                raise ValueError("refused: bad")
            return [f"ok {item}" for item in items]
        finally:
            with self._lock:
                self.active -= 1


def committer(recorder: Recorder, **options: int) -> GroupCommitter[str, str]:
    return GroupCommitter(recorder.write, fails_all=lambda e: isinstance(e, Unreachable), **options)


def submit_in_threads(
    group_commit: GroupCommitter[str, str], items: list[str]
) -> tuple[dict[str, str], dict[str, BaseException], list[threading.Thread]]:
    results: dict[str, str] = {}
    errors: dict[str, BaseException] = {}

    def submit(item: str) -> None:
        try:
            results[item] = group_commit.submit(item)
        except BaseException as e:
            errors[item] = e

    threads = [threading.Thread(target=submit, args=(item,)) for item in items]
    for thread in threads:
        thread.start()
    return results, errors, threads


def wait_queued(group_commit: GroupCommitter[str, str], count: int) -> None:
    deadline = time.monotonic() + WAIT
    while len(group_commit._queue) < count:
        assert time.monotonic() < deadline, "the requests never queued"
        time.sleep(0.001)


def join(threads: list[threading.Thread]) -> None:
    for thread in threads:
        thread.join(WAIT)
        assert not thread.is_alive(), "a request was never answered"


def queued_behind_a_write(
    recorder: Recorder,
    group_commit: GroupCommitter[str, str],
    later: list[str],
    *,
    unreachable: bool = False,
) -> tuple[dict[str, str], dict[str, BaseException]]:
    """Submit "first" and hold its write open; submit `later` meanwhile (they queue), then
    let everything through. Returns the results and errors of all, "first" included."""
    recorder.hold.clear()
    results, errors, first = submit_in_threads(group_commit, ["first"])
    assert recorder.entered.wait(WAIT)
    recorder.unreachable = unreachable
    later_results, later_errors, threads = submit_in_threads(group_commit, later)
    wait_queued(group_commit, len(later))
    recorder.hold.set()
    join(first + threads)
    return {**results, **later_results}, {**errors, **later_errors}


def test_a_lone_request_is_written_at_once_by_its_own_thread():
    recorder = Recorder()
    assert committer(recorder).submit("a") == "ok a"
    assert recorder.groups == [["a"]]


def test_requests_arriving_during_a_write_share_the_next_one():
    recorder = Recorder()
    later = [f"r{i}" for i in range(6)]
    results, errors = queued_behind_a_write(recorder, committer(recorder, writers=1), later)

    assert errors == {}
    assert results == {item: f"ok {item}" for item in ["first", *later]}
    assert recorder.groups[0] == ["first"]
    assert sorted(recorder.groups[1]) == later  # one transaction for the six
    assert len(recorder.groups) == 2


def test_a_group_is_capped_but_one_large_request_still_goes_alone():
    recorder = Recorder()
    group_commit = committer(recorder, writers=1, max_size=3)
    later = [f"r{i}" for i in range(7)]
    results, errors = queued_behind_a_write(recorder, group_commit, later)
    assert errors == {}
    assert len(results) == 8
    assert [len(group) for group in recorder.groups] == [1, 3, 3, 1]

    assert group_commit.submit("big", size=50) == "ok big"
    assert recorder.groups[-1] == ["big"]


def test_a_refused_request_fails_alone_and_the_rest_of_its_group_is_written():
    recorder = Recorder()
    group_commit = committer(recorder, writers=1)
    results, errors = queued_behind_a_write(recorder, group_commit, ["a", "bad", "b"])

    assert results == {"first": "ok first", "a": "ok a", "b": "ok b"}
    assert list(errors) == ["bad"]
    assert str(errors["bad"]) == "refused: bad"
    # The shared attempt, then each request on its own.
    assert sorted(recorder.groups[1]) == ["a", "b", "bad"]
    assert sorted(map(tuple, recorder.groups[2:])) == [("a",), ("b",), ("bad",)]


def test_an_unreachable_database_fails_the_whole_group_without_retrying_each():
    recorder = Recorder()
    group_commit = committer(recorder, writers=1)
    results, errors = queued_behind_a_write(
        recorder, group_commit, ["a", "b", "c"], unreachable=True
    )

    assert results == {}
    assert sorted(errors) == ["a", "b", "c", "first"]
    assert all(isinstance(e, Unreachable) for e in errors.values())
    assert len(recorder.groups) == 2  # no one-by-one retries


@pytest.mark.parametrize("writers", [1, 2, 3])
def test_many_threads_each_get_their_own_result_and_writers_stay_within_the_limit(writers):
    recorder = Recorder()
    chance = random.Random(writers)

    def slow_write(items: Sequence[str]) -> list[str]:
        time.sleep(chance.random() / 1000)
        return recorder.write(items)

    group_commit: GroupCommitter[str, str] = GroupCommitter(
        slow_write, fails_all=lambda e: False, writers=writers, max_size=50
    )
    items = [f"t{t}.{n}" for t in range(16) for n in range(60)]
    answers: dict[str, str] = {}

    def run(thread: int) -> None:
        for n in range(60):
            item = f"t{thread}.{n}"
            answers[item] = group_commit.submit(item)

    threads = [threading.Thread(target=run, args=(t,)) for t in range(16)]
    for thread in threads:
        thread.start()
    join(threads)

    assert answers == {item: f"ok {item}" for item in items}
    written = [item for group in recorder.groups for item in group]
    assert sorted(written) == sorted(items)  # each once
    assert recorder.most_active <= writers
    assert len(recorder.groups) < len(items)  # some requests did share a transaction
    # Every slot came back: nothing is left waiting for a writer that never comes.
    assert group_commit._free_writers == writers
    assert not group_commit._queue
