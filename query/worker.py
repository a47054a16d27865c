"""Where the projector runs: a thread of the web app, or `distribmail worker` on its own.

Settings (environment, prefix DISTRIBMAIL_):
- PROJECTOR: `on` (default) or `off`. Off for a receiver-only deployment (a separate
  `distribmail worker` then keeps the projection), and for tests that fold by hand.
- PROJECTOR_BATCH: queue rows per transaction (default 500).
- PROJECTOR_POLL: seconds between queue checks when no NOTIFY came (default 1).
- PROJECTION_MAX_LAG: /readyz reports the projection unhealthy when the oldest unfolded
  change is older than this many seconds (default 300).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import FrameType
from typing import Any

from flask import Flask

from ingest.errors import ConfigError
from ingest.settings import PREFIX, env_float, env_int, env_switch
from ingest.web import CLOSERS, READINESS, ReadinessCheck
from query.projector import Projector

log = logging.getLogger(__name__)

PROJECTOR = "distribmail.projector"  # app.extensions key: the running Projector


@dataclass(frozen=True)
class ProjectorSettings:
    enabled: bool = True
    batch_size: int = 500
    poll_interval: float = 1.0
    max_lag: float = 300.0

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ProjectorSettings:
        settings = cls(
            enabled=env_switch(env, "PROJECTOR", True),
            batch_size=env_int(env, "PROJECTOR_BATCH", 500),
            poll_interval=env_float(env, "PROJECTOR_POLL", 1.0),
            max_lag=env_float(env, "PROJECTION_MAX_LAG", 300.0),
        )
        if settings.batch_size < 1 or settings.poll_interval <= 0:
            raise ConfigError(
                f"{PREFIX}PROJECTOR_BATCH must be at least 1 and {PREFIX}PROJECTOR_POLL above 0"
            )
        return settings


def projection_check(projector: Projector, max_lag: float) -> ReadinessCheck:
    """("projection", True, detail) from the figures the projector reads after each batch or
    wait: /readyz costs no query, and figures that stop coming mean the loop is stuck.

    The detail says whether the projection is healthy, but readiness itself never depends
    on it: /readyz gates the receiver behind a load balancer, and a lagging projection must
    not turn Brevo away (it would discard events). Alert on `ok` and on /metrics instead."""

    def check() -> tuple[str, bool, Any]:
        now = time.monotonic()
        running = projector.is_running()
        lag, read_at = projector.lag, projector.lag_read_at
        stale_after = max(10.0, 5 * projector.poll_interval)
        if lag is None or read_at is None:
            # Just started: not ready only once it has had time to connect.
            ok = running and now - projector.started_at < stale_after
            detail: dict[str, Any] = {"ok": ok, "running": running, "state": "starting"}
        else:
            fresh = now - read_at < stale_after
            ok = running and fresh and lag.oldest_age_seconds <= max_lag
            detail = {"ok": ok, "running": running, **lag.to_json()}
            detail["measured_seconds_ago"] = round(now - read_at, 1)
        if projector.last_error:
            detail["error"] = projector.last_error
        return "projection", True, detail

    return check


def mount_projector(app: Flask, env: Mapping[str, str], url: str) -> Projector | None:
    """Start the projector thread for this app, unless DISTRIBMAIL_PROJECTOR=off."""
    settings = ProjectorSettings.from_env(env)
    if not settings.enabled:
        return None
    projector = Projector(url, settings.batch_size, settings.poll_interval)
    projector.start()
    app.extensions[PROJECTOR] = projector
    app.extensions.setdefault(READINESS, []).append(projection_check(projector, settings.max_lag))
    app.extensions.setdefault(CLOSERS, []).append(projector.stop)
    return projector


def add_worker_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch-size", type=int, help="queue rows per transaction")
    parser.add_argument("--poll", type=float, help="seconds between checks without a NOTIFY")


def run_worker(args: argparse.Namespace) -> int:
    """`distribmail worker`: the projector in the foreground until SIGTERM or SIGINT, which
    stop it after the current batch (a batch is one transaction: nothing half-done)."""
    from ingest.database import apply_schema
    from ingest.settings import IngestSettings
    from ingest.wiring import database_url

    url = database_url(IngestSettings.from_env())
    apply_schema(url)
    settings = ProjectorSettings.from_env(os.environ)  # runs whatever PROJECTOR says
    projector = Projector(
        url,
        batch_size=getattr(args, "batch_size", None) or settings.batch_size,
        poll_interval=getattr(args, "poll", None) or settings.poll_interval,
    )

    def stop(signum: int, frame: FrameType | None) -> None:
        log.info("worker: %s received, stopping after the current batch", signal.strsignal(signum))
        projector.stop_soon()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info("worker: projecting (batch %d, poll %.1fs)", projector.batch_size,
             projector.poll_interval)  # fmt: skip
    stop_reconciler = _start_reconciler(url)
    try:
        projector.run()
    finally:
        stop_reconciler()
    log.info("worker: stopped after folding %d message(s)", projector.folded)
    return 0


def _start_reconciler(url: str) -> Callable[[], None]:
    """Brevo reconciliation runs in the single worker process, not in every web worker;
    off without an API key or with DISTRIBMAIL_RECONCILE_EVERY=0. Returns its stop."""
    from ingest.reconcile import Reconciler
    from ingest.settings import IngestSettings
    from ingest.wiring import build_receiver

    receiver = build_receiver(IngestSettings.from_env(), url, drain=False)
    reconciler = Reconciler.from_env(receiver)
    if reconciler is None:
        receiver.close()
        return lambda: None
    reconciler.start()

    def stop() -> None:
        reconciler.stop(timeout=30)
        receiver.close()

    return stop
