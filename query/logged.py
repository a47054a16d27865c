"""A row of the append-only log as the read side sees it, and what its payload says.

The log keeps each payload verbatim; the few details the screen shows (subject, sender,
tags, reason, link, ip, user agent) are read here, by one small extractor per
(provider, source), because Brevo's webhook and pull API spell them differently.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType
from typing import Any


@dataclass(frozen=True)
class LoggedEvent:
    """One row of `events`. `position` is the log's id: arrival order, which the fold only
    uses as a last tie-break (it is not event order, not even commit order)."""

    position: int
    provider: str
    source: str
    event: str | None
    event_at: datetime | None
    received_at: datetime
    message_id: str | None
    recipient: str | None
    payload: Mapping[str, Any]
    # Non-None when ingest stored the event but could not key it fully (unknown event,
    # no message-id, no usable time ...): it is shown, never folded.
    problem: str | None = None


@dataclass(frozen=True)
class Details:
    subject: str | None = None
    sender: str | None = None
    tags: tuple[str, ...] = ()
    reason: str | None = None
    link: str | None = None
    ip: str | None = None
    user_agent: str | None = None
    device: str | None = None


def _clean(value: Any) -> str | None:
    """`value` stripped if it is a non-blank string, else None. `""` counts as absent:
    Brevo sends `link: ""` on opens to mean "no link". One key per call, no loop: replay
    reads every row of the log."""
    if isinstance(value, str):
        value = value.strip()
        if value:
            return value
    return None


def parse_tags(value: Any) -> tuple[str, ...]:
    """Brevo's `tag` is a JSON-encoded string (`"[\\"a\\",\\"b\\"]"`), a plain string (the
    X-Mailin-Tag header, a template name), or a list (one docs example)."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                decoded = json.loads(text)
            except ValueError:
                decoded = None
            if isinstance(decoded, list):
                return parse_tags(decoded)
        return (text,) if text else ()
    if isinstance(value, list | tuple):
        found: list[str] = []
        for item in value:
            if isinstance(item, str):
                item = item.strip()
                if item and item not in found:
                    found.append(item)
        return tuple(found)
    return ()


def _brevo_webhook(payload: Mapping[str, Any]) -> Details:
    # `tags` (a real array) when present, else whatever `tag` holds. `sender_email` is in
    # live payloads since 2024 (Invoice Ninja's captures); `from` is only a guess.
    get = payload.get
    return Details(
        subject=_clean(get("subject")),
        sender=_clean(get("sender_email")) or _clean(get("from")),
        tags=parse_tags(get("tags")) or parse_tags(get("tag")),
        reason=_clean(get("reason")),
        link=_clean(get("link")),
        # On opens and clicks `sending_ip` is the opener's address (a Google image proxy
        # in one capture), on the rest Brevo's relay: it is shown as is.
        ip=_clean(get("sending_ip")) or _clean(get("ip")),
        user_agent=_clean(get("user_agent")),
        device=_clean(get("device_used")),
    )


def _brevo_events_api(payload: Mapping[str, Any]) -> Details:
    # GET /smtp/statistics/events: email, date, subject, messageId, event, reason, tag,
    # ip, link, from, templateId. No user agent, no device.
    get = payload.get
    return Details(
        subject=_clean(get("subject")),
        sender=_clean(get("from")),
        tags=parse_tags(get("tag")) or parse_tags(get("tags")),
        reason=_clean(get("reason")),
        link=_clean(get("link")),
        ip=_clean(get("ip")),
    )


# Every payload key an extractor reads. A payload stripped of all other keys has the same
# details (replay relies on it to decode less JSON; a test checks the list).
DETAIL_KEYS = frozenset(
    {"subject", "sender_email", "from", "tags", "tag", "reason", "link", "sending_ip", "ip",
     "user_agent", "device_used"}
)  # fmt: skip

EXTRACTORS: Mapping[tuple[str, str], Callable[[Mapping[str, Any]], Details]] = MappingProxyType(
    {
        ("brevo", "webhook"): _brevo_webhook,
        ("brevo", "spool"): _brevo_webhook,
        ("brevo", "api"): _brevo_events_api,
        ("brevo", "api_email"): _brevo_events_api,
    }
)


def details_of(row: LoggedEvent) -> Details:
    """The row's details; nothing for a provider or source we have no extractor for."""
    extract = EXTRACTORS.get((row.provider, row.source))
    # type() first: a log row's payload is a dict, and the ABC check costs more.
    if extract is None or not (type(row.payload) is dict or isinstance(row.payload, Mapping)):
        return Details()
    return extract(row.payload)
