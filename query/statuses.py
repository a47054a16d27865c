"""The status vocabulary, as data: one table of statuses, one name table per naming scheme.

The French labels and explanations ("Signification") come from the Gestan manual page
(../shared/seed/gestan-suivi-envoi-mails.txt), the screen's users' own words; the English
ones are our translation. Brevo names the same steps three ways (webhook payloads in
snake_case, the pull API in camelCase plurals, the per-message history of
`/smtp/emails/{uuid}` in yet another spelling): each scheme is its own table below, and
`status_for` is the only way from a provider's name to our code.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType


class Status(StrEnum):
    REQUESTED = "requested"
    SENT = "sent"
    DEFERRED = "deferred"
    SOFT_BOUNCED = "soft_bounced"
    DELIVERED = "delivered"
    PROXY_OPENED = "proxy_opened"
    OPENED = "opened"
    CLICKED = "clicked"
    UNSUBSCRIBED = "unsubscribed"
    COMPLAINED = "complained"
    INVALID = "invalid"
    HARD_BOUNCED = "hard_bounced"
    BLOCKED = "blocked"
    ERROR = "error"


class Kind(StrEnum):
    PENDING = "pending"
    TEMPORARY = "temporary"
    SUCCESS = "success"
    ENGAGEMENT = "engagement"
    FAILURE = "failure"


@dataclass(frozen=True)
class StatusInfo:
    """One row of the vocabulary.

    `precedence`: the current status is the step with the highest precedence; statuses
    that SHARE a precedence form a group where the latest step wins (design.md, "The fold").
    `lifecycle`: where the step sits in a mail's life; it only breaks ties between steps
    stamped with the same instant (the webhook's milliseconds, or the API's seconds).
    """

    status: Status
    label_fr: str
    label_en: str
    kind: Kind
    precedence: int
    lifecycle: int
    meaning_fr: str
    meaning_en: str


_S, _K = Status, Kind
_INFO = StatusInfo

# fmt: off
_TABLE: tuple[StatusInfo, ...] = (
    _INFO(_S.REQUESTED, "Requête", "Request", _K.PENDING, 0, 0,
          "La commande d'envoi de mail a été envoyée, mais l'email n'est pas encore envoyé. "
          "C'est le premier stade normal.",
          "The send command has been issued, but the email has not been sent yet. "
          "This is the normal first stage."),
    _INFO(_S.SENT, "Envoyé", "Sent", _K.PENDING, 1, 1,
          "La requête a été acceptée et le mail a été traité dans la file d'envois.",
          "The request was accepted and the mail was processed in the sending queue."),
    _INFO(_S.DEFERRED, "Différé", "Deferred", _K.TEMPORARY, 2, 5,
          "Le serveur du destinataire retarde temporairement l'acceptation de l'email. "
          "Causes fréquentes : serveur du destinataire temporairement surchargé, politique "
          "anti-spam stricte, ou trop d'emails envoyés rapidement. L'envoi sera retenté "
          "automatiquement.",
          "The recipient's server is temporarily delaying acceptance of the email. "
          "Common causes: the recipient's server is temporarily overloaded, a strict "
          "anti-spam policy, or too many emails sent too quickly. Sending will be retried "
          "automatically."),
    # The manual has one "Bounced / Rebond" entry for both kinds: each kind gets the shared
    # sentence plus its own half of the entry.
    _INFO(_S.SOFT_BOUNCED, "Rebond temporaire", "Soft bounce", _K.TEMPORARY, 2, 6,
          "L'email n'a pas pu être livré. Soft bounce : un problème temporaire, par "
          "exemple une boîte pleine ou un serveur indisponible.",
          "The email could not be delivered. Soft bounce: a temporary problem, for "
          "example a full mailbox or an unavailable server."),
    _INFO(_S.DELIVERED, "Délivré", "Delivered", _K.SUCCESS, 4, 7,
          "Le serveur mail du destinataire a accepté l'email (⚠ le mail n'est pas "
          "forcément dans la boîte de réception du destinataire, il peut aussi être dans sa "
          "boîte spam ou toute autre destination programmée par un autre filtre).",
          "The recipient's mail server accepted the email (⚠ the mail is not necessarily "
          "in the recipient's inbox: it may also be in their spam folder or any other "
          "destination set by another filter)."),
    _INFO(_S.PROXY_OPENED, "Chargé par proxy", "Loaded by proxy", _K.ENGAGEMENT, 6, 9,
          "Le pixel de tracking, pour certains services de messagerie, notamment Outlook "
          "et Gmail, n'est pas chargé directement depuis l'ordinateur du destinataire, mais "
          "par un serveur proxy leur appartenant. ⚠ Ce statut signifie que l'email a été "
          "probablement ouvert, mais que l'ouverture n'est pas à 100% certaine, car certains "
          "systèmes chargent les images automatiquement, même si l'utilisateur ne lit pas "
          "réellement l'email.",
          "For some mail services, notably Outlook and Gmail, the tracking pixel is not "
          "loaded directly from the recipient's computer but by a proxy server of theirs. "
          "⚠ This status means the email was probably opened, but the opening is not 100% "
          "certain, because some systems load images automatically even when the user does "
          "not actually read the email."),
    _INFO(_S.OPENED, "Ouvert", "Opened", _K.ENGAGEMENT, 7, 10,
          "Le destinataire a ouvert l'email. Les fournisseurs comme Brevo injectent dans "
          "les mails un pixel de tracking, invisible, dont le chargement par le destinataire "
          "permet de comptabiliser l'ouverture. ⚠ Ce statut peut être imprécis si le "
          "chargement des images a été bloqué par le destinataire.",
          "The recipient opened the email. Providers such as Brevo insert an invisible "
          "tracking pixel into mails; its loading by the recipient is what counts as an "
          "opening. ⚠ This status can be inaccurate if the recipient blocked image "
          "loading."),
    _INFO(_S.CLICKED, "Cliqué", "Clicked", _K.ENGAGEMENT, 8, 11,
          "Le destinataire a cliqué sur un lien dans l'email.",
          "The recipient clicked a link in the email."),
    _INFO(_S.UNSUBSCRIBED, "Désinscrit", "Unsubscribed", _K.ENGAGEMENT, 9, 12,
          "Votre mail a suscité une désinscription de votre correspondant.",
          "Your mail led your correspondent to unsubscribe."),
    _INFO(_S.COMPLAINED, "Plainte", "Complaint", _K.ENGAGEMENT, 10, 13,
          "Le mail a fait l'objet d'une plainte.",
          "The mail was the subject of a complaint."),
    _INFO(_S.INVALID, "Mail invalide", "Invalid mail", _K.FAILURE, 5, 2,
          "Cela signifie que l'adresse mail du destinataire est invalide, comme par "
          "exemple rdupontmaboite.com",
          "The recipient's email address is invalid, for example rdupontmaboite.com"),
    _INFO(_S.HARD_BOUNCED, "Rebond définitif", "Hard bounce", _K.FAILURE, 5, 8,
          "L'email n'a pas pu être livré. Hard bounce : l'adresse est invalide, par "
          "exemple user@domain.xyz",
          "The email could not be delivered. Hard bounce: the address is invalid, for "
          "example user@domain.xyz"),
    # The manual has two "Blocked / Bloqué" entries; both sentences are kept. What Brevo's
    # `blocked` event means is the first (brevo.md): Brevo refused to send, e.g. "blocked :
    # due to unsubscribed user" in a live capture, which is the second seen from Brevo.
    _INFO(_S.BLOCKED, "Bloqué", "Blocked", _K.FAILURE, 5, 3,
          "Brevo a bloqué l'envoi. Causes possibles : adresse blacklistée, domaine non "
          "authentifié, règles anti-spam. Cela peut aussi signifier que le destinataire "
          "vous a bloqué.",
          "Brevo blocked the sending. Possible causes: blacklisted address, "
          "unauthenticated domain, anti-spam rules. It can also mean that the recipient "
          "blocked you."),
    _INFO(_S.ERROR, "Erreur", "Error", _K.FAILURE, 3, 4,
          "Il y a eu une erreur dans la chaîne de traitement du mail.",
          "There was an error in the mail's processing chain."),
)
# fmt: on

STATUSES: Mapping[Status, StatusInfo] = MappingProxyType({row.status: row for row in _TABLE})


def info(status: Status) -> StatusInfo:
    return STATUSES[status]


# --- Brevo's three naming schemes -------------------------------------------------------

# Transactional webhook payloads, field `event` (brevo.md section 1).
BREVO_WEBHOOK_NAMES: Mapping[str, Status] = MappingProxyType({
    "request": Status.REQUESTED,
    "delivered": Status.DELIVERED,
    "deferred": Status.DEFERRED,
    "soft_bounce": Status.SOFT_BOUNCED,
    "hard_bounce": Status.HARD_BOUNCED,
    "invalid_email": Status.INVALID,
    "blocked": Status.BLOCKED,
    "error": Status.ERROR,
    # Which of the two Brevo sends today is uncertain: anymail's tests use `spam`, the
    # developer docs show `complaint`.
    "spam": Status.COMPLAINED,
    "complaint": Status.COMPLAINED,
    # Symfony's 2023 live capture says `unsubscribed`; anymail guesses `unsubscribe`.
    "unsubscribed": Status.UNSUBSCRIBED,
    "unsubscribe": Status.UNSUBSCRIBED,
    # Since late 2023 `unique_opened` is the first open and `opened` the later ones;
    # before, both fired on the first open (the fold merges such same-instant twins).
    "unique_opened": Status.OPENED,
    "opened": Status.OPENED,
    "unique_proxy_open": Status.PROXY_OPENED,
    "proxy_open": Status.PROXY_OPENED,
    "click": Status.CLICKED,
})  # fmt: skip

# GET /smtp/statistics/events, field `event` (brevo_events_api.json, `event_enum`).
BREVO_EVENTS_API_NAMES: Mapping[str, Status] = MappingProxyType({
    "requests": Status.REQUESTED,
    "delivered": Status.DELIVERED,
    "deferred": Status.DEFERRED,
    "softBounces": Status.SOFT_BOUNCED,
    "hardBounces": Status.HARD_BOUNCED,
    # `bounces` is first of all a query filter covering both kinds; nobody has shown it as
    # a response event. Should one come, we cannot tell hard from soft, so we take the
    # weaker claim: a bounce that a later delivery, or any hard failure, overrides.
    "bounces": Status.SOFT_BOUNCED,
    "invalid": Status.INVALID,
    "blocked": Status.BLOCKED,
    "error": Status.ERROR,
    "spam": Status.COMPLAINED,
    "unsubscribed": Status.UNSUBSCRIBED,
    "opened": Status.OPENED,
    "clicks": Status.CLICKED,
    "loadedByProxy": Status.PROXY_OPENED,
})  # fmt: skip

# GET /smtp/emails/{uuid}, `events[].name` (enum of the OpenAPI spec). The same spec's
# example says `opened` where the enum says `open`: accept both.
BREVO_EMAIL_HISTORY_NAMES: Mapping[str, Status] = MappingProxyType({
    "sent": Status.SENT,
    "delivered": Status.DELIVERED,
    "hard_bounce": Status.HARD_BOUNCED,
    "soft_bounce": Status.SOFT_BOUNCED,
    "click": Status.CLICKED,
    "open": Status.OPENED,
    "opened": Status.OPENED,
    "spam": Status.COMPLAINED,
    "blocked": Status.BLOCKED,
    "invalid": Status.INVALID,
    "invalid_email": Status.INVALID,
    "unsubscribed": Status.UNSUBSCRIBED,
    "deferred": Status.DEFERRED,
    "error": Status.ERROR,
    "proxy_open": Status.PROXY_OPENED,
})  # fmt: skip

# (provider, source) -> the tables to look a name up in, in order. "spool" is a webhook
# body kept on disk while the database was down: same shape as "webhook". The pull side
# stores both API vocabularies under "api"; their names never disagree (a test checks
# it), so one ordered lookup serves both. "api_email" is the history alone, if ingest
# ever tells it apart.
NAME_TABLES: Mapping[tuple[str, str], tuple[Mapping[str, Status], ...]] = MappingProxyType({
    ("brevo", "webhook"): (BREVO_WEBHOOK_NAMES,),
    ("brevo", "spool"): (BREVO_WEBHOOK_NAMES,),
    ("brevo", "api"): (BREVO_EVENTS_API_NAMES, BREVO_EMAIL_HISTORY_NAMES),
    ("brevo", "api_email"): (BREVO_EMAIL_HISTORY_NAMES,),
})  # fmt: skip


def status_for(provider: str, source: str, event_name: str) -> Status | None:
    """Our code for a provider's event name, or None when we do not know it. Never raises:
    an unknown provider, source or name (Brevo adds events) is simply not a status."""
    if not all(isinstance(part, str) for part in (provider, source, event_name)):
        return None
    for table in NAME_TABLES.get((provider, source), ()):
        status = table.get(event_name)
        if status is not None:
            return status
    return None
