"""A small client for Brevo's REST API (v3): the `api-key` header, timeouts, retries.

What Brevo does (brevo.md sections 6 and 7): a refused key is a 401 with a JSON body
`{"code": "unauthorized", "message": "Key not found"}`; a rate-limited call is a 429 that
carries `x-sib-ratelimit-limit`, `-remaining` and `-reset` (seconds until the window
resets; the events report is limited to a few hundred calls an hour, so the reset can be
close to an hour away). We retry network errors, 5xx and 429; nothing else, because a 4xx
says that the request itself is wrong and sending it again changes nothing.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import requests
from urllib3.exceptions import NewConnectionError

from ingest.errors import ConfigError, DistribmailError
from ingest.settings import PREFIX, env_float, env_int, env_str

log = logging.getLogger(__name__)

DEFAULT_URL = "https://api.brevo.com/v3"
EVENTS_PATH = "/smtp/statistics/events"
# Documented maximum page of /smtp/statistics/events (older specs said 100; Brevo answers
# 400 above its maximum, which --page-size can then lower).
MAX_PAGE = 5000


class BrevoError(DistribmailError):
    """Brevo answered something we cannot use; `message` says what to check."""

    status = 502


class BrevoAuthError(BrevoError):
    """The key was refused: nothing will work until the operator fixes it."""


class BrevoRequestError(BrevoError):
    """A 4xx other than 401/429: the request is wrong (bad range, unknown event name ...)."""

    def __init__(self, message: str, http_status: int, code: str | None = None) -> None:
        super().__init__(message, http_status=http_status, code=code)
        self.http_status = http_status
        self.code = code


class BrevoUnavailable(BrevoError):
    """Brevo (or the network) kept failing after every retry."""

    status = 503


class BrevoBadResponse(BrevoError):
    """A 2xx whose body is not what the endpoint documents (not JSON, wrong shape)."""


@dataclass(frozen=True)
class BrevoSettings:
    api_key: str | None = None
    api_url: str = DEFAULT_URL
    timeout: float = 60.0  # read timeout: a 5000-event page can take a while
    attempts: int = 5
    # The longest we sleep on one 429 even if Brevo's reset is further away; we then try
    # again (and wait again) until the attempts run out.
    max_wait: float = 300.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> BrevoSettings:
        env = os.environ if env is None else env
        return cls(
            api_key=env_str(env, "BREVO_API_KEY"),
            api_url=(env_str(env, "BREVO_API_URL", DEFAULT_URL) or DEFAULT_URL).rstrip("/"),
            timeout=env_float(env, "BREVO_TIMEOUT", 60.0),
            attempts=max(1, env_int(env, "BREVO_ATTEMPTS", 5)),
            max_wait=env_float(env, "BREVO_MAX_WAIT", 300.0),
        )


def _brevo_says(response: requests.Response) -> tuple[str | None, str]:
    """Brevo's error `code` and `message`, or a short piece of the body."""
    try:
        body = response.json()
    except ValueError:
        return None, response.text[:200].strip() or response.reason
    if isinstance(body, dict):
        return body.get("code"), str(body.get("message") or body)[:300]
    return None, str(body)[:200]


def _auth_error(response: requests.Response, url: str) -> BrevoAuthError:
    _, said = _brevo_says(response)
    return BrevoAuthError(
        "Brevo refused the API key (check DISTRIBMAIL_BREVO_API_KEY: it must be an API v3 "
        "key, 'xkeysib-...', from Brevo > SMTP & API > API keys, not the SMTP key; that it "
        "was not deleted; and, if 'Authorised IPs' is on in Brevo's security settings, that "
        f"this machine's address is allowed). Brevo said: {said} [{url}]"
    )


