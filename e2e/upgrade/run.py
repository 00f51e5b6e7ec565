"""The upgrade harness: for every released version older than the newest,

(A)  install it, upgrade to the newest, and compare the catalog with a fresh
     install of the newest (and a second upgrade is a no-op);
(B1) the newest worker runs against the older schema (it supports every
     release from durable.worker.MIN_SCHEMA on) or refuses with a message
     naming `durable upgrade` (checked for a version below that);
(B2) rows, variables and in-flight instances survive an upgrade made while
     the worker runs, and complete afterwards, without draining; every
     function the upgrade changed is called as a granted role afterwards.

Prints `N passed, N failed`; exits non-zero on any failure.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import traceback
import uuid
from collections.abc import Callable
from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from durable import schema  # noqa: E402
from e2e.upgrade import catalog  # noqa: E402
from tests import pgserver  # noqa: E402


def released_versions() -> list[str]:
    return sorted(json.loads((ROOT / "sql" / "released.json").read_text()), key=schema.parse_version)


class Harness:
    def __init__(self, server: pgserver.PgServer) -> None:
        self.server = server
        self.admin = server.dsn()
        self.passed = 0
        self.failed = 0

    def check(self, name: str, fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception:  # noqa: BLE001 - report and go on
            self.failed += 1
            print(f"FAIL {name}\n{traceback.format_exc()}")
        else:
            self.passed += 1
            print(f"PASS {name}")

    def database(self, prefix: str) -> str:
        name = f"{prefix}_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(self.admin, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        params = conninfo_to_dict(self.admin)
        params["dbname"] = name
        return make_conninfo(**params)

    def role(self, dsn: str) -> str:
        name = f"upg_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'CREATE ROLE "{name}" LOGIN')
            conn.execute("SELECT df.grant_usage(%s)", (name,))
            conn.execute(f'GRANT CREATE ON SCHEMA public TO "{name}"')
        return name

    def worker_dsn(self, dsn: str) -> str:
        with psycopg.connect(dsn, autocommit=True) as conn:
            if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = 'upgrade_worker'").fetchone():
                conn.execute("CREATE ROLE upgrade_worker LOGIN IN ROLE durable_worker")
        params = conninfo_to_dict(dsn)
        params["user"] = "upgrade_worker"
        return make_conninfo(**params)


def as_role(dsn: str, role: str) -> psycopg.Connection:
    params = conninfo_to_dict(dsn)
    params["user"] = role
    return psycopg.connect(make_conninfo(**params), autocommit=True)


def catalog_equal(h: Harness, old: str, newest: str) -> None:
    upgraded, fresh = h.database("upg"), h.database("fresh")
    schema.install(upgraded, version=old)
    schema.upgrade(upgraded, to=newest)
    schema.install(fresh, version=newest)
    differences = catalog.diff(catalog.snapshot(upgraded), catalog.snapshot(fresh))
    assert not differences, "\n".join(differences)
    before = catalog.snapshot(upgraded)
    assert schema.upgrade(upgraded, to=newest) == [f"durable {newest} is up to date"]
    assert catalog.snapshot(upgraded) == before


def failed_upgrade_changes_nothing(h: Harness, old: str, newest: str) -> None:
    """An upgrade that fails half-way (here: at its last statement) leaves the old version intact."""
    import shutil
    import tempfile

    dsn = h.database("half")
    schema.install(dsn, version=old)
    before = catalog.snapshot(dsn)
    packaged = schema.Scripts.packaged()
    broken = Path(tempfile.mkdtemp(prefix="durable-broken-"))
    try:
        shutil.copytree(packaged.install_dir, broken / "sql")
        shutil.copytree(packaged.upgrade_dir, broken / "upgrades")
        for (source, dest) in packaged.upgrade_path(old, newest):
            path = broken / "upgrades" / f"durable--{source}--{dest}.sql"
            path.write_text(path.read_text() + "\nSELECT 1 / 0;\n")
        try:
            schema.upgrade(dsn, to=newest, scripts=schema.Scripts(broken / "sql", broken / "upgrades"))
            raise AssertionError("the broken upgrade succeeded")
        except psycopg.errors.DivisionByZero:
            pass
    finally:
        shutil.rmtree(broken)
    with psycopg.connect(dsn) as conn:
        assert schema.installed_version(conn) == old
    assert catalog.snapshot(dsn) == before


def worker_refuses_too_old(h: Harness) -> None:
    dsn = h.database("old")
    schema.install(dsn, version=released_versions()[0])
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("UPDATE df.schema_version SET version = '0.0.1'")
    proc = subprocess.run([sys.executable, "-m", "durable.cli", "worker", "--dsn", h.worker_dsn(dsn)],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 1 and "durable upgrade" in proc.stderr, proc.stderr


def in_flight_survive(h: Harness, old: str, newest: str) -> None:
    dsn = h.database("live")
    schema.install(dsn, version=old)
    alice = h.role(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("UPDATE df.settings SET value = '3' WHERE key = 'lease_seconds'")
    with as_role(dsn, alice) as a:
        a.execute("CREATE TABLE public.effects (n int)")
        a.execute("SELECT df.setvar('who', '''kept''')")
        waiting = a.execute("SELECT df.start(df.wait_for_signal('go') ~> 'SELECT {who} AS who', 'waiting')").fetchone()[0]
        sleeping = a.execute("SELECT df.start('INSERT INTO public.effects VALUES (1)' ~> df.sleep(3) ~> "
                             "'INSERT INTO public.effects VALUES (2)', 'sleeping')").fetchone()[0]
        done = a.execute("SELECT df.start('SELECT 42 AS answer', 'done')").fetchone()[0]
        pending = a.execute("SELECT df.start('INSERT INTO public.effects VALUES (3)', 'pending')").fetchone()[0]
        a.execute("CREATE TABLE public.rounds (n int)")
        looping = a.execute("""SELECT df.start(df.loop(
            ('INSERT INTO public.rounds SELECT count(*) + 1 FROM public.rounds RETURNING n' |=> 'r')
            ~> df.if('SELECT $r >= 6', df.break('looped'), df.sleep(1))), 'looping')""").fetchone()[0]
        worker = subprocess.Popen([sys.executable, "-m", "durable.cli", "worker", "--dsn", h.worker_dsn(dsn)],
                                  cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            assert a.execute("SELECT df.await_instance(%s, 30)", (done,)).fetchone()[0] == "completed"
            deadline = time.monotonic() + 30
            while a.execute("SELECT count(*) FROM df.nodes WHERE instance_id = %s AND node_type = 'SLEEP' "
                            "AND status = 'running'", (sleeping,)).fetchone()[0] == 0:
                assert time.monotonic() < deadline, "the sleeping instance never reached its sleep"
                time.sleep(0.05)
            assert a.execute("SELECT df.status(%s)", (waiting,)).fetchone()[0] == "running"
            while a.execute("SELECT count(*) FROM public.rounds").fetchone()[0] < 2:
                assert time.monotonic() < deadline, "the loop never got going"
                time.sleep(0.05)
            # Upgrade under the running worker: no draining.
            schema.upgrade(dsn, to=newest)
            a.execute("SELECT df.signal(%s, 'go')", (waiting,))
            assert a.execute("SELECT count(*) FROM public.rounds").fetchone()[0] < 6, "the loop finished too early"
            for iid in (waiting, sleeping, pending, looping):
                assert a.execute("SELECT df.await_instance(%s, 60)", (iid,)).fetchone()[0] == "completed", iid
        finally:
            worker.terminate()
            _, err = worker.communicate(timeout=30)
        assert worker.returncode == 0, err[-2000:]
        assert a.execute("SELECT n FROM public.effects ORDER BY n").fetchall() == [(1,), (2,), (3,)]
        assert a.execute("SELECT array_agg(n ORDER BY n) FROM public.rounds").fetchone()[0] == [1, 2, 3, 4, 5, 6]
        assert json.loads(a.execute("SELECT df.result(%s)", (looping,)).fetchone()[0]) == "looped"
        assert json.loads(a.execute("SELECT df.result(%s)", (waiting,)).fetchone()[0])["rows"] == [{"who": "kept"}]
        assert a.execute("SELECT df.result(%s)", (done,)).fetchone()[0] == '{"rows": [{"answer": 42}], "row_count": 1}'
        assert a.execute("SELECT df.getvar('who')").fetchone()[0] == "'kept'"
        call_changed_functions(a)


def call_changed_functions(a: psycopg.Connection) -> None:
    """Every function 0.2.0 changed or added, called as an ordinary granted role."""
    info = a.execute("SELECT * FROM df.instance_info((SELECT id FROM df.instances LIMIT 1))")
    columns = [c.name for c in info.description]
    assert columns[-3:] == ["resource_version", "labels", "annotations"], columns
    listed = a.execute("SELECT * FROM df.list_instances()")
    assert [c.name for c in listed.description][-2:] == ["labels", "annotations"]
    paged = a.execute("SELECT * FROM df.list_instances(NULL, 10, NULL)")
    assert [c.name for c in paged.description][-2:] == ["labels", "annotations"]
    iid = a.execute("SELECT df.start(df.wait_for_signal('never'))").fetchone()[0]
    version = a.execute("SELECT resource_version FROM df.instance_info(%s)", (iid,)).fetchone()[0]
    new_version = a.execute("SELECT df.set_metadata(%s, '{\"labels\": {\"team\": \"a\"}}', %s)",
                            (iid, version)).fetchone()[0]
    assert new_version == version + 1
    try:
        a.execute("SELECT df.signal(%s, 'x', '{}', %s)", (iid, version))
        raise AssertionError("a stale expected_resource_version was accepted")
    except psycopg.Error as exc:
        assert exc.sqlstate == "DF004", exc
    a.execute("SELECT df.signal(%s, 'x', '{}', %s)", (iid, new_version))
    current = a.execute("SELECT resource_version FROM df.instance_info(%s)", (iid,)).fetchone()[0]
    assert a.execute("SELECT df.cancel(%s, 'bye', %s)", (iid, current)).fetchone()[0].startswith(f"Instance {iid}")
    current = a.execute("SELECT resource_version FROM df.instance_info(%s)", (iid,)).fetchone()[0]
    assert a.execute("SELECT df.delete_instance(%s, %s)", (iid, current)).fetchone()[0] is True
    assert a.execute("SELECT df.status(%s)", (iid,)).fetchone()[0] is None


def frozen_scripts_unchanged() -> None:
    import hashlib

    recorded = json.loads((ROOT / "sql" / "released.json").read_text())
    for version, files in recorded.items():
        for name, digest in files.items():
            actual = hashlib.sha256((ROOT / name).read_bytes()).hexdigest()
            assert actual == digest, f"{name} changed after release {version}"


def main() -> int:
    newest = schema.Scripts.packaged().newest()
    older = [v for v in released_versions() if schema.parse_version(v) < schema.parse_version(newest)]
    server = pgserver.start_server()
    h = Harness(server)
    try:
        h.check("released scripts are unchanged", frozen_scripts_unchanged)
        h.check("the worker refuses a schema older than it supports", lambda: worker_refuses_too_old(h))
        for old in older:
            h.check(f"A: {old} upgraded to {newest} equals a fresh {newest}", lambda o=old: catalog_equal(h, o, newest))
            h.check(f"A: a failing {old} -> {newest} upgrade leaves {old} intact",
                    lambda o=old: failed_upgrade_changes_nothing(h, o, newest))
            h.check(f"B: {old} in-flight instances survive the upgrade to {newest}",
                    lambda o=old: in_flight_survive(h, o, newest))
    finally:
        pgserver.destroy(server)
    print(f"upgrade: {h.passed} passed, {h.failed} failed")
    return 1 if h.failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
