"""The fold (query.fold): pure, so no database here. Scenarios from brevo.md and design.md,
real payloads from tests/fixtures/fold, and hypothesis for order, duplicates, resumption."""

from __future__ import annotations

import itertools
import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from query.fold import LoggedEvent, MessageState, fold
from query.logged import DETAIL_KEYS, details_of, parse_tags
from query.statuses import BREVO_EVENTS_API_NAMES, BREVO_WEBHOOK_NAMES, Status

T0 = datetime(2026, 3, 8, 1, 5, 0, 250_000, tzinfo=UTC)
MID = "202603080105.12345678901@smtp-relay.mailin.fr"
RCPT = "client@example.fr"
_positions = itertools.count(1)


def row(
    name: str | None,
    seconds: float = 0.0,
    source: str = "webhook",
    *,
    problem: str | None = None,
    timeless: bool = False,
    received: float | None = None,
    recipient: str = RCPT,
    position: int | None = None,
    **fields: Any,
) -> LoggedEvent:
    """A log row as ingest stores it: webhook rows have ms times, API rows whole seconds."""
    at = T0 + timedelta(seconds=seconds)
    payload: dict[str, Any]
    if source == "api":
        at = at.replace(microsecond=0)
        payload = {
            "event": name,
            "email": recipient,
            "messageId": f"<{MID}>",
            "date": at.isoformat(),
        }
    else:
        payload = {"event": name, "email": recipient, "message-id": f"<{MID}>"}
        if not timeless:
            payload["ts_epoch"] = int(at.timestamp() * 1000)
    payload.update(fields)
    return LoggedEvent(
        position=next(_positions) if position is None else position,
        provider="brevo",
        source=source,
        event=name,
        event_at=None if timeless else at,
        received_at=T0 + timedelta(seconds=received if received is not None else seconds + 2),
        message_id=MID,
        recipient=recipient,
        payload=payload,
        problem=problem,
    )


def W(name: str, seconds: float = 0.0, **fields: Any) -> LoggedEvent:
    return row(name, seconds, "webhook", **fields)


def A(name: str, seconds: float = 0.0, **fields: Any) -> LoggedEvent:
    return row(name, seconds, "api", **fields)


