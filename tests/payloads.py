"""Brevo payloads for the tests: the published ones (tests/fixtures/brevo) and small builders."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).parent / "fixtures" / "brevo"


def published_records() -> list[dict[str, Any]]:
    """Every record of brevo_webhook_payloads.json (see its README for provenance)."""
    return json.loads((FIXTURES / "brevo_webhook_payloads.json").read_text(encoding="utf-8"))


def tracking_payloads() -> list[tuple[str, dict[str, Any]]]:
    """(record id, payload) for each published tracking event that is valid JSON."""
    return [
        (r["id"], r["payload"])
        for r in published_records()
        if r["kind"] == "tracking_event" and r["payload"] is not None
    ]


def event(
    name: str = "delivered",
    email: str = "client@example.com",
    message_id: str = "<202305311437.85220493321@smtp-relay.mailin.fr>",
    ts_epoch: int = 1685543827372,
    **extra: Any,
) -> dict[str, Any]:
    """A live-shaped webhook payload (angle brackets and ts_epoch in ms, as Brevo sends)."""
    return {
        "id": 814119,
        "event": name,
        "email": email,
        "message-id": message_id,
        "ts_epoch": ts_epoch,
        "ts_event": ts_epoch // 1000,
        "subject": "Devis 2026-118",
        **extra,
    }
