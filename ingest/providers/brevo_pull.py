"""Brevo events pulled from the API (`GET /smtp/statistics/events`), keyed for the log.

The pull API spells things its own way (brevo.md section 6, tests/fixtures/brevo/
brevo_events_api.json): `messageId` (with angle brackets, like live webhooks), `email`,
`event` in camelCase plurals (`hardBounces`, `clicks`, `loadedByProxy` ...), `date` an
ISO 8601 date-time with `Z` or an offset, to the SECOND: it has no `ts_epoch`. So the same
step pulled here and received by webhook keys differently (the source is part of the key
too) and is stored twice; the read side's fold merges the two into one step.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

from ingest.events import NormalizedEvent, storable_text
from ingest.providers.brevo import (
    NAME,
    key_problems,
    normalize_message_id,
    normalize_recipient,
)

SOURCE = "api"

# The pull API's event names (the spec's `event_enum`), each with the webhook payload
# names of the same step. The keys are what we know; the values let reconciliation ask
# "did the webhook bring this step too?". The report has no unique-open and no complaint
# names: its `opened` is either webhook open, its `spam` either complaint spelling.
WEBHOOK_TWINS: Mapping[str, tuple[str, ...]] = MappingProxyType({
    "requests": ("request",),
    "delivered": ("delivered",),
    "deferred": ("deferred",),
    "softBounces": ("soft_bounce",),
    "hardBounces": ("hard_bounce",),
    # A query filter covering both kinds; should Brevo ever answer with it, either twin.
    "bounces": ("soft_bounce", "hard_bounce"),
    "invalid": ("invalid_email",),
    "blocked": ("blocked",),
    "error": ("error",),
    "spam": ("spam", "complaint"),
    "unsubscribed": ("unsubscribed", "unsubscribe"),
    "opened": ("opened", "unique_opened"),
    "clicks": ("click",),
    "loadedByProxy": ("proxy_open", "unique_proxy_open"),
})  # fmt: skip

KNOWN_EVENTS = frozenset(WEBHOOK_TWINS)


def _text(payload: Mapping[str, Any], key: str, problems: list[str]) -> str | None:
    value = payload.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        problems.append(f"{key} is not text but {type(value).__name__}")
        return None
    return value


def event_time(raw: str) -> datetime | None:
    """`date` as aware UTC, truncated to the second (what the API can say, and what the
    fold compares when it looks for the webhook twin). The spec documents a UTC date-time,
    so a date-time without offset is read as UTC."""
    try:
        moment = datetime.fromisoformat(raw.strip())
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).replace(microsecond=0)


def normalize(payload: dict[str, Any], source: str = SOURCE) -> NormalizedEvent:
    """Key one pulled event. Never raises: what we cannot read is flagged in `problem`."""
    problems: list[str] = []
    message_id = normalize_message_id(_text(payload, "messageId", problems))
    recipient = normalize_recipient(_text(payload, "email", problems))
    raw_event = _text(payload, "event", problems)
    event = storable_text(raw_event) if raw_event is not None else None
    raw_date = _text(payload, "date", problems)
    event_at = event_time(raw_date) if raw_date is not None else None
    link = _text(payload, "link", problems)

    problems += key_problems(event, message_id, recipient, KNOWN_EVENTS, "messageId")
    if raw_date is not None and event_at is None:
        problems.append(f"date {raw_date[:40]!r} is not an ISO 8601 date-time")
    elif event_at is None:
        problems.append("no date")

    return NormalizedEvent(
        provider=NAME,
        source=source,
        payload=payload,
        message_id=message_id,
        recipient=recipient,
        event=event,
        event_at=event_at,
        link=storable_text(link.strip()) if link and link.strip() else None,
        problem="; ".join(problems) or None,
    )
