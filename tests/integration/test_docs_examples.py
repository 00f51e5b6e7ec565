"""Every ```sql example in docs/ runs, so the docs cannot rot.

Each page's examples run in order through psql in one session (they build on
each other: `\\gset` variables), as an ordinary role with a live worker;
blocks that manage roles or settings run as the superuser.  A block right
after a `<!-- no-test: why -->` line is skipped (fragments, deliberate errors).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import psycopg
import pytest

from tests.conftest import dsn_as

DOCS = Path(__file__).resolve().parents[2] / "docs"
BLOCK = re.compile(r"(?:(<!-- no-test[^>]*-->)\n)?```sql\n(.*?)```", re.S)
ADMIN = re.compile(r"CREATE ROLE|GRANT durable|GRANT \w+ TO|df\.settings|df\.schema_version|df\.grant_usage|df\.instance_queue")
EXAMPLE_ROLES = ("app_user", "durable_worker_1", "durable_submitters")
PAGES = sorted(p.name for p in DOCS.glob("*.md") if "```sql" in p.read_text())


def script_for(page: str, user: str, superuser: str) -> str:
    parts = []
    for skip, body in BLOCK.findall((DOCS / page).read_text()):
        if skip:
            continue
        if ADMIN.search(body):
            parts.append(f"\\c - {superuser}\n{body}\n\\c - {user}\n")
        else:
            parts.append(body + "\n")
    return "".join(parts)


@pytest.mark.parametrize("page", PAGES)
def test_the_examples_of_a_page_run(page, db, dsn, make_role, start_worker):
    psql = shutil.which("psql")
    if psql is None:
        pytest.skip("psql is not installed")
    for role in EXAMPLE_ROLES:
        if db.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone():
            db.execute(f"DROP OWNED BY {role}")
            db.execute(f"DROP ROLE {role}")
    user = make_role("docs")
    db.execute(f'GRANT CREATE ON SCHEMA public TO "{user}"')
    text = (DOCS / page).read_text()
    if "app_user" in text and "CREATE ROLE app_user" not in text:
        db.execute("CREATE ROLE app_user LOGIN")
    # Tables the examples use, owned by the example role.
    conn = psycopg.connect(dsn_as(dsn, user), autocommit=True)
    try:
        conn.execute("""
            CREATE TABLE invoices (id int PRIMARY KEY, due timestamptz, sent boolean DEFAULT false);
            INSERT INTO invoices VALUES (1, now() - interval '1 day', false);
            CREATE TABLE queue (id int PRIMARY KEY);
            INSERT INTO queue VALUES (1), (2);
            CREATE TABLE counter (n int);
            INSERT INTO counter VALUES (0);
            CREATE TABLE jobs (id int);
        """)
    finally:
        conn.close()
    start_worker()
    info = psycopg.conninfo.conninfo_to_dict(dsn)
    env = dict(os.environ, PGHOST=str(info["host"]), PGPORT=str(info["port"]), PGDATABASE=str(info["dbname"]),
               PGUSER=user)
    result = subprocess.run([psql, "-X", "-q", "-v", "ON_ERROR_STOP=1"], input=script_for(page, user, db.info.user), env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{page}:\n{result.stdout}\n{result.stderr}"
