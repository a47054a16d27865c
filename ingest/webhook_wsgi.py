"""POST /webhooks/<provider> served as plain WSGI, in front of the Flask app.

The webhook is the one request that comes by the thousand per second. Under load, Flask's
request context, routing and hooks cost about as much CPU as everything the webhook does
(measured with 16 concurrent connections on two cores: 1,600-1,900 requests/s through
Flask, 2,300-2,400 on this path with the same request hooks). So a POST to
/webhooks/<provider> is answered here, with the same checks in the same order, the same
answers and the same errors as before; everything else (GET and HEAD on the URL, every
other path) goes on to Flask.

What the composition root adds around every request (request id, access line, timing)
reaches this path as RequestHooks, the same way it is added to Flask with before/after
hooks.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import Any

from werkzeug.exceptions import InternalServerError

from ingest.answers import Headers, error_answer, json_bytes
from ingest.auth import WebhookAuth
from ingest.errors import DistribmailError, NotFound, PayloadTooLarge
from ingest.pipeline import Receiver
from ingest.providers import PROVIDERS

log = logging.getLogger("ingest.web")

PREFIX = "/webhooks/"
# The route's name as Flask spells it, for metrics labels.
ROUTE = "/webhooks/<provider>"

WSGIEnvironment = dict[str, Any]
StartResponse = Callable[..., Any]
WSGIApp = Callable[[WSGIEnvironment, StartResponse], Iterable[bytes]]

# Called with a request's environ when it starts; returns what to call once its status is
# known, with the headers of the answer (it may add some).
RequestHook = Callable[[WSGIEnvironment], Callable[[int, Headers], None]]


def read_body(environ: WSGIEnvironment, limit: int) -> bytes:
    """The body, refused past `limit` bytes whether or not Content-Length was sent.

    Read as werkzeug reads it: Content-Length bytes when given; to the end when the server
    says the stream ends by itself (gunicorn, for a chunked body); else nothing."""
    try:
        length: int | None = max(0, int(environ.get("CONTENT_LENGTH") or ""))
    except ValueError:
        length = None
    if length is not None and length > limit:
        raise PayloadTooLarge(f"the body is over the {limit}-byte limit (DISTRIBMAIL_MAX_BODY)")
    stream = environ["wsgi.input"]
    if length is not None:
        body = stream.read(length) if length else b""
    elif environ.get("wsgi.input_terminated"):
        body = stream.read(limit + 1)
    else:
        body = b""
    if len(body) > limit:
        raise PayloadTooLarge(f"the body is over the {limit}-byte limit (DISTRIBMAIL_MAX_BODY)")
    return body


def check_provider(name: str) -> None:
    """Raise NotFound, naming the known providers, for a name that is not one of them."""
    if name not in PROVIDERS:
        raise NotFound(f"no provider named {name!r}; known: {', '.join(sorted(PROVIDERS))}")


class WebhookEndpoint:
    """The webhook's POST: source and credentials (before the body is read), size, then
    the pipeline (JSON shape, append or spool)."""

    def __init__(self, receiver: Receiver, auth: WebhookAuth, max_body: int) -> None:
        self.receiver = receiver
        self.auth = auth
        self.max_body = max_body
        self.hooks: list[RequestHook] = []

    def answer(self, provider: str, environ: WSGIEnvironment) -> tuple[int, bytes, Headers]:
        try:
            check_provider(provider)
            self.auth.check(
                environ.get("HTTP_AUTHORIZATION"),
                environ.get("HTTP_X_FORWARDED_FOR"),
                environ.get("REMOTE_ADDR"),
            )
            body = read_body(environ, self.max_body)
            receipt = self.receiver.receive(provider, body)
        except DistribmailError as e:
            status, document, headers = error_answer(e)
            return status, json_bytes(document), headers
        return 200, json_bytes(receipt.to_json()), []

    def serve(
        self, provider: str, environ: WSGIEnvironment, start_response: StartResponse
    ) -> list[bytes]:
        finishers = [hook(environ) for hook in self.hooks]
        try:
            status, body, headers = self.answer(provider, environ)
        except Exception:
            # A bug: Flask would log it and answer 500 with this text; so do we.
            log.exception("Exception on %s [POST]", environ.get("PATH_INFO"))
            status, headers = 500, []
            body = json_bytes({"error": InternalServerError.description})
        headers = [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(body))),
            *headers,
        ]
        for finish in reversed(finishers):
            finish(status, headers)
        start_response(f"{status} {HTTPStatus(status).phrase}", headers)
        return [body]


class WebhookWSGI:
    """Sends POST /webhooks/<provider> to the endpoint (which answers 404 for a provider
    we do not know), anything else to `app`."""

    def __init__(self, app: WSGIApp, endpoint: WebhookEndpoint) -> None:
        self.app = app
        self.endpoint = endpoint

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Any:
        if environ.get("REQUEST_METHOD") == "POST":
            path: str = environ.get("PATH_INFO", "")
            provider = path[len(PREFIX) :] if path.startswith(PREFIX) else ""
            if provider and "/" not in provider:  # what the route <provider> matches
                return self.endpoint.serve(provider, environ, start_response)
        return self.app(environ, start_response)
