"""The `durable` command."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from durable import __version__
from durable.errors import DurableError

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2


def _add_dsn(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dsn", help="connection string (default: $DURABLE_DSN, else the PG* variables)")


def cmd_install(args: argparse.Namespace) -> int:
    from durable import schema

    out = schema.install(args.dsn, version=args.version, dry_run=args.dry_run)
    print(out)
    return EXIT_OK


def cmd_upgrade(args: argparse.Namespace) -> int:
    from durable import schema

    for line in schema.upgrade(args.dsn, to=args.to, dry_run=args.dry_run):
        print(line)
    return EXIT_OK


def cmd_worker(args: argparse.Namespace) -> int:
    from durable.worker import run_worker

    return run_worker(args.dsn, concurrency=args.concurrency)


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="durable", description="A durable orchestration engine in PostgreSQL.")
    parser.add_argument("--version", action="version", version=f"durable {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("install", help="install the df schema into a database")
    _add_dsn(p)
    p.add_argument("--version", dest="version", help="install this released version instead of the newest")
    p.add_argument("--dry-run", action="store_true", help="print the SQL instead of running it")
    p.set_defaults(func=cmd_install)

    p = sub.add_parser("upgrade", help="upgrade the df schema to the newest (or --to) version")
    _add_dsn(p)
    p.add_argument("--to", help="target version")
    p.add_argument("--dry-run", action="store_true", help="print the SQL instead of running it")
    p.set_defaults(func=cmd_upgrade)

    p = sub.add_parser("worker", help="run a worker that executes workflow instances")
    _add_dsn(p)
    p.add_argument("--concurrency", type=int, default=4, help="steps run at once (default 4)")
    p.set_defaults(func=cmd_worker)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except DurableError as exc:
        if args.debug:
            raise
        print(f"durable: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a database or OS error: one clear line, the traceback only with --debug
        if args.debug:
            raise
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"durable: error: {message}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    raise SystemExit(main())
