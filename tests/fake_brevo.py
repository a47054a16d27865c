"""A fake Brevo API on 127.0.0.1, a real HTTP server, for the tests and for trying the CLI.

It implements what distribmail calls, with Brevo's documented shapes and limits (brevo.md
sections 6 and 7, tests/fixtures/brevo/brevo_events_api.json): the `api-key` header (401
with Brevo's error body otherwise), GET /account, GET/POST /webhooks, PUT /webhooks/{id},
GET /senders/domains(/{name}), GET /smtp/statistics/events (limit <= 5000, offset,
startDate/endDate both or neither and at most 90 days, sort). Faults on request: 429 with
x-sib-ratelimit-* headers, malformed pages, 500s after K pages.

    python -m tests.fake_brevo --port 8025 --events 3000 --start 2024-05-01 --days 10
"""

from __future__ import annotations

import argparse
import json
import threading
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

from werkzeug.serving import WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

API_KEY = "xkeysib-fake-0123456789"
# The create-webhook enum of the published spec, plus the three the UI offers.
WEBHOOK_EVENTS = {
    "sent",
    "request",
    "delivered",
    "hardBounce",
    "softBounce",
    "blocked",
    "spam",
    "invalid",
    "deferred",
    "click",
    "opened",
    "uniqueOpened",
    "unsubscribed",
    "proxyOpen",
    "uniqueProxyOpen",
    "error",
}


class _QuietHandler(WSGIRequestHandler):
    def log_request(self, *args: Any, **kwargs: Any) -> None:
        pass


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(body), status, headers, content_type="application/json")


def _error(status: int, code: str, message: str) -> Response:
    return _json({"code": code, "message": message}, status)


def _parse_date(raw: str) -> datetime:
    return datetime.fromisoformat(raw).astimezone(UTC)


