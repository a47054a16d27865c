"""JSON answers as bytes, and an error's answer: shared by the Flask routes and the
webhook's plain WSGI path (ingest.webhook_wsgi), so that both say the same thing."""

from __future__ import annotations

import json
import logging
from typing import Any

from ingest.errors import DistribmailError, TryLater, Unauthorized

log = logging.getLogger("ingest.web")

Headers = list[tuple[str, str]]

# The bytes Flask's jsonify writes (compact, keys sorted, ASCII, a final newline), without
# its per-call machinery.
_encode = json.JSONEncoder(separators=(",", ":"), sort_keys=True).encode


def json_bytes(document: dict[str, Any]) -> bytes:
    return (_encode(document) + "\n").encode()


def error_answer(error: DistribmailError) -> tuple[int, dict[str, Any], Headers]:
    """Status, JSON document and headers for an error: WWW-Authenticate on a 401, so the
    caller knows which credentials; Retry-After on a 429, so Brevo knows when."""
    headers: Headers = []
    if isinstance(error, Unauthorized):
        headers.append(("WWW-Authenticate", error.challenge))
    if isinstance(error, TryLater):
        headers.append(("Retry-After", str(error.retry_after)))
    if error.status >= 500:
        log.error("%s: %s", type(error).__name__, error.message)
    return error.status, error.to_json(), headers
