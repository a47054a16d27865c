"""HTTP for the write side: the webhook route, health and readiness, JSON errors.

`create_receiver_app` is the receiver alone (it faces the internet); the composition root
in `distribmail.app` mounts the same blueprint beside the read side.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import Blueprint, Flask, Response, current_app, jsonify
from werkzeug.exceptions import HTTPException

from ingest.answers import error_answer, json_bytes
from ingest.auth import WebhookAuth
from ingest.errors import DistribmailError
from ingest.pipeline import Receiver
from ingest.webhook_wsgi import WebhookEndpoint, WebhookWSGI, check_provider

bp = Blueprint("ingest", __name__)

RECEIVER = "distribmail.receiver"
AUTH = "distribmail.webhook_auth"
# The webhook's POST (ingest.webhook_wsgi); the request hooks it runs are added to it.
ENDPOINT = "distribmail.webhook_endpoint"
READINESS = "distribmail.readiness"
# Callables that stop an app's threads and close its pools, run by distribmail.app.shutdown.
CLOSERS = "distribmail.closers"

# A readiness check returns (name, ok, detail); the read side adds its own.
ReadinessCheck = Callable[[], tuple[str, bool, Any]]


# A POST to this URL is answered by ingest.webhook_wsgi, before Flask sees it.
@bp.route("/webhooks/<provider>", methods=["GET", "HEAD"])
def webhook(provider: str) -> Any:
    check_provider(provider)
    # Providers and admins check that the URL answers; nothing is stored.
    return jsonify({"provider": provider, "ready": True})


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
    status, document, headers = error_answer(error)
    return Response(
        json_bytes(document), status=status, headers=headers, mimetype="application/json"
    )


def render_http_error(error: HTTPException) -> Any:
    response = jsonify({"error": error.description or error.name})
    response.status_code = error.code or 500
    return response


def register_error_handlers(app: Flask) -> None:
    app.register_error_handler(DistribmailError, render_error)
    app.register_error_handler(HTTPException, render_http_error)


def install_receiver(app: Flask, receiver: Receiver, auth: WebhookAuth, max_body: int) -> None:
    endpoint = WebhookEndpoint(receiver, auth, max_body)
    app.extensions[RECEIVER] = receiver
    app.extensions[AUTH] = auth
    app.extensions[ENDPOINT] = endpoint
    app.extensions.setdefault(READINESS, []).append(database_check(receiver))
    app.extensions.setdefault(CLOSERS, []).append(receiver.close)
    app.register_blueprint(bp)
    app.wsgi_app = WebhookWSGI(app.wsgi_app, endpoint)  # type: ignore[method-assign]
