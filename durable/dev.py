"""`durable dev` and `durable demo`: a local PostgreSQL owned by durable, the schema, a worker.

The cluster comes from the PostgreSQL server binaries on PATH (as an
unprivileged system user when run as root: PostgreSQL refuses root).  Roles
log in with trust on a private socket directory.  `durable dev` keeps its
data in --data-dir across runs; `durable demo` uses a temporary directory.
"""

from __future__ import annotations

import contextlib
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from durable import devserver, schema
from durable.client import Client
from durable.errors import DurableError
from durable.store import connect
from durable.store.db import dsn_with
from durable.worker.worker import Worker

DATABASE = "durable"
USER_ROLE = "durable_dev_user"
WORKER_ROLE = "durable_dev_worker"

DEMO_WORKFLOW = """
    (('SELECT 40 AS x' |=> 'a') & ('SELECT 2 AS y' |=> 'b'))
    ~> ('SELECT $a + $b AS total' |=> 'total')
    ~> df.if('SELECT $total > 10',
             df.sleep(1) ~> 'SELECT ''big'' AS verdict, $total AS total',
             'SELECT ''small'' AS verdict, $total AS total')
"""


@dataclass
class DevEnvironment:
    server: devserver.PgServer
    admin_dsn: str
    user_dsn: str
    worker_dsn: str


def _dsn(server: devserver.PgServer, user: str, dbname: str = DATABASE) -> str:
    return dsn_with(server.dsn(dbname=dbname), user=user)


def prepare(server: devserver.PgServer) -> DevEnvironment:
    """Create the database, install or upgrade durable, and the two ordinary roles."""
    with connect(server.dsn(), autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,)).fetchone():
            conn.execute(f"CREATE DATABASE {DATABASE}")
    admin = _dsn(server, devserver.SUPERUSER)
    with connect(admin) as conn:
        installed = schema.installed_version(conn)
    if installed is None:
        schema.install(admin)
    elif installed != schema.Scripts.packaged().newest():
        schema.upgrade(admin)
    else:
        schema.install(admin)  # re-creates the operators if a restore dropped them
    with connect(admin, autocommit=True) as conn:
        for role, extra in ((USER_ROLE, ""), (WORKER_ROLE, " IN ROLE durable_worker")):
            if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone():
                conn.execute(f"CREATE ROLE {role} LOGIN{extra}")
        conn.execute("SELECT df.grant_usage(%s)", (USER_ROLE,))
        conn.execute(f"GRANT CREATE ON SCHEMA public TO {USER_ROLE}")
    return DevEnvironment(server, admin, _dsn(server, USER_ROLE), _dsn(server, WORKER_ROLE))


@contextlib.contextmanager
def running_worker(dsn: str, concurrency: int = 4) -> Iterator[Worker]:
    worker = Worker(dsn, concurrency=concurrency)
    failure: list[BaseException] = []

    def run() -> None:
        try:
            worker.run()
        except BaseException as exc:  # noqa: BLE001 - reported by the caller
            failure.append(exc)

    thread = threading.Thread(target=run, name="durable-dev-worker", daemon=True)
    thread.start()
    try:
        yield worker
    finally:
        worker.stop()
        thread.join(timeout=30)
    if failure:
        raise DurableError(f"the worker stopped: {failure[0]}")


def _psql_command(dsn: str) -> str:
    return f"psql '{dsn}'"


def run_dev(data_dir: str, port: int | None) -> int:
    server = devserver.start_server(Path(data_dir), port)
    try:
        env = prepare(server)
        stop = threading.Event()
        previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
        with running_worker(env.worker_dsn):
            print(f"durable dev: PostgreSQL {server.port} with durable {schema.Scripts.packaged().newest()}, "
                  f"data in {Path(data_dir).resolve()}")
            print(f"  connection string: {env.user_dsn}")
            print(f"  psql:              {_psql_command(env.user_dsn)}")
            print("  try:               SELECT df.start('SELECT 1' ~> 'SELECT 2');")
            print("Ctrl-C stops the worker and the database (the data is kept).", flush=True)
            try:
                while not stop.wait(0.5):
                    pass
            except KeyboardInterrupt:
                pass
        signal.signal(signal.SIGTERM, previous)
        print("durable dev: stopped")
        return 0
    finally:
        server.stop("fast")


def run_demo() -> int:
    base = Path(tempfile.mkdtemp(prefix="durable-demo-"))
    server = devserver.start_server(base)
    try:
        env = prepare(server)
        with running_worker(env.worker_dsn), Client(env.user_dsn) as client:
            print("durable demo: a fan-out of two SQL steps joined, a named result, a condition and a sleep:")
            print(" ".join(DEMO_WORKFLOW.split()))
            iid = client.start_dsl(DEMO_WORKFLOW, label="demo")
            print(f"\nstarted instance {iid}\n")
            shown = None
            deadline = time.monotonic() + 60
            while True:
                info = client.info(iid)
                text = client.explain(iid)
                if text != shown:
                    print(text + "\n", flush=True)
                    shown = text
                if info is not None and info.status.terminal:
                    break
                if time.monotonic() > deadline:
                    raise DurableError("the demo did not finish within 60 s")
                time.sleep(0.2)
            print(f"status: {info.status.value}")
            print(f"result: {info.output}")
            return 0 if info.status.value == "completed" else 3
    finally:
        devserver.destroy(server)
