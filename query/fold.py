"""The fold: a tracked message's logged events -> its current status and its history.

Pure (no I/O, no clock) and deterministic. The result depends only on the SET of rows:
arrival order and duplicates change nothing, and `fold(a + b) == fold(b, start=fold(a))`,
because a state carries every row it was built from (inside its steps) and folding more
rows into it re-derives the whole state from the union. The projector relies on that.

Ordering. Steps are sorted by event time (rows without one, which ingest flags, by receive
time), then by lifecycle rank (statuses.py: a `request` before a `delivered` stamped with
the same instant), then by source (webhook first), event name, and the log position as the
final tie-break, then the rest of the row so that the order is total.

Steps. Rows that say the same thing become ONE step:
- twins within a source family: same message, recipient, status, exact same time and link.
  That is the same event seen twice, e.g. `unique_opened` and `opened` fired together on
  the first open (Brevo before late 2023), or a webhook body replayed from the spool;
- a webhook step and its copy pulled from the API (`unique_opened` vs `opened`, `click`
  vs `clicks`): same message, recipient and status, same time once truncated to the
  second (the API has no milliseconds), and the same link unless one side has none. The
  merged step keeps the webhook's time and, field by field, the webhook's details first.
  Every API twin joins the EARLIEST matching webhook step, and several may join the same
  one: the API cannot tell apart two opens within a second that the webhook could.
  Known misses: if Brevo rounded instead of truncating the API's seconds, twins half a
  second apart would stay two steps; two API-only copies (no webhook) never merge.
Rows with no status (an unknown event, or flagged by ingest) are steps of their own,
with status None; they change nothing else.

Status. The current status is the step of highest precedence (statuses.py); among equal
precedence a DIFFERENT status replaces it when later ({hard_bounced, invalid, blocked},
{soft_bounced, deferred}: the latest wins), the SAME status again keeps the first time
(`status_at` is when the mail reached that status). An open proves delivery, so the
status says opened even without `delivered`; `first_delivered_at` still only comes from a
real `delivered`. `opens` counts opened steps; proxy loads are not proof of reading
(brevo.md section 8) so they are counted apart, in `proxy_opens`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from query.logged import Details, LoggedEvent, details_of
from query.statuses import STATUSES, Status, status_for

__all__ = ["LoggedEvent", "MessageState", "Step", "fold"]

# Sources whose rows carry Brevo's full webhook payload: millisecond time, the link of an
# open, the user agent. Rows from any other source are the poorer copies.
WEBHOOK_SOURCES = frozenset({"webhook", "spool"})


@dataclass(frozen=True)
class Step:
    """One distinct step of a message's history, and the log rows it was read from."""

    at: datetime | None  # None only for flagged rows without a usable time
    status: Status | None  # None: unknown event or flagged row; it changes nothing
    event: str | None  # the provider's own name, from the lead (webhook first) row
    source: str
    reason: str | None
    link: str | None
    ip: str | None
    user_agent: str | None
    device: str | None
    problem: str | None
    rows: tuple[LoggedEvent, ...]  # lead row first

    @property
    def positions(self) -> tuple[int, ...]:
        return tuple(row.position for row in self.rows)

    @property
    def payloads(self) -> tuple[Mapping[str, Any], ...]:
        return tuple(row.payload for row in self.rows)

    @property
    def sources(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(row.source for row in self.rows))


@dataclass(frozen=True)
class MessageState:
    provider: str | None = None
    message_id: str | None = None
    recipient: str | None = None
    sender: str | None = None
    subject: str | None = None
    tags: tuple[str, ...] = ()
    sent_at: datetime | None = None  # the request's time, else the earliest step's
    status: Status | None = None
    status_at: datetime | None = None
    last_event_at: datetime | None = None
    first_delivered_at: datetime | None = None
    first_opened_at: datetime | None = None
    opens: int = 0
    proxy_opens: int = 0
    clicks: int = 0
    steps: tuple[Step, ...] = ()  # oldest first

    @property
    def rows(self) -> tuple[LoggedEvent, ...]:
        """Every log row folded into this state: what resuming from it starts with."""
        return tuple(row for step in self.steps for row in step.rows)


def fold(events: Iterable[LoggedEvent], start: MessageState | None = None) -> MessageState:
    """Fold one tracked message's rows, on top of `start` (a state this function made)."""
    rows = list(start.rows) if start is not None else []
    rows.extend(events)
    return _state(_steps(rows))


# --- rows -> facts ----------------------------------------------------------------------


@dataclass(frozen=True)
class _Fact:
    row: LoggedEvent
    status: Status | None  # only ever set on a row with an event time
    when: datetime  # UTC event time, else (unfoldable rows) receive time
    details: Details
    order: tuple[Any, ...]


def _utc(moment: datetime) -> datetime:
    # The log's times are aware UTC; a naive one (a hand-built row) is read as UTC rather
    # than left to crash a comparison.
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _canonical(payload: Mapping[str, Any]) -> str:
    try:
        return json.dumps(dict(payload), sort_keys=True, ensure_ascii=False, default=repr)
    except (TypeError, ValueError):
        return repr(payload)


def _is_webhook(source: str) -> bool:
    return source in WEBHOOK_SOURCES


