"""The normalized event every provider module produces, and its deterministic dedup key."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

SOURCES = ("webhook", "api")


@dataclass(frozen=True)
class NormalizedEvent:
    """What the log needs to find and key one event; the payload itself stays verbatim."""

    provider: str
    source: str
    payload: dict[str, Any]
    message_id: str | None
    recipient: str | None
    event: str | None
    event_at: datetime | None
    link: str | None = None
    problem: str | None = None
    dedup_key: bytes = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "dedup_key", dedup_key(self))


def dedup_key(e: NormalizedEvent) -> bytes:
    """sha256 of what the event says: a retransmission gives the same key.

    Brevo sends no event id, so the key is built from the fields that tell one step from
    another. An event missing any of them is keyed by its whole payload instead, so that
    two different events we do not understand are never taken for one.
    """
    if e.message_id and e.recipient and e.event and e.event_at is not None:
        millis = int(e.event_at.timestamp() * 1000)
        parts = [
            e.provider,
            e.source,
            e.message_id,
            e.recipient,
            e.event,
            str(millis),
            e.link or "",
        ]
    else:
        canonical = json.dumps(e.payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        parts = [e.provider, e.source, "payload", canonical]
    return hashlib.sha256("\x1f".join(parts).encode("utf-8", "surrogatepass")).digest()


def storable(value: str) -> bool:
    """PostgreSQL text takes neither U+0000 nor lone surrogates (invalid UTF-8)."""
    if "\x00" in value:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def storable_text(value: str) -> str:
    """A key column's text with unstorable characters replaced by U+FFFD."""
    if storable(value):
        return value
    return "".join("\ufffd" if c == "\x00" or 0xD800 <= ord(c) <= 0xDFFF else c for c in value)


# The log's btree indexes take (provider, message-id, recipient), and a btree entry must
# fit in a third of a page (2,704 bytes): at 4 bytes a character at most, two keys of
# KEY_MAX_CHARS fit with room to spare. Real ones are far shorter (an address is at most
# 254 characters).
KEY_MAX_CHARS = 256
_CUT_MARK = "\u2026"  # an ellipsis, then 16 hex digits of the whole value's sha256


def fit_key(value: str) -> str:
    """A key column's text, cut to KEY_MAX_CHARS when longer; the end of a cut value is a
    hash of the whole, so that two long values that share a beginning stay apart and the
    same value always gives the same key (its events still fold together). Not a problem
    to flag: the payload keeps the whole value."""
    if len(value) <= KEY_MAX_CHARS:
        return value
    digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return value[: KEY_MAX_CHARS - 17] + _CUT_MARK + digest


def spell_out_unstorable(value: Any) -> Any:
    """A JSON value with unstorable characters written as `\\uXXXX` text, keys included."""
    if isinstance(value, str):
        if storable(value):
            return value
        return "".join(
            f"\\u{ord(c):04x}" if c == "\x00" or 0xD800 <= ord(c) <= 0xDFFF else c for c in value
        )
    if isinstance(value, list):
        return [spell_out_unstorable(v) for v in value]
    if isinstance(value, dict):
        return {spell_out_unstorable(k): spell_out_unstorable(v) for k, v in value.items()}
    return value
