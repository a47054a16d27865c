"""`distribmail brevo connect` and `brevo status`: our webhook on Brevo, and what to check.

Brevo's webhook API (brevo.md section 7) has no "upsert": we list the account's
transactional webhooks, find ours by its URL, and update it, so that running `connect`
again never adds a second webhook (an account holds at most 40). Brevo signs nothing; the
webhook carries our bearer token (`auth`), which the receiver checks (ingest.auth).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from ingest.brevo_api import BrevoClient, BrevoRequestError

WEBHOOK_PATH = "/webhooks/brevo"

# Subscription names (camelCase, the third naming scheme: brevo.md section 7), one per
# step the fold knows, beside the payload `event` each one makes Brevo send. `request`
# (the docs say "sent OR request"): the payload says `request` either way.
SUBSCRIPTIONS: dict[str, str] = {
    "request": "request",
    "delivered": "delivered",
    "deferred": "deferred",
    "softBounce": "soft_bounce",
    "hardBounce": "hard_bounce",
    "invalid": "invalid_email",
    "blocked": "blocked",
    "spam": "spam",
    "unsubscribed": "unsubscribed",
    "opened": "opened",
    "uniqueOpened": "unique_opened",
    "click": "click",
}
# Offered by Brevo's UI and listed among transactional webhook events in its docs, but
# missing from the create-webhook enum of the published specs: asked for, and dropped
# (and said so) if Brevo refuses them.
OPTIONAL_SUBSCRIPTIONS: dict[str, str] = {
    "proxyOpen": "proxy_open",
    "uniqueProxyOpen": "unique_proxy_open",
    "error": "error",
}


def webhook_url(public_url: str) -> str:
    return public_url.rstrip("/") + WEBHOOK_PATH


def token_fingerprint(token: str) -> str:
    """A short, non-reversible mark of the token, kept in the webhook's description: Brevo
    may not show a webhook's token back, and this tells us whether it changed."""
    return hashlib.sha256(token.encode()).hexdigest()[:10]


def description(token: str) -> str:
    return f"distribmail (token {token_fingerprint(token)})"


@dataclass(frozen=True)
class ConnectResult:
    action: str  # "created" | "updated" | "unchanged"
    webhook_id: int
    url: str
    events: tuple[str, ...]
    refused: tuple[str, ...] = ()  # optional subscriptions Brevo would not take
    others: tuple[int, ...] = ()  # more webhooks with our URL (made by hand?): left alone

    def lines(self) -> list[str]:
        said = {"created": "created", "updated": "updated", "unchanged": "already up to date:"}
        out = [
            f"{said[self.action]} webhook id {self.webhook_id} -> {self.url}",
            f"events: {', '.join(self.events)}",
        ]
        if self.refused:
            out.append(f"Brevo refused {', '.join(self.refused)}: subscribed without them")
        if self.others:
            ids = ", ".join(map(str, self.others))
            out.append(
                f"note: webhooks {ids} also post to this URL; delete them in Brevo "
                "if they are duplicates, or events will arrive twice"
            )
        return out


def _same_url(a: Any, b: str) -> bool:
    return isinstance(a, str) and a.strip().rstrip("/") == b.rstrip("/")


def _up_to_date(hook: dict[str, Any], events: list[str], token: str) -> bool:
    auth = hook.get("auth")
    shown = auth.get("token") if isinstance(auth, dict) else None
    return (
        set(hook.get("events") or []) == set(events)
        and hook.get("description") == description(token)
        and (shown is None or shown == token)
    )


