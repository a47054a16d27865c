"""`brevo connect` and `brevo status` against the fake Brevo: our webhook is created once,
then updated in place, never duplicated; status shows what the Gestan page asks to check."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

import pytest

from distribmail import brevo_cli
from ingest.brevo_api import BrevoAuthError, BrevoClient, BrevoSettings
from ingest.brevo_setup import OPTIONAL_SUBSCRIPTIONS, SUBSCRIPTIONS, connect, description, status
from ingest.errors import ConfigError
from tests.fake_brevo import API_KEY, FakeBrevo

PUBLIC = "https://mail.example.test"
HOOK_URL = PUBLIC + "/webhooks/brevo"
ALL = set(SUBSCRIPTIONS) | set(OPTIONAL_SUBSCRIPTIONS)


@pytest.fixture
def fake() -> Iterator[FakeBrevo]:
    server = FakeBrevo().start()
    yield server
    server.stop()


@pytest.fixture
def brevo(fake) -> BrevoClient:
    return BrevoClient(BrevoSettings(api_key=API_KEY, api_url=fake.url), backoff=0.01)


def test_connect_creates_then_finds_it_up_to_date(fake, brevo):
    first = connect(brevo, PUBLIC, "secret-1")
    assert (first.action, first.webhook_id) == ("created", 1)
    (hook,) = fake.webhooks.values()
    assert hook["url"] == HOOK_URL
    assert hook["type"] == "transactional"
    assert set(hook["events"]) == ALL
    assert hook["auth"] == {"type": "bearer", "token": "secret-1"}

    again = connect(brevo, PUBLIC + "/", "secret-1")
    assert (again.action, again.webhook_id) == ("unchanged", 1)
    assert len(fake.webhooks) == 1
    assert "already up to date: webhook id 1" in again.lines()[0]


def test_a_new_token_updates_the_same_webhook(fake, brevo):
    connect(brevo, PUBLIC, "secret-1")
    result = connect(brevo, PUBLIC, "secret-2")
    assert (result.action, result.webhook_id) == ("updated", 1)
    assert len(fake.webhooks) == 1
    assert fake.webhooks[1]["auth"]["token"] == "secret-2"
    assert "secret-2" not in fake.webhooks[1]["description"]  # only a fingerprint


def test_a_webhook_made_by_hand_is_completed_not_duplicated(fake, brevo):
    fake.webhooks[7] = {
        "id": 7,
        "url": HOOK_URL,
        "description": "mine",
        "type": "transactional",
        "events": ["delivered"],
        "auth": None,
    }
    fake.webhooks[8] = {
        "id": 8,
        "url": "https://other.test/hook",
        "description": "",
        "type": "transactional",
        "events": ["click"],
        "auth": None,
    }
    result = connect(brevo, PUBLIC, "secret")
    assert (result.action, result.webhook_id) == ("updated", 7)
    assert set(fake.webhooks) == {7, 8}
    assert set(fake.webhooks[7]["events"]) == ALL
    assert fake.webhooks[8]["events"] == ["click"]  # not ours: untouched


def test_optional_events_brevo_refuses_are_dropped_and_said(fake, brevo):
    fake.accepted_webhook_events -= set(OPTIONAL_SUBSCRIPTIONS)
    created = connect(brevo, PUBLIC, "secret")
    assert created.action == "created"
    assert set(fake.webhooks[1]["events"]) == set(SUBSCRIPTIONS)
    assert any("Brevo refused proxyOpen" in line for line in created.lines())
    assert connect(brevo, PUBLIC, "secret").action == "unchanged"
    assert len(fake.webhooks) == 1


def test_a_refused_key_changes_nothing(fake):
    wrong = BrevoClient(BrevoSettings(api_key="nope", api_url=fake.url))
    with pytest.raises(BrevoAuthError, match=r"^Brevo refused the API key \("):
        connect(wrong, PUBLIC, "secret")
    assert fake.webhooks == {}
    assert [method for method, _, _ in fake.log] == ["GET"]


def test_status_shows_account_webhook_and_domain_checks(fake, brevo):
    connect(brevo, PUBLIC, "secret")
    fake.webhooks[1]["events"] = ["delivered", "click"]
    text = "\n".join(status(brevo).lines())
    assert "account: owner@example.test (Atelier Martin, Camille Martin)" in text
    assert f"webhook id 1: {HOOK_URL}" in text
    assert "missing: request, deferred" in text
    assert "domain example.test: authenticated, verified, DKIM ok, DMARC ok" in text
    assert "domain shop.example.test: NOT authenticated, verified, DKIM MISSING" in text


def test_status_without_our_webhook_says_what_to_run(brevo):
    assert "run `distribmail brevo connect`" in "\n".join(status(brevo).lines())


def test_description_carries_only_a_fingerprint():
    assert description("secret") == description("secret") != description("secret2")
    assert "secret" not in description("secret")


# --- the commands -----------------------------------------------------------------------


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="distribmail")
    brevo_cli.add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.run(args))


@pytest.fixture
def env(monkeypatch, fake, tmp_path: Path) -> Path:
    monkeypatch.setenv("DISTRIBMAIL_BREVO_API_KEY", API_KEY)
    monkeypatch.setenv("DISTRIBMAIL_BREVO_API_URL", fake.url)
    monkeypatch.setenv("DISTRIBMAIL_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("DISTRIBMAIL_WEBHOOK_TOKENS", raising=False)
    monkeypatch.delenv("DISTRIBMAIL_WEBHOOK_BASIC_AUTH", raising=False)
    return tmp_path / "data"


def test_connect_command_uses_the_generated_token(env, fake, capsys):
    assert run(["brevo", "connect", "--public-url", HOOK_URL]) == 0
    token = (env / "webhook-token").read_text().strip()
    assert fake.webhooks[1]["auth"]["token"] == token
    assert fake.webhooks[1]["url"] == HOOK_URL  # the pasted full URL was understood
    assert capsys.readouterr().out.startswith(f"created webhook id 1 -> {HOOK_URL}")


def test_connect_command_prefers_the_configured_token(env, fake, monkeypatch, capsys):
    monkeypatch.setenv("DISTRIBMAIL_WEBHOOK_TOKENS", "configured-1,configured-2")
    run(["brevo", "connect", "--public-url", PUBLIC])
    run(["brevo", "connect", "--public-url", PUBLIC])
    assert fake.webhooks[1]["auth"]["token"] == "configured-1"
    assert capsys.readouterr().out.splitlines()[2].startswith("already up to date: webhook id 1")


def test_connect_command_refuses_a_url_that_is_not_one(env):
    with pytest.raises(ConfigError, match="--public-url must look like https://"):
        run(["brevo", "connect", "--public-url", "mail.example.test"])


def test_status_command(env, capsys):
    assert run(["brevo", "status"]) == 0
    assert "account: owner@example.test" in capsys.readouterr().out


def test_the_distribmail_command_prints_a_refused_key_and_exits_non_zero(env, monkeypatch, capsys):
    from distribmail import cli

    if "brevo" not in cli.build_parser().format_help():
        pytest.skip("distribmail.cli does not add the Brevo commands yet")
    monkeypatch.setenv("DISTRIBMAIL_BREVO_API_KEY", "xkeysib-wrong")
    assert cli.main(["brevo", "status"]) != 0
    err = capsys.readouterr().err
    assert err.startswith("distribmail: Brevo refused the API key (")
    assert "Traceback" not in err
