"""The Brevo subcommands: `brevo connect`, `brevo status`, `backfill`.

`distribmail.cli` adds them with `brevo_cli.add_commands(commands)`. Errors a person can
act on (a refused key, a bad date) are DistribmailErrors: `cli.main` prints their message
and exits non-zero, no traceback.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, date, datetime
from typing import TextIO
from urllib.parse import urlsplit

from ingest.errors import ConfigError
from ingest.settings import IngestSettings

EXIT_INTERRUPTED = 130  # the shell's code for Ctrl-C
EXIT_PAGES_SKIPPED = 1


class ProgressBar:
    """Plain text on stderr: redrawn in place on a terminal, a line per tenth otherwise."""

    def __init__(self, stream: TextIO | None = None, width: int = 28) -> None:
        self.stream = stream or sys.stderr
        self.width = width
        self.tty = self.stream.isatty()
        self._last_tenth = -1
        self._drawn = 0
        self._pending = ""

    def show(self, fraction: float, detail: str) -> None:
        fraction = min(max(fraction, 0.0), 1.0)
        filled = int(fraction * self.width)
        line = f"[{'#' * filled}{'.' * (self.width - filled)}] {fraction:4.0%}  {detail}"
        if self.tty:
            self.stream.write("\r" + line.ljust(self._drawn))
            self._drawn = len(line)
        elif int(fraction * 10) != self._last_tenth:
            self._last_tenth = int(fraction * 10)
            self.stream.write(line + "\n")
            line = ""
        self._pending = line  # a line not written yet, for finish()
        self.stream.flush()

    def finish(self) -> None:
        if self.tty and self._drawn:
            self.stream.write("\n")
            self._drawn = 0
        elif not self.tty and self._pending:
            self.stream.write(self._pending + "\n")
        self._pending = ""
        self.stream.flush()


def _day(value: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a date like 2024-05-31") from None


def webhook_token(settings: IngestSettings) -> str:
    """The bearer token Brevo must send: the first configured one, else the generated one
    (the receiver accepts it exactly when no credential is configured: ingest.wiring)."""
    from ingest.auth import load_or_create_token

    if settings.webhook_tokens:
        return settings.webhook_tokens[0]
    if settings.webhook_basic_auth:
        raise ConfigError(
            "DISTRIBMAIL_WEBHOOK_BASIC_AUTH is set but DISTRIBMAIL_WEBHOOK_TOKENS is not: "
            "the webhook we create sends a bearer token, so set DISTRIBMAIL_WEBHOOK_TOKENS"
        )
    return load_or_create_token(settings.data_dir)


def public_base(value: str) -> str:
    parts = urlsplit(value.strip())
    if parts.scheme not in ("https", "http") or not parts.netloc:
        raise ConfigError(f"--public-url must look like https://mail.example.com, not {value!r}")
    # Someone pasting the webhook's full address gets what they meant.
    return value.strip().rstrip("/").removesuffix("/webhooks/brevo")


def _connect(args: argparse.Namespace) -> int:
    from ingest.brevo_api import BrevoClient
    from ingest.brevo_setup import connect

    base = public_base(args.public_url)
    token = webhook_token(IngestSettings.from_env())
    client = BrevoClient.from_env()
    try:
        result = connect(client, base, token)
    finally:
        client.close()
    if base.startswith("http://"):
        print("warning: Brevo calls an http:// URL in clear text, token included; use https")
    print("\n".join(result.lines()))
    return 0


def _status(args: argparse.Namespace) -> int:
    from ingest.brevo_api import BrevoClient
    from ingest.brevo_setup import status

    client = BrevoClient.from_env()
    try:
        print("\n".join(status(client).lines()))
    finally:
        client.close()
    return 0


def _backfill(args: argparse.Namespace) -> int:
    from ingest.backfill import Backfill
    from ingest.brevo_api import BrevoClient
    from ingest.database import apply_schema
    from ingest.wiring import build_receiver, database_url

    client = BrevoClient.from_env()  # no key: say so before touching the database
    settings = IngestSettings.from_env()
    url = database_url(settings)
    apply_schema(url)  # creates backfill_progress on a database older than this command
    receiver = build_receiver(settings, url, drain=False)
    bar = ProgressBar()
    job = Backfill(client, receiver, args.start, args.end, page_size=args.page_size, show=bar.show)
    print(
        f"backfill {args.start}..{args.end}: {len(job.chunks)} chunk(s) of at most 90 days, "
        f"{args.page_size} events a page"
    )
    try:
        report = job.run()
    except KeyboardInterrupt:
        bar.finish()
        print(
            f"interrupted at {job.position}; what was pulled is stored and the progress "
            "saved: run the same command again to resume",
            file=sys.stderr,
        )
        print(job.report.summary())
        return EXIT_INTERRUPTED
    finally:
        bar.finish()
        receiver.close()
        client.close()
    if report.restarted:
        print("this range was already complete: pulled again (the log keeps each event once)")
    if report.resumed_at:
        print(f"resumed at {report.resumed_at}")
    for page in report.skipped:
        print(f"skipped page {page}")
    print(report.summary())
    return EXIT_PAGES_SKIPPED if report.skipped else 0


def add_commands(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add `brevo connect`, `brevo status` and `backfill` to the `distribmail` command."""
    brevo = commands.add_parser("brevo", help="the Brevo account: webhook and checks")
    brevo_commands = brevo.add_subparsers(dest="brevo_command", required=True)
    connect = brevo_commands.add_parser(
        "connect", help="create or update our transactional webhook in Brevo"
    )
    connect.add_argument(
        "--public-url",
        required=True,
        metavar="URL",
        help="where Brevo reaches this service, e.g. https://mail.example.com",
    )
    connect.set_defaults(run=_connect)
    brevo_commands.add_parser(
        "status", help="the key's account, our webhook, the sender domains' DKIM/DMARC"
    ).set_defaults(run=_status)

    backfill = commands.add_parser(
        "backfill",
        help="pull Brevo's events for a date range into the log (resumable)",
        description="Pull GET /smtp/statistics/events into the log. Run the same command "
        "again to resume after an interruption. Exit code 1 when pages were skipped.",
    )
    backfill.add_argument("--from", dest="start", type=_day, required=True, metavar="YYYY-MM-DD")
    backfill.add_argument(
        "--to",
        dest="end",
        type=_day,
        metavar="YYYY-MM-DD",
        default=datetime.now(UTC).date(),
        help="last day, included (default: today, UTC)",
    )
    backfill.add_argument("--page-size", type=int, default=2500, help="events a page (max 5000)")
    backfill.set_defaults(run=_backfill)
