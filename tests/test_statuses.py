"""The vocabulary as data: design.md's table, the manual's explanations, Brevo's names."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from query.statuses import (
    BREVO_EMAIL_HISTORY_NAMES,
    BREVO_EVENTS_API_NAMES,
    BREVO_WEBHOOK_NAMES,
    STATUSES,
    Kind,
    Status,
    info,
    status_for,
)

# design.md, "The fold": code, French label, English label, kind.
DESIGN_TABLE = [
    ("requested", "Requête", "Request", "pending"),
    ("sent", "Envoyé", "Sent", "pending"),
    ("deferred", "Différé", "Deferred", "temporary"),
    ("soft_bounced", "Rebond temporaire", "Soft bounce", "temporary"),
    ("delivered", "Délivré", "Delivered", "success"),
    ("proxy_opened", "Chargé par proxy", "Loaded by proxy", "engagement"),
    ("opened", "Ouvert", "Opened", "engagement"),
    ("clicked", "Cliqué", "Clicked", "engagement"),
    ("unsubscribed", "Désinscrit", "Unsubscribed", "engagement"),
    ("complained", "Plainte", "Complaint", "engagement"),
    ("invalid", "Mail invalide", "Invalid mail", "failure"),
    ("hard_bounced", "Rebond définitif", "Hard bounce", "failure"),
    ("blocked", "Bloqué", "Blocked", "failure"),
    ("error", "Erreur", "Error", "failure"),
]

# design.md: "Current status, highest first"; a group is "the latest of them".
PRECEDENCE_GROUPS = [
    {"complained"},
    {"unsubscribed"},
    {"clicked"},
    {"opened"},
    {"proxy_opened"},
    {"hard_bounced", "invalid", "blocked"},
    {"delivered"},
    {"error"},
    {"soft_bounced", "deferred"},
    {"sent"},
    {"requested"},
]


def test_the_codes_are_design_md_s_in_its_order() -> None:
    assert [s.value for s in Status] == [row[0] for row in DESIGN_TABLE]
    assert list(STATUSES) == list(Status)


@pytest.mark.parametrize(
    ("code", "fr", "en", "kind"), DESIGN_TABLE, ids=[r[0] for r in DESIGN_TABLE]
)
def test_labels_and_kind(code: str, fr: str, en: str, kind: str) -> None:
    row = info(Status(code))
    assert (row.status, row.label_fr, row.label_en, row.kind) == (code, fr, en, Kind(kind))


def test_precedence_follows_design_md_highest_first() -> None:
    ranks = [{STATUSES[Status(code)].precedence for code in group} for group in PRECEDENCE_GROUPS]
    assert all(len(group_ranks) == 1 for group_ranks in ranks), "a group shares one rank"
    flat = [group_ranks.pop() for group_ranks in ranks]
    assert flat == sorted(flat, reverse=True) and len(set(flat)) == len(flat)


def test_lifecycle_ranks_are_a_total_order() -> None:
    ranks = [row.lifecycle for row in STATUSES.values()]
    assert sorted(ranks) == list(range(len(Status)))
    assert info(Status.REQUESTED).lifecycle < info(Status.DELIVERED).lifecycle
    assert info(Status.DELIVERED).lifecycle < info(Status.HARD_BOUNCED).lifecycle


# The manual's "Signification", one telling fragment each, and where it warns (⚠).
MEANING_FRAGMENTS = [
    ("requested", "C'est le premier stade normal.", "normal first stage", False),
    ("sent", "traité dans la file d'envois", "sending queue", False),
    ("deferred", "L'envoi sera retenté automatiquement.", "retried automatically", False),
    ("soft_bounced", "une boîte pleine ou un serveur indisponible", "full mailbox", False),
    ("delivered", "il peut aussi être dans sa boîte spam", "spam folder", True),
    ("proxy_opened", "pas à 100% certaine", "not 100% certain", True),
    ("opened", "pixel de tracking, invisible", "invisible tracking pixel", True),
    ("clicked", "a cliqué sur un lien dans l'email", "clicked a link", False),
    ("unsubscribed", "suscité une désinscription", "unsubscribe", False),
    ("complained", "fait l'objet d'une plainte", "complaint", False),
    ("invalid", "rdupontmaboite.com", "rdupontmaboite.com", False),
    ("hard_bounced", "user@domain.xyz", "user@domain.xyz", False),
    ("blocked", "Brevo a bloqué l'envoi.", "anti-spam rules", False),
    ("error", "erreur dans la chaîne de traitement", "processing chain", False),
]


@pytest.mark.parametrize(
    ("code", "fr", "en", "warns"), MEANING_FRAGMENTS, ids=[m[0] for m in MEANING_FRAGMENTS]
)
def test_meanings_come_from_the_manual(code: str, fr: str, en: str, warns: bool) -> None:
    row = info(Status(code))
    assert fr in row.meaning_fr
    assert en in row.meaning_en
    assert ("⚠" in row.meaning_fr, "⚠" in row.meaning_en) == (warns, warns)


WEBHOOK_CASES = [
    ("request", "requested"),
    ("delivered", "delivered"),
    ("deferred", "deferred"),
    ("soft_bounce", "soft_bounced"),
    ("hard_bounce", "hard_bounced"),
    ("invalid_email", "invalid"),
    ("blocked", "blocked"),
    ("error", "error"),
    ("spam", "complained"),
    ("complaint", "complained"),
    ("unsubscribed", "unsubscribed"),
    ("unsubscribe", "unsubscribed"),
    ("unique_opened", "opened"),
    ("opened", "opened"),
    ("unique_proxy_open", "proxy_opened"),
    ("proxy_open", "proxy_opened"),
    ("click", "clicked"),
]
API_CASES = [
    ("requests", "requested"),
    ("delivered", "delivered"),
    ("deferred", "deferred"),
    ("softBounces", "soft_bounced"),
    ("hardBounces", "hard_bounced"),
    ("bounces", "soft_bounced"),
    ("invalid", "invalid"),
    ("blocked", "blocked"),
    ("error", "error"),
    ("spam", "complained"),
    ("unsubscribed", "unsubscribed"),
    ("opened", "opened"),
    ("clicks", "clicked"),
    ("loadedByProxy", "proxy_opened"),
]
HISTORY_CASES = [
    ("sent", "sent"),
    ("delivered", "delivered"),
    ("hard_bounce", "hard_bounced"),
    ("soft_bounce", "soft_bounced"),
    ("click", "clicked"),
    ("open", "opened"),
    ("opened", "opened"),
    ("spam", "complained"),
    ("blocked", "blocked"),
    ("invalid", "invalid"),
    ("invalid_email", "invalid"),
    ("unsubscribed", "unsubscribed"),
    ("deferred", "deferred"),
    ("error", "error"),
    ("proxy_open", "proxy_opened"),
]
NAME_CASES = (
    [("webhook", n, s) for n, s in WEBHOOK_CASES]
    + [("spool", n, s) for n, s in WEBHOOK_CASES]
    + [("api", n, s) for n, s in API_CASES]
    + [("api", n, s) for n, s in HISTORY_CASES]
    + [("api_email", n, s) for n, s in HISTORY_CASES]
)


@pytest.mark.parametrize(
    ("source", "name", "code"), NAME_CASES, ids=[f"{c[0]}-{c[1]}" for c in NAME_CASES]
)
def test_status_for_known_names(source: str, name: str, code: str) -> None:
    assert status_for("brevo", source, name) is Status(code)


def test_tables_are_complete() -> None:
    assert len(BREVO_WEBHOOK_NAMES) == len(WEBHOOK_CASES)
    assert len(BREVO_EVENTS_API_NAMES) == len(API_CASES)
    assert len(BREVO_EMAIL_HISTORY_NAMES) == len(HISTORY_CASES)
    covered = {*BREVO_WEBHOOK_NAMES.values(), *BREVO_EVENTS_API_NAMES.values()}
    assert covered | {*BREVO_EMAIL_HISTORY_NAMES.values()} == set(Status)
    assert set(Status) - covered == {Status.SENT}  # only the per-message history says "sent"


def test_the_two_api_vocabularies_never_disagree() -> None:
    # status_for("brevo", "api", ...) looks in both: a shared name must mean one thing.
    shared = BREVO_EVENTS_API_NAMES.keys() & BREVO_EMAIL_HISTORY_NAMES.keys()
    assert shared  # "delivered", "spam", ... are in both
    assert all(BREVO_EVENTS_API_NAMES[n] is BREVO_EMAIL_HISTORY_NAMES[n] for n in shared)


UNKNOWN_CASES = [
    ("brevo", "webhook", "list_addition"),  # marketing event on a misconfigured URL
    ("brevo", "webhook", "requests"),  # a pull-API name is not a webhook name
    ("brevo", "webhook", "hardBounce"),  # nor is a subscription name
    ("brevo", "api", "request"),
    ("brevo", "api", "unique_opened"),
    ("brevo", "webhook", "Delivered"),  # names are case-sensitive
    ("brevo", "webhook", ""),
    ("brevo", "sms", "delivered"),
    ("mailgun", "webhook", "delivered"),
]


@pytest.mark.parametrize(
    ("provider", "source", "name"),
    UNKNOWN_CASES,
    ids=["-".join(c) or "empty" for c in UNKNOWN_CASES],
)
def test_status_for_unknown_is_none(provider: str, source: str, name: str) -> None:
    assert status_for(provider, source, name) is None


def test_status_for_never_raises_on_wrong_types() -> None:
    assert status_for("brevo", "webhook", None) is None  # type: ignore[arg-type]
    assert status_for("brevo", ["webhook"], "click") is None  # type: ignore[arg-type]


@given(st.text(), st.sampled_from(["webhook", "spool", "api", "api_email", "other"]))
def test_status_for_is_total(name: str, source: str) -> None:
    result = status_for("brevo", source, name)
    assert result is None or isinstance(result, Status)
