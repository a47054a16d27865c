"""Helpers for the screen's tests (no tests here): an app with the screen mounted, a day of
real mail events posted through the webhook and folded by the projector, and sign-in.

The events go the production way: POST /webhooks/brevo, then `query.projector.drain`
folds the queue at once (the app's own projector thread is switched off, so that what a
test sees does not depend on timing).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from flask import Flask
from flask.testing import FlaskClient

from query.api import POOL as API_POOL
from query.api import mount_api
from query.projector import drain
from query.screen import SCREEN, mount_screen
from tests.payloads import event

PASSWORD = "correct horse battery staple"
API_TOKEN = "api-token-for-screen"
XSS_SUBJECT = "<img src=x onerror=alert(1)>"
DAY = "2026-03-08"


def build_screen_app(
    make_app: Callable[..., Flask], app_config: Mapping[str, str], **overrides: str
) -> Flask:
    """The whole app with the read API and the screen, mounted here if the composition
    root does not mount them yet (so these tests run before and after it does)."""
    settings = {
        "DISTRIBMAIL_UI_PASSWORD": PASSWORD,
        "DISTRIBMAIL_API_TOKENS": API_TOKEN,
        "DISTRIBMAIL_SECRET_KEY": "test-secret-key",
        "DISTRIBMAIL_PROJECTOR": "off",
        **overrides,
    }
    settings = {k: v for k, v in settings.items() if v != ""}
    app = make_app(**settings)
    env = {**app_config, **settings}
    url = app.config["DISTRIBMAIL_DATABASE_URL"]
    if API_POOL not in app.extensions:
        mount_api(app, env, url)
    if SCREEN not in app.extensions:
        mount_screen(app, env, url)
    return app


def sign_in(client: FlaskClient, password: str = PASSWORD) -> None:
    response = client.post("/login", data={"password": password})
    assert response.status_code == 302, response.text


def fold_now(database_url: str) -> int:
    with psycopg.connect(database_url, autocommit=True) as conn:
        return drain(conn)


def epoch_ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


@dataclass(frozen=True)
class Mail:
    message_id: str
    recipient: str
    subject: str
    sender: str
    steps: tuple[tuple[str, datetime, dict[str, Any]], ...]  # (Brevo event, time, extra)

    def events(self) -> list[dict[str, Any]]:
        return [
            event(
                name,
                email=self.recipient,
                message_id=f"<{self.message_id}>",
                ts_epoch=epoch_ms(at),
                subject=self.subject,
                sender_email=self.sender,
                **extra,
            )
            for name, at, extra in self.steps
        ]


def at(hour: int, minute: int, second: int = 0, day: int = 8) -> datetime:
    """A time on 2026-03-0<day>, given in UTC (Paris is UTC+1 in March before the 29th)."""
    return datetime(2026, 3, day, hour, minute, second, tzinfo=UTC)


OPEN_UA = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/122.0 Safari/537.36"

# A day like the seed's: quotes and notices, most delivered, some opened, one clicked,
# a hard bounce, a deferral, one still only requested, and a hostile subject.
DAY_MAILS: tuple[Mail, ...] = (
    Mail("a1.devis@smtp-relay.mailin.fr", "marie.dupont@example.fr",
         "Devis 2026-118 : rénovation cuisine", "ventes@atelier-martin.fr",
         (("request", at(7, 2), {}), ("delivered", at(7, 2, 4), {}),
          ("unique_opened", at(7, 31), {"user_agent": OPEN_UA, "sending_ip": "203.0.113.7"}),
          ("click", at(7, 33), {"link": "https://atelier-martin.fr/devis/2026-118",
                                "user_agent": OPEN_UA, "sending_ip": "203.0.113.7"}))),
    Mail("a2.relance@smtp-relay.mailin.fr", "j.bernard@example.com",
         "Relance facture F-2026-031", "compta@atelier-martin.fr",
         (("request", at(8, 15), {}), ("delivered", at(8, 15, 3), {}),
          ("unique_opened", at(9, 2), {"user_agent": OPEN_UA}))),
    Mail("a3.demande@smtp-relay.mailin.fr", "contact@boulangerie-leroy.fr",
         "Demande traitée", "support@atelier-martin.fr",
         (("request", at(9, 40), {}), ("delivered", at(9, 40, 2), {}))),
    Mail("a4.demande@smtp-relay.mailin.fr", "inconnu@domaine-inexistant.xyz",
         "Demande traitée", "support@atelier-martin.fr",
         (("request", at(9, 41), {}),
          ("hard_bounce", at(9, 41, 5), {"reason": "550 5.1.1 <inconnu@domaine-inexistant.xyz>: "
                                                    "Recipient address rejected"}))),
    Mail("a5.rdv@smtp-relay.mailin.fr", "p.moreau@example.org",
         "Confirmation de rendez-vous", "planning@atelier-martin.fr",
         (("request", at(10, 5), {}),
          ("deferred", at(10, 5, 30), {"reason": "421 4.7.0 Try again later"}))),
    Mail("a6.proxy@smtp-relay.mailin.fr", "c.petit@example.net",
         "Prise en compte de votre demande", "support@atelier-martin.fr",
         (("request", at(10, 20), {}), ("delivered", at(10, 20, 2), {}),
          ("unique_proxy_open", at(10, 21), {"user_agent": "Mozilla/5.0 (via ggpht.com "
                                                           "GoogleImageProxy)"}))),
    Mail("a7.xss@smtp-relay.mailin.fr", "test@example.com",
         XSS_SUBJECT, "<script>alert(2)</script>@evil.example",
         (("request", at(11, 0), {}),
          ("click", at(11, 3), {"link": "javascript:alert(3)",
                                "user_agent": "<b>UA</b><script>alert(4)</script>"}))),
    Mail("a8.attente@smtp-relay.mailin.fr", "l.garnier@example.fr",
         "Gestan - Actions à faire", "gestan@atelier-martin.fr",
         (("request", at(11, 30), {}),)),
)  # fmt: skip


def post_mails(
    client: FlaskClient, webhook_headers: Mapping[str, str], mails: tuple[Mail, ...]
) -> None:
    body = [payload for mail in mails for payload in mail.events()]
    response = client.post("/webhooks/brevo", json=body, headers=dict(webhook_headers))
    assert response.status_code == 200, response.text


def many_mails(count: int, day: int = 8) -> tuple[Mail, ...]:
    """`count` requested mails 30 seconds apart from 06:00 UTC, for paging."""
    return tuple(
        Mail(
            f"p{n:04d}@smtp-relay.mailin.fr",
            f"client{n:04d}@example.com",
            f"Devis n°{n:04d}",
            "ventes@atelier-martin.fr",
            (("request", at(6, 0, day=day) + timedelta(seconds=30 * n), {}),),
        )
        for n in range(count)
    )
