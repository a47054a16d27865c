"""The fixed receive pipeline: parse the body, normalize each event, append, or spool.

Authentication happens before (ingest.auth, called by the route); everything here is the
same for every provider: only `provider.normalize` differs.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from psycopg_pool import ConnectionPool

from ingest import recorder
from ingest.errors import BadRequest, DatabaseUnavailable, TryLater
from ingest.events import NormalizedEvent
from ingest.group_commit import GroupCommitter
from ingest.notify import FoldNotifier
from ingest.providers import PROVIDERS
from ingest.spool import Spool, SpoolDrainer, SpooledRequest

log = logging.getLogger(__name__)

# After the database failed once, send the next requests straight to the spool for this
# long instead of making each of them wait for a connection timeout.
DOWN_BACKOFF_SECONDS = 1.0


@dataclass(frozen=True)
class Receipt:
    received: int
    stored: int = 0
    duplicates: int = 0
    spooled: int = 0

    def to_json(self) -> dict[str, int]:
        body = {"received": self.received, "stored": self.stored, "duplicates": self.duplicates}
        if self.spooled:
            body["spooled"] = self.spooled
        return body


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    # Python reads 1e400 as infinity, which the log's jsonb refuses: a 400 here, rather
    # than a 500 from the INSERT.
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:40]} is too large to store")
    return value


def parse_body(body: bytes) -> list[dict[str, Any]]:
    """One event object, a list of them, or an object wrapping such a list under one key."""
    try:
        document = json.loads(body, parse_constant=_refuse_constant, parse_float=_finite_float)
    except (ValueError, UnicodeDecodeError) as e:
        raise BadRequest(f"the body is not JSON: {e}") from None
    except RecursionError:
        raise BadRequest("the body is not JSON we can read: nested too deeply") from None
    if isinstance(document, dict):
        return _unwrap(document)
    if isinstance(document, list):
        for index, item in enumerate(document):
            if not isinstance(item, dict):
                raise BadRequest(
                    f"item {index} of the list is a {type(item).__name__}, not an event object"
                )
        return document
    raise BadRequest(
        f"the body is a JSON {type(document).__name__}: expected an event object or a list of them"
    )


def _unwrap(document: dict[str, Any]) -> list[dict[str, Any]]:
    """Brevo's batched body has not been seen live (brevo.md section 3): besides a bare list,
    take `{"<key>": [event, ...]}` as a batch when it holds nothing else and every item has
    an `event`. Anything else is one (perhaps flagged) event, stored as received."""
    if "event" not in document and len(document) == 1:
        (inner,) = document.values()
        if (
            isinstance(inner, list)
            and inner
            and all(isinstance(item, dict) and "event" in item for item in inner)
        ):
            return inner
    return [document]


# Told about every receive: (provider, payloads, their normalized events, or None when they
# were spooled before being normalized, receipt). distribmail.metrics counts with it; an
# observer must be cheap and must not raise.
ReceiptObserver = Callable[
    [str, Sequence[dict[str, Any]], Sequence[NormalizedEvent] | None, Receipt], None
]


class Receiver:
    """Appends a request's events to the log in one transaction, or spools them."""

    def __init__(
        self,
        pool: ConnectionPool,
        spool: Spool,
        notifier: FoldNotifier | None = None,
        writers: int = 1,
        group_max_events: int = 1000,
    ) -> None:
        self.pool = pool  # autocommit: each append is one statement
        self.spool = spool
        # Concurrent requests share a transaction (ingest.group_commit); each is still all
        # or nothing, and answered after its commit.
        self._committer: GroupCommitter[Sequence[NormalizedEvent], int] = GroupCommitter(
            lambda groups: recorder.insert_groups(self.pool, groups),
            fails_all=lambda e: isinstance(e, DatabaseUnavailable),
            writers=writers,
            max_size=group_max_events,
        )
        self.notifier = notifier
        self._down_until = 0.0
        self._lock = threading.Lock()
        self.drainer: SpoolDrainer | None = None  # set when a drainer thread serves us
        self.observers: list[ReceiptObserver] = []

    def receive(self, provider_name: str, body: bytes, source: str = "webhook") -> Receipt:
        payloads = parse_body(body)
        try:
            return self._receive(provider_name, source, payloads)
        except RecursionError:
            # json read it, but keying, serializing or spooling it recursed too deep (a
            # payload nested near Python's limit): a 400, not a 500.
            raise BadRequest("the body is not JSON we can store: nested too deeply") from None

    def _receive(self, provider_name: str, source: str, payloads: list[dict[str, Any]]) -> Receipt:
        received_at = datetime.now(UTC)
        if not payloads:
            return Receipt(received=0)
        events: list[NormalizedEvent] | None = None
        if time.monotonic() >= self._down_until:
            try:
                if len(payloads) > recorder.STREAM_CHUNK:
                    events, stored = self._append_streamed(provider_name, source, payloads)
                else:
                    events = self.normalize(provider_name, source, payloads)
                    stored = self.append_events(events)
                receipt = Receipt(len(payloads), stored, len(payloads) - stored)
                return self._observed(provider_name, payloads, events, receipt)
            except DatabaseUnavailable as e:
                log.warning("database unavailable, spooling %d event(s): %s", len(payloads), e)
                with self._lock:
                    self._down_until = time.monotonic() + DOWN_BACKOFF_SECONDS
            except RecursionError:
                raise
            except Exception:
                # A bug, or a row the database refuses: keep the events on disk rather than
                # answer 5xx (Brevo would discard them). The drain retries, and sets a file
                # that keeps failing aside for an operator (ingest.spool).
                log.exception("could not append %d event(s); spooling them", len(payloads))
        receipt = self._spool(SpooledRequest(provider_name, source, received_at, payloads))
        return self._observed(provider_name, payloads, events, receipt)

    def _observed(
        self,
        provider_name: str,
        payloads: list[dict[str, Any]],
        events: list[NormalizedEvent] | None,
        receipt: Receipt,
    ) -> Receipt:
        for observe in self.observers:
            observe(provider_name, payloads, events, receipt)
        return receipt

    def normalize(
        self, provider_name: str, source: str, payloads: list[dict[str, Any]]
    ) -> list[NormalizedEvent]:
        provider = PROVIDERS[provider_name]
        return [provider.normalize(p, source) for p in payloads]

    def append(
        self,
        provider_name: str,
        source: str,
        payloads: list[dict[str, Any]],
        received_at: datetime | None = None,
    ) -> int:
        """Normalize and append; returns how many events were new in the log."""
        return self.append_events(self.normalize(provider_name, source, payloads), received_at)

    def append_events(
        self, events: list[NormalizedEvent], received_at: datetime | None = None
    ) -> int:
        if received_at is None:
            stored = self._committer.submit(events, len(events))
        else:  # replayed from the spool or pulled: kept apart, with its own receive time
            stored = recorder.insert_events(self.pool, events, received_at)
        self._appended(stored)
        return stored

    def _append_streamed(
        self, provider_name: str, source: str, payloads: list[dict[str, Any]]
    ) -> tuple[list[NormalizedEvent], int]:
        """A large batch, normalized a chunk at a time, each chunk sent to the database
        before the next is normalized (recorder.insert_stream): one transaction still,
        outside the group commit (it is a group of its own). Returns (events, stored)."""
        events: list[NormalizedEvent] = []

        def chunks() -> Iterator[list[NormalizedEvent]]:
            for start in range(0, len(payloads), recorder.STREAM_CHUNK):
                part = payloads[start : start + recorder.STREAM_CHUNK]
                chunk = self.normalize(provider_name, source, part)
                events.extend(chunk)
                yield chunk

        try:
            stored = recorder.insert_stream(self.pool, chunks())
        except recorder.PartitionMissing:
            every = self.normalize(provider_name, source, payloads)
            return every, self.append_events(every)
        self._appended(stored)
        return events, stored

    def _appended(self, stored: int) -> None:
        if self._down_until:
            # The database took rows (the drainer's, most likely): it is back, so the
            # next webhooks go to it rather than to the spool for what is left of the
            # backoff. Before the drainer deletes its file: never a moment when the spool
            # is empty yet webhooks are still sent to it.
            with self._lock:
                self._down_until = 0.0
        if stored and self.notifier is not None:
            self.notifier.poke()

    def _spool(self, request: SpooledRequest) -> Receipt:
        try:
            self.spool.write(request)
        except OSError as e:
            log.error("cannot spool %d event(s): %s", len(request.payloads), e)
            raise TryLater("the event log and the spool are both unavailable; retry later") from e
        return Receipt(received=len(request.payloads), spooled=len(request.payloads))

    def close(self) -> None:
        if self.drainer is not None:
            self.drainer.stop()
        if self.notifier is not None:
            self.notifier.stop()
        self.pool.close()

    def drain_spool(self) -> int:
        return self.spool.drain(
            lambda r: self.append(r.provider, r.source, r.payloads, r.received_at),
            lambda e: isinstance(e, DatabaseUnavailable),
        )