def connect(client: BrevoClient, public_url: str, token: str) -> ConnectResult:
    """Create our transactional webhook, or bring the existing one up to date."""
    client.get("/account")  # a refused key fails here, before anything changes
    url = webhook_url(public_url)
    listed = client.get("/webhooks", {"type": "transactional"}) or {}
    ours = [h for h in listed.get("webhooks") or [] if _same_url(h.get("url"), url)]
    ours.sort(key=lambda h: int(h.get("id", 0)))
    full = list(SUBSCRIPTIONS) + list(OPTIONAL_SUBSCRIPTIONS)
    core = list(SUBSCRIPTIONS)
    body = {
        "url": url,
        "description": description(token),
        "auth": {"type": "bearer", "token": token},
    }

    if not ours:
        try:
            made = client.post("/webhooks", {**body, "type": "transactional", "events": full})
            return ConnectResult("created", int(made["id"]), url, tuple(full))
        except BrevoRequestError as e:
            if e.http_status != 400:
                raise
            made = client.post("/webhooks", {**body, "type": "transactional", "events": core})
            return ConnectResult(
                "created", int(made["id"]), url, tuple(core), tuple(OPTIONAL_SUBSCRIPTIONS)
            )

    hook, others = ours[0], tuple(int(h["id"]) for h in ours[1:])
    hook_id = int(hook["id"])
    if _up_to_date(hook, full, token):
        return ConnectResult("unchanged", hook_id, url, tuple(full), others=others)
    try:
        client.put(f"/webhooks/{hook_id}", {**body, "events": full})
        return ConnectResult("updated", hook_id, url, tuple(full), others=others)
    except BrevoRequestError as e:
        if e.http_status != 400:
            raise
    refused = tuple(OPTIONAL_SUBSCRIPTIONS)
    if _up_to_date(hook, core, token):
        return ConnectResult("unchanged", hook_id, url, tuple(core), refused, others)
    client.put(f"/webhooks/{hook_id}", {**body, "events": core})
    return ConnectResult("updated", hook_id, url, tuple(core), refused, others)


# --- status -----------------------------------------------------------------------------


@dataclass
class Status:
    account: dict[str, Any]
    webhooks: list[dict[str, Any]]  # transactional webhooks that post to a distribmail URL
    domains: list[dict[str, Any]] = field(default_factory=list)

    def lines(self) -> list[str]:
        a = self.account
        name = " ".join(str(a.get(k) or "") for k in ("firstName", "lastName")).strip()
        out = [
            f"account: {a.get('email', '?')} ({a.get('companyName') or 'no company'}"
            + (f", {name}" if name else "")
            + ")"
        ]
        if not self.webhooks:
            out.append("webhook: none posts to /webhooks/brevo; run `distribmail brevo connect`")
        for hook in self.webhooks:
            events = set(hook.get("events") or [])
            missing = [name for name in SUBSCRIPTIONS if name not in events]
            out.append(f"webhook id {hook.get('id')}: {hook.get('url')}")
            out.append(f"  events: {', '.join(sorted(events)) or 'none'}")
            if missing:
                out.append(f"  missing: {', '.join(missing)} (run `distribmail brevo connect`)")
        if not self.domains:
            out.append(
                "sender domains: none; add and authenticate yours in Brevo (Senders, "
                "domains & dedicated IPs)"
            )
        for d in self.domains:
            out.append(
                f"domain {d['name']}: {_yes(d['authenticated'], 'authenticated')}, "
                f"{_yes(d['verified'], 'verified')}, DKIM {_ok(d['dkim'])}, "
                f"DMARC {_ok(d['dmarc'])}, Brevo code {_ok(d['brevo_code'])}"
            )
        return out


def _yes(value: Any, word: str) -> str:
    return word if value else f"NOT {word}"


def _ok(value: Any) -> str:
    return {True: "ok", False: "MISSING"}.get(value, "unknown")


def _record_ok(records: Any, *names: str) -> bool | None:
    if not isinstance(records, dict):
        return None
    for name in names:
        record = records.get(name)
        if isinstance(record, dict) and "status" in record:
            return bool(record["status"])
    return None


def status(client: BrevoClient) -> Status:
    """The account behind the key, our webhook(s), and each sender domain's DNS checks
    (the Gestan page asks the user to check DKIM, DMARC and "authenticated")."""
    account = client.get("/account") or {}
    listed = client.get("/webhooks", {"type": "transactional"}) or {}
    ours = [
        h
        for h in listed.get("webhooks") or []
        if isinstance(h.get("url"), str) and h["url"].rstrip("/").endswith(WEBHOOK_PATH)
    ]
    domains = []
    for item in (client.get("/senders/domains") or {}).get("domains") or []:
        name = item.get("domain_name") or item.get("domain")
        if not isinstance(name, str):
            continue
        # The list says authenticated/verified; the DNS records only come per domain.
        config = client.get(f"/senders/domains/{quote(name, safe='')}") or {}
        records = config.get("dns_records")
        domains.append(
            {
                "name": name,
                "authenticated": config.get("authenticated", item.get("authenticated")),
                "verified": config.get("verified", item.get("verified")),
                "dkim": _record_ok(records, "dkim_record"),
                "dmarc": _record_ok(records, "dmarc_record"),
                "brevo_code": _record_ok(records, "brevo_code"),
            }
        )
    return Status(account, ours, domains)
