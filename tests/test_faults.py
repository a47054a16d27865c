"""Faults with real processes: nothing answered 2xx is lost, nothing is stored twice.

- the database stopped and started again under a steady webhook load (`distribmail serve`);
- a gunicorn worker SIGKILLed while large batches are in flight;
- `distribmail worker` SIGKILLed in the middle of a projector batch, then restarted;
- the spool's disk full while the database is down (a 64 KiB tmpfs): 429, never 200.

A replay killed half-way is covered by test_replay.py
(test_killed_replay_leaves_the_projection_and_a_rerun_completes).

Each test prints one FAULT line with its figures (run with -s to see them). Clients act as
Brevo does (brevo.md section 5): a 429 or no answer at all is retried later, any other
4xx or 5xx would be the event lost, so none may come.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
import requests

from query.replay import replay
from tests.payloads import event
from tests.servers import Served, StoppableServer, wait_until
from tests.test_projector import folded_from_the_log, projection, receiver  # noqa: F401

TOKEN = "fault-webhook-token"
ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Request:
    message_ids: list[str]
    body: bytes
    status: int | None = None  # None: no answer (connection error, timeout)
    error: str | None = None

    @property
    def retry(self) -> bool:
        """What Brevo retries: no answer, or 429."""
        return self.status is None or self.status == 429


class Load:
    """Threads posting unique events at a steady pace; every request and answer recorded."""

    def __init__(
        self, url: str, sizes: list[int], threads: int = 4, interval: float = 0.0, seed: int = 0
    ) -> None:
        self.url = url
        self.sizes = sizes
        self.interval = interval
        self.run_id = uuid.uuid4().hex[:8]
        self.requests: list[Request] = []
        self.in_flight = 0
        self._numbers = itertools.count()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._post_until_stopped, args=(seed + n,), daemon=True)
            for n in range(threads)
        ]

    def new_events(self, count: int) -> list[dict]:
        with self._lock:
            numbers = [next(self._numbers) for _ in range(count)]
        return [
            event(
                "delivered",
                message_id=f"<fault.{self.run_id}.{n}@test>",
                ts_epoch=1_780_000_000_000 + n,
            )  # fmt: skip
            for n in numbers
        ]

    def start(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)

    def _post_until_stopped(self, seed: int) -> None:
        rng = random.Random(seed)
        session = requests.Session()
        due = time.monotonic()
        while not self._stop.is_set():
            size = rng.choice(self.sizes)
            events = self.new_events(size)
            body = json.dumps(events[0] if size == 1 else events).encode()
            request = Request([e["message-id"].strip("<>") for e in events], body)
            with self._lock:
                self.requests.append(request)
                self.in_flight += 1
            try:
                send(session, self.url, request)
            finally:
                with self._lock:
                    self.in_flight -= 1
            due += self.interval
            self._stop.wait(max(0.0, due - time.monotonic()))

    def answered(self, predicate) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if r.status is not None and predicate(r.status)]

    def events_acked(self) -> int:
        return sum(len(r.message_ids) for r in self.answered(lambda s: 200 <= s < 300))


def send(session: requests.Session, url: str, request: Request) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    try:
        answer = session.post(url + "/webhooks/brevo", data=request.body, headers=headers,
                              timeout=(5, 30))  # fmt: skip
    except requests.RequestException as e:
        request.status, request.error = None, type(e).__name__
        return
    request.status = answer.status_code


def resend_as_brevo_would(url: str, requests_: list[Request]) -> list[Request]:
    """Send again every request Brevo would retry, until each got an answer; the retries."""
    session = requests.Session()
    retries = []
    for original in requests_:
        if not original.retry:
            continue
        for _ in range(10):
            again = Request(original.message_ids, original.body)
            send(session, url, again)
            retries.append(again)
            if again.status is not None and again.status != 429:
                break
            time.sleep(0.5)  # Retry-After, shortened
    return retries


def copies_in_log(url: str, run_id: str) -> Counter[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT message_id, count(*) FROM events WHERE message_id LIKE %s GROUP BY 1",
            (f"fault.{run_id}.%",),
        ).fetchall()
    return Counter({message_id: count for message_id, count in rows})


def check_every_event_once(
    name: str, url: str, load: Load, retries: list[Request], **figures: object
) -> None:
    """Every event sent is in the log exactly once; no answer other than 2xx/429/none."""
    everything = load.requests + retries
    statuses = Counter("no answer" if r.status is None else str(r.status) for r in load.requests)
    sent = {m for r in load.requests for m in r.message_ids}
    acked = {m for r in load.requests if r.status and 200 <= r.status < 300 for m in r.message_ids}
    copies = copies_in_log(url, load.run_id)
    lost = sent - set(copies)
    lost_acked = acked - set(copies)
    duplicated = {m for m, n in copies.items() if n > 1}
    print(
        f"\nFAULT {name}: {len(load.requests)} requests, {len(sent)} events sent, "
        f"{len(acked)} answered 2xx the first time, answers {dict(statuses)}, "
        f"{len(retries)} resent; stored {len(copies)}, duplicated {len(duplicated)}, "
        f"lost {len(lost)} (of them answered 2xx: {len(lost_acked)})"
        + "".join(f", {k} {v}" for k, v in figures.items())
    )
    refused = [r.status for r in everything if r.status and r.status >= 300 and r.status != 429]
    assert refused == [], "Brevo would have discarded these events"
    assert [r for r in retries if r.status is None or r.status >= 300] == []
    assert lost_acked == set()
    assert lost == set()
    assert duplicated == set()
    assert set(copies) == sent


# --- the database stopped under load --------------------------------------------------


def test_database_stopped_under_load_loses_nothing(stoppable):
    served = Served(
        {
            "DISTRIBMAIL_DATABASE_URL": stoppable.url,
            "DISTRIBMAIL_WEBHOOK_TOKENS": TOKEN,
            "DISTRIBMAIL_DB_TIMEOUT": "1",
            "DISTRIBMAIL_SPOOL_DRAIN_EVERY": "0.5",
        }
    )
    spool = served.data_dir / "spool"
    load = Load(served.url, sizes=[1, 1, 1, 1, 10, 50, 100], threads=6, interval=0.03)
    try:
        load.start()
        assert wait_until(lambda: load.events_acked() >= 1500, 30)
        stoppable.stop()
        down_at = time.monotonic()
        acked_before = load.events_acked()
        # Down for at least 3 s, and until a good many events were answered meanwhile.
        assert wait_until(lambda: time.monotonic() - down_at > 3
                          and load.events_acked() - acked_before >= 500, 30)  # fmt: skip
        spooled_files = len(list(spool.glob("*.json")))
        stoppable.start()
        down_for = time.monotonic() - down_at
        acked_after_start = load.events_acked()
        assert wait_until(lambda: load.events_acked() - acked_after_start >= 1500, 30)
        load.stop()
        retries = resend_as_brevo_would(served.url, load.requests)
        assert wait_until(lambda: not list(spool.glob("*.json")), 30), "the spool did not drain"
        assert not (spool / "failed").exists()
        check_every_event_once(
            "database stopped", stoppable.url, load, retries,
            down_seconds=round(down_for, 1), spool_files_while_down=spooled_files,
        )  # fmt: skip
        assert spooled_files > 0  # the stop really happened under load
    finally:
        load.stop()
        served.cleanup()


# --- a gunicorn worker killed mid-request ---------------------------------------------


def test_worker_killed_mid_request_loses_nothing_and_writes_no_half_batch(database_url):
    served = Served(
        {
            "DISTRIBMAIL_DATABASE_URL": database_url,
            "DISTRIBMAIL_WEBHOOK_TOKENS": TOKEN,
            "DISTRIBMAIL_PROJECTOR": "off",
        }
    )
    load = Load(served.url, sizes=[500], threads=4)
    killed = []
    try:
        load.start()
        assert wait_until(lambda: load.events_acked() >= 2000, 30)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(killed) < 8:
            if len([r for r in load.requests if r.status is None and r.error]) >= 3:
                break
            workers = served.workers()
            if len(workers) < 2 or not wait_until(lambda: load.in_flight >= 3, 5):
                time.sleep(0.05)
                continue
            victim = random.Random(len(killed)).choice(workers)
            victim.send_signal(signal.SIGKILL)
            killed.append(victim.pid)
            # gunicorn's master replaces it; wait for the replacement before the next kill.
            assert wait_until(
                lambda v=victim.pid: len([w for w in served.workers() if w.pid != v]) >= 2, 30
            )
            acked = load.events_acked()
            assert wait_until(lambda n=acked: load.events_acked() >= n + 1000, 30)
        load.stop()
        cut = [r for r in load.requests if r.status is None]
        assert cut, f"{len(killed)} kills and no request cut short: nothing was proven"

        # One snapshot of the log: each batch is all there or not there at all.
        copies = copies_in_log(database_url, load.run_id)
        half = [r for r in load.requests if 0 < sum(m in copies for m in r.message_ids) < 500]
        committed_unanswered = [r for r in cut if all(m in copies for m in r.message_ids)]
        assert half == []

        retries = resend_as_brevo_would(served.url, load.requests)
        check_every_event_once(
            "worker SIGKILLed", database_url, load, retries, workers_killed=len(killed),
            half_written_batches=len(half),
            cut_batches_already_committed=len(committed_unanswered),
        )  # fmt: skip
        duplicates_answered = [r for r in retries if r.status == 200]
        assert len(duplicates_answered) == len(cut)
    finally:
        load.stop()
        served.cleanup()


# --- the projector killed mid-batch ---------------------------------------------------


def worker_transaction(db: psycopg.Connection, app_name: str) -> int | None:
    """The pid of the worker's backend while it is inside a batch that wrote something."""
    row = db.execute(
        "SELECT pid FROM pg_stat_activity WHERE application_name = %s AND backend_xid IS NOT NULL",
        (app_name,),
    ).fetchone()
    return row[0] if row else None