S = Status
# (id, rows, expected status, expected number of steps)
SCENARIOS = [
    ("request-only", [W("request")], S.REQUESTED, 1),
    ("request-delivered", [W("request"), W("delivered", 3)], S.DELIVERED, 2),
    ("deferral-then-delivery", [W("request"), W("deferred", 5), W("delivered", 600)],
     S.DELIVERED, 3),
    ("deferred-550-then-delivered", [W("deferred", 1, reason="550 5.1.1 User unknown"),
                                     W("delivered", 900)], S.DELIVERED, 2),
    ("delivered-then-late-hard-bounce", [W("delivered", 1), W("hard_bounce", 3600)],
     S.HARD_BOUNCED, 2),
    ("open-without-delivered", [W("request"), W("unique_opened", 60)], S.OPENED, 2),
    ("proxy-open-only", [W("delivered", 1), W("proxy_open", 2)], S.PROXY_OPENED, 2),
    ("proxy-open-then-real-open", [W("unique_proxy_open", 2), W("unique_opened", 90)], S.OPENED, 2),
    ("real-open-then-proxy-open", [W("unique_opened", 2), W("proxy_open", 90)], S.OPENED, 2),
    ("spam-after-open", [W("delivered", 1), W("unique_opened", 5), W("spam", 60)], S.COMPLAINED, 3),
    ("complaint-spelling", [W("delivered", 1), W("complaint", 60)], S.COMPLAINED, 2),
    ("open-after-complaint", [W("spam", 60), W("opened", 70)], S.COMPLAINED, 2),
    ("unknown-after-delivered", [W("delivered", 1), W("list_addition", 9)], S.DELIVERED, 2),
    ("only-unknown", [W("reply", 9)], None, 1),
    ("request-arrives-after-delivered", [W("delivered", 4), W("request", 0, received=500)],
     S.DELIVERED, 2),
    ("request-stamped-after-delivered", [W("delivered", 4), W("request", 5)], S.DELIVERED, 2),
    ("blocked-after-request",
     [W("request"), W("blocked", 1, reason="blocked : due to blacklist user")], S.BLOCKED, 2),
    ("soft-bounce-then-delivered", [W("soft_bounce", 1), W("delivered", 1800)], S.DELIVERED, 2),
    ("delivered-then-soft-bounce", [W("delivered", 1), W("soft_bounce", 1800)], S.DELIVERED, 2),
    ("deferred-then-soft-bounce", [W("deferred", 1), W("soft_bounce", 60)], S.SOFT_BOUNCED, 2),
    ("soft-bounce-then-deferred", [W("soft_bounce", 1), W("deferred", 60)], S.DEFERRED, 2),
    ("hard-bounce-then-blocked", [W("hard_bounce", 1), W("blocked", 60)], S.BLOCKED, 2),
    ("blocked-then-invalid", [W("blocked", 1), W("invalid_email", 60)], S.INVALID, 2),
    ("invalid-then-hard-bounce", [W("invalid_email", 1), W("hard_bounce", 60)], S.HARD_BOUNCED, 2),
    ("hard-bounce-then-open", [W("hard_bounce", 1), W("opened", 60)], S.OPENED, 2),
    ("unsubscribe-then-click", [W("unsubscribe", 30), W("click", 60, link="https://x.fr")],
     S.UNSUBSCRIBED, 2),
    ("click-then-unsubscribed", [W("click", 30, link="https://x.fr"), W("unsubscribed", 60)],
     S.UNSUBSCRIBED, 2),
    ("click-then-open", [W("click", 30, link="https://x.fr"), W("opened", 60)], S.CLICKED, 2),
    ("error-then-delivered", [W("error", 1), W("delivered", 60)], S.DELIVERED, 2),
    ("delivered-then-error", [W("delivered", 1), W("error", 60)], S.DELIVERED, 2),
    ("request-then-error", [W("request"), W("error", 1)], S.ERROR, 2),
    ("flagged-bounce-changes-nothing",
     [W("delivered", 1), W("hard_bounce", 60, problem="no recipient")], S.DELIVERED, 2),
    ("flagged-without-time", [row("delivered", timeless=True, problem="no usable time")], None, 1),
    ("api-only-pull-names", [A("requests"), A("delivered", 2), A("opened", 60),
                             A("clicks", 70, link="https://x.fr")], S.CLICKED, 4),
    ("api-soft-then-hard", [A("softBounces", 1), A("hardBounces", 60)], S.HARD_BOUNCED, 2),
    ("api-loaded-by-proxy", [A("delivered", 1), A("loadedByProxy", 60)], S.PROXY_OPENED, 2),
    ("api-spec-example", [A("deferred", 0, reason="Error connection timeout"),
                          A("delivered", 100_800)], S.DELIVERED, 2),
    ("api-history-sent", [A("sent"), A("delivered", 2)], S.DELIVERED, 2),
    ("webhook-api-overlap", [W("request"), W("delivered", 2), A("requests"), A("delivered", 2)],
     S.DELIVERED, 2),
    ("webhook-api-open-overlap", [W("unique_opened", 30, link=""), A("opened", 30)], S.OPENED, 1),
    ("unique-and-opened-same-instant", [W("unique_opened", 30), W("opened", 30)], S.OPENED, 1),
]  # fmt: skip


@pytest.mark.parametrize(
    ("rows", "status", "n_steps"), [s[1:] for s in SCENARIOS], ids=[s[0] for s in SCENARIOS]
)
def test_scenario(rows: list[LoggedEvent], status: Status | None, n_steps: int) -> None:
    state = fold(rows)
    assert state.status is status
    assert len(state.steps) == n_steps
    assert fold(reversed(rows)) == state


def test_nothing_folds_to_the_empty_state() -> None:
    assert fold([]) == MessageState()
    assert fold([], start=fold([])) == MessageState()


def test_status_at_is_the_step_that_gave_the_status() -> None:
    state = fold([W("request"), W("deferred", 5), W("delivered", 600), W("deferred", 700)])
    assert (state.status, state.status_at) == (S.DELIVERED, T0 + timedelta(seconds=600))
    opened_twice = fold([W("unique_opened", 10), W("opened", 20)])
    assert opened_twice.status_at == T0 + timedelta(seconds=10)  # same status keeps its time
    group = fold([W("deferred", 5), W("soft_bounce", 10), W("deferred", 20)])
    assert (group.status, group.status_at) == (S.DEFERRED, T0 + timedelta(seconds=20))


def test_same_instant_ties_follow_the_lifecycle_not_the_alphabet() -> None:
    # API rows share whole seconds: the request comes first, the delivery second.
    pulled = fold([A("delivered", 5), A("requests", 5)])
    assert [s.status for s in pulled.steps] == [S.REQUESTED, S.DELIVERED]
    # Same instant, same precedence group: the later in a mail's life wins.
    assert fold([W("blocked", 5), W("invalid_email", 5)]).status is S.BLOCKED
    assert fold([W("hard_bounce", 5), W("blocked", 5)]).status is S.HARD_BOUNCED


