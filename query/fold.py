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
    return _state(_groups(rows))


# --- rows -> facts ----------------------------------------------------------------------
#
# Speed matters here: replay folds every message of the log, about 5 rows each. So a
# fact is a slotted class, each row's details are read once (the state reuses them), and
# the expensive parts of the total order (the receive time and the canonical payload)
# are only computed for rows that tie on everything before them, which log rows never do
# (their position is unique); hand-built rows may.


class _Fact:
    __slots__ = ("row", "status", "when", "details", "short", "rank", "_canonical")

    def __init__(self, row: LoggedEvent) -> None:
        status = None
        if row.problem is None and row.event is not None and row.event_at is not None:
            status = _status_for(row.provider, row.source, row.event)
        when = _utc(row.event_at if row.event_at is not None else row.received_at)
        self.row = row
        self.status: Status | None = status  # only ever set on a row with an event time
        self.when = when  # UTC event time, else (unfoldable rows) receive time
        self.details = details_of(row)
        # The first keys of the fold order; `order` is the whole of it.
        self.short = (
            when,
            _LIFECYCLE[status] if status is not None else len(STATUSES),
            0 if row.source in WEBHOOK_SOURCES else 1,
            row.source,
            row.event or "",
            row.position,
        )
        self.rank = 0  # place in the sorted distinct facts, set by _distinct_facts
        self._canonical: str | None = None

    @property
    def canonical(self) -> str:
        if self._canonical is None:
            self._canonical = _canonical(self.row.payload)
        return self._canonical

    @property
    def order(self) -> tuple[Any, ...]:
        """The total order: equal only for rows equal in every field."""
        row = self.row
        return (
            *self.short,
            _utc(row.received_at),
            row.message_id or "",
            row.recipient or "",
            row.problem or "",
            row.event_at is None,  # so that `when` stands for event_at exactly
            row.provider,
            self.canonical,
        )


_LIFECYCLE = {status: info.lifecycle for status, info in STATUSES.items()}
_PRECEDENCE = {status: info.precedence for status, info in STATUSES.items()}
_STATUS_CACHE: dict[tuple[str, str, str], Status | None] = {}


def _status_for(provider: str, source: str, event: str) -> Status | None:
    # A few distinct names in the whole log: remember each answer (at most 4096 of them,
    # so that a flood of made-up names cannot grow this without bound).
    key = (provider, source, event)
    try:
        return _STATUS_CACHE[key]
    except KeyError:
        status = _STATUS_CACHE[key] = status_for(provider, source, event)
        if len(_STATUS_CACHE) > 4096:
            _STATUS_CACHE.clear()
        return status
    except TypeError:  # an unhashable name in a hand-built row: not a status we know
        return status_for(provider, source, event)


def _utc(moment: datetime) -> datetime:
    # The log's times are aware UTC; a naive one (a hand-built row) is read as UTC rather
    # than left to crash a comparison.
    if moment.tzinfo is UTC:
        return moment
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _canonical(payload: Mapping[str, Any]) -> str:
    try:
        return json.dumps(dict(payload), sort_keys=True, ensure_ascii=False, default=repr)
    except (TypeError, ValueError):
        return repr(payload)


def _is_webhook(source: str) -> bool:
    return source in WEBHOOK_SOURCES


def _distinct_facts(rows: Iterable[LoggedEvent]) -> list[_Fact]:
    """Facts in fold order, exact duplicates (equal in every field) dropped.

    Sorting on the short key, then on the whole order within each run of equal short
    keys, is sorting on the whole order (the short key is its prefix)."""
    facts = sorted((_Fact(row) for row in rows), key=lambda fact: fact.short)
    distinct: list[_Fact] = []
    start = 0
    while start < len(facts):
        end = start + 1
        while end < len(facts) and facts[end].short == facts[start].short:
            end += 1
        if end - start == 1:
            distinct.append(facts[start])
        else:
            tied: dict[tuple[Any, ...], _Fact] = {}
            for fact in facts[start:end]:
                tied.setdefault(fact.order, fact)
            distinct.extend(tied[order] for order in sorted(tied))
        start = end
    for rank, fact in enumerate(distinct):
        fact.rank = rank
    return distinct


# --- facts -> steps ---------------------------------------------------------------------


