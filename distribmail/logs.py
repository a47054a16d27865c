"""Structured logs: one JSON object per line, with the request id, and no secrets.

Every line has `time` (UTC, ISO 8601), `level`, `logger`, `message`, and `request_id` when
it was written while a request was served; the request line that `install_logging` adds
also has `method`, `path`, `status` and `duration_ms`. The request id is the caller's
`X-Request-Id` when it looks like one (so nginx's `$request_id` follows a request through
both logs), else a new one; it is echoed in the response's `X-Request-Id`.

Secrets never reach the output: the formatter scrubs every line, traceback included, of
the configured secrets themselves (tokens, passwords, keys, the database password) and of
anything shaped like one (`Bearer ...`, `Basic ...`, `password=...`, `user:pass@` in a
URL). The request line, written for every request, is the one exception to "the whole
line": its only free text (method, path, a client's request id) is scrubbed value by value
when it is built, which costs a fraction of the whole-line pass. The query string is not
logged at all: the screen's and the API's carry people's addresses, and nothing there
helps an operator more than the path does.

DISTRIBMAIL_LOG_LEVEL (default INFO); DISTRIBMAIL_LOG_FORMAT `json` (default) or `text`.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import secrets
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from contextvars import ContextVar, Token
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from flask import Flask, Response, g, request
from gunicorn import glogging

from distribmail.log_writer import FLUSH_SECONDS, BackgroundWriter
from ingest.auth import client_address
from ingest.settings import PREFIX, env_networks, env_str
from ingest.web import ENDPOINT

REQUEST_ID_HEADER = "X-Request-Id"
ACCESS_LOGGER = "distribmail.access"
REDACTED = "[redacted]"

# What a client may choose as its request id: an id, not a place to smuggle text into logs.
_SANE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:@/+=-]{8,128}$")

# Variables whose value is a secret, by the end of their name (DISTRIBMAIL_API_TOKENS, ...).
_SECRET_NAMES = re.compile(r"(TOKENS?|PASSWORDS?|SECRET(_KEY)?|API_KEY|BASIC_AUTH)$")

_SHAPES = [
    # An Authorization header's value, wherever it got pasted.
    (re.compile(r"\b(Bearer|Basic|Token)\s+[A-Za-z0-9._~+/=-]+", re.I), r"\1 " + REDACTED),
    # user:password@ in any URL (postgresql://app:secret@db/...).
    (re.compile(r"(\b[a-z][a-z0-9+.-]*://[^:/@\s]+:)[^@\s]+@", re.I), r"\1" + REDACTED + "@"),
    # libpq key=value strings and similar: password=..., token: ..., api-key=...
    (
        re.compile(
            r"\b(password|passwd|pwd|token|api[_-]?key|secret)(\s*[=:]\s*)('[^']*'|\"[^\"]*\"|\S+)",
            re.IGNORECASE,
        ),
        r"\1\2" + REDACTED,
    ),
]  # fmt: skip

# The request id of the request being served by this thread (gthread: one per request).
_request_id: ContextVar[str | None] = ContextVar("distribmail_request_id", default=None)

# The fields of a LogRecord that are not "extra" ones a caller passed.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}

# On a record whose every free-text value was scrubbed when it was built (the request
# line): (the Redactor that scrubbed it, its extra fields). A formatter with that same
# Redactor adds the fields as they are and skips the whole-line pass; any other scrubs the
# whole line as usual. A leading underscore keeps it out of the output.
PRESCRUBBED = "_distribmail_prescrubbed"

# Built once: json.dumps with arguments builds a new encoder on every call.
_encode = json.JSONEncoder(ensure_ascii=False, default=str).encode

# A short value that repeats (a method, a route's path) is scrubbed once, then remembered.
# Past _MEMO_SIZE values the memo starts again, and a value longer than _MEMO_LONGEST is
# never kept: made-up paths can neither grow it for ever nor fill it with long ones.
_MEMO_SIZE = 1024
_MEMO_LONGEST = 200


def current_request_id() -> str | None:
    return _request_id.get()


class Redactor:
    """Replaces configured secrets, then secret-shaped text, in a string."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        # Longest first, so that a secret containing another is replaced whole; a secret
        # shorter than 4 characters would blank out ordinary words, and is no secret.
        self.secrets = sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True)
        self._memo: dict[str, str] = {}

    def add(self, secrets: Iterable[str]) -> None:
        merged = {*self.secrets, *(s for s in secrets if len(s) >= 4)}
        self.secrets = sorted(merged, key=len, reverse=True)
        self._memo = {}  # scrubbed with fewer secrets than we now know

    def value(self, text: str) -> str:
        """The same scrubbing, remembered: for short values that repeat (a request's
        method and path)."""
        if len(text) > _MEMO_LONGEST:
            return self(text)
        memo = self._memo
        scrubbed = memo.get(text)
        if scrubbed is None:
            scrubbed = self(text)
            if len(memo) >= _MEMO_SIZE:
                memo.clear()
            memo[text] = scrubbed
        return scrubbed

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        for pattern, replacement in _SHAPES:
            text = pattern.sub(replacement, text)
        return text


