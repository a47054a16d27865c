"""The log writer thread: lines go out in order, late by at most its period, never lost
on a flush, and a warning is written at once behind what was queued."""

from __future__ import annotations

import io
import json
import logging
import time

import pytest

from distribmail import logs
from distribmail.log_writer import BackgroundWriter


class Output(io.StringIO):
    """A stream that counts its writes, and can be made to fail."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0
        self.broken = False
        self.failures = 0

    def write(self, text: str) -> int:
        if self.broken:
            self.failures += 1
            raise OSError("disk full")
        self.writes += 1
        return super().write(text)


def wait_for(check, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@pytest.fixture
def output():
    return Output()


def test_queued_lines_go_out_from_the_thread_in_one_write_and_in_order(output):
    writer = BackgroundWriter(lambda: output, every=0.05)
    try:
        for n in range(100):
            writer.put(f"line {n}\n")
        wait_for(lambda: output.getvalue().count("\n") == 100)
        assert output.getvalue().splitlines() == [f"line {n}" for n in range(100)]
        assert output.writes < 100  # gathered, not one write per line
    finally:
        writer.stop()


def test_write_now_writes_what_was_queued_first_then_its_line_before_returning(output):
    writer = BackgroundWriter(lambda: output, every=3600)  # the thread stays asleep
    try:
        writer.put("queued 1\n")
        writer.put("queued 2\n")
        assert output.getvalue() == ""
        writer.write_now("urgent\n")
        assert output.getvalue() == "queued 1\nqueued 2\nurgent\n"
    finally:
        writer.stop()


def test_flush_and_stop_leave_nothing_behind(output):
    writer = BackgroundWriter(lambda: output, every=3600)
    writer.put("a\n")
    writer.flush()
    assert output.getvalue() == "a\n"
    writer.put("b\n")
    writer.stop()
    assert output.getvalue() == "a\nb\n"
    assert not writer._thread.is_alive()


def test_a_full_queue_is_written_by_the_caller(output):
    writer = BackgroundWriter(lambda: output, every=3600, max_pending=10)
    try:
        for n in range(11):
            writer.put(f"{n}\n")
        # The eleventh line went past the bound: the caller wrote all of them itself.
        assert output.getvalue().splitlines() == [str(n) for n in range(11)]
    finally:
        writer.stop()


def test_a_failing_output_does_not_stop_the_thread(output):
    writer = BackgroundWriter(lambda: output, every=0.02)
    try:
        output.broken = True
        writer.put("lost\n")
        wait_for(lambda: output.failures == 1)  # taken by the thread, and dropped
        output.broken = False
        writer.put("kept\n")
        wait_for(lambda: "kept" in output.getvalue())
        assert output.getvalue() == "kept\n"
    finally:
        writer.stop()


def test_the_output_is_asked_for_at_each_write():
    first, second = Output(), Output()
    current = [first]
    writer = BackgroundWriter(lambda: current[0], every=3600)
    try:
        writer.put("to the first\n")
        writer.flush()
        current[0] = second
        writer.put("to the second\n")
        writer.flush()
        assert (first.getvalue(), second.getvalue()) == ("to the first\n", "to the second\n")
    finally:
        writer.stop()


@pytest.fixture
def background_handler(monkeypatch):
    """The root handler distribmail installs, switched to the writer thread (it writes to
    whatever sys.stderr is at the time: capsys's here); put back as it was afterwards."""
    logs.configure_root({})
    handler = logs._root_handler()
    assert handler is not None
    monkeypatch.setattr(handler, "background", None)
    handler.write_in_background(every=3600)  # no periodic write during the test
    yield handler
    handler.background.stop()


def test_info_lines_wait_for_the_thread_warnings_do_not(background_handler, capsys):
    log = logging.getLogger("tests.background")
    log.info("first")
    log.info("second")
    assert capsys.readouterr().err == ""
    log.warning("trouble")
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [line["message"] for line in lines] == ["first", "second", "trouble"]


def test_the_handler_flush_called_at_exit_writes_the_queued_lines(background_handler, capsys):
    logging.getLogger("tests.background").info("last words")
    assert "last words" not in capsys.readouterr().err
    # logging.shutdown, registered with atexit, calls flush on every handler.
    background_handler.flush()
    assert "last words" in capsys.readouterr().err
