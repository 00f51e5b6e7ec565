"""Variables (sql/src/35_vars.sql; PGD_REFERENCE.md 1.3, CONTRACT.md 5 and 9).

df.setvar/getvar/unsetvar/clearvars run with the caller's own privileges;
each role sees and changes only its own rows, whatever way it arrives (its
own login, SET ROLE, BYPASSRLS).  "Inside a workflow" is decided by the
step's backend pid in df.attempts, which users cannot write.
"""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from tests.conftest import dsn_as

ROOT = Path(__file__).resolve().parents[2]

Connect = Callable[..., psycopg.Connection]


def one(conn: psycopg.Connection, query: str, params: tuple[object, ...] = ()) -> object:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return row[0]


def owners(db: psycopg.Connection, name: str) -> list[tuple[str, str | None]]:
    """(owner, value) of every row called name, seen by the superuser."""
    return [
        (r[0], r[1])
        for r in db.execute(
            "SELECT owner::text, value FROM df.vars WHERE name = %s ORDER BY 1", (name,)
        ).fetchall()
    ]


def test_round_trip(make_role: Callable[..., str], connect_as: Connect) -> None:
    conn = connect_as(make_role())
    assert one(conn, "SELECT df.getvar('region')") is None
    assert one(conn, "SELECT df.setvar('region', 'eu-west')") == "OK"
    assert one(conn, "SELECT df.getvar('region')") == "eu-west"
    assert one(conn, "SELECT df.setvar('region', 'us-east')") == "OK"  # upsert
    assert one(conn, "SELECT df.getvar('region')") == "us-east"
    assert one(conn, "SELECT df.setvar('limit', '10')") == "OK"
    assert one(conn, "SELECT count(*) FROM df.vars") == 2
    assert one(conn, "SELECT df.unsetvar('region')") == "OK"
    assert one(conn, "SELECT df.getvar('region')") is None
    assert one(conn, "SELECT df.unsetvar('never-set')") == "OK"
    assert one(conn, "SELECT df.getvar('limit')") == "10"
    assert one(conn, "SELECT df.clearvars()") == "OK"
    assert one(conn, "SELECT count(*) FROM df.vars") == 0
    assert one(conn, "SELECT df.clearvars()") == "OK"


def test_values_are_kept_verbatim(make_role: Callable[..., str], connect_as: Connect) -> None:
    conn = connect_as(make_role())
    for value in ["", " padded ", 'it\'s "q" \\ é😀\n', '{"json": [1, 2]}', "x" * 100_000]:
        conn.execute("SELECT df.setvar('v', %s)", (value,))
        assert one(conn, "SELECT df.getvar('v')") == value


@pytest.mark.parametrize(
    "call",
    [
        "df.setvar(NULL, 'x')",
        "df.setvar('a', NULL)",
        "df.getvar(NULL)",
        "df.unsetvar(NULL)",
    ],
)
def test_strict_null_is_null_and_changes_nothing(
    make_role: Callable[..., str], connect_as: Connect, call: str
) -> None:
    conn = connect_as(make_role())
    conn.execute("SELECT df.setvar('a', '1')")
    assert one(conn, f"SELECT {call}") is None
    assert conn.execute("SELECT name, value FROM df.vars").fetchall() == [("a", "1")]


def test_signatures(db: psycopg.Connection) -> None:
    rows = db.execute(
        """SELECT p.proname, pg_get_function_arguments(p.oid), pg_get_function_result(p.oid), p.proisstrict,
                  p.prosecdef, p.proconfig
             FROM pg_proc p WHERE p.pronamespace = 'df'::regnamespace
              AND p.proname IN ('setvar', 'getvar', 'unsetvar', 'clearvars', 'in_workflow', '_in_workflow')
            ORDER BY 1"""
    ).fetchall()
    assert [r[:5] for r in rows] == [
        ("_in_workflow", "", "boolean", False, True),
        ("clearvars", "", "text", True, False),
        ("getvar", "name text", "text", True, False),
        ("in_workflow", "", "boolean", False, False),
        ("setvar", "name text, value text", "text", True, False),
        ("unsetvar", "name text", "text", True, False),
    ]
    for r in rows:
        assert r[5] is not None and "search_path=pg_catalog, pg_temp" in r[5], r[0]