def secrets_in_env(env: Mapping[str, str]) -> list[str]:
    """The secret values configured in DISTRIBMAIL_* variables, one by one."""
    found: list[str] = []
    for name, value in env.items():
        if not name.startswith(PREFIX) or not value.strip():
            continue
        if _SECRET_NAMES.search(name):
            for item in value.split(","):
                item = item.strip()
                # user:password pairs: the password is the secret (the user is not)
                found.append(item.partition(":")[2] if name.endswith("BASIC_AUTH") else item)
                found.append(item)
        elif name.endswith("_URL"):
            password = urlsplit(value.strip()).password
            if password:
                found.append(password)
    return [s for s in found if s]


def _document(
    created: float, level: str, logger: str, message: str, request_id: str | None
) -> dict[str, Any]:
    """The fields every JSON line starts with, in their order."""
    document: dict[str, Any] = {
        "time": datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds"),
        "level": level,
        "logger": logger,
        "message": message,
    }
    if request_id:
        document["request_id"] = request_id
    return document


class JsonFormatter(logging.Formatter):
    def __init__(self, redact: Redactor | None = None) -> None:
        super().__init__()
        self.redact = redact or Redactor()

    @staticmethod
    def prescrubbed_line(
        created: float,
        level: str,
        logger: str,
        message: str,
        request_id: str | None,
        fields: Mapping[str, Any],
    ) -> str:
        """A line whose free text was scrubbed by this formatter's Redactor already (the
        request line): its fields as they are, without the whole-line pass."""
        document = _document(created, level, logger, message, request_id)
        document.update(fields)
        return _encode(document)

    def format(self, record: logging.LogRecord) -> str:
        request_id = getattr(record, "request_id", None) or _request_id.get()
        scrubbed_by, fields = getattr(record, PRESCRUBBED, (None, {}))
        if scrubbed_by is self.redact and not record.exc_info and not record.stack_info:
            return self.prescrubbed_line(
                record.created,
                record.levelname,
                record.name,
                record.getMessage(),
                request_id,
                fields,
            )
        document = _document(
            record.created, record.levelname, record.name, record.getMessage(), request_id
        )
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in document and not key.startswith("_"):
                document[key] = value
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            document["stack"] = record.stack_info
        line = _encode(document)
        # Scrubbed once, as a whole line: a secret in an extra field or a traceback too.
        return self.redact(line)


class TextFormatter(logging.Formatter):
    """For a person at a terminal; the same scrubbing."""

    def __init__(self, redact: Redactor | None = None) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.redact = redact or Redactor()

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        request_id = _request_id.get()
        return self.redact(f"{line} [{request_id}]" if request_id else line)


class _OurHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Marks the handler we installed, so that a second app in the process reuses it."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)
        self.background: BackgroundWriter | None = None

    def write_in_background(self, every: float = FLUSH_SECONDS) -> None:
        """From now on, lines below WARNING go out through a writer thread, every `every`
        seconds."""
        if self.background is None:
            self.background = BackgroundWriter(lambda: sys.stderr, every)

    def handle(self, record: logging.LogRecord) -> bool:
        # As logging.Handler.handle, but the line is formatted before the handler's lock
        # is taken, and only the write is under it: with a request line per request, eight
        # threads queued on that lock while one of them built its JSON and scrubbed it.
        if not self.filter(record):
            return False
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return True
        try:
            self.write_line(line, record.levelno)
        except Exception:
            self.handleError(record)
        return True

    def write_line(self, line: str, levelno: int) -> None:
        """Write a formatted line (without its newline); raises what the output raises."""
        line += self.terminator
        background = self.background
        if background is not None:
            if levelno < logging.WARNING:
                background.put(line)
            else:
                background.write_now(line)
            return
        with self.lock:  # type: ignore[union-attr]
            # Whoever replaced sys.stderr since (gunicorn, pytest's capture) is followed.
            self.stream = sys.stderr
            self.stream.write(line)
            self.flush()

    def flush(self) -> None:
        # logging.shutdown calls this at exit: what the writer thread holds goes out too.
        if self.background is not None:
            self.background.flush()
        super().flush()


