"""The schema's security model, attacked directly."""

from __future__ import annotations

import re
from pathlib import Path

import psycopg
import pytest
from psycopg import errors as pg_errors

from durable.errors import all_sqlstates

ROOT = Path(__file__).resolve().parents[2]

# SECURITY DEFINER df._* functions a user may call: each is safe without further privilege because
# it learns the caller from a ticket the caller inserted, checks a per-attempt secret, or only reads
# facts the caller may know.  (SECURITY INVOKER helpers run with the caller's own rights.)
PUBLIC_DEFINER = {
    "_caller", "_start_v1", "_cancel_v2", "_signal_v2", "_run_v1", "_checkpoint_v1", "_now", "_in_workflow",
    "_list_max_limit", "_set_metadata_v1", "_delete_instance_v1", "_wait_begin_v1", "_wait_end_v1",
    "_bind_v1", "_checkpoint_v2", "_checkpoint_next_v1", "_checkpoint_next_v2",
}


def test_every_function_pins_search_path(db):
    rows = db.execute("""
        SELECT p.oid::regprocedure::text, p.prosecdef, p.proconfig
          FROM pg_proc p WHERE p.pronamespace = 'df'::regnamespace
    """).fetchall()
    assert rows
    for name, secdef, config in rows:
        settings = [c for c in (config or []) if c.startswith("search_path=")]
        assert settings, f"{name} does not pin search_path"
        if secdef:
            assert settings[0].replace(" ", "").endswith("pg_temp"), f"{name}: {settings[0]}"


def test_no_privilege_for_public_on_schema_or_tables(db):
    assert db.execute("SELECT has_schema_privilege('public', 'df', 'USAGE')").fetchone()[0] is False
    rows = db.execute("""
        SELECT c.relname FROM pg_class c, aclexplode(c.relacl) a
         WHERE c.relnamespace = 'df'::regnamespace AND a.grantee = 0
    """).fetchall()
    assert rows == []


def test_internal_definer_functions_are_not_public(db):
    rows = db.execute("""
        SELECT p.proname FROM pg_proc p
         WHERE p.pronamespace = 'df'::regnamespace AND p.proname LIKE '\\_%' AND p.prosecdef
           AND has_function_privilege('public', p.oid, 'EXECUTE')
    """).fetchall()
    exposed = {r[0] for r in rows} - PUBLIC_DEFINER
    assert exposed == set()


@pytest.mark.parametrize("statement", [
    "INSERT INTO df.instances (id, root_node, submitted_by, resource_version) VALUES ('aaaaaaaa', 'bbbbbbbb', current_user::regrole, 1)",
    "UPDATE df.instances SET status = 'completed'",
    "UPDATE df.nodes SET status = 'completed'",
    "DELETE FROM df.nodes",
    "SELECT * FROM df.settings",
    "SELECT * FROM df.attempts",
    "SELECT * FROM df.instance_queue",
    "SELECT * FROM df.caller_tickets",
    "SELECT * FROM df.instance_vars",
    "UPDATE df.settings SET value = 'on' WHERE key = 'enable_superuser_instances'",
    "SELECT df._claim_v1(gen_random_uuid(), 10)",
    "SELECT df._apply_v1('aaaaaaaa', gen_random_uuid(), '[]', '[]', 'completed', 'x', 1)",
    "SELECT df._begin_attempt_v1('aaaaaaaa', 'bbbbbbbb', gen_random_uuid(), '\\x00', pg_backend_pid())",
    "SELECT df._worker_settings_v1()",
    "SELECT df._claim_v2(gen_random_uuid(), 10)",
    "SELECT df._load_v2(ARRAY['aaaaaaaa'])",
    "SELECT df._nudges_v2(ARRAY['aaaaaaaa'])",
    "SELECT df._snapshot(ARRAY['aaaaaaaa'])",
    "SELECT df._advance_v2(gen_random_uuid(), '[{\"id\": \"aaaaaaaa\", \"status\": \"completed\"}]')",
    "SELECT df._setting('fake_now')",
    "SELECT df._fire_fault_v1('after_claim')",
    "SELECT df.grant_usage(current_user)",
])
def test_users_cannot_write_or_reach_internals(make_role, connect_as, statement):
    alice = connect_as(make_role())
    alice.execute("SELECT df.start('SELECT 1')")
    with pytest.raises(pg_errors.InsufficientPrivilege):
        alice.execute(statement)


