"""Brevo (ex-Sendinblue) transactional webhooks: what Brevo really sends.

See ../shared/brevo.md. In short: `message-id` comes with angle brackets in live traffic
and without them in the docs; `ts_epoch` (Unix milliseconds, UTC) is the only reliable
time, one doc example has it in seconds and another spells it `s_epoch`; `ts_event`/`ts`
are seconds that older accounts saw shifted; `date` is naive Europe/Paris time. There is
no event id: the dedup key is built from what the event says (ingest.events).
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from marshmallow import EXCLUDE, Schema, ValidationError, fields, pre_load

from ingest.events import NormalizedEvent, fit_key, storable_text

NAME = "brevo"

# Webhook payload `event` names we fold (the read side maps them to statuses). Anything
# else is stored and flagged: Brevo adds events over time, marketing ones can reach us.
KNOWN_EVENTS = frozenset(
    {
        "request", "delivered", "deferred", "soft_bounce", "hard_bounce", "invalid_email",
        "blocked", "error", "spam", "complaint", "unsubscribed", "unsubscribe",
        "unique_opened", "opened", "unique_proxy_open", "proxy_open", "click",
    }
)  # fmt: skip

BREVO_ZONE = ZoneInfo("Europe/Paris")
# Below this a `ts_epoch` is in seconds (as in one doc example), not milliseconds:
# 1e11 ms is March 1973, 1e11 s is the year 5138.
EPOCH_MS_THRESHOLD = 10**11


def _number_or_numeric_string(value: Any) -> Any:
    if isinstance(value, str) and value.strip().lstrip("-").replace(".", "", 1).isdigit():
        return float(value)
    return value


class BrevoEventSchema(Schema):
    """The fields we key on. Everything else stays in the verbatim payload."""

    class Meta:
        unknown = EXCLUDE

    event = fields.String(load_default=None)
    email = fields.String(load_default=None)
    message_id = fields.String(data_key="message-id", load_default=None)
    ts_epoch = fields.Float(load_default=None, allow_nan=False)
    s_epoch = fields.Float(load_default=None, allow_nan=False)  # typo in one doc example
    ts_event = fields.Float(load_default=None, allow_nan=False)
    ts = fields.Float(load_default=None, allow_nan=False)
    date = fields.String(load_default=None)
    link = fields.String(load_default=None)

    @pre_load
    def accept_numeric_strings(self, data: dict[str, Any], **_: Any) -> dict[str, Any]:
        for key in ("ts_epoch", "s_epoch", "ts_event", "ts"):
            if key in data:
                data = {**data, key: _number_or_numeric_string(data[key])}
        return data


_schema = BrevoEventSchema()

# (payload key, loaded name) of the fields read by the fast path below.
_TEXT_FIELDS = (("event", "event"), ("email", "email"), ("message-id", "message_id"),
                ("date", "date"), ("link", "link"))  # fmt: skip
_NUMBER_FIELDS = ("ts_epoch", "s_epoch", "ts_event", "ts")


def _load_plain(payload: dict[str, Any]) -> dict[str, Any] | None:
    """What the schema would load, for the usual payload whose fields already have the
    right types (a third of the schema's cost); None sends anything else to the schema."""
    loaded: dict[str, Any] = {}
    for key, name in _TEXT_FIELDS:
        value = payload.get(key)
        if value is not None and type(value) is not str:
            return None
        loaded[name] = value
    for key in _NUMBER_FIELDS:
        value = payload.get(key)
        if value is None:
            loaded[key] = None
        # An int is compared exactly (math.isfinite would overflow past 1e308).
        elif (type(value) is int or (type(value) is float and math.isfinite(value))) and (
            abs(value) < 1e300
        ):
            loaded[key] = float(value)
        else:
            return None
    return loaded


def _load(payload: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    plain = _load_plain(payload)
    if plain is not None:
        return plain, None
    try:
        return _schema.load(payload), None
    except ValidationError as e:
        valid = e.valid_data if isinstance(e.valid_data, dict) else {}
        return valid, f"unreadable fields ({_describe(e.messages_dict)})"


def normalize_message_id(raw: str | None) -> str | None:
    if raw is None:
        return None
    value = raw.strip().removeprefix("<").removesuffix(">").strip()
    return fit_key(storable_text(value)) or None


def normalize_recipient(raw: str | None) -> str | None:
    if raw is None:
        return None
    value = raw.strip().lower()
    return fit_key(storable_text(value)) or None


def _from_epoch(seconds: float) -> datetime | None:
    try:
        return datetime.fromtimestamp(seconds, UTC)
    except (OverflowError, OSError, ValueError):
        return None


def event_time(fields_: dict[str, Any]) -> datetime | None:
    """ts_epoch (ms, UTC), else ts_event/ts (s), else `date` read in Europe/Paris."""
    epoch = fields_.get("ts_epoch")
    if epoch is None:
        epoch = fields_.get("s_epoch")
    if epoch is not None:
        return _from_epoch(epoch / 1000 if abs(epoch) >= EPOCH_MS_THRESHOLD else epoch)
    for key in ("ts_event", "ts"):
        if fields_.get(key) is not None:
            return _from_epoch(fields_[key])
    if fields_.get("date"):
        try:
            naive = datetime.strptime(fields_["date"].strip(), "%Y-%m-%d %H:%M:%S")
        except ValueError:
            return None
        return naive.replace(tzinfo=BREVO_ZONE).astimezone(UTC)
    return None


def _describe(errors: dict[str, Any]) -> str:
    return "; ".join(f"{name}: {' '.join(map(str, msgs))}" for name, msgs in sorted(errors.items()))


def key_problems(
    event: str | None,
    message_id: str | None,
    recipient: str | None,
    known: frozenset[str],
    message_id_field: str,
) -> list[str]:
    """Why an event cannot be folded, as far as its keys go (both Brevo shapes)."""
    problems = []
    if event is None:
        problems.append("no event name")
    elif event not in known:
        problems.append(f"unknown event {event!r}")
    if message_id is None:
        problems.append(f"no {message_id_field}")
    if recipient is None:
        problems.append("no recipient")
    return problems


def normalize(payload: dict[str, Any], source: str = "webhook") -> NormalizedEvent:
    """Key one webhook payload. Never raises: what we cannot read is flagged, not refused."""
    if source == "api":
        # Pulled events have their own shape. Imported here because brevo_pull reuses this
        # module's message-id and recipient normalizers.
        from ingest.providers import brevo_pull

        return brevo_pull.normalize(payload, source)
    loaded, unreadable = _load(payload)
    problems = [unreadable] if unreadable else []

    message_id = normalize_message_id(loaded.get("message_id"))
    recipient = normalize_recipient(loaded.get("email"))
    event = storable_text(loaded["event"]) if loaded.get("event") is not None else None
    event_at = event_time(loaded)

    problems += key_problems(event, message_id, recipient, KNOWN_EVENTS, "message-id")
    if event_at is None:
        problems.append("no usable time")

    return NormalizedEvent(
        provider=NAME,
        source=source,
        payload=payload,
        message_id=message_id,
        recipient=recipient,
        event=event,
        event_at=event_at,
        link=storable_text(loaded["link"]) if loaded.get("link") else None,
        problem="; ".join(problems) or None,
    )