def write_in_background() -> None:
    """Write this process's log lines from a thread (distribmail.log_writer): for
    `distribmail serve`'s workers, where a request line is written per request."""
    handler = _root_handler()
    if handler is not None:
        handler.write_in_background()


def _root_handler() -> _OurHandler | None:
    for handler in logging.getLogger().handlers:
        if isinstance(handler, _OurHandler):
            return handler
    return None


def configure_root(env: Mapping[str, str], secrets: Iterable[str] = ()) -> Redactor:
    """Put our formatter on the root logger, once per process; returns its Redactor.

    `logging.basicConfig`'s plain handler (the CLI sets one up before gunicorn forks) is
    replaced, so that a line is written once; handlers of other kinds (pytest's capture,
    a file an embedder added) are left alone.
    """
    root = logging.getLogger()
    handler = _root_handler()
    if handler is None:
        for other in list(root.handlers):
            if type(other) is logging.StreamHandler:
                root.removeHandler(other)
        handler = _OurHandler()
        root.addHandler(handler)
    redact = getattr(handler.formatter, "redact", None) or Redactor()
    redact.add([*secrets_in_env(env), *secrets])
    style = (env_str(env, "LOG_FORMAT", "json") or "json").lower()
    handler.setFormatter(TextFormatter(redact) if style == "text" else JsonFormatter(redact))
    level = (env_str(env, "LOG_LEVEL", "INFO") or "INFO").upper()
    root.setLevel(logging.getLevelName(level) if level in logging._nameToLevel else logging.INFO)
    return redact


def _app_secrets(app: Flask) -> list[str]:
    """Tokens the app holds but the environment may not: the generated webhook token."""
    found = []
    for extension in app.extensions.values():
        for attribute in ("tokens", "passwords"):
            for value in getattr(extension, attribute, ()) or ():
                found.append(value.decode() if isinstance(value, bytes) else str(value))
    return found


@dataclass(frozen=True, slots=True)
class _Served:
    """What the request line needs from the start of its request, kept in one attribute
    of `g` (each access to `g` goes through a proxy)."""

    request_id: str
    given_id: bool  # the id is the client's own, so it is scrubbed before it is logged
    started: float  # time.perf_counter()
    token: Token[str | None]  # resets the request id when the request ends


class _RequestLog:
    """A request id for every request, and its request line: for Flask's hooks and for
    the webhook's plain WSGI path (ingest.webhook_wsgi) alike."""

    def __init__(self, redact: Redactor, trusted: Any) -> None:
        self.redact = redact
        self.access = logging.getLogger(ACCESS_LOGGER)
        # A request's client comes from a handful of (address, header) pairs: parsed once
        # each. (At most 256 of them kept: a header is at most 8 KB under gunicorn.)
        self.client_of = functools.lru_cache(maxsize=256)(
            lambda remote_addr, forwarded_for: str(
                client_address(remote_addr, forwarded_for, trusted)
            )
        )

    def start(self, given: str) -> _Served:
        sane = _SANE_REQUEST_ID.match(given) is not None
        request_id = given if sane else secrets.token_hex(16)
        return _Served(request_id, sane, time.perf_counter(), _request_id.set(request_id))

    def finish(
        self,
        served: _Served,
        method: str,
        path: str,
        status: int,
        remote_addr: str | None,
        forwarded_for: str | None,
    ) -> None:
        access, redact = self.access, self.redact
        duration = time.perf_counter() - served.started
        if not access.isEnabledFor(logging.INFO):
            return
        # The free text of this line, scrubbed here: the method and the path come from
        # the client, and so may a (sane-looking) request id; the rest are numbers, an
        # address and our own words.
        fields = {
            "method": redact.value(method),
            "path": redact.value(path),
            "status": status,
            "duration_ms": round(duration * 1000, 2),
            "client": self.client_of(remote_addr, forwarded_for),
        }
        # Not remembered: behind nginx every request has its own.
        request_id = redact(served.request_id) if served.given_id else served.request_id
        # Scrubbed as a whole too: a shape may straddle the method and the path.
        message = redact.value(f"{method} {path} {status}")
        handler = self._sole_handler()
        if handler is not None:
            line = JsonFormatter.prescrubbed_line(
                time.time(), "INFO", access.name, message, request_id, fields
            )
            try:
                handler.write_line(line, logging.INFO)
                return
            except Exception:
                pass  # the record's way below reports it
        extra: dict[str, Any] = {**fields, PRESCRUBBED: (redact, fields)}
        if served.given_id:
            extra["request_id"] = request_id
        # makeRecord and handle, as Logger.info does, less the search for the caller's
        # file and line, which this line never shows.
        record = access.makeRecord(
            access.name, logging.INFO, __file__, 0, message, (), None, "finish_request", extra
        )
        access.handle(record)

    def _sole_handler(self) -> _OurHandler | None:
        """Our handler, when it is the only one the request line would reach, with no
        filter on the way and our JSON formatter with this Redactor: the line can then be
        built and handed to it without a LogRecord and the logging machinery (a third of
        the line's cost). Checked per line: pytest's caplog, or an embedder's file
        handler, may be added at any time, and they get records as before."""
        found: _OurHandler | None = None
        logger: logging.Logger | None = self.access
        while logger is not None:
            if logger.filters:
                return None
            for handler in logger.handlers:
                if found is not None or not isinstance(handler, _OurHandler):
                    return None
                found = handler
            logger = logger.parent if logger.propagate else None
        if (
            found is None
            or found.filters
            or found.level > logging.INFO
            or not isinstance(found.formatter, JsonFormatter)
            or found.formatter.redact is not self.redact
        ):
            return None
        return found

    @staticmethod
    def forget(served: _Served) -> None:
        _request_id.reset(served.token)

    def wsgi_hook(self, environ: dict[str, Any]) -> Callable[[int, list[tuple[str, str]]], None]:
        """The same, for ingest.webhook_wsgi."""
        served = self.start(environ.get("HTTP_X_REQUEST_ID", ""))

        def finish(status: int, headers: list[tuple[str, str]]) -> None:
            try:
                headers.append((REQUEST_ID_HEADER, served.request_id))
                self.finish(
                    served,
                    environ.get("REQUEST_METHOD", ""),
                    environ.get("PATH_INFO", ""),
                    status,
                    environ.get("REMOTE_ADDR"),
                    environ.get("HTTP_X_FORWARDED_FOR"),
                )
            finally:
                self.forget(served)

        return finish


