"""Configuration from the environment (prefix DISTRIBMAIL_), parsed in one place.

The read side builds its own settings with the same helpers, so that every variable is
parsed once and every error names the variable to fix.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ingest.errors import ConfigError

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

PREFIX = "DISTRIBMAIL_"


def env_str(env: Mapping[str, str], name: str, default: str | None = None) -> str | None:
    value = env.get(PREFIX + name, "").strip()
    return value or default


def env_list(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    raw = env.get(PREFIX + name, "")
    return tuple(item.strip() for item in raw.split(",") if item.strip())


_SWITCH = {"on": True, "true": True, "1": True, "off": False, "false": False, "0": False}


def env_switch(env: Mapping[str, str], name: str, default: bool) -> bool:
    """`on` or `off` (also true/false, 1/0)."""
    raw = env_str(env, name)
    if raw is None:
        return default
    try:
        return _SWITCH[raw.lower()]
    except KeyError:
        raise ConfigError(f"{PREFIX}{name} must be on or off, not {raw!r}") from None


def env_int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env_str(env, name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{PREFIX}{name} must be a whole number, not {raw!r}") from None


def env_float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env_str(env, name)
    if raw is None:
        return default
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(f"{PREFIX}{name} must be a number, not {raw!r}") from None


_SIZE = re.compile(r"^\s*(\d+)\s*(|k|kb|kib|m|mb|mib|g|gb|gib)\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def env_size(env: Mapping[str, str], name: str, default: int) -> int:
    """A size in bytes: `10485760`, `10MiB`, `512k` (binary units)."""
    raw = env_str(env, name)
    if raw is None:
        return default
    match = _SIZE.match(raw)
    if not match:
        raise ConfigError(f"{PREFIX}{name} must be a size such as 10MiB or 1048576, not {raw!r}")
    return int(match.group(1)) * _UNITS[match.group(2)[:1].lower()]


def env_networks(env: Mapping[str, str], name: str) -> tuple[IPNetwork, ...]:
    networks = []
    for item in env_list(env, name):
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ConfigError(
                f"{PREFIX}{name}: {item!r} is not an address or a CIDR range (1.179.112.0/20)"
            ) from None
    return tuple(networks)


def env_basic_pairs(env: Mapping[str, str], name: str) -> tuple[tuple[str, str], ...]:
    pairs = []
    for item in env_list(env, name):
        user, sep, password = item.partition(":")
        if not sep or not user or not password:
            raise ConfigError(f"{PREFIX}{name} takes user:password pairs separated by commas")
        pairs.append((user, password))
    return tuple(pairs)


@dataclass(frozen=True)
class IngestSettings:
    database_url: str | None = None
    data_dir: Path = Path("var")
    webhook_tokens: tuple[str, ...] = ()
    webhook_basic_auth: tuple[tuple[str, str], ...] = ()
    allow_cidrs: tuple[IPNetwork, ...] = ()
    trusted_proxies: tuple[IPNetwork, ...] = ()
    max_body: int = 10 * 1024 * 1024
    pool_size: int = 8
    # Seconds to wait for a database connection before spooling: well under Brevo's timeout.
    db_timeout: float = 3.0
    spool_drain_every: float = 5.0
    # Group commit (ingest.group_commit): appends in flight at once per process, and the
    # most events one shared transaction takes.
    append_writers: int = 1
    group_max_events: int = 1000

    def __post_init__(self) -> None:
        for name, value in (
            ("APPEND_WRITERS", self.append_writers),
            ("GROUP_MAX_EVENTS", self.group_max_events),
        ):
            if value < 1:
                raise ConfigError(f"{PREFIX}{name} must be at least 1, not {value}")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> IngestSettings:
        env = os.environ if env is None else env
        return cls(
            database_url=env_str(env, "DATABASE_URL"),
            data_dir=Path(env_str(env, "DATA_DIR", "var") or "var"),
            webhook_tokens=env_list(env, "WEBHOOK_TOKENS"),
            webhook_basic_auth=env_basic_pairs(env, "WEBHOOK_BASIC_AUTH"),
            allow_cidrs=env_networks(env, "WEBHOOK_ALLOW_CIDRS"),
            trusted_proxies=env_networks(env, "TRUSTED_PROXIES"),
            max_body=env_size(env, "MAX_BODY", 10 * 1024 * 1024),
            pool_size=env_int(env, "POOL_SIZE", 8),
            db_timeout=env_float(env, "DB_TIMEOUT", 3.0),
            spool_drain_every=env_float(env, "SPOOL_DRAIN_EVERY", 5.0),
            append_writers=env_int(env, "APPEND_WRITERS", 1),
            group_max_events=env_int(env, "GROUP_MAX_EVENTS", 1000),
        )
