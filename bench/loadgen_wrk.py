"""Closed-loop load with wrk: as many keep-alive requests as the server answers.

wrk is C with an epoll loop, so one wrk thread costs far less CPU than the server it loads;
that matters on a 2-core machine where the generator and the server share the cores.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from bench_events import template_parts

LUA_SCRIPT = Path(__file__).resolve().parent / "post_events.lua"
INSTALL_HINT = "wrk is missing: install it with `apt-get update && apt-get install -y wrk`"

_RESULT = re.compile(r"^WRK_RESULT (.*)$", re.MULTILINE)


class WrkMissing(RuntimeError):
    pass


def wrk_path() -> str:
    path = shutil.which("wrk")
    if path is None:
        raise WrkMissing(INSTALL_HINT)
    return path


@dataclass(frozen=True)
class LoadResult:
    requests: int  # completed, whatever their status
    seconds: float
    batch: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    errors: int  # socket errors plus non-200 answers
    stored: int  # as the receiver answered (0 for the bare app)
    duplicates: int

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.seconds

    @property
    def events_per_s(self) -> float:
        # Only answered-200 requests count as delivered events.
        return (self.requests - self.errors) * self.batch / self.seconds


def run_wrk(
    url: str,
    path: str,
    token: str,
    batch: int,
    tag: str,
    base_ts: int,
    seconds: float,
    connections: int,
    threads: int = 1,
) -> LoadResult:
    """POST unique events to `url + path` for `seconds` over `connections` kept-alive sockets."""
    p0, p1, p2 = template_parts()
    # fmt: off
    command = [
        wrk_path(), "-t", str(threads), "-c", str(connections), "-d", f"{seconds:g}s",
        "--timeout", "10s", "-s", str(LUA_SCRIPT), url,
        "--", path, token, str(batch), tag, str(base_ts), p0, p1, p2,
    ]
    # fmt: on
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60)
    match = _RESULT.search(done.stdout)
    if done.returncode != 0 or match is None:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stdout}\n{done.stderr}")
    fields = {k: int(v) for k, v in (item.split("=") for item in match.group(1).split())}
    socket_errors = fields["connect"] + fields["read"] + fields["write"] + fields["timeout"]
    return LoadResult(
        requests=fields["requests"],
        seconds=fields["duration_us"] / 1e6,
        batch=batch,
        p50_ms=fields["p50"] / 1000,
        p90_ms=fields["p90"] / 1000,
        p99_ms=fields["p99"] / 1000,
        max_ms=fields["max"] / 1000,
        errors=socket_errors + fields["bad"],
        stored=fields["stored"],
        duplicates=fields["duplicates"],
    )
