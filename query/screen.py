"""The screen "Distribution des mails": the day's mails, and the steps of one mail.

Server-rendered pages (Jinja, autoescaped: everything shown comes from outside, and is
never marked safe) with a little plain JavaScript (query/static/screen.js) for the double
click, "show more" and the refresh every few seconds. The views are thin: they parse the
query string with the read API's own schemas, call the read functions (query.reads), and
hand the rows to the templates. The routes, and the checks each makes:

    GET  /login, POST /login     public; POST compares the password in constant time,
                                 and refuses an address after 10 wrong ones in 5 minutes
    POST /logout                 clears the session
    GET  /                       session; the list (from, to, status, q)
    GET  /rows                   session (else 401 JSON); a page of rows as HTML, in JSON
    GET  /export.csv             session; the whole list, streamed
    GET  /messages/<id>          session; one mail's timeline
    GET  /static/screen/...      public; CSS and JS
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import psycopg
from flask import (
    Blueprint,
    Flask,
    Response,
    current_app,
    g,
    jsonify,
    redirect,
    render_template,
    request,
    session,
    stream_with_context,
    url_for,
)
from psycopg_pool import ConnectionPool
from werkzeug.datastructures import MultiDict

from ingest.auth import client_address
from ingest.database import open_pool
from ingest.errors import DatabaseUnavailable, DistribmailError, NotFound
from ingest.settings import IPNetwork, env_networks
from ingest.web import CLOSERS
from query import screen_views as views
from query.api import POOL as API_POOL
from query.api_schemas import (
    MESSAGE_KEY,
    MessageFiltersQuery,
    MessageListQuery,
    decode_cursor,
    encode_cursor,
    filters_of,
    load_query,
)
from query.login_throttle import LoginThrottle
from query.reads import Filters, Page, count_messages, get_message, list_messages, status_of
from query.screen_auth import ScreenAuth, ScreenSessions, safe_next
from query.screen_csv import csv_lines
from query.screen_text import (
    DEFAULT_LANG,
    LANGS,
    STEP_FORMAT,
    badge,
    local_time,
    other_lang,
    text,
)
from query.settings import ReadSettings

SCREEN = "distribmail.screen"

PAGE_SIZE = 100
REFRESH_SECONDS = 10
# The query-string names that make up "the current list" (what a link, the refresh, the
# export and the back link carry along).
FILTER_ARGS = ("from", "to", "status", "q", "recipient", "sender", "message_id", "tag")
PUBLIC_ENDPOINTS = frozenset({"screen.login", "screen.static"})

STATIC = Path(__file__).parent / "static"

bp = Blueprint(
    "screen",
    __name__,
    template_folder="templates",
    static_folder="static",
    static_url_path="/static/screen",
)


@dataclass(frozen=True)
class Screen:
    pool: ConnectionPool
    settings: ReadSettings
    auth: ScreenAuth
    asset_version: str
    trusted_proxies: tuple[IPNetwork, ...] = ()
    throttle: LoginThrottle = field(default_factory=LoginThrottle)


def mount_screen(app: Flask, env: Mapping[str, str], url: str) -> Screen:
    """Register the screen on `app`, with the session settings it needs. Mount it after
    the read API (query.api.mount_api) to share the API's pool."""
    settings = ReadSettings.from_env(env)
    auth = ScreenAuth.from_env(env, settings)
    # The read API's pool when the API is mounted first in the same app (one pool per
    # process, as ingest.database wants), else a pool of our own.
    pool = app.extensions.get(API_POOL)
    if pool is None:
        pool = open_pool(url, size=settings.pool_size, timeout=settings.db_timeout, name="screen")
        app.extensions.setdefault(CLOSERS, []).append(pool.close)
    # Changed with every deployment of new CSS/JS, so browsers never mix old and new.
    version = str(max(int(p.stat().st_mtime) for p in STATIC.iterdir()))
    trusted = env_networks(env, "TRUSTED_PROXIES")
    screen = Screen(pool, settings, auth, version, trusted)
    app.extensions[SCREEN] = screen
    app.secret_key = auth.secret_key
    app.session_interface = ScreenSessions(f"{bp.name}.", trusted)
    app.config.update(
        SESSION_COOKIE_NAME="distribmail_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
    )
    app.register_blueprint(bp)
    return screen