def _fact(row: LoggedEvent) -> _Fact:
    status = None
    if row.problem is None and row.event is not None and row.event_at is not None:
        status = status_for(row.provider, row.source, row.event)
    when = _utc(row.event_at if row.event_at is not None else row.received_at)
    lifecycle = STATUSES[status].lifecycle if status is not None else len(STATUSES)
    order = (
        when,
        lifecycle,
        0 if _is_webhook(row.source) else 1,
        row.source,
        row.event or "",
        row.position,
        _utc(row.received_at),
        row.message_id or "",
        row.recipient or "",
        row.problem or "",
        row.event_at is None,  # so that `when` stands for event_at exactly
        row.provider,
        _canonical(row.payload),
    )
    return _Fact(row, status, when, details_of(row), order)


def _distinct_facts(rows: Iterable[LoggedEvent]) -> list[_Fact]:
    """Facts in fold order, exact duplicates (equal in every field) dropped."""
    facts: dict[tuple[Any, ...], _Fact] = {}
    for row in rows:
        fact = _fact(row)
        facts.setdefault(fact.order, fact)
    return [facts[order] for order in sorted(facts)]


# --- facts -> steps ---------------------------------------------------------------------


def _twin_key(fact: _Fact) -> tuple[Any, ...]:
    row = fact.row
    if fact.status is None:
        # Same body, same name, same time: the same unknown thing received twice.
        event_at = _utc(row.event_at) if row.event_at is not None else None
        what = (row.source, row.event, event_at, row.problem, fact.order[-1])
        return ("unknown", row.provider, row.message_id, row.recipient, *what)
    family = "webhook" if _is_webhook(row.source) else row.source
    return ("known", row.provider, row.message_id, row.recipient, family, fact.status,
            fact.when, fact.details.link)  # fmt: skip


def _second_key(fact: _Fact) -> tuple[Any, ...]:
    row, second = fact.row, fact.when.replace(microsecond=0)
    return (row.provider, row.message_id, row.recipient, fact.status, second)


def _links_agree(a: Details, b: Details) -> bool:
    return a.link is None or b.link is None or a.link == b.link


def _steps(rows: Iterable[LoggedEvent]) -> tuple[Step, ...]:
    groups: dict[tuple[Any, ...], list[_Fact]] = {}
    for fact in _distinct_facts(rows):  # sorted, so each group's lead comes first
        groups.setdefault(_twin_key(fact), []).append(fact)

    # Join each API group to the earliest webhook group it copies (see the module doc).
    webhook_groups: dict[tuple[Any, ...], list[list[_Fact]]] = {}
    for group in groups.values():
        lead = group[0]
        if lead.status is not None and _is_webhook(lead.row.source):
            webhook_groups.setdefault(_second_key(lead), []).append(group)
    merged: list[list[_Fact]] = []
    for group in groups.values():
        lead = group[0]
        if lead.status is None or _is_webhook(lead.row.source):
            merged.append(group)
            continue
        candidates = webhook_groups.get(_second_key(lead), [])
        twin = next((g for g in candidates if _links_agree(g[0].details, lead.details)), None)
        if twin is None:
            merged.append(group)
        else:
            twin.extend(group)  # after the webhook rows: the lead stays the webhook's

    return tuple(_step(group) for group in sorted(merged, key=lambda g: g[0].order))


def _first(values: Iterable[str | None]) -> str | None:
    return next((value for value in values if value is not None), None)


def _step(group: list[_Fact]) -> Step:
    lead, details = group[0], [fact.details for fact in group]
    return Step(
        at=lead.row.event_at,
        status=lead.status,
        event=lead.row.event,
        source=lead.row.source,
        reason=_first(d.reason for d in details),
        link=_first(d.link for d in details),
        ip=_first(d.ip for d in details),
        user_agent=_first(d.user_agent for d in details),
        device=_first(d.device for d in details),
        problem=lead.row.problem,
        rows=tuple(fact.row for fact in group),
    )


# --- steps -> state ---------------------------------------------------------------------


def _state(steps: tuple[Step, ...]) -> MessageState:
    rows = [row for step in steps for row in step.rows]
    known = [step for step in steps if step.status is not None]
    # Message-level details come from the steps that count, lead (webhook) rows first.
    details = [details_of(row) for step in known for row in step.rows]

    status: Status | None = None
    status_at: datetime | None = None
    for step in known:
        candidate = step.status
        if candidate is None:
            continue
        rank = STATUSES[candidate].precedence
        current = STATUSES[status].precedence if status is not None else -1
        if rank > current or (rank == current and candidate != status):
            status, status_at = candidate, step.at

    def first_at(wanted: Status) -> datetime | None:
        return next((step.at for step in known if step.status == wanted), None)

    def count(wanted: Status) -> int:
        return sum(1 for step in known if step.status == wanted)

    return MessageState(
        provider=_first(row.provider for row in rows),
        message_id=_first(row.message_id for row in rows),
        recipient=_first(row.recipient for row in rows),
        sender=_first(d.sender for d in details),
        subject=_first(d.subject for d in details),
        tags=next((d.tags for d in details if d.tags), ()),
        sent_at=first_at(Status.REQUESTED) or (known[0].at if known else None),
        status=status,
        status_at=status_at,
        last_event_at=known[-1].at if known else None,
        first_delivered_at=first_at(Status.DELIVERED),
        first_opened_at=first_at(Status.OPENED),
        opens=count(Status.OPENED),
        proxy_opens=count(Status.PROXY_OPENED),
        clicks=count(Status.CLICKED),
        steps=steps,
    )