def start_worker(database_url: str, app_name: str, data_dir: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISTRIBMAIL_")}
    env.update(
        DISTRIBMAIL_DATABASE_URL=database_url,
        DISTRIBMAIL_DATA_DIR=str(data_dir),
        PGAPPNAME=app_name,  # libpq: lets the test find the worker's backend
    )
    return subprocess.Popen(
        [sys.executable, "-m", "distribmail.cli", "worker", "--batch-size", "100"],
        env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def queue_length(db: psycopg.Connection) -> int:
    return db.execute("SELECT count(*) FROM fold_queue").fetchone()[0]


def test_projector_killed_mid_batch_then_restarted_equals_a_replay(
    receiver,  # noqa: F811
    database_url,
    db,
):
    steps = ["request", "delivered", "opened", "click", "soft_bounce", "some_future_event"]
    rng = random.Random(6)
    payloads = [
        event(rng.choice(steps), email=f"c{n % 7}@example.com",
              message_id=f"<proj.{n}@test>", ts_epoch=1_780_000_000_000 + rng.randrange(10**7),
              link="https://shop.example/devis")
        for n in range(8000) for _ in range(3)
    ]  # fmt: skip
    for start in range(0, len(payloads), 500):
        receiver.append("brevo", "webhook", payloads[start : start + 500])
    queued = queue_length(db)
    data_dir = Path(tempfile.mkdtemp(prefix="dm-worker-"))
    app_name = f"dm-fault-{uuid.uuid4().hex[:6]}"

    worker = start_worker(database_url, app_name, data_dir)
    try:
        assert wait_until(lambda: queue_length(db) < queued * 0.8, 60), "the worker did not fold"
        assert wait_until(lambda: worker_transaction(db, app_name) is not None, 10)
        worker.kill()  # SIGKILL, inside a batch
        assert worker.wait(10) == -signal.SIGKILL
        # Its backend notices, rolls the batch back (the queue rows come back) and exits.
        assert wait_until(
            lambda: (
                db.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (app_name,)
                ).fetchone()[0]
                == 0
            ),
            20,  # fmt: skip
        )
        left = queue_length(db)
        partial = len(projection(db))
        assert 0 < left < queued and partial > 0

        worker = start_worker(database_url, app_name, data_dir)
        assert wait_until(lambda: queue_length(db) == 0, 60), "the restarted worker did not finish"
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == 0, worker.stderr.read()
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
        shutil.rmtree(data_dir, ignore_errors=True)
    report = replay(database_url, dry_run=True)
    live = projection(db)
    print(
        f"\nFAULT projector SIGKILLed: {len(payloads)} events, {queued} queue rows, "
        f"{partial} messages folded before the kill, {left} queue rows left; after restart "
        f"{len(live)} messages, replay dry run: {report.status_changes} status changes, "
        f"{report.other_changes} other changes"
    )
    assert (report.status_changes, report.other_changes) == (0, 0)
    assert live == folded_from_the_log(db)
    assert len(live) == 8000 * 1  # one recipient per message-id


# --- the spool's disk full ------------------------------------------------------------


@pytest.fixture
def tiny_disk():
    """A 64 KiB tmpfs; skipped where mounting is not allowed."""
    folder = Path(tempfile.mkdtemp(prefix="dm-full-"))
    spool = folder / "data" / "spool"
    spool.mkdir(parents=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", str(spool)],
        capture_output=True, text=True,
    )  # fmt: skip
    if mounted.returncode != 0:
        os.rmdir(spool)
        pytest.skip(f"cannot mount a tmpfs to fill (needs root in a privileged container): "
                    f"{mounted.stderr.strip()}")  # fmt: skip
    try:
        yield folder / "data"
    finally:
        subprocess.run(["umount", str(spool)], check=False)
        subprocess.run(["rm", "-rf", str(folder)], check=False)


def test_spool_disk_full_answers_429_and_keeps_the_rest(
    stoppable, make_app, auth_headers, tiny_disk
):
    client = make_app(
        DISTRIBMAIL_DATABASE_URL=stoppable.url,
        DISTRIBMAIL_DATA_DIR=str(tiny_disk),
        DISTRIBMAIL_DB_TIMEOUT="1",
    ).test_client()
    spool = tiny_disk / "spool"
    stoppable.stop()
    bodies = [
        [event(message_id=f"<full.{n}.{i}@test>", subject="Devis " + "x" * 300) for i in range(20)]
        for n in range(40)
    ]  # about 10 KB each: the disk is full after six or so
    answers = [client.post("/webhooks/brevo", json=b, headers=auth_headers) for b in bodies]
    statuses = [a.status_code for a in answers]
    first_refused = statuses.index(429) if 429 in statuses else None
    assert first_refused is not None and first_refused > 0, statuses
    assert set(statuses) == {200, 429}
    assert all(int(a.headers["Retry-After"]) > 0 for a in answers if a.status_code == 429)
    leftovers = [p.name for p in spool.iterdir() if p.name.endswith(".partial")]
    assert leftovers == [], "a failed spool write must not leave its partial file"

    stoppable.start()
    assert wait_until(lambda: not list(spool.glob("*.json")), 30)
    retried = [client.post("/webhooks/brevo", json=b, headers=auth_headers)
               for b, s in zip(bodies, statuses, strict=True) if s == 429]  # fmt: skip
    assert {a.status_code for a in retried} == {200}
    copies = Counter(
        dict(stoppable_rows(stoppable, "SELECT message_id, count(*) FROM events GROUP BY 1"))
    )
    sent = {e["message-id"].strip("<>") for b in bodies for e in b}
    print(
        f"\nFAULT spool disk full: {len(sent)} events in {len(bodies)} requests, "
        f"{statuses.count(200)} spooled (200), {statuses.count(429)} refused (429) and resent; "
        f"stored {len(copies)}, duplicated {sum(1 for n in copies.values() if n > 1)}, "
        f"lost {len(sent - set(copies))}"
    )
    assert set(copies) == sent and set(copies.values()) == {1}


def stoppable_rows(server: StoppableServer, sql: str) -> list[tuple]:
    with psycopg.connect(server.url) as conn:
        return conn.execute(sql).fetchall()  # type: ignore[arg-type]
