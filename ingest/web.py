"""HTTP for the write side: the webhook route, health and readiness, JSON errors.

`create_receiver_app` is the receiver alone (it faces the internet); the composition root
in `distribmail.app` mounts the same blueprint beside the read side.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from flask import Blueprint, Flask, Response, current_app, jsonify, request
from werkzeug.exceptions import HTTPException

from ingest.auth import WebhookAuth
from ingest.errors import DistribmailError, NotFound, PayloadTooLarge, TryLater, Unauthorized
from ingest.pipeline import Receiver
from ingest.providers import PROVIDERS

log = logging.getLogger(__name__)

bp = Blueprint("ingest", __name__)

RECEIVER = "distribmail.receiver"
AUTH = "distribmail.webhook_auth"
MAX_BODY = "distribmail.max_body"
READINESS = "distribmail.readiness"
# Callables that stop an app's threads and close its pools, run by distribmail.app.shutdown.
CLOSERS = "distribmail.closers"

# A readiness check returns (name, ok, detail); the read side adds its own.
ReadinessCheck = Callable[[], tuple[str, bool, Any]]

# The webhook's answer in the bytes Flask's jsonify writes (compact, keys sorted, a final
# newline), without its per-call machinery: it is on the busiest route, and a few ints.
_encode_receipt = json.JSONEncoder(separators=(",", ":"), sort_keys=True).encode


def _read_body(limit: int) -> bytes:
    """The body, refused past `limit` bytes whether or not Content-Length was sent."""
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"the body is over the {limit}-byte limit (DISTRIBMAIL_MAX_BODY)")
    body = request.stream.read(limit + 1)
    if len(body) > limit:
        raise PayloadTooLarge(f"the body is over the {limit}-byte limit (DISTRIBMAIL_MAX_BODY)")
    return body


@bp.route("/webhooks/<provider>", methods=["GET", "HEAD", "POST"])
def webhook(provider: str) -> Any:
    if provider not in PROVIDERS:
        raise NotFound(f"no provider named {provider!r}; known: {', '.join(sorted(PROVIDERS))}")
    if request.method != "POST":
        # Providers and admins check that the URL answers; nothing is stored.
        return jsonify({"provider": provider, "ready": True})
    # The checks this route makes, in order: source address and credentials (before the
    # body is read), size, then the pipeline (JSON shape, append or spool).
    extensions = current_app.extensions
    auth: WebhookAuth = extensions[AUTH]
    headers = request.headers
    auth.check(headers.get("Authorization"), headers.get("X-Forwarded-For"), request.remote_addr)
    body = _read_body(extensions[MAX_BODY])
    receiver: Receiver = extensions[RECEIVER]
    receipt = receiver.receive(provider, body)
    return Response(_encode_receipt(receipt.to_json()) + "\n", mimetype="application/json")


@bp.get("/healthz")
def healthz() -> Any:
    return jsonify({"status": "alive"})


@bp.get("/readyz")
def readyz() -> Any:
    results = {}
    ready = True
    for check in current_app.extensions[READINESS]:
        name, ok, detail = check()
        results[name] = detail
        ready = ready and ok
    return jsonify({"ready": ready, **results}), (200 if ready else 503)


def database_check(receiver: Receiver) -> ReadinessCheck:
    def check() -> tuple[str, bool, Any]:
        try:
            with receiver.pool.connection(timeout=2) as conn:
                conn.execute("SELECT 1")
        except Exception as e:
            return "database", False, {"ok": False, "error": type(e).__name__}
        return "database", True, {"ok": True, "spooled_files": len(receiver.spool.pending())}

    return check


def render_error(error: DistribmailError) -> Any:
    response = jsonify(error.to_json())
    response.status_code = error.status
    if isinstance(error, Unauthorized):
        response.headers["WWW-Authenticate"] = error.challenge
    if isinstance(error, TryLater):
        response.headers["Retry-After"] = str(error.retry_after)
    if error.status >= 500:
        log.error("%s: %s", type(error).__name__, error.message)
    return response


def render_http_error(error: HTTPException) -> Any:
    response = jsonify({"error": error.description or error.name})
    response.status_code = error.code or 500
    return response


def register_error_handlers(app: Flask) -> None:
    app.register_error_handler(DistribmailError, render_error)
    app.register_error_handler(HTTPException, render_http_error)


def install_receiver(app: Flask, receiver: Receiver, auth: WebhookAuth, max_body: int) -> None:
    app.extensions[RECEIVER] = receiver
    app.extensions[AUTH] = auth
    app.extensions[MAX_BODY] = max_body
    app.extensions.setdefault(READINESS, []).append(database_check(receiver))
    app.extensions.setdefault(CLOSERS, []).append(receiver.close)
    app.register_blueprint(bp)
