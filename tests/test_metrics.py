"""/metrics: behind the API token, webhook events by outcome, latency by route, lag."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

# A runtime dependency (pyproject); said plainly if an older environment lacks it.
pytest.importorskip("prometheus_client", reason="pip install prometheus-client (pyproject)")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from distribmail import metrics  # noqa: E402
from ingest.pipeline import Receipt  # noqa: E402
from ingest.providers import brevo  # noqa: E402
from tests.payloads import event  # noqa: E402

API_TOKEN = "api-token-for-metrics"


@pytest.fixture
def app(make_app):
    app = make_app(DISTRIBMAIL_API_TOKENS=API_TOKEN, DISTRIBMAIL_PROJECTOR="off")
    if "metrics" not in app.view_functions:
        pytest.skip("create_app does not call distribmail.metrics.install_metrics yet")
    return app


def scrape(client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = client.get("/metrics", headers={"Authorization": f"Bearer {API_TOKEN}"})
    assert response.status_code == 200, response.data
    assert response.content_type.startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.get_data(as_text=True)):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def events_total(samples, event_name: str, outcome: str) -> float:
    labels = (("event", event_name), ("outcome", outcome), ("provider", "brevo"))
    return samples.get(("distribmail_webhook_events_total", labels), 0.0)


def post(client, auth_headers, payload) -> dict:
    response = client.post("/webhooks/brevo", data=json.dumps(payload), headers=auth_headers)
    assert response.status_code == 200, response.data
    return response.get_json()


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer token-current"}, {"Authorization": "Bearer nope"}],
    ids=["no-credential", "webhook-token", "wrong-token"],
)
def test_metrics_needs_an_api_token(app, headers):
    response = app.test_client().get("/metrics", headers=headers)
    assert response.status_code == 401
    assert "Bearer" in response.headers["WWW-Authenticate"]


# The routes anyone may call: liveness and readiness, the webhook's URL check (GET/HEAD:
# nothing stored), the API's contract (no data), and the screen's login page and assets.
PUBLIC = {
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/webhooks/<provider>"),
    ("HEAD", "/webhooks/<provider>"),
    ("GET", "/api/openapi.json"),
    ("GET", "/login"),
    ("POST", "/login"),
    ("GET", "/static/<path:filename>"),
    ("GET", "/static/screen/<path:filename>"),
}


def test_every_other_route_asks_for_a_credential(app):
    client = app.test_client()
    checked = []
    for rule in app.url_map.iter_rules():
        for method in sorted(rule.methods - {"OPTIONS"}):
            if (method.replace("HEAD", "GET"), rule.rule) in PUBLIC:
                continue
            path = rule.rule.replace("<provider>", "brevo").replace("<key>", "x" * 12)
            response = client.open(path, method=method, data=b"{}")
            checked.append((method, rule.rule, response.status_code))
            # 401 from a token check, or the screen's redirect to its login page.
            assert response.status_code in (401, 302), (method, rule.rule, response.status_code)
            if response.status_code == 302:
                assert "/login" in response.headers["Location"]
    assert ("GET", "/metrics", 401) in checked


def test_webhook_events_are_counted_by_outcome_and_event(app, auth_headers):
    client = app.test_client()
    before = scrape(client)
    first = event("delivered", message_id="<m-1@example.com>")
    second = event("click", message_id="<m-2@example.com>", link="https://example.com/a")
    assert post(client, auth_headers, first)["stored"] == 1
    assert post(client, auth_headers, first)["duplicates"] == 1
    # A batch partly new, partly a repeat: per-event outcomes are not known.
    assert post(client, auth_headers, [first, second])["stored"] == 1
    # An event name we do not know is stored, flagged, and counted as "other".
    post(client, auth_headers, event("brand_new_event", message_id="<m-3@example.com>"))
    after = scrape(client)

    def delta(name, outcome):
        return events_total(after, name, outcome) - events_total(before, name, outcome)

    assert delta("delivered", "received") == 3
    assert delta("delivered", "stored") == 1
    assert delta("delivered", "duplicate") == 1
    assert delta("click", "received") == 1
    assert delta("mixed_batch", "stored") == 1
    assert delta("mixed_batch", "duplicate") == 1
    assert delta("other", "received") == 1
    assert delta("other", "flagged") == 1
    assert delta("other", "stored") == 1
    assert not any(labels and "brand_new_event" in str(labels) for _, labels in after)


def test_spooled_events_are_counted_without_the_database():
    payloads = [event("delivered"), event("hard_bounce")]
    before = metrics._get().events.labels("brevo", "hard_bounce", "spooled")._value.get()
    metrics.observe_receipt("brevo", payloads, None, Receipt(received=2, spooled=2))
    after = metrics._get().events.labels("brevo", "hard_bounce", "spooled")._value.get()
    assert after - before == 1
    assert "hard_bounce" in brevo.KNOWN_EVENTS


def test_an_observer_failure_never_fails_the_webhook(caplog):
    metrics.observe_receipt("no-such-provider", [{"event": "x"}], None, Receipt(received=1))
    assert "could not count a webhook request" in caplog.text


def test_latency_is_by_route_not_by_path(app, auth_headers):
    client = app.test_client()
    client.get("/api/messages/aaaaaaaaaaaa", headers={"Authorization": f"Bearer {API_TOKEN}"})
    client.get("/no/such/page")
    samples = scrape(client)
    routes = {dict(labels).get("route") for name, labels in samples if "duration" in name}
    assert {"/api/messages/<key>", "unmatched"} <= routes
    assert "/api/messages/aaaaaaaaaaaa" not in routes


def test_projection_lag_is_read_when_scraped(app, auth_headers, db):
    client = app.test_client()
    post(client, auth_headers, event(message_id="<lag@example.com>"))
    samples = scrape(client)
    (queued,) = db.execute("SELECT count(*) FROM fold_queue").fetchone()
    assert queued >= 1  # the projector is off in this app
    assert samples[("distribmail_projection_lag_readable", ())] == 1
    assert samples[("distribmail_projection_queue_length", ())] == queued
    assert samples[("distribmail_projection_lag_seconds", ())] >= 0


def test_reconciliation_counters_become_metrics(app, monkeypatch):
    from ingest import reconcile

    client = app.test_client()
    before = scrape(client)
    reconcile._add(runs=1, pulled=10, stored=3, missed_by_webhook=2)
    after = scrape(client)
    missed = ("distribmail_reconcile_events_total", (("outcome", "missed_by_webhook"),))
    assert after[missed] - before.get(missed, 0) == 2
    runs = ("distribmail_reconcile_runs_total", ())
    assert after[runs] - before.get(runs, 0) == 1


def test_the_multiprocess_folder_keeps_only_live_processes_files(tmp_path):
    folder = tmp_path / "prometheus"
    folder.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()  # fmt: skip
    live = os.getppid()  # pytest's parent: alive for the whole test
    (folder / f"counter_{dead}.db").write_bytes(b"")
    (folder / f"gauge_livesum_{dead}.db").write_bytes(b"")
    (folder / f"counter_{live}.db").write_bytes(b"")
    assert metrics.clean_multiprocess_dir(folder) == 2
    assert [p.name for p in folder.iterdir()] == [f"counter_{live}.db"]


def test_multiprocess_mode_sums_the_workers(tmp_path):
    """Two processes count into one folder; a third scrapes the sum (as under gunicorn)."""
    folder = tmp_path / "prometheus"
    folder.mkdir()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(folder)}
    count = (
        "from distribmail import metrics; from ingest.pipeline import Receipt; "
        "from tests.payloads import event; "
        "metrics.observe_receipt('brevo', [event()], None, Receipt(received=1, stored=1))"
    )
    for _ in range(2):
        subprocess.run([sys.executable, "-c", count], env=env, check=True)
    scrape_code = (
        "from prometheus_client import CollectorRegistry, generate_latest, multiprocess; "
        "r = CollectorRegistry(); multiprocess.MultiProcessCollector(r); "
        "print(generate_latest(r).decode())"
    )
    page = subprocess.run([sys.executable, "-c", scrape_code], env=env, check=True,
                          capture_output=True, text=True).stdout  # fmt: skip
    assert (
        'distribmail_webhook_events_total{event="delivered",outcome="stored",provider="brevo"} 2.0'
        in page
    )