def test_a_checkpoint_without_the_secret_is_refused(db, make_role, connect_as):
    alice = connect_as(make_role())
    iid = alice.execute("SELECT df.start('SELECT 1')").fetchone()[0]
    node = db.execute("SELECT root_node FROM df.instances WHERE id = %s", (iid,)).fetchone()[0]
    with pytest.raises(psycopg.Error) as info:
        alice.execute("SELECT df._checkpoint_v1(%s, %s, 'guess', '{\"rows\":[],\"row_count\":0}', NULL, 1)", (iid, node))
    assert info.value.sqlstate == "DF014"
    assert db.execute("SELECT status FROM df.nodes WHERE instance_id = %s", (iid,)).fetchone()[0] == "pending"


@pytest.mark.parametrize("name", ['Mixed Case', 'quote"d', "semi;colon"])
def test_grant_and_revoke_usage_with_awkward_role_names(db, dsn, name):
    from tests.conftest import dsn_as

    db.execute(psycopg.sql.SQL("DROP ROLE IF EXISTS {}").format(psycopg.sql.Identifier(name)))
    db.execute(psycopg.sql.SQL("CREATE ROLE {} LOGIN").format(psycopg.sql.Identifier(name)))
    try:
        db.execute("SELECT df.grant_usage(%s)", (name,))
        with psycopg.connect(dsn_as(dsn, name), autocommit=True) as conn:
            iid = conn.execute("SELECT df.start('SELECT 1')").fetchone()[0]
            assert conn.execute("SELECT df.status(%s)", (iid,)).fetchone()[0] == "pending"
        db.execute("SELECT df.revoke_usage(%s)", (name,))
        with psycopg.connect(dsn_as(dsn, name), autocommit=True) as conn:
            with pytest.raises(pg_errors.InsufficientPrivilege):
                conn.execute("SELECT df.start('SELECT 1')")
    finally:
        db.execute("DELETE FROM df.instances")
        db.execute(psycopg.sql.SQL("DROP OWNED BY {}").format(psycopg.sql.Identifier(name)))
        db.execute(psycopg.sql.SQL("DROP ROLE {}").format(psycopg.sql.Identifier(name)))


def test_grant_usage_with_grant_lets_a_role_grant_others(db, make_role, connect_as):
    admin, user = make_role("admin", grant=False), make_role("user", grant=False)
    db.execute("SELECT df.grant_usage(%s, false, true)", (admin,))
    connect_as(admin).execute("SELECT df.grant_usage(%s)", (user,))
    assert connect_as(user).execute("SELECT df.start('SELECT 1')").fetchone()[0]


def test_schema_is_owned_by_a_nologin_role(db):
    owner, can_login = db.execute(
        "SELECT r.rolname, r.rolcanlogin FROM pg_namespace n JOIN pg_roles r ON r.oid = n.nspowner "
        "WHERE n.nspname = 'df'").fetchone()
    assert owner == "durable_owner" and can_login is False


def test_every_errcode_has_a_python_class():
    script = "\n".join(p.read_text() for p in sorted((ROOT / "sql" / "src").glob("*.sql")))
    codes = set(re.findall(r"ERRCODE = '(DF\d{3})'", script))
    assert codes and codes <= set(all_sqlstates())


def test_everything_in_df_is_owned_by_the_owner_role(db):
    """Objects created as the installer would make SECURITY DEFINER code run as a superuser."""
    functions = db.execute("""
        SELECT p.oid::regprocedure::text FROM pg_proc p
         WHERE p.pronamespace = 'df'::regnamespace AND pg_get_userbyid(p.proowner) <> 'durable_owner'
    """).fetchall()
    relations = db.execute("""
        SELECT c.relname FROM pg_class c
         WHERE c.relnamespace = 'df'::regnamespace AND pg_get_userbyid(c.relowner) <> 'durable_owner'
    """).fetchall()
    assert functions == [] and relations == []