def install_logging(app: Flask, env: Mapping[str, str]) -> None:
    """JSON logs for the process, and a request id and a request line for every request.

    Call it after the receiver and the read side are mounted, so that their tokens are
    known to the scrubber."""
    redact = configure_root(env, _app_secrets(app))
    # The client behind nginx, as the webhook's allow-list sees it (same trusted proxies).
    request_log = _RequestLog(redact, env_networks(env, "TRUSTED_PROXIES"))
    endpoint = app.extensions.get(ENDPOINT)
    if endpoint is not None:
        endpoint.hooks.append(request_log.wsgi_hook)

    @app.before_request
    def start_request() -> None:
        served = request_log.start(request.headers.get(REQUEST_ID_HEADER, ""))
        g.request_id = served.request_id
        g.request_served = served

    @app.after_request
    def finish_request(response: Response) -> Response:
        served: _Served | None = g.get("request_served")
        if served is None:  # before_request did not run (another hook failed first)
            return response
        response.headers[REQUEST_ID_HEADER] = served.request_id
        request_log.finish(
            served,
            request.method,
            request.path,
            response.status_code,
            request.remote_addr,
            request.headers.get("X-Forwarded-For"),
        )
        return response

    @app.teardown_request
    def forget_request(_: BaseException | None) -> None:
        served: _Served | None = g.pop("request_served", None)
        if served is not None:
            request_log.forget(served)


class GunicornLogger(glogging.Logger):  # type: ignore[misc]
    """gunicorn's own lines (boot, worker timeouts, and its access log when one is asked
    for) in the same JSON shape. Set as `logger_class` by deploy/gunicorn.conf.py."""

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        redact = Redactor(secrets_in_env(os.environ))
        for log in (self.error_log, self.access_log):
            for handler in log.handlers:
                if getattr(handler, "_gunicorn", False):
                    handler.setFormatter(JsonFormatter(redact))

    def access(self, resp: Any, req: Any, environ: dict[str, Any], request_time: Any) -> None:
        # gunicorn's access_log_format pastes values into a template unescaped (a quote in
        # a path would break the JSON): we build the object ourselves.
        if not self.access_log_enabled:
            return
        status = resp.status.split(None, 1)[0] if isinstance(resp.status, str) else resp.status
        headers = {name.lower(): value for name, value in resp.headers}
        self.access_log.info(
            "%s %s %s",
            environ.get("REQUEST_METHOD"),
            environ.get("PATH_INFO"),
            status,
            extra={
                "request_id": headers.get("x-request-id"),
                "method": environ.get("REQUEST_METHOD"),
                "path": environ.get("PATH_INFO"),
                "status": int(status),
                "duration_ms": round(request_time.total_seconds() * 1000, 2),
                "remote_addr": environ.get("REMOTE_ADDR"),
                "bytes": getattr(resp, "sent", None),
            },
        )