def test_times_and_counters() -> None:
    rows = [
        W("delivered", 3),
        W("unique_opened", 60),
        W("proxy_open", 61),
        W("opened", 3600),
        W("click", 3610, link="https://a.fr"),
        W("click", 3620, link="https://b.fr"),
        W("request", 0, received=9000),
    ]
    state = fold(rows)
    assert state.sent_at == T0
    assert state.first_delivered_at == T0 + timedelta(seconds=3)
    assert state.first_opened_at == T0 + timedelta(seconds=60)
    assert state.last_event_at == T0 + timedelta(seconds=3620)
    assert (state.opens, state.proxy_opens, state.clicks) == (2, 1, 2)
    assert [s.status for s in state.steps] == [
        S.REQUESTED,
        S.DELIVERED,
        S.OPENED,
        S.PROXY_OPENED,
        S.OPENED,
        S.CLICKED,
        S.CLICKED,
    ]


def test_open_proves_delivery_but_first_delivered_at_needs_a_delivery() -> None:
    state = fold([W("unique_opened", 60)])
    assert (state.status, state.first_delivered_at, state.opens) == (S.OPENED, None, 1)
    assert state.sent_at == T0 + timedelta(seconds=60)  # no request: the earliest step


def test_flagged_and_unknown_rows_are_shown_but_change_nothing() -> None:
    base = [W("request"), W("delivered", 3, subject="Devis 42")]
    extra = [
        W("list_addition", 1, subject="Other"),
        row("hard_bounce", 90, problem="no usable time", timeless=True, received=95),
        W("click", 100, problem="unknown event", link="https://x.fr"),
    ]
    state, plain = fold(base + extra), fold(base)
    assert replace(state, steps=plain.steps) == plain
    flagged = [s for s in state.steps if s.status is None]
    assert [(s.event, s.problem) for s in flagged] == [
        ("list_addition", None),
        ("hard_bounce", "no usable time"),
        ("click", "unknown event"),
    ]
    assert flagged[1].at is None  # sorted by its receive time, between the others


def test_exact_duplicates_are_dropped_and_replays_merge() -> None:
    delivered = W("delivered", 3)
    assert fold([delivered, delivered]) == fold([delivered])
    assert fold([delivered, delivered]).steps[0].positions == (delivered.position,)
    replayed = replace(delivered, position=delivered.position + 1000, source="spool")
    (step,) = fold([replayed, delivered]).steps
    assert sorted(step.positions) == [delivered.position, replayed.position]
    assert sorted(step.sources) == ["spool", "webhook"]


def test_webhook_and_api_twins_make_one_richer_step() -> None:
    hook = W(
        "click", 70.4, link="https://x.fr/devis", user_agent="Mozilla/5.0", device_used="DESKTOP"
    )
    pulled = A("clicks", 70, link="https://x.fr/devis", ip="165.87.3.15")
    (step,) = fold([pulled, hook]).steps
    assert step.at == T0 + timedelta(seconds=70.4)  # the webhook's milliseconds
    assert (step.event, step.source, step.status) == ("click", "webhook", S.CLICKED)
    assert (step.link, step.user_agent, step.device, step.ip) == (
        "https://x.fr/devis",
        "Mozilla/5.0",
        "DESKTOP",
        "165.87.3.15",
    )
    assert step.positions == (hook.position, pulled.position)
    assert step.payloads == (hook.payload, pulled.payload)
    assert fold([pulled, hook]).clicks == 1


@pytest.mark.parametrize(
    ("rows", "n_steps"),
    [
        ([W("click", 70.4, link="https://a.fr"), A("clicks", 70, link="https://b.fr")], 2),
        ([W("delivered", 70.4), A("delivered", 71)], 2),  # a second apart: not twins
        ([W("delivered", 70.4), A("deferred", 70)], 2),  # not the same status
        ([W("delivered", 70.4), A("delivered", 70, recipient="other@example.fr")], 2),
        ([A("delivered", 70), A("delivered", 70, ip="1.2.3.4")], 1),  # same family, same time
    ],
    ids=["other-link", "next-second", "other-status", "other-recipient", "api-retransmission"],
)
def test_what_is_not_merged(rows: list[LoggedEvent], n_steps: int) -> None:
    assert len(fold(rows).steps) == n_steps


