"""The ceiling for HTTP alone: a Flask route that reads the body and answers 200, no database.

Served by gunicorn with the receiver's worker settings (bench_servers.GUNICORN_SETTINGS),
so the only difference from the real receiver is what happens inside the request. It
reads the body (the receiver must too) and answers a small JSON object like the receiver's.
"""

from __future__ import annotations

from flask import Flask, Response, request

app = Flask("bench.bare")

_ANSWER = b'{"ok":true}'


@app.post("/webhooks/brevo")
def webhook() -> Response:
    request.get_data()
    return Response(_ANSWER, status=200, mimetype="application/json")


@app.get("/readyz")
def readyz() -> Response:
    return Response(_ANSWER, status=200, mimetype="application/json")
