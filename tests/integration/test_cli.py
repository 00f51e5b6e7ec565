"""Every `durable` subcommand, through the real console entry point, with exit codes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

import durable
from durable.models import InstanceStatus
from tests.conftest import dsn_as


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "durable.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ, **(env or {})))


@pytest.fixture
def user(dsn, make_role):
    return dsn_as(dsn, make_role("cli"))


def test_help_and_usage_errors():
    out = cli("--help")
    assert out.returncode == 0
    for name in ("install", "upgrade", "worker", "dev", "demo", "bench", "start", "status", "ls", "show", "explain", "watch",
                 "cancel", "signal"):
        assert name in out.stdout
    assert "Exit codes" in out.stdout
    assert cli("no-such-command").returncode == 2
    assert cli("status").returncode == 2


def test_start_status_show_watch_result(user, start_worker):
    start_worker()
    out = cli("start", "--dsn", user, "--dsl", "'SELECT 1 AS one' ~> ('SELECT 2 AS two' |=> 'two')", "--label", "c")
    assert out.returncode == 0, out.stderr
    iid = out.stdout.strip()
    assert len(iid) == 8
    watched = cli("watch", iid, "--interval", "0.1", env={"DURABLE_DSN": user})
    assert watched.returncode == 0, watched.stderr
    assert "✓ Completed" in watched.stdout and "SELECT 2 AS two |=> 'two' ✓" in watched.stdout
    assert cli("status", "--dsn", user, iid).stdout.strip() == "completed"
    assert json.loads(cli("result", "--dsn", user, iid).stdout) == {"rows": [{"two": 2}], "row_count": 1}
    shown = cli("show", "--dsn", user, iid)
    assert shown.returncode == 0 and shown.stdout.startswith(f"Instance: {iid} (c)")
    with psycopg.connect(user) as conn:
        assert shown.stdout.rstrip("\n") == conn.execute("SELECT df.explain(%s)", (iid,)).fetchone()[0]


def test_plain_sql_start_and_failed_watch(user, start_worker):
    start_worker()
    iid = cli("start", "--dsn", user, "SELECT 1/0").stdout.strip()
    watched = cli("watch", "--dsn", user, iid, "--interval", "0.1")
    assert watched.returncode == 3
    assert cli("status", "--dsn", user, iid).stdout.strip() == "failed"


def test_ls_cancel_signal_explain(user):
    first = cli("start", "--dsn", user, "--dsl", "df.wait_for_signal('go')", "--label", "one").stdout.strip()
    second = cli("start", "--dsn", user, "SELECT 1", "--label", "two").stdout.strip()
    listed = cli("ls", "--dsn", user)
    assert listed.returncode == 0 and first in listed.stdout and second in listed.stdout
    as_json = json.loads(cli("ls", "--dsn", user, "--json", "--label", "one").stdout)
    assert [r["instance_id"] for r in as_json] == [first]
    version = as_json[0]["resource_version"]
    stale = cli("signal", "--dsn", user, first, "go", '{"x": 1}', "--expected-version", str(version - 1))
    assert stale.returncode == 1 and "resource_version mismatch" in stale.stderr and "Traceback" not in stale.stderr
    assert cli("signal", "--dsn", user, first, "go", '{"x": 1}', "--expected-version", str(version)).returncode == 0
    cancelled = cli("cancel", "--dsn", user, second, "--reason", "enough")
    assert cancelled.returncode == 0 and cancelled.stdout.strip() == f"Instance {second} cancelled: enough"
    explained = cli("explain", "--dsn", user, "'SELECT 1' ~> 'SELECT 2'")
    assert explained.returncode == 0 and explained.stdout.startswith("SQL: SELECT 1")


def test_not_found_and_errors_have_exit_codes(user):
    assert cli("status", "--dsn", user, "deadbeef").returncode == 4
    assert cli("show", "--dsn", user, "deadbeef").returncode == 4
    assert cli("cancel", "--dsn", user, "deadbeef").returncode == 4
    bad = cli("start", "--dsn", user, '{"node_type":"FOO"}')
    assert bad.returncode == 1 and bad.stderr.startswith("durable: error: Invalid durable function")
    down = cli("status", "--dsn", "host=/nonexistent dbname=x", "abcd1234")
    assert down.returncode == 1 and "Traceback" not in down.stderr


def test_python_client_methods(user, start_worker):
    start_worker()
    with durable.connect(user) as client:
        iid = client.start_dsl("'SELECT 5 AS n' |=> 'n' ~> df.wait_for_signal('go')", label="py")
        assert client.status(iid) in (InstanceStatus.PENDING, InstanceStatus.RUNNING)
        info = client.info(iid)
        assert info is not None and info.label == "py"
        assert [i.instance_id for i in client.list(label="py")] == [iid]
        deadline = time.monotonic() + 20
        while not any(n.node_type == "SIGNAL" and n.status == "running" for n in client.nodes(iid)):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        client.signal(iid, "go", {"ok": True})
        started = time.monotonic()
        assert client.wait(iid, timeout=20) is InstanceStatus.COMPLETED
        assert time.monotonic() - started < 5
        assert client.result(iid) == {"signal_name": "go", "timed_out": False, "data": {"ok": True}}
        assert client.explain(iid).startswith(f"Instance: {iid} (py)")
        other = client.start("SELECT 1")
        assert client.cancel(other).startswith(f"Instance {other} cancelled")
        assert client.delete(other) is True and client.status(other) is None
        assert {n.inferred_status for n in client.nodes(iid)} == {"completed"}
        with pytest.raises(durable.DurableError):
            client.wait(client.start(durable_sleepy()), timeout=0.3)


def durable_sleepy() -> str:
    return '{"node_type":"SLEEP","query":"30"}'


def test_demo_runs_a_real_workflow():
    out = cli("demo", timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "status: completed" in out.stdout
    assert 'result: {"rows":[{"verdict":"big","total":42}],"row_count":1}' in out.stdout
    assert "SLEEP 1s ✓" in out.stdout


@pytest.fixture
def request_cleanup():
    import shutil

    paths: list[Path] = []
    yield paths
    for path in paths:
        shutil.rmtree(path, ignore_errors=True)


def test_dev_serves_until_ctrl_c_and_keeps_its_data(tmp_path: Path, request_cleanup):
    data = tmp_path / "dev"

    def start() -> tuple[subprocess.Popen[str], str]:
        proc = subprocess.Popen([sys.executable, "-m", "durable.cli", "dev", "--data-dir", str(data)],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        dsn = ""
        assert proc.stdout is not None
        deadline = time.monotonic() + 60
        for line in proc.stdout:
            if "connection string:" in line:
                dsn = line.split("connection string:", 1)[1].strip()
            if line.startswith("Ctrl-C"):
                break
            assert time.monotonic() < deadline
        assert dsn, "no connection string printed"
        import threading

        threading.Thread(target=proc.stdout.read, daemon=True).start()  # keep the pipe drained
        return proc, dsn

    proc, dsn = start()
    try:
        with durable.connect(dsn) as client:
            iid = client.start_dsl("'SELECT 7 AS seven'")
            assert client.wait(iid, timeout=30) is InstanceStatus.COMPLETED
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
        time.sleep(0.1)
        proc.stdout.close()  # type: ignore[union-attr]
    proc, dsn = start()
    try:
        with durable.connect(dsn) as client:
            assert client.result(iid) == {"rows": [{"seven": 7}], "row_count": 1}
        note = data / "CLUSTER"  # as root the cluster lives elsewhere (PostgreSQL cannot run as root)
        if note.exists():
            home = Path(note.read_text().split(" lives in ")[1].split("\n")[0])
            assert (home / "data" / "PG_VERSION").exists()
            request_cleanup.append(home)
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
        time.sleep(0.1)
        proc.stdout.close()  # type: ignore[union-attr]


def test_a_graph_built_in_python_runs(user, start_worker):
    start_worker()
    graph = (durable.join(durable.sql("SELECT 40 AS x").as_("a"), durable.sql("SELECT 2 AS y").as_("b"))
             >> durable.if_("SELECT $a + $b = 42", "SELECT 'yes' AS answer", "SELECT 'no' AS answer"))
    with durable.connect(user) as client:
        iid = client.start(graph, label="python-graph")
        assert client.wait(iid, timeout=30) is InstanceStatus.COMPLETED
        assert client.result(iid) == {"rows": [{"answer": "yes"}], "row_count": 1}