def test_an_api_twin_joins_the_earliest_webhook_step_of_its_second() -> None:
    first, second = W("opened", 30.1), W("opened", 30.7)
    pulled = A("opened", 30)
    state = fold([second, pulled, first])
    assert [s.positions for s in state.steps] == [
        (first.position, pulled.position),
        (second.position,),
    ]
    assert state.opens == 2


def test_message_details() -> None:
    pulled = A("delivered", 2, subject="Devis 42", tag="OrderConfirmation", **{"from": "a@b.fr"})
    hook = W("request", 0, subject="Devis 42", sender_email="g@x.fr", tag='["devis","relance"]')
    state = fold([pulled, hook])
    assert (state.provider, state.message_id, state.recipient) == ("brevo", MID, RCPT)
    assert (state.subject, state.sender) == ("Devis 42", "g@x.fr")
    assert state.tags == ("devis", "relance")
    api_only = fold([A("delivered", 2, tag="OrderConfirmation", **{"from": "a@b.fr"})])
    assert (api_only.sender, api_only.tags) == ("a@b.fr", ("OrderConfirmation",))


@pytest.mark.parametrize(
    ("value", "tags"),
    [
        ('["welcome","tag2"]', ("welcome", "tag2")),
        ("test-tag", ("test-tag",)),
        (["transactionalTag"], ("transactionalTag",)),
        ("[not json", ("[not json",)),
        ("", ()),
        (None, ()),
        (42, ()),
        (["a", "a", 3, " "], ("a",)),
    ],
    ids=["json-string", "plain", "list", "broken-json", "empty", "none", "number", "messy-list"],
)
def test_parse_tags(value: Any, tags: tuple[str, ...]) -> None:
    assert parse_tags(value) == tags


# --- real payloads ----------------------------------------------------------------------

FIXTURES = json.loads(
    (Path(__file__).parent / "fixtures" / "fold" / "brevo_tracking_events.json").read_text("utf-8")
)


def _fixture_time(payload: dict[str, Any]) -> datetime | None:
    # What ingest does, minus the `date` fallback (placeholders in these docs samples).
    for key in ("ts_epoch", "s_epoch", "ts_event", "ts"):
        if isinstance(payload.get(key), int):
            value = payload[key]
            return datetime.fromtimestamp(value / 1000 if value >= 10**11 else value, UTC)
    return None


def _fixture_row(position: int, payload: dict[str, Any]) -> LoggedEvent:
    at = _fixture_time(payload)
    return LoggedEvent(
        position=position,
        provider="brevo",
        source="webhook",
        event=payload.get("event"),
        event_at=at,
        received_at=T0,
        message_id=payload["message-id"].strip("<>"),
        recipient=payload["email"].lower(),
        payload=payload,
        problem=None if at is not None else "no usable time",
    )


@pytest.mark.parametrize(
    "record", FIXTURES, ids=[f"{i}-{r['brevo_event']}" for i, r in enumerate(FIXTURES)]
)
def test_real_payload_folds_to_its_event_s_status(record: dict[str, Any]) -> None:
    payload = record["payload"]
    state = fold([_fixture_row(1, payload)])
    timed = _fixture_time(payload) is not None
    assert state.status is (BREVO_WEBHOOK_NAMES[record["brevo_event"]] if timed else None)
    (step,) = state.steps
    assert step.payloads == (payload,)
    assert step.link == (payload.get("link") or None)
    assert step.reason == (payload.get("reason", "").strip() or None)


class _Spy(dict[str, Any]):
    """A payload that remembers which keys were read."""

    read: set[str]

    def get(self, key: str, default: Any = None) -> Any:
        self.read.add(key)
        return super().get(key, default)


@pytest.mark.parametrize("source", ["webhook", "api"])
def test_details_read_only_the_detail_keys(source: str) -> None:
    # Replay strips every other key from the payloads it folds (query.projection).
    spy = _Spy({key: "x" for key in [*DETAIL_KEYS, "event", "email", "ts_epoch"]})
    spy.read = set()
    logged = _fixture_row(1, {"message-id": f"<{MID}>", "email": RCPT})
    details_of(replace(logged, source=source, payload=spy))
    assert spy.read and spy.read <= DETAIL_KEYS


