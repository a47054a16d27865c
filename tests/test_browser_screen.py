"""The screen in a real browser: Debian's Chromium driven by Playwright, against the app
served on a local port, with events posted through the webhook and folded by the
projector. Skipped, with the reason, when Chromium or Playwright is not installed.

DISTRIBMAIL_SCREENSHOTS=docs/screenshots pytest tests/test_browser_screen.py -k screenshots
refreshes the PNGs of the documentation.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from werkzeug.serving import make_server

from query.statuses import STATUSES, Status
from tests.screen_support import (
    DAY,
    DAY_MAILS,
    PASSWORD,
    XSS_SUBJECT,
    Mail,
    at,
    build_screen_app,
    fold_now,
    many_mails,
    post_mails,
)

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

try:
    from playwright.sync_api import Browser, Dialog, Page, expect, sync_playwright
except ImportError:  # pragma: no cover - depends on the machine
    pytest.skip(
        "Playwright is not installed: pip install playwright (no `playwright install`: "
        "the tests drive Debian's chromium)",
        allow_module_level=True,
    )
if not CHROMIUM.exists():  # pragma: no cover - depends on the machine
    pytest.skip(f"{CHROMIUM} is missing: apt-get install -y chromium", allow_module_level=True)

DAY_QUERY = f"from={DAY}&to={DAY}"
TIMEOUT_MS = 10_000


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            headless=True,
            # French, so that the date inputs read 08/03/2026 as a user in France sees them
            # (it takes Debian's chromium-l10n; without it they read 03/08/2026).
            args=[*CHROMIUM_ARGS, "--lang=fr-FR"],
        )
        yield browser
        browser.close()


@dataclass
class Live:
    app: Flask
    url: str
    database_url: str
    webhook_headers: dict[str, str]

    def post(self, mails: tuple[Mail, ...]) -> None:
        post_mails(self.app.test_client(), self.webhook_headers, mails)
        fold_now(self.database_url)


@pytest.fixture
def served(
    make_app: Any,
    app_config: dict[str, str],
    auth_headers: dict[str, str],
    database_url: str,
) -> Iterator[Live]:
    """The app on a real local port (a werkzeug server in a thread), no mail yet."""
    app = build_screen_app(make_app, app_config)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="screen-test-server")
    thread.start()
    try:
        yield Live(app, f"http://127.0.0.1:{server.server_port}", database_url, auth_headers)
    finally:
        server.shutdown()
        thread.join(5)


@pytest.fixture
def live(served: Live) -> Live:
    """The served app with the seed-like day, hostile subject included."""
    served.post(DAY_MAILS)
    return served


@pytest.fixture
def page(browser: Browser, served: Live) -> Iterator[Page]:
    """A fresh browser context (no cookie), where any alert/confirm/prompt fails the test:
    none is ever opened by the screen, so one would be injected data running."""
    context = browser.new_context(viewport={"width": 1366, "height": 768}, locale="fr-FR")
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    dialogs: list[str] = []

    def on_dialog(dialog: Dialog) -> None:
        dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", on_dialog)
    yield page
    context.close()
    assert dialogs == [], f"a dialog opened: injected code ran: {dialogs}"


def sign_in(page: Page, live: Live, query: str = DAY_QUERY) -> None:
    page.goto(f"{live.url}/?{query}")
    expect(page).to_have_url(re.compile(r"/login\?next=/\?from%3D"))
    page.get_by_label("Mot de passe").fill(PASSWORD)
    page.get_by_role("button", name="Se connecter").click()
    expect(page.locator("#rows tr[data-id]").first).to_be_visible()
    # screen.js is deferred: its key and click handlers exist only once the document is
    # parsed. A key pressed before that is lost (a test that pressed Enter at once failed
    # now and then).
    page.wait_for_load_state("domcontentloaded")


def rows(page: Page) -> Any:
    return page.locator("#rows tr[data-id]")


def test_sign_in_list_filter_open_a_mail_and_switch_language(page: Page, live: Live) -> None:
    sign_in(page, live)
    expect(rows(page)).to_have_count(len(DAY_MAILS))
    expect(rows(page).first.locator("td.sent")).to_have_text("08/03/26 12:30")

    # The hostile subject is there, as text, and nothing ran (see the page fixture).
    expect(page.get_by_text(XSS_SUBJECT, exact=True)).to_be_visible()
    assert page.locator("img[src=x]").count() == 0

    # The badge's explanation is its tooltip.
    bounce = page.locator("#rows .badge", has_text="Rebond définitif")
    expect(bounce).to_have_attribute("title", STATUSES[Status.HARD_BOUNCED].meaning_fr)

    # Ticking a status filters at once.
    page.locator("#chips label", has_text="Cliqué").locator("input").check()
    expect(rows(page)).to_have_count(2)
    expect(page.locator("#total")).to_have_text("2")
    page.locator("#chips a", has_text="Tous").click()
    expect(rows(page)).to_have_count(len(DAY_MAILS))

    # The search box.
    page.get_by_placeholder("Destinataire, expéditeur ou libellé").fill("rénovation")
    page.get_by_role("button", name="Afficher", exact=True).click()
    expect(rows(page)).to_have_count(1)

    # Double click opens the timeline.
    rows(page).first.dblclick()
    expect(page.locator("h1.subject")).to_have_text("Devis 2026-118 : rénovation cuisine")
    steps = page.locator("ol.timeline > li")
    expect(steps).to_have_count(4)
    expect(steps.nth(0).locator(".badge")).to_have_text("Requête")
    expect(steps.nth(3).locator(".badge")).to_have_text("Cliqué")
    expect(steps.nth(3).locator("code.event")).to_have_text("click")
    link = steps.nth(3).get_by_role("link", name="https://atelier-martin.fr/devis/2026-118")
    expect(link).to_have_attribute("rel", "noopener noreferrer")
    payload = steps.nth(3).locator("details.payload pre")
    expect(payload).to_be_hidden()
    steps.nth(3).get_by_text("Données reçues").click()
    expect(payload).to_be_visible()
    expect(payload).to_contain_text('"event": "click"')

    # English, kept when going back to the list.
    page.get_by_role("link", name="English").click()
    expect(page.locator("html")).to_have_attribute("lang", "en")
    expect(steps.nth(3).locator(".badge")).to_have_text("Clicked")
    page.get_by_role("link", name="Back to the list").click()
    expect(page.get_by_role("columnheader", name="Recipient")).to_be_visible()
    expect(rows(page)).to_have_count(1)  # the search came back with it
    expect(page.get_by_placeholder("Recipient, sender or subject")).to_have_value("rénovation")


def test_keyboard_enter_on_a_row_opens_the_mail(page: Page, live: Live) -> None:
    sign_in(page, live)

    rows(page).first.focus()
    page.keyboard.press("ArrowDown")
    page.keyboard.press("Enter")

    # The second row is the mail whose subject is the injection attempt.
    expect(page.locator("h1.subject")).to_have_text(XSS_SUBJECT)
    expect(page.locator(".step-details dd.link")).to_have_text("javascript:alert(3)")
    assert page.locator(".step-details a[href^=javascript]").count() == 0
    expect(page.get_by_text("<b>UA</b><script>alert(4)</script>", exact=True)).to_be_visible()


def test_show_more_never_repeats_a_row(
    page: Page, live: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("query.screen.PAGE_SIZE", 20)
    live.post(many_mails(45))
    sign_in(page, live)
    expect(rows(page)).to_have_count(20)

    more = page.get_by_role("button", name="Afficher les suivants")
    more.click()
    expect(rows(page)).to_have_count(40)
    more.click()
    expect(rows(page)).to_have_count(45 + len(DAY_MAILS))
    expect(more).to_be_hidden()

    ids = rows(page).evaluate_all("rows => rows.map(row => row.dataset.id)")
    assert len(set(ids)) == len(ids)


def test_new_events_show_up_without_reloading(
    page: Page, live: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("query.screen.REFRESH_SECONDS", 1)
    sign_in(page, live)
    expect(rows(page)).to_have_count(len(DAY_MAILS))
    page.evaluate("window.__notReloaded = true")
    deferred = page.locator("#rows tr", has_text="p.moreau@example.org").locator(".badge")
    expect(deferred).to_have_text("Différé")

    live.post(
        (
            Mail("n1.nouveau@smtp-relay.mailin.fr", "nouveau@example.fr", "Nouveau devis",
                 "ventes@atelier-martin.fr", (("request", at(12, 0), {}),)),
            Mail("a5.rdv@smtp-relay.mailin.fr", "p.moreau@example.org",
                 "Confirmation de rendez-vous", "planning@atelier-martin.fr",
                 (("delivered", at(10, 9), {}),)),
        )
    )  # fmt: skip

    expect(rows(page)).to_have_count(len(DAY_MAILS) + 1)
    expect(rows(page).first).to_contain_text("Nouveau devis")
    expect(rows(page).first).to_have_class("fresh")
    expect(deferred).to_have_text("Délivré")
    assert page.evaluate("window.__notReloaded") is True


# For the pictures: the day without the injection attempt, and two more failures.
SCREENSHOT_MAILS = tuple(mail for mail in DAY_MAILS if mail.subject != XSS_SUBJECT) + (
    Mail("s1.bloque@smtp-relay.mailin.fr", "ancien.client@example.com", "Newsletter de mars",
         "info@atelier-martin.fr",
         (("request", at(11, 45), {}),
          ("blocked", at(11, 45, 1), {"reason": "blocked : due to unsubscribed user"}))),
    Mail("s2.devis@smtp-relay.mailin.fr", "a.roux@example.fr", "Devis 2026-121 : salle de bain",
         "ventes@atelier-martin.fr",
         (("request", at(12, 10), {}), ("delivered", at(12, 10, 3), {}))),
)  # fmt: skip


def test_screenshots(page: Page, served: Live, tmp_path: Path) -> None:
    """The documentation's pictures; into DISTRIBMAIL_SCREENSHOTS when set."""
    folder = Path(os.environ.get("DISTRIBMAIL_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    served.post(SCREENSHOT_MAILS)
    sign_in(page, served)
    page.mouse.move(0, 0)

    page.screenshot(path=str(folder / "list.png"), full_page=True)
    rows(page).filter(has_text="Devis 2026-118").dblclick()
    expect(page.locator("ol.timeline > li")).to_have_count(4)
    page.locator("ol.timeline > li").nth(3).get_by_text("Données reçues").click()
    page.screenshot(path=str(folder / "timeline.png"), full_page=True)

    assert (folder / "list.png").stat().st_size > 10_000
    assert (folder / "timeline.png").stat().st_size > 10_000
