"""Bad input: the webhook parser fuzzed with hypothesis, and the read API with schemathesis.

The webhook's contract (design.md, brevo.md section 5): a body that is a JSON object or a
list of objects is answered 200 and every event in it is in the log (stored now, or a
duplicate of one stored before); anything else is answered 400 and stores nothing; never
a 5xx, which Brevo would take as "discard". "JSON" is what Python's json module reads
without NaN/Infinity; a number too large for a float (1e400) is refused with 400 too,
since the log's jsonb cannot hold Python's infinity.

The examples are derandomized (the same ones on every run), so CI stays deterministic;
set DISTRIBMAIL_FUZZ_RANDOM=1 to explore new ones.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from typing import Any

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest.providers.brevo import normalize
from ingest.settings import IngestSettings
from tests.payloads import event
from tests.servers import Served

TOKEN = "fuzz-webhook-token"
FUZZ = settings(
    max_examples=int(os.environ.get("DISTRIBMAIL_FUZZ_EXAMPLES", "300")),
    deadline=None,
    derandomize=not os.environ.get("DISTRIBMAIL_FUZZ_RANDOM"),
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    database=None,
)

# --- strategies -----------------------------------------------------------------------

ODD_TEXT = ["", " ", "\x00", "a\x00b", "\ud800", "x\udfffy", "\ufeff", "é" * 3, "'; --",
            "NaN", "Infinity", "1e400", "<>", "<  >", "2023-05-31 16:37:07", "9999-99-99 99:99:99",
            "9" * 400, "-1", "0x10", "[\"a\",\"b\"]", "{\"a\": 1}", "𝄞" * 2]  # fmt: skip
texts = st.one_of(
    st.text(max_size=30),
    st.text(alphabet=st.characters(exclude_categories=()), max_size=10),  # lone surrogates too
    st.sampled_from(ODD_TEXT),
    st.sampled_from(["x" * 100_000, "\u00e9\x00" * 30_000]),  # huge strings
)
numbers = st.one_of(
    st.integers(),
    st.integers(min_value=-(10**400), max_value=10**400),
    st.sampled_from([0, -1, 2**63, -(2**63) - 1, 10**300, 10**4000, 1685543827372]),
    st.floats(allow_nan=False, allow_infinity=False),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, texts)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(texts, inner, max_size=4)),
    max_leaves=12,
)

# Each known field: a value of the right type, or anything at all.
WELL_TYPED = {
    "event": st.sampled_from(
        ["delivered", "request", "click", "opened", "hard_bounce", "some_future_event", ""]
    ),  # fmt: skip
    "email": st.sampled_from(["client@example.com", "Client@Example.COM ", ""]),
    "message-id": st.sampled_from(["<1.2@smtp-relay.mailin.fr>", "1.2@x", "<>", " "]),
    "ts_epoch": st.integers(min_value=0, max_value=2_000_000_000_000),
    "ts_event": st.integers(min_value=0, max_value=2_000_000_000),
    "ts": st.integers(min_value=0, max_value=2_000_000_000),
    "date": st.sampled_from(["2023-05-31 16:37:07", "2023-05-31", "31/05/2023 16:37"]),
    "link": st.sampled_from(["", "https://shop.example/devis?id=1", "javascript:alert(1)"]),
    "tags": st.lists(texts, max_size=3),
    "tag": st.one_of(texts, st.lists(texts, max_size=3)),
}
events = st.fixed_dictionaries(
    {},
    optional={name: st.one_of(typed, json_values) for name, typed in WELL_TYPED.items()},
).flatmap(
    lambda known: st.dictionaries(texts, json_values, max_size=3).map(
        lambda extra: {**extra, **known}
    )
)
documents = st.one_of(
    events,
    st.lists(events, max_size=12),
    st.builds(lambda key, items: {key: items}, texts, st.lists(events, min_size=1, max_size=5)),
    json_values,  # scalars, lists of anything, objects of anything
)


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    document = draw(documents)
    text = json.dumps(document, ensure_ascii=draw(st.booleans()))
    body = text.encode("utf-8", "surrogatepass")  # lone surrogates: invalid UTF-8
    mutation = draw(st.sampled_from(["none"] * 6 + ["truncate", "nan", "bytes", "nest", "bom"]))
    if mutation == "truncate" and body:
        body = body[: draw(st.integers(0, len(body) - 1))]
    elif mutation == "nan":
        token = draw(st.sampled_from([b"NaN", b"Infinity", b"-Infinity", b"1e400"]))
        body = body.replace(b"0", token, 1)
    elif mutation == "bytes":
        at = draw(st.integers(0, len(body)))
        body = body[:at] + draw(st.binary(min_size=1, max_size=4)) + body[at:]
    elif mutation == "nest":
        depth = draw(st.integers(1, 5000))
        body = b"[" * depth + body + b"]" * depth
    elif mutation == "bom":
        body = b"\xef\xbb\xbf" + body
    return body


# --- the oracle -----------------------------------------------------------------------


def _refuse(name: str) -> Any:
    raise ValueError(name)


def _finite(document: Any) -> bool:
    """No float infinity anywhere (iterative: documents may be nested very deep)."""
    stack = [document]
    while stack:
        value = stack.pop()
        if isinstance(value, float) and not math.isfinite(value):
            return False
        if isinstance(value, list):
            stack.extend(value)
        elif isinstance(value, dict):
            stack.extend(value.values())
    return True


def expected_events(body: bytes) -> list[dict[str, Any]] | None:
    """The events a body holds, or None when it must be refused with 400."""
    try:
        document = json.loads(body, parse_constant=_refuse)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    if not _finite(document):
        return None
    if isinstance(document, dict):
        # brevo.md section 3: {"<key>": [event, ...]} is a batch when it holds nothing else
        # and every item has an `event`.
        if "event" not in document and len(document) == 1:
            (inner,) = document.values()
            if (
                isinstance(inner, list)
                and inner
                and all(isinstance(i, dict) and "event" in i for i in inner)
            ):
                return inner
        return [document]
    if isinstance(document, list) and all(isinstance(i, dict) for i in document):
        return document
    return None


def nesting_depth(body: bytes) -> int:
    depth = deepest = 0
    for byte in body:
        if byte in b"[{":
            depth += 1
            deepest = max(deepest, depth)
        elif byte in b"]}":
            depth -= 1
    return deepest


class Log:
    def __init__(self, db) -> None:
        self.db = db

    def rows(self) -> int:
        return self.db.execute("SELECT count(*) FROM events").fetchone()[0]

    def present(self, keys: set[bytes]) -> int:
        return self.db.execute(
            "SELECT count(DISTINCT dedup_key) FROM events WHERE dedup_key = ANY(%s)", (list(keys),)
        ).fetchone()[0]


DEFAULT_MAX_BODY = IngestSettings().max_body


def check_answer(body: bytes, status: int, answer: Any, log: Log, rows_before: int) -> Counter[str]:
    """Assert the contract for one body; returns its figures for the tally."""
    assert status < 500, (status, answer, body[:200])
    if len(body) > DEFAULT_MAX_BODY:
        assert status == 413, (status, answer, len(body))
        assert log.rows() == rows_before
        return Counter(bodies_too_large=1)
    wanted = expected_events(body)
    # Nesting near Python's recursion limit may be read by json, then be too deep to
    # store: the receiver may refuse it (400) but must not fail.
    deep = nesting_depth(body) > 200
    if wanted is None or (deep and status == 400):
        assert status == 400, (status, answer, body[:200])
        assert log.rows() == rows_before
        return Counter(bodies_refused=1)
    assert status == 200, (status, answer, body[:200])
    keys = {normalize(p).dedup_key for p in wanted}
    assert answer["received"] == len(wanted)
    assert answer["stored"] + answer["duplicates"] == len(wanted)
    assert answer["stored"] <= len(keys)
    assert log.rows() - rows_before == answer["stored"]
    assert log.present(keys) == len(keys), "an event answered 200 is not in the log"
    return Counter(
        bodies_accepted=1,
        events_sent=len(wanted),
        distinct_events=len(keys),
        stored=answer["stored"],
        duplicates=answer["duplicates"],
    )


# --- through the Flask app -------------------------------------------------------------


def test_webhook_parser_never_fails_and_stores_every_valid_event(client, auth_headers, db):
    log = Log(db)
    tally: Counter[str] = Counter()
    headers = {**auth_headers, "Content-Type": "application/json"}

    @FUZZ
    @given(body=bodies())
    def post(body: bytes) -> None:
        before = log.rows()
        response = client.post("/webhooks/brevo", data=body, headers=headers)
        tally.update(check_answer(body, response.status_code, response.get_json(silent=True),
                                  log, before))  # fmt: skip

    post()
    print(f"\nFUZZ parser (Flask app): {dict(tally)}; rows in the log {log.rows()}")


BIG = 10**400
FOUND = {  # bodies that answered 500 before the fixes, kept as regressions
    "float-beyond-double": b'{"event": "delivered", "x": 1e400}',
    "ts_epoch-beyond-double": b'{"event": "delivered", "ts_epoch": -1e400}',
    "ts_epoch-huge-integer": json.dumps({**event(), "ts_epoch": BIG}).encode(),
    "ts-huge-integer": json.dumps({"event": "delivered", "ts": BIG}).encode(),
    "deep-with-nul": b'{"event":"x","a":' + b"[" * 900 + b'"\\u0000"' + b"]" * 900 + b"}",
    "deep-without-nul": b'{"event":"x","a":' + b"[" * 950 + b"1" + b"]" * 950 + b"}",
    "deep-list-of-events": b'[{"a":' + b"[" * 980 + b"]" * 980 + b"}]",
}


@pytest.mark.parametrize("body", FOUND.values(), ids=FOUND.keys())
def test_bodies_that_once_failed(client, auth_headers, db, body):
    log = Log(db)
    headers = {**auth_headers, "Content-Type": "application/json"}
    response = client.post("/webhooks/brevo", data=body, headers=headers)
    check_answer(body, response.status_code, response.get_json(silent=True), log, 0)


# --- through real HTTP, once ----------------------------------------------------------


@pytest.fixture
def served(database_url):
    server = Served({"DISTRIBMAIL_DATABASE_URL": database_url,
                     "DISTRIBMAIL_WEBHOOK_TOKENS": TOKEN}, workers=2)  # fmt: skip
    yield server
    server.cleanup()


def test_webhook_fuzz_over_http(served, db):
    session = requests.Session()
    log = Log(db)
    tally: Counter[str] = Counter()

    @settings(FUZZ, max_examples=max(50, FUZZ.max_examples // 4))
    @given(body=bodies())
    def post(body: bytes) -> None:
        before = log.rows()
        answer = session.post(
            served.url + "/webhooks/brevo",
            data=body,
            headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
            timeout=30,
        )
        try:
            parsed = answer.json()
        except ValueError:
            parsed = None
        tally.update(check_answer(body, answer.status_code, parsed, log, before))

    post()
    print(f"\nFUZZ over HTTP: {dict(tally)}; rows in the log {log.rows()}")
    assert " 500 " not in served.output() and "Traceback" not in served.output()
