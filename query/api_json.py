"""From read results to the JSON documents of the read API.

Built by hand, field for field, because this is the list's hot path (see api_schemas for
why not through marshmallow). The shapes are those of api_schemas' response schemas; the
contract tests validate every answer against them.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from query.api_schemas import encode_cursor
from query.reads import Detail, Filters, Page, status_of
from query.statuses import STATUSES, Status


def iso(moment: datetime | None) -> str | None:
    """ISO 8601 in UTC with its offset, whatever zone the database session answered in."""
    return moment.astimezone(UTC).isoformat() if moment is not None else None


def label(status: Status | None, lang: str) -> str | None:
    if status is None:
        return None
    info = STATUSES[status]
    return info.label_en if lang == "en" else info.label_fr


def message_item(row: Mapping[str, Any], lang: str) -> dict[str, Any]:
    status = status_of(row)
    return {
        "id": row["id"],
        "provider": row["provider"],
        "message_id": row["message_id"],
        "recipient": row["recipient"],
        "sender": row["sender"],
        "subject": row["subject"],
        "tags": row["tags"],
        "sent_at": iso(row["sent_at"]),
        "status": status.value if status is not None else None,
        "status_label": label(status, lang),
        "status_at": iso(row["status_at"]),
        "last_event_at": iso(row["last_event_at"]),
        "opens": row["opens"],
        "proxy_opens": row["proxy_opens"],
        "clicks": row["clicks"],
    }


def page_document(page: Page, lang: str) -> dict[str, Any]:
    return {
        "items": [message_item(row, lang) for row in page.rows],
        "next_cursor": encode_cursor(page.next) if page.next is not None else None,
    }


def detail_document(detail: Detail, lang: str) -> dict[str, Any]:
    steps = [
        {
            "at": iso(step.at),
            "status": step.status.value if step.status is not None else None,
            "label": label(step.status, lang),
            "event": step.event,
            "source": step.source,
            "reason": step.reason,
            "link": step.link,
            "ip": step.ip,
            "user_agent": step.user_agent,
            "device": step.device,
            "problem": step.problem,
            "payloads": [dict(payload) for payload in step.payloads],
        }
        for step in detail.state.steps
    ]
    return {**message_item(detail.row, lang), "steps": steps}


def counts_document(filters: Filters, counts: Mapping[Status | None, int]) -> dict[str, Any]:
    period = filters.period
    return {
        "from": period.first.isoformat(),
        "to": period.last.isoformat(),
        "timezone": period.zone.key,
        "total": sum(counts.values()),
        "counts": {status.value: counts.get(status, 0) for status in Status},
        "no_status": counts.get(None, 0),
    }


def statuses_document() -> dict[str, Any]:
    return {
        "items": [
            {
                "code": info.status.value,
                "labels": {"fr": info.label_fr, "en": info.label_en},
                "kind": info.kind.value,
                "precedence": info.precedence,
                "explanations": {"fr": info.meaning_fr, "en": info.meaning_en},
            }
            for info in STATUSES.values()
        ]
    }
