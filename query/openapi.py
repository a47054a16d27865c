"""The OpenAPI document of the read API, built from the marshmallow schemas it runs on.

Built once per process: it depends on code only, never on a request.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin

from query import api_schemas as s

VERSION = "1.0.0"

_ERRORS = {
    "400": "A parameter is wrong; `parameter` names it.",
    "401": "No token, or not a token of DISTRIBMAIL_API_TOKENS.",
    "404": "No tracked message with this id.",
}


def _answer(schema: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: str) -> dict[str, Any]:
    return {code: _answer("Error", _ERRORS[code]) for code in codes}


def _query(schema: type[s.Schema]) -> list[dict[str, Any]]:
    return [{"in": "query", "schema": schema}]


@cache
def document() -> dict[str, Any]:
    spec = APISpec(
        title="distribmail read API",
        version=VERSION,
        openapi_version="3.1.0",
        plugins=[MarshmallowPlugin()],
        info={
            "description": "The delivery status and history of the mails sent through the "
            "provider (Brevo). Times are ISO 8601 in UTC; days (`from`, `to`) are read on "
            "the wall clock of the configured time zone (DISTRIBMAIL_TIMEZONE, default "
            "Europe/Paris)."
        },
        security=[{"bearer": []}],
    )
    spec.components.security_scheme(
        "bearer",
        {
            "type": "http",
            "scheme": "bearer",
            "description": "One of the tokens of DISTRIBMAIL_API_TOKENS.",
        },
    )
    for name, schema in (
        ("Error", s.ErrorSchema),
        ("MessageItem", s.MessageItemSchema),
        ("MessagePage", s.MessagePageSchema),
        ("Step", s.StepSchema),
        ("MessageDetail", s.MessageDetailSchema),
        ("StatusCounts", s.StatusCountsSchema),
        ("MessageCounts", s.MessageCountsSchema),
        ("Translation", s.TranslationSchema),
        ("StatusInfo", s.StatusInfoSchema),
        ("StatusList", s.StatusListSchema),
    ):
        spec.components.schema(name, schema=schema)

    spec.path(
        "/api/messages",
        operations={
            "get": {
                "operationId": "listMessages",
                "summary": "The mails sent in a period, newest first, a page at a time",
                "description": "Ordered by sent_at then id, both descending. Keyset paging: "
                "mails that arrive while paging never make a row repeat or vanish.",
                "parameters": _query(s.MessageListQuery),
                "responses": {
                    "200": _answer("MessagePage", "One page."),
                    **_errors("400", "401"),
                },
            }
        },
    )
    spec.path(
        "/api/messages/counts",
        operations={
            "get": {
                "operationId": "countMessages",
                "summary": "How many mails of the period are in each status",
                "description": "Same filters as the list, without paging.",
                "parameters": _query(s.MessageFiltersQuery),
                "responses": {
                    "200": _answer("MessageCounts", "The counts."),
                    **_errors("400", "401"),
                },
            }
        },
    )
    spec.path(
        "/api/messages/{id}",
        operations={
            "get": {
                "operationId": "getMessage",
                "summary": "One mail with every step of its delivery",
                "parameters": [
                    {"in": "path", "name": "id", "required": True, "schema": {"type": "string"}},
                    *_query(s.LangQuery),
                ],
                "responses": {
                    "200": _answer("MessageDetail", "The mail."),
                    **_errors("400", "401", "404"),
                },
            }
        },
    )
    spec.path(
        "/api/statuses",
        operations={
            "get": {
                "operationId": "listStatuses",
                "summary": "The status vocabulary, with labels and explanations",
                "responses": {"200": _answer("StatusList", "Every status."), **_errors("401")},
            }
        },
    )
    spec.path(
        "/api/openapi.json",
        operations={
            "get": {
                "operationId": "openapi",
                "summary": "This document (no token needed: it holds no data)",
                "security": [],
                "responses": {"200": {"description": "The OpenAPI document."}},
            }
        },
    )
    return spec.to_dict()
