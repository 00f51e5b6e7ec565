"""Run the psql suites in e2e/sql/*.sql against a live database and worker.

Each file runs through psql (-v ON_ERROR_STOP=1) as an ordinary LOGIN role
granted df usage, in a fresh database with durable installed and a worker
running; a file asserts with RAISE EXCEPTION in DO blocks.  Prints one line
per file and `N passed, N failed` at the end; exits non-zero on any failure.

    python e2e/run.py [-k SUBSTRING] [--dsn SUPERUSER_DSN]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from durable import schema  # noqa: E402
from tests import pgserver  # noqa: E402


def _psql() -> str:
    found = shutil.which("psql")
    if not found:
        for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin/psql"), reverse=True):
            return str(candidate)
        raise SystemExit("psql not found")
    return found


def run_file(path: Path, dsn: str, role: str, other: str) -> tuple[bool, str]:
    params = conninfo_to_dict(dsn)
    env = dict(os.environ, PGHOST=str(params.get("host", "")), PGPORT=str(params.get("port", "")),
               PGDATABASE=str(params["dbname"]), PGUSER=role, PGOPTIONS="-c client_min_messages=warning")
    env.pop("PGPASSWORD", None)
    proc = subprocess.run([_psql(), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-v", f"other={other}", "-f", str(path)],
                          env=env, capture_output=True, text=True, timeout=300)
    return proc.returncode == 0, (proc.stdout + proc.stderr).strip()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("-k", default="", help="only files whose name contains this")
    parser.add_argument("--dsn", default=os.environ.get("DURABLE_TEST_DSN"))
    args = parser.parse_args()
    files = sorted(p for p in (ROOT / "e2e" / "sql").glob("*.sql") if args.k in p.name)
    server = None
    if args.dsn:
        admin = args.dsn
    else:
        server = pgserver.start_server()
        admin = server.dsn()
    passed = failed = 0
    try:
        for path in files:
            dbname = f"e2e_{uuid.uuid4().hex[:8]}"
            role = f"e2e_{uuid.uuid4().hex[:8]}"
            other = f"e2e_other_{uuid.uuid4().hex[:8]}"  # a second ordinary role, for RLS checks (psql: \c - :other)
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{dbname}"')
                conn.execute(f'CREATE ROLE "{role}" LOGIN')
                conn.execute(f'CREATE ROLE "{other}" LOGIN')
            params = conninfo_to_dict(admin)
            params["dbname"] = dbname
            dsn = make_conninfo(**params)
            schema.install(dsn)
            with psycopg.connect(dsn, autocommit=True) as conn:
                if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = 'e2e_worker'").fetchone():
                    conn.execute("CREATE ROLE e2e_worker LOGIN IN ROLE durable_worker")
                conn.execute("SELECT df.grant_usage(%s, true)", (role,))
                conn.execute("SELECT df.grant_usage(%s)", (other,))
                conn.execute(f'GRANT CREATE ON SCHEMA public TO "{role}"')
                conn.execute("UPDATE df.settings SET value = '0.05' WHERE key = 'loop_min_iteration_seconds'")
            params["user"] = "e2e_worker"  # an ordinary login role in durable_worker, not the superuser
            worker = subprocess.Popen([sys.executable, "-m", "durable.cli", "worker", "--dsn", make_conninfo(**params),
                                       "--concurrency", "2"], cwd=ROOT,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            started = time.monotonic()
            try:
                ok, output = run_file(path, dsn, role, other)
            finally:
                worker.terminate()
                try:
                    _, worker_err = worker.communicate(timeout=30)
                except subprocess.TimeoutExpired:
                    worker.kill()
                    _, worker_err = worker.communicate()
                with psycopg.connect(admin, autocommit=True) as conn:
                    conn.execute(f'DROP DATABASE "{dbname}" WITH (FORCE)')
            took = time.monotonic() - started
            if ok:
                passed += 1
                print(f"PASS {path.name} ({took:.1f}s)")
            else:
                failed += 1
                print(f"FAIL {path.name} ({took:.1f}s)\n{output}\n--- worker log ---\n{worker_err[-3000:]}")
    finally:
        if server is not None:
            pgserver.destroy(server)
    print(f"e2e: {passed} passed, {failed} failed")
    return 1 if failed or not files else 0


if __name__ == "__main__":
    raise SystemExit(main())
