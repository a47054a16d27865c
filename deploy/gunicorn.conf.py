"""gunicorn settings for production, read by `distribmail serve --config THIS_FILE`.

serve applies the schema, sets up the metrics folder and binds where --host/--port say;
this file holds the rest. It is re-read on SIGHUP (`systemctl reload distribmail`):
gunicorn then starts new workers with the new settings and stops the old ones gracefully,
so a reload loses no request. Only the standard library and distribmail are imported
here: the file runs in gunicorn's master process.
"""

import os

from distribmail.metrics import child_exit  # noqa: F401  (a gunicorn hook, found by name)


def _whole(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    return int(value) if value else default


# Processes: one per core (at least 2, so that one busy worker never holds up a webhook).
# The work is JSON parsing under the GIL plus waits on PostgreSQL; the threads cover the
# waits, the processes the CPU. Each worker opens its own pools (DISTRIBMAIL_POOL_SIZE for
# the receiver, DISTRIBMAIL_API_POOL_SIZE for the API, 8 each by default, plus one
# connection for the projector when it runs here): keep workers x ~17 under the
# database's max_connections (100 by default).
workers = _whole("DISTRIBMAIL_WORKERS", max(2, os.cpu_count() or 1))
worker_class = "gthread"  # keeps connections from nginx alive (sync workers close each one)
threads = _whole("DISTRIBMAIL_THREADS", 8)

# Brevo waits a while for an answer before it counts a failure; we give up first (20 s) so
# that a stuck request fails on our side, where the event is spooled or answered 429.
timeout = 20
graceful_timeout = 20
# Longer than nginx's upstream keepalive_timeout (4 s in deploy/nginx/distribmail.conf), so
# that nginx, not gunicorn, closes an idle connection: no request is sent on a connection
# gunicorn is closing.
keepalive = 5

# The heartbeat files of the workers: memory, not disk (and writable under ProtectSystem).
worker_tmp_dir = "/dev/shm"

# Only the proxies we trust may tell us the scheme (X-Forwarded-Proto): the same list as
# the one the webhook allow-list believes X-Forwarded-For from (ingest/auth.py). Empty
# means nobody. (gunicorn never rewrites REMOTE_ADDR from X-Forwarded-For: the app does,
# with DISTRIBMAIL_TRUSTED_PROXIES.)
forwarded_allow_ips = os.environ.get("DISTRIBMAIL_TRUSTED_PROXIES", "").replace(" ", "")

# Logs: JSON lines on stderr (journald keeps them). The app writes one line per request,
# with its request id (distribmail/logs.py), so gunicorn's own access log is off by default;
# DISTRIBMAIL_GUNICORN_ACCESS_LOG=- turns it on, in the same JSON shape, for the requests
# that never reach the app (a malformed request line, a worker killed by the timeout).
logger_class = "distribmail.logs.GunicornLogger"
errorlog = "-"
loglevel = os.environ.get("DISTRIBMAIL_LOG_LEVEL", "info").lower()
accesslog = os.environ.get("DISTRIBMAIL_GUNICORN_ACCESS_LOG") or None

# Request limits before the app sees anything; the body limit is nginx's and the app's
# (DISTRIBMAIL_MAX_BODY).
limit_request_line = 8190
limit_request_fields = 100
