"""Who may see the screen: one password, asked once, then a signed session cookie.

The password is DISTRIBMAIL_UI_PASSWORD, or any of the read API's tokens (whoever holds
one may read the same data through the API anyway). The session is Flask's: a cookie
signed with the secret key (DISTRIBMAIL_SECRET_KEY, else one generated once into the data
folder, so that sessions survive a restart and every worker signs alike), HttpOnly,
SameSite=Strict, and Secure whenever the browser came over https (behind nginx: told by
X-Forwarded-Proto from a DISTRIBMAIL_TRUSTED_PROXIES address). SameSite=Strict is also
what protects the POST forms (logout) from other sites: the browser does not send the
cookie on a cross-site request at all.

Only the screen's pages use the session, and the other routes (webhooks above all) are
the busy ones: `ScreenSessions` opens it only for a path the screen serves, and builds its
signing serializer once rather than on every request, as Flask's own interface does.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flask import Flask, Request, has_request_context, request
from flask.sessions import SecureCookieSession, SecureCookieSessionInterface
from itsdangerous import URLSafeTimedSerializer

from ingest.auth import client_address, in_networks
from ingest.secret_files import load_or_create
from ingest.settings import IPNetwork, env_str
from query.settings import ReadSettings

log = logging.getLogger(__name__)

SECRET_KEY_FILE = "secret-key"


@dataclass(frozen=True)
class ScreenAuth:
    passwords: tuple[str, ...]
    secret_key: bytes

    @classmethod
    def from_env(cls, env: Mapping[str, str], settings: ReadSettings) -> ScreenAuth:
        password = env_str(env, "UI_PASSWORD")
        passwords = ((password,) if password else ()) + settings.api_tokens
        data_dir = Path(env_str(env, "DATA_DIR", "var") or "var")
        configured = env_str(env, "SECRET_KEY")
        secret_key = configured.encode() if configured else load_or_create_secret_key(data_dir)
        return cls(passwords, secret_key)

    @property
    def configured(self) -> bool:
        return bool(self.passwords)

    def check(self, given: str) -> bool:
        """Constant time, and every candidate is compared even after a match, so that the
        answer's timing says nothing about which one matched, or how much of it."""
        given_bytes = given.encode()
        matched = False
        for password in self.passwords:
            matched |= hmac.compare_digest(given_bytes, password.encode())
        return matched and bool(given)

    @property
    def fingerprint(self) -> str:
        """Kept in the session at login and checked on every request: changing the password
        (or rotating the tokens) signs every open session out. Keyed with the secret key,
        because a Flask session is readable by its holder: a plain hash of a weak password
        in the cookie could be guessed offline."""
        material = "\0".join(sorted(self.passwords)).encode()
        return hmac.new(self.secret_key, material, hashlib.sha256).hexdigest()[:32]


def came_over_https(request: Request, trusted_proxies: tuple[IPNetwork, ...]) -> bool:
    """The request reached us over https, or a trusted proxy's X-Forwarded-Proto says the
    browser's did (the last value: the one the nearest proxy set)."""
    if request.scheme == "https":
        return True
    forwarded = request.headers.get("X-Forwarded-Proto")
    if not forwarded:
        return False
    peer = client_address(request.remote_addr, None, ())  # the peer itself, no header
    if peer is None or not in_networks(peer, trusted_proxies):
        return False
    return forwarded.split(",")[-1].strip().lower() == "https"


def load_or_create_secret_key(data_dir: Path) -> bytes:
    """The key generated once and kept in `<data_dir>/secret-key` (mode 0600)."""
    key, created = load_or_create(data_dir / SECRET_KEY_FILE, nbytes=48)
    if created:
        log.info("generated the screen's secret key in %s", data_dir / SECRET_KEY_FILE)
    return key.encode()


def safe_next(target: str | None) -> str | None:
    """Where to go after login: only a path of this site. `//evil.example` and
    `/\\evil.example` are other sites to a browser, so they are refused too."""
    if not target or not target.startswith("/") or target.startswith(("//", "/\\")):
        return None
    if any(ch in target for ch in "\r\n\t"):
        return None
    return target


class ScreenSessions(SecureCookieSessionInterface):
    """Flask's signed-cookie session, opened only on the paths of the endpoints whose names
    start with `endpoint_prefix` (a blueprint's); everywhere else Flask gets a null session,
    which it never reads from a cookie nor saves."""

    def __init__(self, endpoint_prefix: str, trusted_proxies: tuple[IPNetwork, ...] = ()) -> None:
        self.endpoint_prefix = endpoint_prefix
        self.trusted_proxies = trusted_proxies
        # The first segments of those endpoints' paths ("" for "/"), read from the app's URL
        # map on the first request (it is complete by then); None: every path.
        self._segments: frozenset[str] | None = None
        self._mapped = False
        self._serializer: tuple[tuple[Any, ...], URLSafeTimedSerializer | None] | None = None

    def _first_segments(self, app: Flask) -> frozenset[str] | None:
        segments = set()
        for rule in app.url_map.iter_rules():
            if rule.endpoint.startswith(self.endpoint_prefix):
                segment = rule.rule.split("/", 2)[1]
                if "<" in segment or rule.host or rule.subdomain:
                    return None  # a variable first segment: it may be any path
                segments.add(segment)
        return frozenset(segments)

    def open_session(self, app: Flask, request: Request) -> SecureCookieSession | None:
        if not self._mapped:
            self._segments = self._first_segments(app)
            self._mapped = True
        if self._segments is not None and request.path.split("/", 2)[1] not in self._segments:
            return None  # not one of ours: Flask makes a null session
        return super().open_session(app, request)

    def get_cookie_secure(self, app: Flask) -> bool:
        """Secure (sent back over https only) when the browser came over https: straight,
        or through a trusted proxy that says so (nginx's X-Forwarded-Proto). Over plain
        http (the quick start on localhost) a Secure cookie would never come back."""
        if app.config["SESSION_COOKIE_SECURE"]:
            return True
        if not has_request_context():
            return False
        return came_over_https(request, self.trusted_proxies)

    def get_signing_serializer(self, app: Flask) -> URLSafeTimedSerializer | None:
        # Built again only when the key (or its fallbacks) changed since.
        keys = (app.secret_key, *(app.config["SECRET_KEY_FALLBACKS"] or ()))
        cached = self._serializer
        if cached is None or cached[0] != keys:
            cached = self._serializer = (keys, super().get_signing_serializer(app))
        return cached[1]
