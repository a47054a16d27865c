"""HTTP for the read side: the JSON API that Gestan and the screen read.

Routes (the OpenAPI document at /api/openapi.json is the reference):
  GET /api/messages            a period's mails, newest first, keyset-paginated
  GET /api/messages/counts     how many of them per status (same filters)
  GET /api/messages/<id>       one mail with its steps and their raw payloads
  GET /api/statuses            the vocabulary, with labels and explanations
Every route but the document checks a bearer token first (`ApiAuth`, before_request).
Views only parse (api_schemas), read (reads) and answer (api_json): no SQL here.
"""

from __future__ import annotations

import hmac
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from flask import Blueprint, Flask, current_app, jsonify, request
from psycopg_pool import ConnectionPool

from ingest.database import apply_schema, open_pool
from ingest.errors import NotFound, Unauthorized
from ingest.settings import IngestSettings
from ingest.web import CLOSERS, READINESS, register_error_handlers
from ingest.wiring import database_url
from query import api_json, openapi, reads
from query import api_schemas as schemas
from query.settings import ReadSettings

log = logging.getLogger(__name__)

bp = Blueprint("api", __name__, url_prefix="/api")

POOL = "distribmail.api_pool"
SETTINGS = "distribmail.api_settings"
AUTH = "distribmail.api_auth"

REALM = 'Bearer realm="distribmail-api"'

# Built once: marshmallow schemas hold no request state.
_LIST_QUERY = schemas.MessageListQuery()
_FILTERS_QUERY = schemas.MessageFiltersQuery()
_LANG_QUERY = schemas.LangQuery()


@dataclass(frozen=True)
class ApiAuth:
    tokens: tuple[bytes, ...]

    def check(self, authorization: str | None) -> None:
        """Return when the header carries one of the tokens; raise Unauthorized otherwise.

        Every token is compared, in constant time, whatever matched: the time taken says
        neither which token is configured nor how much of one was guessed.
        """
        scheme, _, value = (authorization or "").strip().partition(" ")
        given = value.strip().encode()
        if scheme.lower() != "bearer" or not given:
            raise Unauthorized(
                "send an API token as 'Authorization: Bearer ...' (DISTRIBMAIL_API_TOKENS)",
                challenge=REALM,
            )
        matches = [hmac.compare_digest(given, token) for token in self.tokens]
        if not any(matches):
            raise Unauthorized(
                "this is not an API token (DISTRIBMAIL_API_TOKENS; the webhook tokens "
                "do not open the API)",
                challenge=f'{REALM}, error="invalid_token"',
            )


@bp.before_request
def require_token() -> None:
    if request.endpoint == "api.openapi_document":
        return  # the contract holds no data; tools fetch it before they have a token
    auth: ApiAuth = current_app.extensions[AUTH]
    auth.check(request.headers.get("Authorization"))


def _pool() -> ConnectionPool:
    return current_app.extensions[POOL]


def _settings() -> ReadSettings:
    return current_app.extensions[SETTINGS]


@bp.get("/messages")
def list_messages() -> Any:
    args = schemas.load_query(_LIST_QUERY, request.args)
    filters = schemas.filters_of(args, _settings().timezone)
    after = schemas.decode_cursor(args["cursor"]) if "cursor" in args else None
    page = reads.list_messages(_pool(), filters, args["limit"], after)
    return jsonify(api_json.page_document(page, args["lang"]))


@bp.get("/messages/counts")
def count_messages() -> Any:
    args = schemas.load_query(_FILTERS_QUERY, request.args)
    filters = schemas.filters_of(args, _settings().timezone)
    counts = reads.count_messages(_pool(), filters)
    return jsonify(api_json.counts_document(filters, counts))


@bp.get("/messages/<key>")
def get_message(key: str) -> Any:
    args = schemas.load_query(_LANG_QUERY, request.args)
    # An id that cannot be one of ours is not looked up: same answer as an unknown one.
    detail = reads.get_message(_pool(), key) if schemas.MESSAGE_KEY.match(key) else None
    if detail is None:
        raise NotFound(f"no tracked message with id {key!r}")
    return jsonify(api_json.detail_document(detail, args["lang"]))


@bp.get("/statuses")
def list_statuses() -> Any:
    return jsonify(api_json.statuses_document())


@bp.get("/openapi.json")
def openapi_document() -> Any:
    return jsonify(openapi.document())


# --- wiring -------------------------------------------------------------------------------


def _database_check(pool: ConnectionPool) -> Any:
    def check() -> tuple[str, bool, Any]:
        try:
            with pool.connection(timeout=2) as conn:
                conn.execute("SELECT 1")
        except Exception as e:  # any failure means "not ready"; the name says which
            return "api_database", False, {"ok": False, "error": type(e).__name__}
        return "api_database", True, {"ok": True}

    return check


def mount_api(app: Flask, env: Mapping[str, str], url: str) -> ConnectionPool:
    """Add the read API to `app`: its own pool (closed by the app's closers), its token
    check, the blueprint, and a readiness check."""
    settings = ReadSettings.from_env(env)
    if not settings.api_tokens:
        log.warning("DISTRIBMAIL_API_TOKENS is empty: every /api request will get 401")
    pool = open_pool(url, size=settings.pool_size, timeout=settings.db_timeout, name="api")
    app.extensions[POOL] = pool
    app.extensions[SETTINGS] = settings
    app.extensions[AUTH] = ApiAuth(tuple(token.encode() for token in settings.api_tokens))
    app.extensions.setdefault(READINESS, []).append(_database_check(pool))
    app.extensions.setdefault(CLOSERS, []).append(pool.close)
    app.register_blueprint(bp)
    return pool


def create_read_app(config: Mapping[str, str] | None = None) -> Flask:
    """The read side alone (API and screen), for a deployment apart from the receiver."""
    env = os.environ if config is None else config
    url = database_url(IngestSettings.from_env(env))
    apply_schema(url)
    app = Flask("distribmail.query")
    register_error_handlers(app)
    mount_api(app, env, url)
    from query.screen import mount_screen  # the screen imports this module

    mount_screen(app, env, url)
    return app