def _screen() -> Screen:
    screen: Screen = current_app.extensions[SCREEN]
    return screen


# --- every request: language, then the session ------------------------------------------


@bp.before_request
def _language_and_session() -> Any:
    asked = request.args.get("lang")
    if asked in LANGS:
        session["lang"] = asked
    lang = session.get("lang")
    g.lang = lang if lang in LANGS else DEFAULT_LANG
    if request.endpoint in PUBLIC_ENDPOINTS or _signed_in():
        return None
    if request.endpoint == "screen.rows":
        # The page's script reloads on 401, which brings the login page.
        return jsonify({"error": "sign in again"}), 401
    return redirect(url_for("screen.login", next=request.full_path.rstrip("?")))


def _signed_in() -> bool:
    auth = _screen().auth
    return auth.configured and session.get("auth") == auth.fingerprint


@bp.after_request
def _headers(response: Response) -> Response:
    # No inline script or style anywhere, so the policy can forbid them: were some data
    # ever to slip through unescaped, the browser would still not run it.
    response.headers.setdefault(
        "Content-Security-Policy",
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    )
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    if request.endpoint != "screen.static":
        response.headers["Cache-Control"] = "no-store"
    return response


@bp.app_template_global()
def t(key: str) -> str:
    return text(key, g.get("lang", DEFAULT_LANG))


@bp.context_processor
def _context() -> dict[str, Any]:
    lang = g.get("lang", DEFAULT_LANG)
    screen = _screen()
    switch = MultiDict(request.args)
    switch["lang"] = other_lang(lang)
    return {
        "lang": lang,
        "switch_lang_url": views.with_query(request.path, list(switch.items(multi=True))),
        "signed_in": _signed_in(),
        "asset_version": screen.asset_version,
        "zone_name": screen.settings.timezone.key,
    }


# --- login ------------------------------------------------------------------------------


@bp.route("/login", methods=["GET", "POST"])
def login() -> Any:
    screen = _screen()
    auth = screen.auth
    target = safe_next(request.values.get("next")) or url_for("screen.message_list")
    wrong = False
    if request.method == "POST" and auth.configured:
        client = str(
            client_address(
                request.remote_addr, request.headers.get("X-Forwarded-For"), screen.trusted_proxies
            )
        )
        wait = screen.throttle.retry_after(client)
        if wait:
            page = render_template(
                "screen/login.html",
                configured=True,
                wrong=False,
                next=target,
                wait_minutes=math.ceil(wait / 60),
            )
            return page, 429, {"Retry-After": str(wait)}
        if auth.check(request.form.get("password", "")):
            screen.throttle.succeeded(client)
            lang = g.lang
            # A fresh session: nothing set before the login survives it (session fixation).
            session.clear()
            session["auth"] = auth.fingerprint
            session["lang"] = lang
            session.permanent = True
            return redirect(target)
        screen.throttle.failed(client)
        wrong = True
    status = 401 if wrong else 200
    page = render_template(
        "screen/login.html", configured=auth.configured, wrong=wrong, next=target
    )
    return page, status


@bp.post("/logout")
def logout() -> Any:
    lang = g.lang
    session.clear()
    session["lang"] = lang
    return redirect(url_for("screen.login"))


# --- the list ---------------------------------------------------------------------------


@bp.get("/")
def message_list() -> Any:
    screen = _screen()
    filters = _filters(MessageFiltersQuery())
    page = list_messages(screen.pool, filters, PAGE_SIZE)
    counts = count_messages(screen.pool, replace(filters, statuses=()))
    period = filters.period
    shift = timedelta(days=period.days)
    query = views.filter_pairs(filters)
    return render_template(
        "screen/list.html",
        first=period.first.isoformat(),
        last=period.last.isoformat(),
        q=filters.text or "",
        rows=views.row_views(page.rows, query, g.lang, screen.settings.timezone),
        next_cursor=_cursor(page),
        total=views.total(filters, counts),
        query=urlencode(query),
        page_size=PAGE_SIZE,
        refresh_seconds=REFRESH_SECONDS,
        previous_url=views.list_url(filters, period.first - shift, period.last - shift),
        next_url=views.list_url(filters, period.first + shift, period.last + shift),
        today_url=views.list_url(filters, None, None),
        export_url=views.with_query(url_for("screen.export"), query),
        **views.chips_context(filters, counts, g.lang),
    )