def test_roles_are_isolated(
    db: psycopg.Connection, make_role: Callable[..., str], connect_as: Connect
) -> None:
    a, b = make_role("a"), make_role("b")
    ca, cb = connect_as(a), connect_as(b)
    ca.execute("SELECT df.setvar('shared', 'from-a')")
    ca.execute("SELECT df.setvar('only_a', 'secret')")
    # B sees nothing of A's, through the functions or the table.
    assert one(cb, "SELECT df.getvar('shared')") is None
    assert one(cb, "SELECT df.getvar('only_a')") is None
    assert one(cb, "SELECT count(*) FROM df.vars") == 0
    # B's writes make B's own rows and leave A's alone.
    assert one(cb, "SELECT df.setvar('shared', 'from-b')") == "OK"
    assert owners(db, "shared") == sorted([(a, "from-a"), (b, "from-b")])
    assert one(ca, "SELECT df.getvar('shared')") == "from-a"
    assert one(cb, "SELECT df.unsetvar('only_a')") == "OK"
    assert one(cb, "SELECT df.clearvars()") == "OK"
    assert owners(db, "shared") == [(a, "from-a")]
    assert one(ca, "SELECT df.getvar('only_a')") == "secret"
    # Direct writes cannot reach A's rows either.
    assert cb.execute("UPDATE df.vars SET value = 'hacked' WHERE name = 'shared'").rowcount == 0
    assert cb.execute("DELETE FROM df.vars").rowcount == 0
    # A row naming A as owner is stamped with its writer (the owner trigger).
    cb.execute("INSERT INTO df.vars (name, value, owner) VALUES ('planted', 'x', %s::regrole)", (a,))
    assert owners(db, "planted") == [(b, "x")]
    assert one(ca, "SELECT df.getvar('planted')") is None
    assert owners(db, "shared") == [(a, "from-a")]


def test_set_role_acts_as_the_current_role(
    db: psycopg.Connection, make_role: Callable[..., str], connect_as: Connect
) -> None:
    a, b, both = make_role("a"), make_role("b"), make_role("both")
    db.execute(f'GRANT "{a}", "{b}" TO "{both}"')
    conn = connect_as(both)
    conn.execute(f'SET ROLE "{a}"')
    assert one(conn, "SELECT df.setvar('k', 'as-a')") == "OK"
    conn.execute(f'SET ROLE "{b}"')
    assert one(conn, "SELECT df.getvar('k')") is None
    assert one(conn, "SELECT df.setvar('k', 'as-b')") == "OK"
    assert one(conn, "SELECT df.clearvars()") == "OK"
    conn.execute("RESET ROLE")
    assert one(conn, "SELECT df.getvar('k')") is None
    assert owners(db, "k") == [(a, "as-a")]
    # The superuser acting as A through SET ROLE is A too.
    db.execute(f'SET ROLE "{a}"')
    try:
        assert one(db, "SELECT df.getvar('k')") == "as-a"
        assert one(db, "SELECT df.setvar('k2', 'a-again')") == "OK"
    finally:
        db.execute("RESET ROLE")
    assert owners(db, "k2") == [(a, "a-again")]


def test_bypassrls_role_is_stamped_as_the_writer(
    db: psycopg.Connection, make_role: Callable[..., str], connect_as: Connect
) -> None:
    a = make_role("a")
    bypass = make_role("bypass", attrs="BYPASSRLS")
    connect_as(a).execute("SELECT df.setvar('k', 'from-a')")
    conn = connect_as(bypass)
    # It can read every row directly (BYPASSRLS), but the functions are its own.
    assert one(conn, "SELECT count(*) FROM df.vars WHERE name = 'k'") == 1
    assert one(conn, "SELECT df.getvar('k')") is None
    assert one(conn, "SELECT df.setvar('k', 'from-bypass')") == "OK"
    assert owners(db, "k") == sorted([(a, "from-a"), (bypass, "from-bypass")])
    # A direct insert naming A is stamped with the writer by the owner trigger.
    conn.execute("INSERT INTO df.vars (name, value, owner) VALUES ('planted', 'x', %s::regrole)", (a,))
    assert owners(db, "planted") == [(bypass, "x")]
    assert one(conn, "SELECT df.unsetvar('k')") == "OK"
    assert one(conn, "SELECT df.clearvars()") == "OK"
    assert owners(db, "k") == [(a, "from-a")]
    assert owners(db, "planted") == []


