"""What the screen's templates are given: read results turned into rows, chips and steps
with their times in the configured zone and their words in the session's language, and
the links that carry the list's filters along (to a mail, back, to the next period).

Only url_for ties this to Flask; the language and the zone are passed in.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import replace
from datetime import date
from typing import Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

from flask import url_for

from query.fold import Step
from query.reads import Filters, status_of
from query.screen_text import FULL_FORMAT, STEP_FORMAT, badge, is_web_link, local_time
from query.statuses import STATUSES, Status


def filter_pairs(filters: Filters) -> list[tuple[str, str]]:
    """The list's query string, with the period written out: a page left open over
    midnight keeps refreshing the day it shows, not silently the next one."""
    pairs = [("from", filters.period.first.isoformat()), ("to", filters.period.last.isoformat())]
    pairs += [("status", status.value) for status in filters.statuses]
    if filters.text:
        pairs.append(("q", filters.text))
    for name in ("recipient", "sender", "message_id", "tag"):
        value = getattr(filters, name)
        if value:
            pairs.append((name, value))
    return pairs


def with_query(path: str, pairs: list[tuple[str, str]]) -> str:
    return f"{path}?{urlencode(pairs)}" if pairs else path


def list_url(filters: Filters, first: date | None, last: date | None) -> str:
    """The list with the same filters over other days (`None`: today, the default)."""
    pairs = [(k, v) for k, v in filter_pairs(filters) if k not in ("from", "to")]
    if first is not None and last is not None:
        pairs = [("from", first.isoformat()), ("to", last.isoformat()), *pairs]
    return with_query(url_for("screen.message_list"), pairs)


def row_views(
    rows: Iterable[Mapping[str, Any]], query: list[tuple[str, str]], lang: str, zone: ZoneInfo
) -> list[dict[str, Any]]:
    return [
        {
            "id": row["id"],
            "sent": local_time(row["sent_at"], zone),
            "sent_full": local_time(row["sent_at"], zone, FULL_FORMAT),
            "sender": row["sender"] or "",
            "recipient": row["recipient"],
            "subject": row["subject"],
            "badge": badge(status_of(row), lang),
            # The filters ride along so that the mail's "back" link returns to this list.
            "href": with_query(url_for("screen.detail", key=row["id"]), query),
        }
        for row in rows
    ]


def chips_context(
    filters: Filters, counts: Mapping[Status | None, int], lang: str
) -> dict[str, Any]:
    """The status chips above the table: one per status present in the period (or ticked),
    in the order of a mail's life, each a checkbox of the status filter with its count.
    The counts are the whole period's, whatever is ticked, so that a chip says what
    ticking it would show."""
    chips = []
    for status in STATUSES:
        count = counts.get(status, 0)
        ticked = status in filters.statuses
        if count or ticked:
            chips.append({"badge": badge(status, lang), "count": count, "checked": ticked})
    if counts.get(None):
        # Mails with only unknown events: counted, but not a filter the API offers.
        chips.append({"badge": badge(None, lang), "count": counts[None], "checked": None})
    period = filters.period
    return {
        "chips": chips,
        "filters": filters,
        "all_count": sum(counts.values()),
        "all_statuses_url": list_url(replace(filters, statuses=()), period.first, period.last),
    }


def total(filters: Filters, counts: Mapping[Status | None, int]) -> int:
    """How many mails the list holds, all pages together."""
    if not filters.statuses:
        return sum(counts.values())
    return sum(counts.get(status, 0) for status in filters.statuses)


def step_views(steps: Iterable[Step], lang: str, zone: ZoneInfo) -> list[dict[str, Any]]:
    return [
        {
            "at": local_time(step.at, zone, STEP_FORMAT),
            "at_full": local_time(step.at, zone, FULL_FORMAT),
            "badge": badge(step.status, lang),
            "event": step.event,
            "source": step.source,
            "reason": step.reason,
            "link": step.link,
            "link_is_web": is_web_link(step.link),
            "ip": step.ip,
            "user_agent": step.user_agent,
            "device": step.device,
            "problem": step.problem,
            "payloads": [pretty(payload) for payload in step.payloads],
        }
        for step in steps
    ]


def pretty(payload: Mapping[str, Any]) -> str:
    """The payload as received, indented for reading (the template escapes it)."""
    try:
        return json.dumps(dict(payload), indent=2, ensure_ascii=False, sort_keys=True)
    except (TypeError, ValueError):
        return repr(payload)
