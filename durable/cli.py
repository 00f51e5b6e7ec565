"""The `durable` command.

Exit codes scripts can rely on:
  0  success (watch: the instance completed)
  1  an error (bad input, database unreachable, ...), printed as one line (traceback with --debug)
  2  bad usage (unknown command or option)
  3  watch: the instance failed or was cancelled
  4  the instance does not exist or is not visible to this role

The DSN comes from --dsn, else $DURABLE_DSN, else the libpq PG* variables.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from durable import __version__
from durable.errors import DurableError, NotFoundError

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_UNSUCCESSFUL, EXIT_NOT_FOUND = 0, 1, 2, 3, 4


def _client(args: argparse.Namespace) -> Any:
    from durable.client import Client

    return Client(args.dsn)


def cmd_install(args: argparse.Namespace) -> int:
    from durable import schema

    print(schema.install(args.dsn, version=args.version, dry_run=args.dry_run))
    return EXIT_OK


def cmd_upgrade(args: argparse.Namespace) -> int:
    from durable import schema

    for line in schema.upgrade(args.dsn, to=args.to, dry_run=args.dry_run):
        print(line)
    return EXIT_OK


def cmd_worker(args: argparse.Namespace) -> int:
    from durable.worker import run_worker

    if args.batch < 1:
        raise DurableError("--batch must be at least 1")
    return run_worker(args.dsn, concurrency=args.concurrency, batch=args.batch)


def cmd_start(args: argparse.Namespace) -> int:
    with _client(args) as client:
        if args.dsl:
            iid = client.start_dsl(args.workflow, label=args.label)
        else:
            iid = client.start(args.workflow, label=args.label, database=args.database)
    print(iid)
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    with _client(args) as client:
        status = client.status(args.instance_id)
    if status is None:
        print(f"durable: instance {args.instance_id} not found", file=sys.stderr)
        return EXIT_NOT_FOUND
    print(status.value)
    return EXIT_OK


def cmd_result(args: argparse.Namespace) -> int:
    with _client(args) as client:
        info = client.info(args.instance_id)
        if info is None:
            print(f"durable: instance {args.instance_id} not found", file=sys.stderr)
            return EXIT_NOT_FOUND
        print(json.dumps(client.result(args.instance_id)))
    return EXIT_OK


def cmd_ls(args: argparse.Namespace) -> int:
    rows = []
    with _client(args) as client:
        for item in client.list(status=args.status, label=args.label, page_size=min(args.limit, 1000)):
            rows.append(item)
            if len(rows) >= args.limit:
                break
    if args.json:
        print(json.dumps([r.model_dump(mode="json") for r in rows]))
        return EXIT_OK
    table = [("ID", "STATUS", "LABEL", "CREATED", "VERSION")]
    table += [(r.instance_id, r.status.value, r.label or "", r.created_at.isoformat(timespec="seconds")
               if r.created_at else "", str(r.resource_version)) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return EXIT_OK


def cmd_show(args: argparse.Namespace) -> int:
    with _client(args) as client:
        if client.info(args.instance_id) is None:
            print(f"durable: instance {args.instance_id} not found", file=sys.stderr)
            return EXIT_NOT_FOUND
        print(client.explain(args.instance_id))
    return EXIT_OK


def cmd_explain(args: argparse.Namespace) -> int:
    with _client(args) as client:
        print(client.explain(args.input))
    return EXIT_OK


def cmd_watch(args: argparse.Namespace) -> int:
    import time

    with _client(args) as client:
        shown = None
        deadline = time.monotonic() + args.timeout if args.timeout else None
        while True:
            info = client.info(args.instance_id)
            if info is None:
                print(f"durable: instance {args.instance_id} not found", file=sys.stderr)
                return EXIT_NOT_FOUND
            text = client.explain(args.instance_id)
            if text != shown:
                if shown is not None and sys.stdout.isatty():
                    print("\033[H\033[J", end="")
                elif shown is not None:
                    print()
                print(text, flush=True)
                shown = text
            if info.status.terminal:
                return EXIT_OK if info.status.value == "completed" else EXIT_UNSUCCESSFUL
            if deadline is not None and time.monotonic() > deadline:
                print(f"durable: still {info.status.value} after {args.timeout:g}s", file=sys.stderr)
                return EXIT_ERROR
            time.sleep(args.interval)


def cmd_cancel(args: argparse.Namespace) -> int:
    with _client(args) as client:
        print(client.cancel(args.instance_id, args.reason, expected_resource_version=args.expected_version))
    return EXIT_OK


def cmd_signal(args: argparse.Namespace) -> int:
    with _client(args) as client:
        client.signal(args.instance_id, args.name, args.data, expected_resource_version=args.expected_version)
    print("OK")
    return EXIT_OK


def cmd_bench(args: argparse.Namespace) -> int:
    from durable.bench import format_table, run_bench

    def progress(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    workers = [args.workers] if args.workers else None
    result = run_bench(args.dsn, quick=args.quick, workers=workers, progress=progress)
    print(json.dumps(result, indent=2) if args.json else format_table(result))
    if not result["verified"]:
        print("durable bench: some results were wrong (see \"verified\"): the numbers do not count",
              file=sys.stderr)
        return EXIT_ERROR
    return EXIT_OK


def cmd_dev(args: argparse.Namespace) -> int:
    from durable.dev import run_dev

    return run_dev(data_dir=args.data_dir, port=args.port)


def cmd_demo(args: argparse.Namespace) -> int:
    from durable.dev import run_demo

    return run_demo()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="durable", description="A durable orchestration engine that lives in PostgreSQL.",
        epilog="Exit codes: 0 ok, 1 error, 2 usage, 3 instance failed or cancelled (watch), 4 not found.")
    parser.add_argument("--version", action="version", version=f"durable {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str, func: Any, *, dsn: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        if dsn:
            p.add_argument("--dsn", help="connection string (default: $DURABLE_DSN, else the PG* variables)")
        p.set_defaults(func=func)
        return p

    p = command("install", "install the df schema into a database (idempotent)", cmd_install)
    p.add_argument("--version", dest="version", help="install this released version instead of the newest")
    p.add_argument("--dry-run", action="store_true", help="print the SQL instead of running it")

    p = command("upgrade", "upgrade the df schema to the newest (or --to) version", cmd_upgrade)
    p.add_argument("--to", help="target version")
    p.add_argument("--dry-run", action="store_true", help="print the SQL instead of running it")

    p = command("worker", "run a worker that executes workflow instances (SIGTERM stops it cleanly)", cmd_worker)
    p.add_argument("--concurrency", type=int, default=4, help="instances advanced at once (default 4)")
    p.add_argument("--batch", type=int, default=1, metavar="N",
                   help="opt-in batched mode: up to N steps of one submitter per transaction (default 1: a "
                        "transaction per step; see docs/worker.md)")

    p = command("dev", "run a local PostgreSQL with durable installed and a worker (Ctrl-C stops)", cmd_dev,
                dsn=False)
    p.add_argument("--data-dir", default=".durable-dev", help="where the database lives (default .durable-dev)")
    p.add_argument("--port", type=int, default=None, help="TCP port (default: a free one, then kept)")

    command("demo", "run a small real workflow on a temporary local PostgreSQL, then exit", cmd_demo, dsn=False)

    p = command("bench", "measure throughput, latency, start rate, memory and scale (superuser DSN; scratch "
                         "objects are removed afterwards)", cmd_bench)
    p.add_argument("--quick", action="store_true", help="tiny versions of every scenario (proves it works)")
    p.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    p.add_argument("--workers", type=int, help="only this many worker processes (default: 1, 2 and 4)")

    p = command("start", "start a workflow; prints its instance id", cmd_start)
    p.add_argument("workflow", help="plain SQL (one step) or an envelope; with --dsl, a SQL DSL expression")
    p.add_argument("--dsl", action="store_true",
                   help="WORKFLOW is a DSL expression such as \"'SELECT 1' ~> 'SELECT 2'\"")
    p.add_argument("--label")
    p.add_argument("--database", help="run SQL steps in this database")

    p = command("status", "print an instance's status", cmd_status)
    p.add_argument("instance_id")

    p = command("result", "print an instance's result as JSON (null until it completed)", cmd_result)
    p.add_argument("instance_id")

    p = command("ls", "list instances, newest first", cmd_ls)
    p.add_argument("--status")
    p.add_argument("--label")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--json", action="store_true", help="one JSON array")

    p = command("show", "show an instance's nodes with their (inferred) status", cmd_show)
    p.add_argument("instance_id")

    p = command("explain", "explain an instance id, an envelope or a DSL expression", cmd_explain)
    p.add_argument("input")

    p = command("watch", "follow an instance until it finishes (exit 0 completed, 3 failed/cancelled)", cmd_watch)
    p.add_argument("instance_id")
    p.add_argument("--interval", type=float, default=0.5)
    p.add_argument("--timeout", type=float, default=None)

    p = command("cancel", "cancel an instance", cmd_cancel)
    p.add_argument("instance_id")
    p.add_argument("--reason", default="Cancelled by user")
    p.add_argument("--expected-version", type=int, help="only if the instance is at this resource_version")

    p = command("signal", "send a signal to an instance", cmd_signal)
    p.add_argument("instance_id")
    p.add_argument("name")
    p.add_argument("data", nargs="?", default=None, help="JSON payload (other text is sent as a JSON string)")
    p.add_argument("--expected-version", type=int, help="only if the instance is at this resource_version")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except NotFoundError as exc:
        if args.debug:
            raise
        print(f"durable: {exc}", file=sys.stderr)
        return EXIT_NOT_FOUND
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
