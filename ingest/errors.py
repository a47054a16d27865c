"""One error hierarchy: each class carries the HTTP status it is answered with."""

from __future__ import annotations

from typing import Any


class DistribmailError(Exception):
    """Base class; `status` is the HTTP answer, `message` tells the caller what to change."""

    status = 500

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def to_json(self) -> dict[str, Any]:
        return {"error": self.message, **self.details}


class ConfigError(DistribmailError):
    """A setting is wrong; raised at start, never during a request."""


class BadRequest(DistribmailError):
    status = 400


class Unauthorized(DistribmailError):
    status = 401

    def __init__(self, message: str, challenge: str, **details: Any) -> None:
        super().__init__(message, **details)
        self.challenge = challenge


class Forbidden(DistribmailError):
    status = 403


class NotFound(DistribmailError):
    status = 404


class PayloadTooLarge(DistribmailError):
    status = 413


class TryLater(DistribmailError):
    """Brevo retries on 429 (and only on 429 among 4xx/5xx): our answer when we can keep nothing."""

    status = 429

    def __init__(self, message: str, retry_after: int = 60, **details: Any) -> None:
        super().__init__(message, **details)
        self.retry_after = retry_after


class DatabaseUnavailable(DistribmailError):
    """The database did not answer; the write side spools instead of failing."""

    status = 503
