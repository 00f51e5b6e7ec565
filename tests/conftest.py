"""Test harness: a real PostgreSQL, the schema installed once into a template,
a fresh database per test (pytest-postgresql's noproc fixture and factories).

Set DURABLE_TEST_DSN (a superuser DSN) to use an existing server instead.
"""

from __future__ import annotations

import itertools
import os
import signal
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from pytest_postgresql import factories

from tests import pgserver

_server: pgserver.PgServer | None = None


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # unwind so pytest_unconfigure stops the server


def pytest_configure(config: pytest.Config) -> None:
    global _server
    if os.environ.get("PYTEST_XDIST_WORKER"):
        return
    signal.signal(signal.SIGTERM, _interrupt)
    external = os.environ.get("DURABLE_TEST_DSN")
    if external:
        params = conninfo_to_dict(external)
        host, port, user = params.get("host", "localhost"), params.get("port", 5432), params.get("user", "postgres")
        password = params.get("password")
    else:
        _server = pgserver.start_server()
        host, port, user, password = _server.host, _server.port, pgserver.SUPERUSER, None
    config.option.postgresql_host = host
    config.option.postgresql_port = int(port)
    config.option.postgresql_user = user
    config.option.postgresql_password = password
    config.option.postgresql_dbname = "durable_test"


def pytest_unconfigure(config: pytest.Config) -> None:
    if _server is not None:
        pgserver.destroy(_server)


def install_durable(host: str, port: int, user: str, dbname: str, password: str | None = None, **_: Any) -> None:
    """pytest-postgresql loader: install the newest schema into the template database."""
    from durable import schema

    schema.install(make_conninfo(host=host, port=port, user=user, dbname=dbname, password=password))


postgresql_noproc = factories.postgresql_noproc(load=[install_durable])
postgresql = factories.postgresql("postgresql_noproc")


@pytest.fixture
def db(postgresql: psycopg.Connection) -> psycopg.Connection:
    """A superuser connection (autocommit) to a fresh database with durable installed."""
    postgresql.autocommit = True
    return postgresql


@pytest.fixture
def dsn(postgresql: psycopg.Connection) -> str:
    """The superuser DSN of this test's database."""
    info = postgresql.info
    return make_conninfo(host=info.host, port=info.port, user=info.user, dbname=info.dbname,
                         password=info.password or None)


def dsn_as(dsn: str, user: str) -> str:
    params = conninfo_to_dict(dsn)
    params["user"] = user
    params.pop("password", None)
    return make_conninfo(**params)


_role_seq = itertools.count()


@pytest.fixture
def make_role(db: psycopg.Connection) -> Callable[..., str]:
    """Create a role unique to this test (roles are cluster-wide), granted df usage by default."""

    def make(prefix: str = "user", *, login: bool = True, grant: bool = True, attrs: str = "") -> str:
        name = f"{prefix}_{uuid.uuid4().hex[:8]}_{next(_role_seq)}"
        db.execute(f'CREATE ROLE "{name}" {"LOGIN" if login else "NOLOGIN"} {attrs}')
        if grant:
            db.execute("SELECT df.grant_usage(%s)", (name,))
        return name

    return make


@pytest.fixture
def connect_as(dsn: str) -> Iterator[Callable[..., psycopg.Connection]]:
    """Open connections logged in as a given role; all closed after the test."""
    opened: list[psycopg.Connection] = []

    def connect(role: str, *, autocommit: bool = True) -> psycopg.Connection:
        conn = psycopg.connect(dsn_as(dsn, role), autocommit=autocommit)
        opened.append(conn)
        return conn

    yield connect
    for conn in opened:
        conn.close()


WORKER_ROLE = "durable_test_worker"


@pytest.fixture
def worker_dsn(db: psycopg.Connection, dsn: str) -> str:
    """A DSN for the worker: an ordinary login role that is a member of durable_worker."""
    exists = db.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (WORKER_ROLE,)).fetchone()
    if not exists:
        db.execute(f"CREATE ROLE {WORKER_ROLE} LOGIN")
        db.execute(f"GRANT durable_worker TO {WORKER_ROLE}")
    return dsn_as(dsn, WORKER_ROLE)


@pytest.fixture
def fast_settings(db: psycopg.Connection) -> Callable[..., None]:
    """Lower owner-only settings so the suite never sleeps for real."""

    def apply(**values: object) -> None:
        for key, value in values.items():
            db.execute("UPDATE df.settings SET value = %s WHERE key = %s",
                       (None if value is None else str(value), key))

    apply(lease_seconds=3, loop_min_iteration_seconds=0.02)
    return apply


@pytest.fixture
def start_worker(worker_dsn: str, fast_settings: Any, tmp_path: Any) -> Iterator[Callable[..., Any]]:
    """Start real `durable worker` processes; all stopped (and their logs shown on failure) after."""
    import subprocess
    import sys

    procs: list[tuple[subprocess.Popen[bytes], Any]] = []

    def start(concurrency: int = 4, batch: int = 1) -> subprocess.Popen[bytes]:
        log_path = tmp_path / f"worker-{len(procs)}.log"
        log = open(log_path, "wb")  # noqa: SIM115 - closed at teardown
        proc = subprocess.Popen(
            [sys.executable, "-m", "durable.cli", "worker", "--dsn", worker_dsn, "--concurrency", str(concurrency),
             "--batch", str(batch)],
            stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, DURABLE_LOG_LEVEL="INFO"))
        proc.log_path = log_path  # type: ignore[attr-defined]
        procs.append((proc, log))
        return proc

    yield start
    for proc, _ in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc, log in procs:
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def await_instance(conn: psycopg.Connection, instance_id: str, timeout: int = 30) -> str:
    return conn.execute("SELECT df.await_instance(%s, %s)", (instance_id, timeout)).fetchone()[0]