@bp.get("/rows")
def rows() -> Any:
    """A page of the list for the script: after `cursor` ("show more"), or the first
    `limit` rows again (the refresh), with the counts, as HTML made by the same templates."""
    screen = _screen()
    args = load_query(MessageListQuery(), _without_lang(request.args))
    filters = filters_of(args, screen.settings.timezone)
    after = decode_cursor(args["cursor"]) if "cursor" in args else None
    page = list_messages(screen.pool, filters, args["limit"], after)
    counts = count_messages(screen.pool, replace(filters, statuses=()))
    rows = views.row_views(page.rows, views.filter_pairs(filters), g.lang, screen.settings.timezone)
    return jsonify(
        {
            "rows": render_template("screen/_rows.html", rows=rows, continued=bool(after)),
            "chips": render_template(
                "screen/_chips.html", **views.chips_context(filters, counts, g.lang)
            ),
            "total": views.total(filters, counts),
            "next": _cursor(page),
        }
    )


@bp.get("/export.csv")
def export() -> Any:
    screen = _screen()
    filters = _filters(MessageFiltersQuery())
    period = filters.period
    days = period.first.isoformat()
    if period.last != period.first:
        days += f"_{period.last.isoformat()}"
    lines = csv_lines(screen.pool, filters, g.lang, screen.settings.timezone)
    return Response(
        stream_with_context(lines),
        mimetype="text/csv",
        headers={"Content-Disposition": f'attachment; filename="distribmail-{days}.csv"'},
    )


# --- one mail ---------------------------------------------------------------------------


@bp.get("/messages/<key>")
def detail(key: str) -> Any:
    screen = _screen()
    found = get_message(screen.pool, key) if MESSAGE_KEY.match(key) else None
    if found is None:
        raise NotFound(text("not_found", g.lang))
    zone = screen.settings.timezone
    row = found.row
    back = [(k, v) for k, v in request.args.items(multi=True) if k in FILTER_ARGS]
    return render_template(
        "screen/detail.html",
        row=row,
        status=badge(status_of(row), g.lang),
        sent=local_time(row["sent_at"], zone, STEP_FORMAT),
        status_at=local_time(row["status_at"], zone, STEP_FORMAT),
        # Oldest first: the mail's story, read top down.
        steps=views.step_views(found.state.steps, g.lang, zone),
        back_url=views.with_query(url_for("screen.message_list"), back),
    )


# --- errors: a page, not the API's JSON -------------------------------------------------


@bp.errorhandler(DistribmailError)
def _error(error: DistribmailError) -> Any:
    if request.endpoint == "screen.rows":
        return jsonify(error.to_json()), error.status
    message = error.message
    if isinstance(error, DatabaseUnavailable):
        # The read functions' own message is for operators; the page says it simply.
        current_app.logger.warning("screen: %s", error.message)
        message = text("database_down", g.lang)
    return render_template("screen/error.html", message=message), error.status


@bp.errorhandler(psycopg.OperationalError)
def _database_down(error: psycopg.OperationalError) -> Any:
    # PoolTimeout is one too. The detail goes to the log, not to the page.
    current_app.logger.warning("screen: database unavailable: %s", type(error).__name__)
    if request.endpoint == "screen.rows":
        return jsonify({"error": "database unavailable"}), 503
    return render_template("screen/error.html", message=text("database_down", g.lang)), 503


# --- helpers ------------------------------------------------------------------------------


def _without_lang(args: MultiDict[str, str]) -> MultiDict[str, str]:
    # `lang` is the screen's own (kept in the session); the API schema would refuse a
    # value it does not know, and the screen simply ignores it.
    return MultiDict([(k, v) for k, v in args.items(multi=True) if k != "lang"])


def _filters(schema: MessageFiltersQuery) -> Filters:
    args = load_query(schema, _without_lang(request.args))
    return filters_of(args, _screen().settings.timezone)


def _cursor(page: Page) -> str | None:
    return encode_cursor(page.next) if page.next is not None else None