@dataclass
class FakeBrevo:
    api_key: str = API_KEY
    account: dict[str, Any] = field(
        default_factory=lambda: {
            "email": "owner@example.test",
            "firstName": "Camille",
            "lastName": "Martin",
            "companyName": "Atelier Martin",
            "plan": [{"type": "free", "credits": 300}],
        }
    )
    domains: list[dict[str, Any]] = field(
        default_factory=lambda: [
            {
                "domain_name": "example.test",
                "authenticated": True,
                "verified": True,
                "dkim": True,
                "dmarc": True,
                "brevo_code": True,
            },
            {
                "domain_name": "shop.example.test",
                "authenticated": False,
                "verified": True,
                "dkim": False,
                "dmarc": True,
                "brevo_code": True,
            },
        ]
    )
    accepted_webhook_events: set[str] = field(default_factory=lambda: set(WEBHOOK_EVENTS))
    events: list[dict[str, Any]] = field(default_factory=list)
    # Faults. Events requests are numbered from 1, in arrival order.
    rate_limit_requests: set[int] = field(default_factory=set)  # answer these with 429
    rate_limit_reset: int = 1  # x-sib-ratelimit-reset, seconds
    malformed: dict[int, int] = field(default_factory=dict)  # offset -> times to answer badly
    malformed_kind: str = "not-json"  # | "events-not-list" | "item-not-object"
    fail_after_pages: int | None = None  # after this many pages, every events call is a 500
    webhooks: dict[int, dict[str, Any]] = field(default_factory=dict)
    log: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    events_requests: int = 0
    pages_served: int = 0

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._next_id = 1
        self._server: Any = None
        self._thread: threading.Thread | None = None

    # --- server ---------------------------------------------------------------------

    def start(self, port: int = 0, quiet: bool = True) -> FakeBrevo:
        handler = _QuietHandler if quiet else WSGIRequestHandler
        self._server = make_server(
            "127.0.0.1", port, self.wsgi, threaded=True, request_handler=handler
        )
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}/v3"

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def wsgi(self, environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        with self._lock:
            response = self.handle(request)
        return response(environ, start_response)

    def handle(self, request: Request) -> Response:
        path = request.path.removeprefix("/v3")
        self.log.append((request.method, path, dict(request.args)))
        if request.headers.get("api-key") != self.api_key:
            return _error(401, "unauthorized", "Key not found")
        route = (request.method, path)
        if route == ("GET", "/account"):
            return _json(self.account)
        if route == ("GET", "/smtp/statistics/events"):
            return self.events_report(request)
        if path == "/webhooks":
            return self.list_webhooks(request) if request.method == "GET" else self.create(request)
        if path.startswith("/webhooks/") and path.count("/") == 2:
            return self.webhook(request, path.rsplit("/", 1)[1])
        if route == ("GET", "/senders/domains"):
            return self.list_domains()
        if request.method == "GET" and path.startswith("/senders/domains/"):
            return self.domain(path.rsplit("/", 1)[1])
        return _error(404, "document_not_found", f"no route {request.method} {path}")

    # --- webhooks -------------------------------------------------------------------

    def _check_events(self, events: Any) -> str | None:
        if not isinstance(events, list) or not events:
            return "events is mandatory"
        unknown = [e for e in events if e not in self.accepted_webhook_events]
        return f"Invalid event(s): {', '.join(map(str, unknown))}" if unknown else None

    def create(self, request: Request) -> Response:
        body = request.get_json(silent=True) or {}
        problem = self._check_events(body.get("events"))
        if problem or not isinstance(body.get("url"), str):
            return _error(400, "invalid_parameter", problem or "url is mandatory")
        if len(self.webhooks) >= 40:
            return _error(400, "invalid_parameter", "You can create up to 40 webhooks")
        hook_id, self._next_id = self._next_id, self._next_id + 1
        now = datetime.now(UTC).isoformat(timespec="milliseconds")
        self.webhooks[hook_id] = {
            "id": hook_id,
            "url": body["url"],
            "description": body.get("description", ""),
            "events": list(body["events"]),
            "type": body.get("type", "transactional"),
            "batched": bool(body.get("batched", False)),
            "createdAt": now,
            "modifiedAt": now,
            "auth": body.get("auth"),
            "headers": body.get("headers", []),
        }
        return _json({"id": hook_id}, 201)

    def _shown(self, hook: dict[str, Any]) -> dict[str, Any]:
        # We do not know that Brevo shows a webhook's token back: the fake never does.
        shown = {k: v for k, v in hook.items() if k != "auth"}
        if hook.get("auth"):
            shown["auth"] = {"type": hook["auth"].get("type")}
        return shown

    def list_webhooks(self, request: Request) -> Response:
        wanted = request.args.get("type", "transactional")
        hooks = [self._shown(h) for h in self.webhooks.values() if h["type"] == wanted]
        return _json({"webhooks": hooks})

    def webhook(self, request: Request, raw_id: str) -> Response:
        hook = self.webhooks.get(int(raw_id)) if raw_id.isdigit() else None
        if hook is None:
            return _error(404, "document_not_found", "Webhook not found")
        if request.method == "GET":
            return _json(self._shown(hook))
        if request.method != "PUT":
            return _error(405, "method_not_allowed", request.method)
        body = request.get_json(silent=True) or {}
        if "events" in body and (problem := self._check_events(body["events"])):
            return _error(400, "invalid_parameter", problem)
        for key in ("url", "description", "events", "auth", "headers", "batched"):
            if key in body:
                hook[key] = body[key]
        hook["modifiedAt"] = datetime.now(UTC).isoformat(timespec="milliseconds")
        return Response(status=204)

    # --- domains --------------------------------------------------------------------

    def list_domains(self) -> Response:
        listed = [
            {
                "id": f"d{i}",
                "domain_name": d["domain_name"],
                "authenticated": d["authenticated"],
                "verified": d["verified"],
                "ip": None,
            }
            for i, d in enumerate(self.domains)
        ]
        return _json({"domains": listed, "count": len(listed), "current_page": 1, "total_pages": 1})

    def domain(self, name: str) -> Response:
        found = next((d for d in self.domains if d["domain_name"] == name), None)
        if found is None:
            return _error(404, "document_not_found", "Domain not found")

        def record(kind: str, host: str, ok: bool) -> dict[str, Any]:
            return {"type": kind, "value": "...", "host_name": host, "status": ok}

        return _json(
            {
                "domain": name,
                "verified": found["verified"],
                "authenticated": found["authenticated"],
                "dns_records": {
                    "dkim_record": record("TXT", "mail._domainkey", found["dkim"]),
                    "brevo_code": record("TXT", "@", found["brevo_code"]),
                    "dmarc_record": record("TXT", "_dmarc", found["dmarc"]),
                },
            }
        )

    # --- the events report ----------------------------------------------------------

    def events_report(self, request: Request) -> Response:
        self.events_requests += 1
        if self.events_requests in self.rate_limit_requests:
            headers = {
                "x-sib-ratelimit-limit": "300",
                "x-sib-ratelimit-remaining": "0",
                "x-sib-ratelimit-reset": str(self.rate_limit_reset),
            }
            response = _error(429, "too_many_requests", "Too many requests")
            response.headers.update(headers)
            return response
        if self.fail_after_pages is not None and self.pages_served >= self.fail_after_pages:
            return Response("<html>502 Bad Gateway</html>", 500, content_type="text/html")
        args = request.args
        try:
            limit = int(args.get("limit", 2500))
            offset = int(args.get("offset", 0))
        except ValueError:
            return _error(400, "invalid_parameter", "limit and offset must be integers")
        if not 0 <= limit <= 5000:
            return _error(400, "invalid_parameter", "limit must be between 0 and 5000")
        start, end = args.get("startDate"), args.get("endDate")
        if (start is None) != (end is None):
            return _error(400, "invalid_parameter", "startDate and endDate are both mandatory")
        if start is not None and end is not None:
            first, last = date.fromisoformat(start), date.fromisoformat(end)
            if first > last:
                return _error(400, "invalid_parameter", "startDate must be before endDate")
            if (last - first).days + 1 > 90:
                return _error(400, "invalid_parameter", "The date range can not exceed 90 days")
        else:
            last = datetime.now(UTC).date()
            first = last - timedelta(days=int(args.get("days", 30)) - 1)
        chosen = [e for e in self.events if first <= _parse_date(e["date"]).date() <= last]
        chosen.sort(key=lambda e: _parse_date(e["date"]), reverse=args.get("sort") != "asc")
        page = chosen[offset : offset + limit]
        if self.malformed.get(offset, 0) > 0:
            self.malformed[offset] -= 1
            return self._malformed(page)
        self.pages_served += 1
        # What an empty report looks like is not documented; the fake says `{}`.
        return _json({"events": page} if page else {})

    def _malformed(self, page: list[dict[str, Any]]) -> Response:
        if self.malformed_kind == "events-not-list":
            return _json({"events": {"0": page[:1]}})
        if self.malformed_kind == "item-not-object":
            return _json({"events": [*page[:2], "oops"]})
        return Response('{"events": [{"email": "cut', 200, content_type="application/json")


PARIS_SUMMER = timezone(timedelta(hours=2))
LIFECYCLE = (("requests", 0), ("delivered", 3), ("opened", 95), ("clicks", 130))


def make_events(
    count: int, start: datetime, days: int = 1, domain: str = "smtp-relay.mailin.fr"
) -> list[dict[str, Any]]:
    """`count` report events: messages of request, delivery, open, click, spread over `days`.
    Dates alternate between `Z` and a +02:00 offset, as both are seen."""
    messages = -(-count // len(LIFECYCLE))
    spacing = timedelta(days=days) / max(messages, 1)
    events = []
    for i in range(count):
        number, (name, delay) = i // len(LIFECYCLE), LIFECYCLE[i % len(LIFECYCLE)]
        sent = (start + spacing * number).replace(microsecond=0)
        at = sent + timedelta(seconds=delay)
        if number % 2 == 0:
            stamp = at.astimezone(UTC).isoformat().replace("+00:00", "Z")
        else:
            stamp = at.astimezone(PARIS_SUMMER).isoformat()
        event = {
            "email": f"Client{number}@example.com",
            "date": stamp,
            "subject": f"Devis n°{1000 + number}",
            "messageId": f"<{sent:%Y%m%d%H%M}.{number:08d}@{domain}>",
            "event": name,
            "tag": "devis",
            "from": "atelier@example.test",
            "templateId": 7,
        }
        if name in ("opened", "clicks"):
            event["ip"] = "203.0.113.7"
        if name == "clicks":
            event["link"] = f"https://example.test/devis/{1000 + number}"
        events.append(event)
    return events


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8025)
    parser.add_argument("--api-key", default=API_KEY)
    parser.add_argument("--events", type=int, default=1000, help="seeded report events")
    parser.add_argument("--start", type=date.fromisoformat, default=date(2024, 5, 1))
    parser.add_argument("--days", type=int, default=10)
    parser.add_argument(
        "--rate-limit",
        type=int,
        nargs="*",
        default=[],
        help="numbers of the events requests to answer with 429",
    )
    args = parser.parse_args(argv)
    start = datetime(args.start.year, args.start.month, args.start.day, 8, tzinfo=UTC)
    fake = FakeBrevo(
        api_key=args.api_key,
        events=make_events(args.events, start, args.days),
        rate_limit_requests=set(args.rate_limit),
    )
    fake.start(args.port, quiet=False)
    print(f"fake Brevo on {fake.url} (api key {args.api_key}); Ctrl-C stops it", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        fake.stop()


if __name__ == "__main__":
    main()
