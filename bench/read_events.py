"""Realistic Brevo webhook traffic for the read benchmark: whole mail lifecycles.

Each message is a `request`, then usually `delivered` (sometimes after a `deferred` or
two), or a `hard_bounce` / `blocked` instead; delivered mails are often opened, several
times, some through a proxy, some clicked. That averages about 5 events per message, as
the issue asks. Payloads have the live webhook's shape (bench_events.py, and the captures
under tests/fixtures/brevo): angle-bracketed message-id, `ts_epoch` in ms, `date` in the
account's zone (Europe/Paris), `tag` as JSON text beside the `tags` array.

Everything is drawn from `random.Random(seed)` per message number, so that a chunk of
messages can be generated in any process and twice gives the same events (and the same
dedup keys: a repeated load would collide, not duplicate).
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

PARIS = ZoneInfo("Europe/Paris")
DAY_MS = 86_400_000
SUBJECTS = ("Devis", "Facture", "Relance", "Bon de commande", "Avoir")
TAGS: tuple[list[str], ...] = (["devis"], ["facture", "fr"], ["relance"], ["commande", "fr"], [])
AGENTS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/124.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 Mobile",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) Outlook/16.0",
)
PROXY_AGENT = (
    "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)"  # noqa: E501
)


def message_id(run: str, n: int) -> str:
    """Brevo's shape (`<yyyymmddhhmm.digits@smtp-relay.mailin.fr>`), unique per run and n."""
    return f"<202601010000.{run}{n:010d}@smtp-relay.mailin.fr>"


def _payload(
    event: str, mid: str, email: str, at_ms: int, common: dict[str, Any]
) -> dict[str, Any]:
    local = datetime.fromtimestamp(at_ms / 1000, UTC).astimezone(PARIS)
    return {
        "id": 814119,
        "email": email,
        "message-id": mid,
        "date": local.strftime("%Y-%m-%d %H:%M:%S"),
        "event": event,
        "ts": at_ms // 1000,
        "ts_event": at_ms // 1000,
        "ts_epoch": at_ms,
        **common,
    }


def lifecycle(run: str, n: int, start_ms: int, span_ms: int) -> list[dict[str, Any]]:
    """Every webhook payload of message `n`, oldest first, sent within [start, start+span)."""
    rng = random.Random(f"{run}:{n}")
    mid = message_id(run, n)
    email = f"Client{rng.randrange(40_000)}@Example{rng.randrange(300)}.fr"
    # Office hours weigh more: a day's traffic is not flat.
    day = rng.randrange(max(1, span_ms // DAY_MS))
    hour = rng.choice((7, 8, 9, 9, 10, 10, 11, 11, 14, 14, 15, 15, 16, 16, 17, 18, 20, 22))
    t = start_ms + day * DAY_MS + hour * 3_600_000 + rng.randrange(3_600_000)
    kind = rng.randrange(len(SUBJECTS))
    common = {
        "subject": f"{SUBJECTS[kind]} 2026-{rng.randrange(1, 9999):04d}",
        "tag": json.dumps(TAGS[kind]),
        "tags": TAGS[kind],
        "sending_ip": f"185.41.28.{rng.randrange(1, 250)}",
        "template_id": 12 + kind,
    }
    events = [_payload("request", mid, email, t, {**common, "sender_email": "devis@acme.fr"})]

    def add(event: str, delay_ms: int, **extra: Any) -> None:
        nonlocal t
        t += max(1, delay_ms)
        events.append(_payload(event, mid, email, t, {**common, **extra}))

    fate = rng.random()
    if fate < 0.02:
        add("hard_bounce", rng.randrange(500, 5_000), reason="550 5.1.1 user unknown")
        return events
    if fate < 0.03:
        add("blocked", rng.randrange(50, 500), reason="blocked : due to unsubscribed user")
        return events
    for _ in range(rng.choice((0,) * 18 + (1, 2))):
        add("deferred", rng.randrange(1_000, 600_000), reason="421 4.7.0 try again later")
    add("delivered", rng.randrange(500, 8_000), reason="sent")
    if rng.random() < 0.15:
        add("unique_proxy_open", rng.randrange(1_000, 60_000), user_agent=PROXY_AGENT, link="")
    if rng.random() < 0.75:
        agent = rng.choice(AGENTS)
        add("unique_opened", rng.randrange(30_000, 86_400_000), user_agent=agent,
            device_used="DESKTOP", link="")  # fmt: skip
        for _ in range(rng.choice((0, 1, 1, 2, 2, 3, 4))):
            add("opened", rng.randrange(60_000, 172_800_000), user_agent=agent,
                device_used="DESKTOP", link="")  # fmt: skip
        for _ in range(rng.choice((0, 0, 0, 1, 1, 2))):
            add("click", rng.randrange(2_000, 600_000), user_agent=agent,
                link=f"https://acme.fr/devis/{n}")  # fmt: skip
    return events


def payloads(
    run: str, first: int, step: int, start_ms: int, span_ms: int
) -> Iterator[dict[str, Any]]:
    """Lifecycles of messages first, first+step, ... one after another, without end."""
    n = first
    while True:
        yield from lifecycle(run, n, start_ms, span_ms)
        n += step