def _twin_key(fact: _Fact) -> tuple[Any, ...]:
    row = fact.row
    if fact.status is None:
        # Same body, same name, same time: the same unknown thing received twice.
        event_at = _utc(row.event_at) if row.event_at is not None else None
        what = (row.source, row.event, event_at, row.problem, fact.canonical)
        return ("unknown", row.provider, row.message_id, row.recipient, *what)
    family = "webhook" if row.source in WEBHOOK_SOURCES else row.source
    return ("known", row.provider, row.message_id, row.recipient, family, fact.status,
            fact.when, fact.details.link)  # fmt: skip


def _second_key(fact: _Fact) -> tuple[Any, ...]:
    row, second = fact.row, fact.when.replace(microsecond=0)
    return (row.provider, row.message_id, row.recipient, fact.status, second)


def _links_agree(a: Details, b: Details) -> bool:
    return a.link is None or b.link is None or a.link == b.link


def _groups(rows: Iterable[LoggedEvent]) -> list[list[_Fact]]:
    """The facts of each step, steps in fold order, each step's lead fact first."""
    groups: dict[tuple[Any, ...], list[_Fact]] = {}
    has_api = False
    for fact in _distinct_facts(rows):  # sorted, so each group's lead comes first
        groups.setdefault(_twin_key(fact), []).append(fact)
        has_api = has_api or (fact.status is not None and fact.row.source not in WEBHOOK_SOURCES)
    if not has_api:  # nothing to join: the common case of a webhook-only message
        return list(groups.values())

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
    return sorted(merged, key=lambda group: group[0].rank)


def _first(values: Iterable[str | None]) -> str | None:
    return next((value for value in values if value is not None), None)


def _step(group: list[_Fact]) -> Step:
    lead = group[0]
    row = lead.row
    if len(group) == 1:
        d = lead.details
        reason, link, ip, user_agent, device = d.reason, d.link, d.ip, d.user_agent, d.device
        rows: tuple[LoggedEvent, ...] = (row,)
    else:
        details = [fact.details for fact in group]
        reason = _first(d.reason for d in details)
        link = _first(d.link for d in details)
        ip = _first(d.ip for d in details)
        user_agent = _first(d.user_agent for d in details)
        device = _first(d.device for d in details)
        rows = tuple(fact.row for fact in group)
    return Step(
        at=row.event_at, status=lead.status, event=row.event, source=row.source,
        reason=reason, link=link, ip=ip, user_agent=user_agent, device=device,
        problem=row.problem, rows=rows,
    )  # fmt: skip


# --- steps -> state ---------------------------------------------------------------------


def _state(groups: list[list[_Fact]]) -> MessageState:
    """One pass over the steps, oldest first, with the details their facts already read."""
    steps = tuple(_step(group) for group in groups)
    provider = message_id = recipient = sender = subject = None
    tags: tuple[str, ...] = ()
    status: Status | None = None
    status_at = sent_at = first_at = last_at = delivered_at = opened_at = None
    counts = {Status.OPENED: 0, Status.PROXY_OPENED: 0, Status.CLICKED: 0}
    current = -1  # precedence of `status`
    for group, step in zip(groups, steps, strict=True):
        for fact in group:
            row = fact.row
            provider = provider if provider is not None else row.provider
            message_id = message_id if message_id is not None else row.message_id
            recipient = recipient if recipient is not None else row.recipient
        candidate = step.status
        if candidate is None:
            continue
        # Message-level details come from the steps that count, lead (webhook) rows first.
        for fact in group:
            d = fact.details
            sender = sender if sender is not None else d.sender
            subject = subject if subject is not None else d.subject
            tags = tags or d.tags
        first_at = first_at or step.at
        last_at = step.at
        if candidate is Status.REQUESTED:
            sent_at = sent_at or step.at
        elif candidate is Status.DELIVERED:
            delivered_at = delivered_at or step.at
        elif candidate is Status.OPENED:
            opened_at = opened_at or step.at
        if candidate in counts:
            counts[candidate] += 1
        rank = _PRECEDENCE[candidate]
        if rank > current or (rank == current and candidate != status):
            status, status_at, current = candidate, step.at, rank
    return MessageState(
        provider=provider, message_id=message_id, recipient=recipient, sender=sender,
        subject=subject, tags=tags, sent_at=sent_at or first_at, status=status,
        status_at=status_at, last_event_at=last_at, first_delivered_at=delivered_at,
        first_opened_at=opened_at, opens=counts[Status.OPENED],
        proxy_opens=counts[Status.PROXY_OPENED], clicks=counts[Status.CLICKED], steps=steps,
    )  # fmt: skip