def _enter_workflow(db: psycopg.Connection, backend_pid: int) -> None:
    """Record a step attempt for backend_pid, as the worker does (FK and
    triggers disabled: only the pid matters here)."""
    with db.transaction():
        db.execute("SET LOCAL session_replication_role = replica")
        db.execute(
            """INSERT INTO df.attempts (instance_id, node_id, lease_token, secret_hash, backend_pid, backend_start)
               VALUES ('0000abcd', '0000abce', %s, '\\x00', %s,
                       (SELECT backend_start FROM pg_stat_activity WHERE pid = %s))""",
            (uuid.uuid4(), backend_pid, backend_pid),
        )


@pytest.mark.parametrize("fn", ["setvar", "unsetvar", "clearvars"])
def test_setters_refuse_inside_a_workflow(
    db: psycopg.Connection, make_role: Callable[..., str], connect_as: Connect, fn: str
) -> None:
    conn = connect_as(make_role())
    conn.execute("SELECT df.setvar('k', 'before')")
    assert one(conn, "SELECT df.in_workflow()") is False
    _enter_workflow(db, conn.info.backend_pid)
    assert one(conn, "SELECT df.in_workflow()") is True
    call = {"setvar": "df.setvar('k', 'x')", "unsetvar": "df.unsetvar('k')", "clearvars": "df.clearvars()"}[
        fn
    ]
    with pytest.raises(psycopg.Error) as info:
        conn.execute(f"SELECT {call}")
    assert info.value.sqlstate == "DF013"
    assert (info.value.diag.message_primary or "").startswith(
        f"df.{fn}() cannot be called inside a workflow - "
    )
    # Reading is allowed, and nothing changed.
    assert one(conn, "SELECT df.getvar('k')") == "before"
    # The session setting pg_durable used proves nothing here.
    conn.execute("SET df.in_workflow = 'false'")
    with pytest.raises(psycopg.Error):
        conn.execute(f"SELECT {call}")
    db.execute("DELETE FROM df.attempts")
    assert one(conn, "SELECT df.in_workflow()") is False
    assert one(conn, f"SELECT {call}") == "OK"


def test_in_workflow_is_per_backend(
    db: psycopg.Connection, make_role: Callable[..., str], connect_as: Connect
) -> None:
    role = make_role()
    inside, outside = connect_as(role), connect_as(role)
    _enter_workflow(db, inside.info.backend_pid)
    assert one(inside, "SELECT df.in_workflow()") is True
    assert one(outside, "SELECT df.in_workflow()") is False
    assert one(outside, "SELECT df.setvar('k', 'v')") == "OK"
    # Users cannot fake or hide an attempt row.
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        outside.execute(
            "INSERT INTO df.attempts (instance_id, node_id, lease_token, secret_hash, backend_pid) "
            "VALUES ('0000abcd', '0000abcf', gen_random_uuid(), '\\x00', pg_backend_pid())"
        )
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        inside.execute("DELETE FROM df.attempts")


@pytest.mark.skipif(shutil.which("psql") is None, reason="psql not installed")
def test_e2e_script(dsn: str, make_role: Callable[..., str]) -> None:
    role = make_role()
    proc = subprocess.run(
        [
            "psql",
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            dsn_as(dsn, role),
            "-f",
            str(ROOT / "e2e" / "sql" / "15_vars.sql"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr


def test_a_reused_pid_is_not_inside_a_workflow(db: psycopg.Connection, make_role: Callable[..., str],
                                               connect_as: Connect) -> None:
    conn = connect_as(make_role())
    _enter_workflow(db, conn.info.backend_pid)
    assert one(conn, "SELECT df.in_workflow()") is True
    # An attempt row left by an earlier backend with the same pid (another start time) proves nothing.
    db.execute("UPDATE df.attempts SET backend_start = backend_start - interval '1 hour'")
    assert one(conn, "SELECT df.in_workflow()") is False