class BrevoClient:
    """One `requests.Session` (kept-alive connections) and the retry policy."""

    def __init__(
        self,
        settings: BrevoSettings,
        *,
        backoff: float = 1.0,
        sleep: Callable[[float], object] = time.sleep,
    ) -> None:
        if not settings.api_key:
            raise ConfigError(
                f"{PREFIX}BREVO_API_KEY is not set: create an API key in Brevo "
                "(SMTP & API > API keys) and put it in that variable"
            )
        self.settings = settings
        self.backoff = backoff
        self._sleep = sleep
        self._session = requests.Session()
        self._session.headers.update({"api-key": settings.api_key, "accept": "application/json"})

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> BrevoClient:
        return cls(BrevoSettings.from_env(env))

    def close(self) -> None:
        self._session.close()

    def get(self, path: str, params: Mapping[str, Any] | None = None) -> Any:
        return self.request("GET", path, params=params)

    def post(self, path: str, body: Mapping[str, Any]) -> Any:
        return self.request("POST", path, body=body)

    def put(self, path: str, body: Mapping[str, Any]) -> Any:
        return self.request("PUT", path, body=body)

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        body: Mapping[str, Any] | None = None,
    ) -> Any:
        """The decoded JSON answer (None when empty). Raises a BrevoError subclass."""
        url = self.settings.api_url + path
        # A POST that reached Brevo may have created something even if the answer was lost
        # or a 5xx: sending it again could create a second webhook. Retry a POST only when
        # it surely was not processed (no connection, or a 429).
        idempotent = method != "POST"
        last_problem = ""
        for attempt in range(1, self.settings.attempts + 1):
            try:
                response = self._session.request(
                    method, url, params=params, json=body, timeout=(10, self.settings.timeout)
                )
            except requests.ConnectionError as e:
                if isinstance(e, requests.ConnectTimeout) or idempotent or _not_sent(e):
                    last_problem = f"cannot reach Brevo: {type(e).__name__}"
                    self._pause(attempt, last_problem, url)
                    continue
                raise BrevoUnavailable(f"lost the connection to Brevo during {method} {url}") from e
            except requests.Timeout as e:
                if not idempotent:
                    raise BrevoUnavailable(f"Brevo did not answer {method} {url} in time") from e
                last_problem = "Brevo did not answer in time"
                self._pause(attempt, last_problem, url)
                continue
            except requests.RequestException as e:  # a body cut short, a broken encoding
                if not idempotent:
                    raise BrevoUnavailable(f"{method} {url} failed: {type(e).__name__}") from e
                last_problem = f"broken answer: {type(e).__name__}"
                self._pause(attempt, last_problem, url)
                continue

            if response.status_code == 429:
                last_problem = "rate limited (429)"
                if attempt < self.settings.attempts:
                    self._sleep(self._rate_limit_wait(response, url))
                continue
            if response.status_code >= 500:
                code, said = _brevo_says(response)
                last_problem = f"HTTP {response.status_code}: {said}"
                if not idempotent:
                    raise BrevoUnavailable(f"Brevo failed {method} {url}: {last_problem}")
                self._pause(attempt, last_problem, url)
                continue
            if response.status_code == 401:
                raise _auth_error(response, url)
            if response.status_code >= 400:
                code, said = _brevo_says(response)
                raise BrevoRequestError(
                    f"Brevo refused {method} {path} (HTTP {response.status_code}): {said}",
                    response.status_code,
                    code,
                )
            return _decode(response, url)
        raise BrevoUnavailable(
            f"Brevo kept failing on {method} {url} after {self.settings.attempts} attempts "
            f"({last_problem}); try again later"
        )

    def _pause(self, attempt: int, problem: str, url: str) -> None:
        if attempt >= self.settings.attempts:
            return
        delay = min(self.backoff * 2 ** (attempt - 1), 60.0)
        log.warning("%s on %s; retrying in %.1fs (attempt %d)", problem, url, delay, attempt)
        self._sleep(delay)

    def _rate_limit_wait(self, response: requests.Response, url: str) -> float:
        """Seconds to wait: Brevo's `x-sib-ratelimit-reset`, capped at settings.max_wait."""
        raw = response.headers.get("x-sib-ratelimit-reset", "")
        try:
            reset = max(0.0, float(raw))
        except ValueError:
            reset = self.backoff  # no usable header: a short pause, then try again
        wait = min(reset, self.settings.max_wait)
        if wait < reset:
            log.warning(
                "Brevo rate limit on %s: reset in %.0fs, waiting only %.0fs "
                "(DISTRIBMAIL_BREVO_MAX_WAIT) before trying again",
                url,
                reset,
                wait,
            )
        else:
            log.warning("Brevo rate limit on %s: waiting %.1fs for the reset", url, wait)
        return wait


def _not_sent(error: requests.ConnectionError) -> bool:
    """True when no connection was made (refused, no DNS): the request was never sent."""
    reason = getattr(error.args[0], "reason", None) if error.args else None
    return isinstance(reason, NewConnectionError)


def _decode(response: requests.Response, url: str) -> Any:
    if not response.content:
        return None
    try:
        return response.json()
    except ValueError:
        snippet = response.text[:80].strip()
        raise BrevoBadResponse(f"Brevo's answer from {url} is not JSON: {snippet!r}") from None


def events_page(
    client: BrevoClient, start: str, end: str, offset: int, limit: int
) -> list[dict[str, Any]]:
    """One page of /smtp/statistics/events, oldest first (`sort=asc`, so that events that
    arrive while we page are added at the end and never shift the offsets we have yet to
    read). Raises BrevoBadResponse unless the body is `{"events": [object, ...]}`. The spec
    does not show an empty report: an empty body or `{}` is taken as "no more events"."""
    params = {"startDate": start, "endDate": end, "offset": offset, "limit": limit, "sort": "asc"}
    body = client.get(EVENTS_PATH, params)
    if body is None or body == {}:
        return []
    if not isinstance(body, dict):
        raise BrevoBadResponse(f"a JSON {type(body).__name__}, not an object")
    if "events" not in body:
        raise BrevoBadResponse(f"no `events` in the answer ({sorted(body)[:5]})")
    events = body["events"]
    if not isinstance(events, list):
        raise BrevoBadResponse(f"`events` is a {type(events).__name__}, not a list")
    for index, item in enumerate(events):
        if not isinstance(item, dict):
            raise BrevoBadResponse(
                f"item {index} of `events` is a {type(item).__name__}, not an object"
            )
    return events
