"""The read API's contract: marshmallow schemas for what it accepts and what it answers.

The query schemas parse the query strings and, through query.openapi, document them: a
parameter cannot be documented one way and parsed another. The response schemas document
the answers, which query.api_json builds directly (dumping through marshmallow cost 4 ms
for a page of 100 items, a fifth of the list's budget); the contract tests hold every
answer to these schemas by validating it against /api/openapi.json.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from datetime import UTC, date, datetime
from typing import Any
from zoneinfo import ZoneInfo

from marshmallow import EXCLUDE, Schema, ValidationError, fields, validate
from werkzeug.datastructures import MultiDict

from ingest.errors import BadRequest
from ingest.providers.brevo import normalize_message_id, normalize_recipient
from query.reads import Filters, Period, Position
from query.statuses import Status

LANGS = ("fr", "en")
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
# A year, leap or not: enough for the screen's widest view, small enough that one request
# cannot make the database count the whole history.
MAX_DAYS = 366

MESSAGE_KEY = re.compile(r"^[0-9a-f]{24}$")


# --- fields -----------------------------------------------------------------------------


class Day(fields.Date):
    """Exactly YYYY-MM-DD. Python's ISO parser also takes 20260307 or 2026-W10-6: refused,
    so that a typo is an error rather than another day."""

    _SHAPE = re.compile(r"^\d{4}-\d{2}-\d{2}$")

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> date:
        if not isinstance(value, str) or not self._SHAPE.match(value):
            raise ValidationError(f"{value!r} is not a date written YYYY-MM-DD")
        try:
            return date.fromisoformat(value)
        except ValueError:
            raise ValidationError(f"{value!r} is not a date of the calendar") from None


def _status_code(**kwargs: Any) -> fields.Enum:
    return fields.Enum(Status, by_value=True, **kwargs)


# --- what the API accepts -----------------------------------------------------------------


class LangQuery(Schema):
    """Query string of GET /api/messages/{id}."""

    class Meta:
        # Extra parameters (a cache buster, a client's own marker) are ignored, not refused.
        unknown = EXCLUDE

    lang = fields.String(
        load_default="fr",
        validate=validate.OneOf(LANGS),
        metadata={"description": "Language of the labels."},
    )


class MessageFiltersQuery(LangQuery):
    """Query string of GET /api/messages/counts (and, with paging, GET /api/messages)."""

    from_ = Day(
        data_key="from",
        metadata={
            "description": "First day (inclusive), on the wall clock of the configured time "
            "zone (DISTRIBMAIL_TIMEZONE, default Europe/Paris). Default: `to` if given, "
            "else today."
        },
    )
    to = Day(
        metadata={
            "description": "Last day (inclusive). Default: `from` if given, else today. "
            f"At most {MAX_DAYS} days from `from` to `to`."
        }
    )
    status = fields.List(
        _status_code(),
        metadata={"description": "Current status; repeat the parameter for several (OR)."},
    )
    q = fields.String(
        metadata={
            "description": "Substring of the recipient, sender or subject, any case; "
            "% and _ are taken literally."
        }
    )
    recipient = fields.String(metadata={"description": "The recipient's address, any case."})
    sender = fields.String(metadata={"description": "The sender's address, any case."})
    message_id = fields.String(
        metadata={"description": "The Message-ID, with or without its angle brackets."}
    )
    tag = fields.String(metadata={"description": "A tag the mail carries (exact)."})


class MessageListQuery(MessageFiltersQuery):
    """Query string of GET /api/messages."""

    limit = fields.Integer(
        load_default=DEFAULT_LIMIT,
        strict=False,
        validate=validate.Range(min=1, max=MAX_LIMIT),
        metadata={"description": "Items per page."},
    )
    cursor = fields.String(
        metadata={"description": "`next_cursor` of the previous page, as is (opaque)."}
    )


def load_query(schema: Schema, args: MultiDict[str, str]) -> dict[str, Any]:
    """The query string through `schema`; the first bad parameter answers 400 by name.

    Empty values count as absent (an HTML form sends `q=` for an empty box). A list field
    takes every occurrence of its parameter, anything else the first one.
    """
    raw: dict[str, Any] = {}
    for name, field in schema.fields.items():
        key = field.data_key or name
        values = [value for value in args.getlist(key) if value.strip()]
        if any("\x00" in value for value in values):
            # PostgreSQL text cannot hold U+0000, and no real search needs it.
            raise BadRequest(f"bad parameter {key!r}: contains a NUL character", parameter=key)
        if values:
            raw[key] = values if isinstance(field, fields.List) else values[0]
    try:
        return schema.load(raw)
    except ValidationError as e:
        errors = e.normalized_messages()
        name = sorted(errors)[0]
        raise BadRequest(
            f"bad parameter {name!r}: {_first_message(errors[name])}", parameter=name
        ) from None


def _first_message(messages: Any) -> str:
    # Lists of strings, or (for a list parameter) {index: [...]} per bad item.
    if isinstance(messages, Mapping):
        return _first_message(next(iter(messages.values())))
    if isinstance(messages, list) and messages:
        return _first_message(messages[0])
    return str(messages)


def period_of(first: date | None, last: date | None, zone: ZoneInfo) -> Period:
    """The days asked for: one bound alone is a single day, none is today in `zone`."""
    if first is None:
        first = last if last is not None else datetime.now(zone).date()
    if last is None:
        last = first
    if last < first:
        raise BadRequest(f"bad parameter 'to': {last} is before 'from' ({first})", parameter="to")
    period = Period(first, last, zone)
    if period.days > MAX_DAYS:
        raise BadRequest(
            f"bad parameter 'to': {period.days} days from 'from' to 'to', at most {MAX_DAYS}",
            parameter="to",
        )
    return period


def filters_of(args: Mapping[str, Any], zone: ZoneInfo) -> Filters:
    """Loaded parameters as Filters, text normalized the way ingest stores it, so that a
    recipient in capitals or a Message-ID in <> still finds its row."""
    message_id = None
    if "message_id" in args:
        message_id = normalize_message_id(args["message_id"])
        if message_id is None:
            raise BadRequest(
                "bad parameter 'message_id': nothing left once the <> are removed",
                parameter="message_id",
            )
    recipient = normalize_recipient(args["recipient"]) if "recipient" in args else None
    return Filters(
        period=period_of(args.get("from_"), args.get("to"), zone),
        statuses=tuple(dict.fromkeys(args.get("status", ()))),
        text=args["q"].strip() if "q" in args else None,
        recipient=recipient,
        sender=args["sender"].strip() if "sender" in args else None,
        message_id=message_id,
        tag=args["tag"].strip() if "tag" in args else None,
    )


# --- the cursor -------------------------------------------------------------------------
# Opaque to clients: urlsafe base64 of a small JSON array [version, sent_at, id]. Not
# signed (it holds nothing a caller could not read from the page itself), but decoded
# strictly, so that a cursor that is not ours, or was cut by a copy-paste, is a 400
# rather than a silently wrong page.

_CURSOR_VERSION = 1


def encode_cursor(position: Position) -> str:
    document = [_CURSOR_VERSION, position.sent_at.astimezone(UTC).isoformat(), position.id]
    raw = json.dumps(document, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> Position:
    bad = BadRequest(
        "bad parameter 'cursor': not a cursor of this API; pass `next_cursor` of the "
        "previous page unchanged, or leave it out for the first page",
        parameter="cursor",
    )
    try:
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,200}", cursor):
            raise ValueError
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        document = json.loads(raw)
        version, sent_at, key = document
        moment = datetime.fromisoformat(sent_at)
    except (ValueError, TypeError, binascii.Error):
        raise bad from None
    if version != _CURSOR_VERSION or moment.tzinfo is None or not MESSAGE_KEY.match(key):
        raise bad
    return Position(moment.astimezone(UTC), key)


# --- what the API answers ---------------------------------------------------------------


class ErrorSchema(Schema):
    error = fields.String(required=True, metadata={"description": "What to change."})
    parameter = fields.String(metadata={"description": "The query parameter at fault."})


class MessageItemSchema(Schema):
    id = fields.String(required=True, metadata={"description": "Stable id of the tracked message."})
    provider = fields.String(required=True)
    message_id = fields.String(required=True, metadata={"description": "Without <>."})
    recipient = fields.String(required=True, metadata={"description": "Lower-case."})
    sender = fields.String(required=True, allow_none=True)
    subject = fields.String(required=True, allow_none=True)
    tags = fields.List(fields.String(), required=True)
    sent_at = fields.DateTime(
        required=True,
        metadata={"description": "The request's time, else the earliest event's."},
    )
    status = _status_code(
        required=True,
        allow_none=True,
        metadata={"description": "Current status; null while only unknown events are known."},
    )
    status_label = fields.String(required=True, allow_none=True)
    status_at = fields.DateTime(
        required=True, allow_none=True, metadata={"description": "When it reached the status."}
    )
    last_event_at = fields.DateTime(required=True, allow_none=True)
    opens = fields.Integer(required=True)
    proxy_opens = fields.Integer(
        required=True, metadata={"description": "Loads by a proxy: not proof of reading."}
    )
    clicks = fields.Integer(required=True)


class MessagePageSchema(Schema):
    items = fields.List(fields.Nested(MessageItemSchema), required=True)
    next_cursor = fields.String(
        required=True,
        allow_none=True,
        metadata={"description": "Pass as `cursor` for the next page; null on the last one."},
    )


class StepSchema(Schema):
    at = fields.DateTime(required=True, allow_none=True)
    status = _status_code(
        required=True,
        allow_none=True,
        metadata={"description": "null for an event we do not know; it changes nothing."},
    )
    label = fields.String(required=True, allow_none=True)
    event = fields.String(
        required=True, allow_none=True, metadata={"description": "The provider's own name."}
    )
    source = fields.String(required=True, metadata={"description": "webhook, api ..."})
    reason = fields.String(required=True, allow_none=True)
    link = fields.String(required=True, allow_none=True)
    ip = fields.String(required=True, allow_none=True)
    user_agent = fields.String(required=True, allow_none=True)
    device = fields.String(required=True, allow_none=True)
    problem = fields.String(
        required=True,
        allow_none=True,
        metadata={"description": "Why the event was stored but left out of the status."},
    )
    payloads = fields.List(
        fields.Dict(),
        required=True,
        metadata={"description": "The raw payloads of the log rows merged in this step."},
    )


class MessageDetailSchema(MessageItemSchema):
    steps = fields.List(
        fields.Nested(StepSchema), required=True, metadata={"description": "Oldest first."}
    )


StatusCountsSchema = Schema.from_dict(
    {status.value: fields.Integer(required=True) for status in Status}, name="StatusCounts"
)


class MessageCountsSchema(Schema):
    from_ = Day(data_key="from", required=True)
    to = Day(required=True)
    timezone = fields.String(required=True)
    total = fields.Integer(required=True)
    counts = fields.Nested(
        StatusCountsSchema,
        required=True,
        metadata={"description": "Messages per current status, every status listed."},
    )
    no_status = fields.Integer(
        required=True, metadata={"description": "Messages with only unknown events so far."}
    )


class TranslationSchema(Schema):
    fr = fields.String(required=True)
    en = fields.String(required=True)


class StatusInfoSchema(Schema):
    code = _status_code(required=True)
    labels = fields.Nested(TranslationSchema, required=True)
    kind = fields.String(
        required=True,
        validate=validate.OneOf(["pending", "temporary", "success", "engagement", "failure"]),
    )
    precedence = fields.Integer(
        required=True,
        metadata={
            "description": "The current status is the step of highest precedence; among "
            "statuses that share one, the latest step wins."
        },
    )
    explanations = fields.Nested(TranslationSchema, required=True)


class StatusListSchema(Schema):
    items = fields.List(fields.Nested(StatusInfoSchema), required=True)