def test_real_payload_details() -> None:
    # Invoice Ninja's captured unique_opened: sender_email, tags, an empty link.
    wanted = "<202312211546.94160606300@smtp-relay.mailin.fr>"
    payload = next(r["payload"] for r in FIXTURES if r["payload"].get("message-id") == wanted)
    details = details_of(_fixture_row(1, payload))
    assert details.sender == "user@example.com"
    assert details.subject == "Reminder: Invoice 0002 from Untitled Company"
    assert details.tags == ("gMtwiTIJtJxklXCj1OUFANgY6YYynQxV",)
    assert (details.link, details.ip) == (None, "74.125.208.8")


def test_real_payloads_fold_as_one_message() -> None:
    # All the timed ones, as if one message: order of the list must not matter.
    rows = [_fixture_row(i, r["payload"]) for i, r in enumerate(FIXTURES)]
    rows = [replace(r, message_id=MID, recipient=RCPT) for r in rows]
    assert fold(rows) == fold(reversed(rows))
    assert fold(rows).status is S.COMPLAINED


# --- properties -------------------------------------------------------------------------

# Every name we know in each scheme, plus one we do not.
NAMES = {
    "webhook": sorted(BREVO_WEBHOOK_NAMES) + ["list_addition"],
    "api": sorted(BREVO_EVENTS_API_NAMES) + ["bounced"],
}


@st.composite
def messages(draw: st.DrawFn, max_size: int = 12) -> list[LoggedEvent]:
    """Rows of one message, crowded into a few seconds so that ties and twins happen."""
    specs = draw(
        st.lists(
            st.tuples(
                st.sampled_from(["webhook", "webhook", "api"]),
                st.integers(0, 40),
                st.sampled_from([None, "https://a.fr", "https://b.fr"]),
                st.sampled_from([None, None, None, None, "no usable time"]),
                st.data(),
            ),
            max_size=max_size,
        )
    )
    rows = []
    for position, (source, quarter_seconds, link, problem, data) in enumerate(specs, start=1):
        name = data.draw(st.sampled_from(NAMES[source]))
        extra: dict[str, Any] = {"link": link} if link is not None else {}
        rows.append(
            row(
                name,
                quarter_seconds / 4,
                source,
                problem=problem,
                timeless=problem is not None,
                position=position,
                **extra,
            )
        )
    return rows


@settings(deadline=None)
@given(messages(), st.data())
def test_order_and_duplicates_do_not_matter(rows: list[LoggedEvent], data: st.DataObject) -> None:
    shuffled = data.draw(st.permutations(rows))
    repeated = data.draw(st.lists(st.sampled_from(rows), max_size=5)) if rows else []
    assert fold(shuffled + repeated) == fold(rows)


@settings(deadline=None)
@given(messages(), st.data())
def test_resuming_from_a_state_is_exact(rows: list[LoggedEvent], data: st.DataObject) -> None:
    cut = data.draw(st.integers(0, len(rows)))
    a, b = rows[:cut], rows[cut:]
    assert fold(a + b) == fold(b, start=fold(a))
    again = data.draw(st.lists(st.sampled_from(rows), max_size=3)) if rows else []
    assert fold(again, start=fold(a + b)) == fold(a + b)  # refolding known rows is a no-op


API_NAME = {
    "request": "requests",
    "soft_bounce": "softBounces",
    "hard_bounce": "hardBounces",
    "invalid_email": "invalid",
    "complaint": "spam",
    "unsubscribe": "unsubscribed",
    "unique_opened": "opened",
    "unique_proxy_open": "loadedByProxy",
    "proxy_open": "loadedByProxy",
    "click": "clicks",
}


@settings(deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(sorted(BREVO_WEBHOOK_NAMES)), st.integers(0, 4000)), max_size=10
    )
)
def test_api_twins_add_rows_not_steps(specs: list[tuple[str, int]]) -> None:
    hooks = [
        W(
            name,
            ms / 1000,
            link="https://a.fr" if name == "click" else "",
            subject="Devis",
            sender_email="s@x.fr",
        )
        for name, ms in specs
    ]
    twins = [
        A(
            API_NAME.get(h.event or "", h.event or ""),
            (h.event_at - T0).total_seconds() if h.event_at else 0,
            link=h.payload["link"] or None,
            subject="Devis",
            **{"from": "s@x.fr"},
        )
        for h in hooks
    ]
    alone, together = fold(hooks), fold(twins + hooks)
    assert replace(together, steps=alone.steps) == alone
    assert [(s.at, s.status, s.event) for s in together.steps] == [
        (s.at, s.status, s.event) for s in alone.steps
    ]
    assert sorted(p for s in together.steps for p in s.positions) == sorted(
        r.position for r in hooks + twins
    )
