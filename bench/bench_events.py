"""The events every load sends: one live-shaped Brevo `delivered` event, made unique.

Retransmissions are no-ops in the log (dedup key: message-id, recipient, event, ts_epoch,
link), so a load that repeated one body would measure the duplicate path. Every event gets
its own message-id `<bench.<phase>.<thread>.<request>.<index>@smtp-relay.mailin.fr>` and a
ts_epoch that moves with the request number. The phase tag in the message-id lets the bench
count, per phase, the rows that really reached the database.

The wrk Lua script builds the same JSON text from the three pieces `template_parts()`
returns, so the HTTP loads and the COPY ceiling write byte-identical events.
"""

from __future__ import annotations

import json
import time
from typing import Any

# Markers replaced by the unique values; chosen so they cannot occur elsewhere in the text.
_MID_MARK = "@@MID@@"
_TS_MARK = 918273645546372819

# A delivered event as Brevo sends it live (angle brackets, ts_epoch in ms, tags twice).
_TEMPLATE: dict[str, Any] = {
    "id": 814119,
    "email": "client@example.com",
    "message-id": f"<{_MID_MARK}@smtp-relay.mailin.fr>",
    "date": "2026-05-31 15:28:33",
    "tags": ["invoice", "fr"],
    "tag": '["invoice","fr"]',
    "event": "delivered",
    "subject": "Devis 2026-118",
    "sending_ip": "185.41.28.109",
    "ts_event": 1780233713,
    "ts": 1780233713,
    "reason": "sent",
    "ts_epoch": _TS_MARK,
}


def template_parts() -> tuple[str, str, str]:
    """(before message-id, between message-id and ts_epoch, after ts_epoch) of one event."""
    text = json.dumps(_TEMPLATE, separators=(",", ":"))
    before, rest = text.split(_MID_MARK)
    middle, after = rest.split(str(_TS_MARK))
    return before, middle, after


def base_ts_ms() -> int:
    """Now, in Unix ms: each phase offsets its ts_epoch from here."""
    return int(time.time() * 1000)


def message_id(tag: str, thread: int, request: int, index: int) -> str:
    """The unique part of the message-id; must match post_events.lua."""
    return f"bench.{tag}.{thread}.{request}.{index}"


class EventMaker:
    """Builds the unique event texts and bodies of one phase (Python side of the loads)."""

    def __init__(self, tag: str, base_ts: int | None = None) -> None:
        self.tag = tag
        self.base_ts = base_ts_ms() if base_ts is None else base_ts
        self.parts = template_parts()

    def event_text(self, thread: int, request: int, index: int) -> str:
        before, middle, after = self.parts
        mid = message_id(self.tag, thread, request, index)
        return f"{before}{mid}{middle}{self.base_ts + request}{after}"

    def body(self, thread: int, request: int, batch: int) -> bytes:
        """A single event is sent as one JSON object (as Brevo does), a batch as a list."""
        if batch == 1:
            return self.event_text(thread, request, 1).encode()
        events = ",".join(self.event_text(thread, request, i) for i in range(1, batch + 1))
        return f"[{events}]".encode()

    def payloads(self, count: int, thread: int = 0) -> list[dict[str, Any]]:
        """`count` distinct event objects, as the receiver would parse them."""
        return [json.loads(self.event_text(thread, n, 1)) for n in range(1, count + 1)]
