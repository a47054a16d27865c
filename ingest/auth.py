"""Who may post webhooks: a source allow-list, then a bearer token or basic credentials.

Brevo signs nothing (brevo.md section 4): it can send a bearer token or basic auth that
we configured on the webhook, from published IP ranges that change over time. Secrets
are lists so that one can be rotated while the other still works, and are compared in
constant time, every configured one each time.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hmac
import ipaddress
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ingest.errors import Forbidden, Unauthorized
from ingest.secret_files import load_or_create
from ingest.settings import IngestSettings, IPNetwork

log = logging.getLogger(__name__)

TOKEN_FILE = "webhook-token"
REALM = 'realm="distribmail"'


def _same(given: bytes, expected: bytes) -> bool:
    return hmac.compare_digest(given, expected)


IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def in_networks(address: IPAddress, networks: tuple[IPNetwork, ...]) -> bool:
    return any(address in net for net in networks)


def client_address(
    remote_addr: str | None, forwarded_for: str | None, trusted: tuple[IPNetwork, ...]
) -> IPAddress | None:
    """The real client: X-Forwarded-For is believed only when it comes from a trusted proxy,
    read from the right, skipping the trusted proxies themselves."""
    try:
        address = ipaddress.ip_address(remote_addr or "")
    except ValueError:
        return None
    if not forwarded_for or not in_networks(address, trusted):
        return address
    for hop in reversed([h.strip() for h in forwarded_for.split(",") if h.strip()]):
        try:
            address = ipaddress.ip_address(hop)
        except ValueError:
            return None  # a forged or broken header: trust nothing
        if not in_networks(address, trusted):
            return address
    return address


@dataclass(frozen=True)
class WebhookAuth:
    tokens: tuple[bytes, ...]
    basic: tuple[bytes, ...]  # b"user:password", compared whole
    allow: tuple[IPNetwork, ...] = ()
    trusted_proxies: tuple[IPNetwork, ...] = ()

    @classmethod
    def from_settings(
        cls, settings: IngestSettings, generated_token: str | None = None
    ) -> WebhookAuth:
        tokens = list(settings.webhook_tokens)
        if generated_token:
            tokens.append(generated_token)
        return cls(
            tokens=tuple(t.encode() for t in tokens),
            basic=tuple(f"{u}:{p}".encode() for u, p in settings.webhook_basic_auth),
            allow=settings.allow_cidrs,
            trusted_proxies=settings.trusted_proxies,
        )

    @functools.cached_property
    def _source(self) -> Callable[[str | None, str | None], tuple[bool, IPAddress | None]]:
        """Whether a (peer address, X-Forwarded-For) pair is in the allow-list, and the
        client it names. Remembered: Brevo posts from a few addresses, through the same
        proxy, and parsing them and testing each range is most of this check's time. (At
        most 256 pairs kept: a header is at most 8 KB under gunicorn.)"""

        @functools.lru_cache(maxsize=256)
        def source(
            remote_addr: str | None, forwarded_for: str | None
        ) -> tuple[bool, IPAddress | None]:
            client = client_address(remote_addr, forwarded_for, self.trusted_proxies)
            return client is not None and in_networks(client, self.allow), client

        return source

    def challenge(self) -> str:
        schemes = (["Bearer"] if self.tokens else []) + (["Basic"] if self.basic else [])
        return ", ".join(f"{scheme} {REALM}" for scheme in schemes or ["Bearer"])

    def check(
        self, authorization: str | None, forwarded_for: str | None, remote_addr: str | None
    ) -> None:
        """Raise Forbidden (outside the allow-list) or Unauthorized; return when allowed."""
        if self.allow:
            allowed, client = self._source(remote_addr, forwarded_for)
            if not allowed:
                raise Forbidden(f"source address {client} is not allowed to post webhooks")
        scheme, _, value = (authorization or "").strip().partition(" ")
        value = value.strip()
        scheme = scheme.lower()
        if scheme == "bearer" and value:
            given = value.encode()
            if any([_same(given, token) for token in self.tokens]):  # noqa: C419 (all compared)
                return
        elif scheme == "basic" and value:
            try:
                given = base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                given = b""
            if any([_same(given, pair) for pair in self.basic]):  # noqa: C419 (all compared)
                return
        raise Unauthorized(
            "missing or wrong credentials: send the webhook token as 'Authorization: Bearer ...'",
            challenge=self.challenge(),
        )


def has_configured_credentials(settings: IngestSettings) -> bool:
    return bool(settings.webhook_tokens or settings.webhook_basic_auth)


def load_or_create_token(data_dir: Path) -> str:
    """The token generated once when no credential is configured, kept in the data folder."""
    token, created = load_or_create(data_dir / TOKEN_FILE)
    if created:
        log.info("generated a webhook token in %s", data_dir / TOKEN_FILE)
    return token
