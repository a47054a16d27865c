"""Configuration of the read side, from DISTRIBMAIL_* variables, with ingest's helpers.

Every variable is parsed here once, at start; a wrong value stops the start with a
ConfigError that names the variable, never a request.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ingest.errors import ConfigError
from ingest.settings import PREFIX, env_float, env_int, env_list, env_str

# Gestan shows times, and cuts days, in the French business day unless told otherwise.
DEFAULT_TIMEZONE = "Europe/Paris"


def env_zone(env: Mapping[str, str], name: str, default: str) -> ZoneInfo:
    raw = env_str(env, name, default) or default
    try:
        return ZoneInfo(raw)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(
            f"{PREFIX}{name} must be an IANA time zone such as Europe/Paris, not {raw!r}"
        ) from None


@dataclass(frozen=True)
class ReadSettings:
    # Bearer tokens of the read API, a list so that one can be rotated while the other
    # still works. Deliberately apart from the webhook tokens: Brevo's secret, which
    # travels over the internet, must not open the customers' mail history.
    api_tokens: tuple[str, ...] = ()
    timezone: ZoneInfo = ZoneInfo(DEFAULT_TIMEZONE)
    pool_size: int = 8
    db_timeout: float = 3.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ReadSettings:
        env = os.environ if env is None else env
        pool_size = env_int(env, "API_POOL_SIZE", env_int(env, "POOL_SIZE", 8))
        if pool_size < 1:
            raise ConfigError(f"{PREFIX}API_POOL_SIZE must be at least 1, not {pool_size}")
        return cls(
            api_tokens=env_list(env, "API_TOKENS"),
            timezone=env_zone(env, "TIMEZONE", DEFAULT_TIMEZONE),
            pool_size=pool_size,
            db_timeout=env_float(env, "DB_TIMEOUT", 3.0),
        )
