"""Postgres restarts under a running worker; SCRAM with a password file instead of trust."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from durable.store.steps import StepRunner
from tests import conftest
from tests.conftest import WORKER_ROLE, await_instance

needs_own_server = pytest.mark.skipif(bool(os.environ.get("DURABLE_TEST_DSN")),
                                      reason="needs the suite's own server")


@needs_own_server
def test_worker_recovers_when_postgres_restarts(db, dsn, make_role, start_worker):
    role = make_role()
    start_worker()
    with psycopg.connect(conftest.dsn_as(dsn, role), autocommit=True) as conn:
        iid = conn.execute("SELECT df.start('SELECT 1' ~> df.sleep(3) ~> 'SELECT 2 AS done')").fetchone()[0]
        deadline = time.monotonic() + 20
        while conn.execute("SELECT count(*) FROM df.nodes WHERE instance_id = %s AND node_type = 'SLEEP' "
                           "AND status = 'running'", (iid,)).fetchone()[0] == 0:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    assert conftest._server is not None
    conftest._server.restart()
    with psycopg.connect(conftest.dsn_as(dsn, role), autocommit=True) as conn:
        assert await_instance(conn, iid, 60) == "completed"
        assert conn.execute("SELECT df.result(%s)", (iid,)).fetchone()[0] == \
            '{"rows": [{"done": 2}], "row_count": 1}'


def test_submitter_connections_never_carry_the_workers_secrets():
    runner = StepRunner("host=h port=5 dbname=d user=w password=pw sslcert=/c sslkey=/k passfile=/p", None)  # type: ignore[arg-type]
    params = conninfo_to_dict(runner.conninfo_for("alice", None))
    assert params["user"] == "alice" and params["dbname"] == "d" and params["passfile"] == "/p"
    assert "password" not in params and "sslcert" not in params and "sslkey" not in params
    assert conninfo_to_dict(runner.conninfo_for("alice", "other"))["dbname"] == "other"


@needs_own_server
def test_scram_and_a_password_file(db, dsn, make_role, worker_dsn, fast_settings, tmp_path):
    role = make_role()
    db.execute(psycopg.sql.SQL("ALTER ROLE {} PASSWORD {}").format(psycopg.sql.Identifier(role),
                                                                 psycopg.sql.Literal("alice-secret")))
    db.execute(psycopg.sql.SQL("ALTER ROLE {} PASSWORD {}").format(psycopg.sql.Identifier(WORKER_ROLE),
                                                                 psycopg.sql.Literal("worker-secret")))
    assert db.execute("SELECT rolpassword LIKE 'SCRAM-SHA-256$%%' FROM pg_authid WHERE rolname = %s",
                      (role,)).fetchone()[0]
    params = conninfo_to_dict(dsn)
    port = params["port"]
    passfile = tmp_path / "pgpass"
    passfile.write_text(f"127.0.0.1:{port}:*:{WORKER_ROLE}:worker-secret\n127.0.0.1:{port}:*:{role}:alice-secret\n")
    passfile.chmod(0o600)
    tcp = make_conninfo(host="127.0.0.1", port=port, dbname=params["dbname"], user=WORKER_ROLE,
                        passfile=str(passfile))
    # Without the file, TCP logins need a password: SCRAM really is in force.
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(make_conninfo(host="127.0.0.1", port=port, dbname=params["dbname"], user=role,
                                      passfile="/nonexistent")).close()
    log = open(tmp_path / "worker.log", "wb")  # noqa: SIM115
    worker = subprocess.Popen([sys.executable, "-m", "durable.cli", "worker", "--dsn", tcp],
                              stdout=log, stderr=subprocess.STDOUT)
    try:
        with psycopg.connect(make_conninfo(host="127.0.0.1", port=port, dbname=params["dbname"], user=role,
                                           passfile=str(passfile)), autocommit=True) as conn:
            iid = conn.execute("SELECT df.start('SELECT current_user AS u')").fetchone()[0]
            assert await_instance(conn, iid, 30) == "completed", (tmp_path / "worker.log").read_text()
            assert conn.execute("SELECT df.result(%s)", (iid,)).fetchone()[0] == \
                f'{{"rows": [{{"u": "{role}"}}], "row_count": 1}}'
            assert db.execute("SELECT count(*) FROM pg_stat_activity WHERE usename = %s AND "
                              "application_name = 'durable:step' AND client_addr IS NOT NULL",
                              (role,)).fetchone()[0] >= 1
    finally:
        worker.terminate()
        worker.wait(timeout=20)
        log.close()
        db.execute(psycopg.sql.SQL("ALTER ROLE {} PASSWORD NULL").format(psycopg.sql.Identifier(WORKER_ROLE)))
