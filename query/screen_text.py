"""The screen's words and formats: the few UI strings in French and English, dates as
Gestan writes them, and what a status badge shows. No Flask here, so the CSV export and
the templates read the same table.

Status labels and explanations are NOT here: they are the vocabulary's (query.statuses),
the same words the API serves, so the screen and Gestan never disagree.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

from query.statuses import STATUSES, Status

LANGS = ("fr", "en")
DEFAULT_LANG = "fr"

# key -> (fr, en)
_STRINGS: Mapping[str, tuple[str, str]] = MappingProxyType({
    "title": ("Distribution des mails", "Mail delivery"),
    "col_sent": ("Envoi", "Sent"),
    "col_sender": ("Expéditeur", "Sender"),
    "col_recipient": ("Destinataire", "Recipient"),
    "col_subject": ("Libellé", "Subject"),
    "col_status": ("Statut", "Status"),
    "col_status_code": ("Code statut", "Status code"),
    "from": ("Du", "From"),
    "to": ("au", "to"),
    "search": ("Rechercher", "Search"),
    "search_hint": ("Destinataire, expéditeur ou libellé", "Recipient, sender or subject"),
    "show": ("Afficher", "Show"),
    "today": ("Aujourd'hui", "Today"),
    "previous": ("Période précédente", "Previous period"),
    "next": ("Période suivante", "Next period"),
    "statuses": ("Statuts", "Statuses"),
    "all": ("Tous", "All"),
    "no_status": ("Sans statut", "No status"),
    "no_status_hint": (
        "Seuls des événements inconnus ont été reçus pour ce mail.",
        "Only unknown events have been received for this mail.",
    ),
    "clear": ("Effacer les filtres", "Clear filters"),
    "export": ("Exporter (CSV)", "Export (CSV)"),
    "load_more": ("Afficher les suivants", "Show more"),
    "mails": ("mails", "mails"),
    "shown": ("affichés", "shown"),
    "empty": ("Aucun mail pour ces critères.", "No mail matches."),
    "no_subject": ("(sans libellé)", "(no subject)"),
    "open": ("Détail", "Details"),
    "open_hint": (
        "Double-clic ou Entrée : étapes de la distribution",
        "Double click or Enter: delivery steps",
    ),
    "live": ("Actualisé automatiquement", "Updated automatically"),
    "offline": ("Actualisation impossible, nouvel essai bientôt", "Cannot refresh, retrying"),
    "password": ("Mot de passe", "Password"),
    "sign_in": ("Se connecter", "Sign in"),
    "sign_out": ("Se déconnecter", "Sign out"),
    "wrong_password": ("Mot de passe incorrect.", "Wrong password."),
    "too_many_tries": (
        "Trop d'essais depuis cette adresse : réessayez dans {} min.",
        "Too many tries from this address: try again in {} min.",
    ),
    "no_password": (
        "Aucun mot de passe n'est configuré. Définissez DISTRIBMAIL_UI_PASSWORD (ou "
        "DISTRIBMAIL_API_TOKENS) dans l'environnement du service, puis redémarrez-le.",
        "No password is configured. Set DISTRIBMAIL_UI_PASSWORD (or DISTRIBMAIL_API_TOKENS) "
        "in the service's environment, then restart it.",
    ),
    "timeline": ("Étapes de la distribution", "Delivery steps"),
    "back": ("Retour à la liste", "Back to the list"),
    "at": ("Date", "Time"),
    "event": ("Événement Brevo", "Brevo event"),
    "reason": ("Motif", "Reason"),
    "link": ("Lien", "Link"),
    "ip": ("IP", "IP"),
    "user_agent": ("Navigateur", "User agent"),
    "device": ("Appareil", "Device"),
    "source": ("Source", "Source"),
    "payload": ("Données reçues", "Raw payload"),
    "ignored": ("Non pris en compte", "Not taken into account"),
    "message_id": ("Message-ID", "Message-ID"),
    "tags": ("Étiquettes", "Tags"),
    "opens": ("Ouvertures", "Opens"),
    "proxy_opens": ("Chargements par proxy", "Proxy loads"),
    "clicks": ("Clics", "Clicks"),
    "current_status": ("Statut actuel", "Current status"),
    "no_steps": ("Aucune étape enregistrée.", "No step recorded."),
    "not_found": ("Ce mail est inconnu.", "This mail is unknown."),
    "error": ("Erreur", "Error"),
    "database_down": (
        "La base de données ne répond pas. Réessayez dans un instant.",
        "The database is not answering. Try again in a moment.",
    ),
    "times_in": ("Heures de", "Times in"),
    "switch_lang": ("English", "Français"),
})  # fmt: skip


def text(key: str, lang: str) -> str:
    """The UI string `key` in `lang` (French for anything but "en")."""
    fr, en = _STRINGS[key]
    return en if lang == "en" else fr


def other_lang(lang: str) -> str:
    return "fr" if lang == "en" else "en"


# --- times ------------------------------------------------------------------------------
# Gestan's list writes `08/03/26 02:13`; the timeline adds the seconds, since a mail's
# steps are often seconds apart. Both languages keep the day-first numbers: the users
# are in France, and the time zone is the configured one, not the browser's.

LIST_FORMAT = "%d/%m/%y %H:%M"
STEP_FORMAT = "%d/%m/%y %H:%M:%S"
FULL_FORMAT = "%d/%m/%Y %H:%M:%S %Z"


def local_time(moment: datetime | None, zone: ZoneInfo, fmt: str = LIST_FORMAT) -> str:
    if moment is None:
        return ""
    return moment.astimezone(zone).strftime(fmt)


# --- status badges ----------------------------------------------------------------------


@dataclass(frozen=True)
class Badge:
    code: str  # the status code, "" for none
    label: str
    explanation: str
    kind: str  # a CSS class suffix: pending, temporary, success, engagement, failure, none


def badge(status: Status | None, lang: str) -> Badge:
    if status is None:
        return Badge("", text("no_status", lang), text("no_status_hint", lang), "none")
    info = STATUSES[status]
    if lang == "en":
        return Badge(status.value, info.label_en, info.meaning_en, info.kind.value)
    return Badge(status.value, info.label_fr, info.meaning_fr, info.kind.value)


# --- links ------------------------------------------------------------------------------


def is_web_link(link: str | None) -> bool:
    """Whether a link from an event may be an <a href>: only http(s) with a host. Anything
    else (javascript:, data:, a bare word) is shown as text, never followed."""
    if not link:
        return False
    try:
        parts = urlsplit(link)
    except ValueError:
        return False
    return parts.scheme.lower() in ("http", "https") and bool(parts.netloc)
