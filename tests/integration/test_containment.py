"""A step runs with exactly its submitter's privileges, and nothing it does reaches further."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg
import pytest

from tests import conftest
from tests.conftest import await_instance


@pytest.fixture
def setup(db, make_role, connect_as):
    alice, bob = make_role("alice"), make_role("bob")
    group = make_role("group", login=False, grant=False)
    db.execute(f'GRANT "{group}" TO "{alice}"')
    db.execute(f'GRANT CREATE ON SCHEMA public TO "{alice}"')
    db.execute("CREATE TABLE public.secret (s text)")
    db.execute("INSERT INTO public.secret VALUES ('top secret')")
    return {"alice": alice, "bob": bob, "group": group, "a": connect_as(alice), "b": connect_as(bob)}


def finish(conn: psycopg.Connection, expr: str) -> tuple[str, str | None]:
    iid = conn.execute(f"SELECT df.start({expr})").fetchone()[0]
    status = await_instance(conn, iid, 30)
    out = conn.execute("SELECT output FROM df.instance_info(%s)", (iid,)).fetchone()[0]
    return status, out


ESCAPES = [
    "RESET ROLE",
    "SET ROLE postgres",
    "SET SESSION AUTHORIZATION postgres",
    "SELECT set_config(''role'', ''postgres'', false)",
    "SET ROLE durable_worker",
    "SET ROLE durable_owner",
]


@pytest.mark.parametrize("escape", ESCAPES)
@pytest.mark.parametrize("wrap", ["direct", "do", "function"])
def test_identity_escapes_gain_nothing(setup, start_worker, escape, wrap):
    start_worker()
    a = setup["a"]
    if wrap == "direct":
        expr = f"'{escape}' ~> 'SELECT s FROM public.secret'"
    elif wrap == "do":
        expr = f"'DO $d$ BEGIN EXECUTE ''{escape.replace(chr(39) * 2, chr(39) * 4)}''; PERFORM s FROM public.secret; END $d$'"
    else:
        a.execute(f"CREATE FUNCTION public.escape_{wrap}() RETURNS text LANGUAGE plpgsql AS $f$ BEGIN "
                  f"EXECUTE '{escape.replace(chr(39) * 2, chr(39) * 2)}'; RETURN (SELECT s FROM public.secret); END $f$")
        expr = f"'SELECT public.escape_{wrap}()'"
    status, out = finish(a, expr)
    assert status == "failed"
    assert "permission denied" in out, out
    assert "top secret" not in (out or "")


def test_a_step_sees_only_its_own_instances_and_no_secrets(setup, start_worker):
    start_worker()
    a, b = setup["a"], setup["b"]
    b.execute("SELECT df.start(df.wait_for_signal('never'))")
    status, out = finish(a, "'SELECT (SELECT count(*) FROM df.instances) AS mine'")
    assert status == "completed"
    assert json.loads(out)["rows"] == [{"mine": 1}]
    for probe in ("SELECT * FROM df.attempts", "SELECT * FROM df.settings", "SELECT * FROM df.instance_queue"):
        status, out = finish(a, f"'{probe}'")
        assert status == "failed" and "permission denied" in out
    status, out = finish(a, "'SELECT string_agg(query, '' | '') AS q FROM pg_stat_activity'")
    assert status == "completed"
    assert "secret" not in out.replace("public.secret", "")


def test_a_step_cannot_checkpoint_someone_elses_step(setup, start_worker, db):
    start_worker()
    a, b = setup["a"], setup["b"]
    victim = b.execute("SELECT df.start(df.wait_for_signal('never') & 'SELECT 1')").fetchone()[0]
    node = db.execute("SELECT id FROM df.nodes WHERE instance_id = %s AND node_type = 'SIGNAL'",
                      (victim,)).fetchone()[0]
    status, out = finish(a, f"'SELECT df._checkpoint_v1(''{victim}'', ''{node}'', ''guess'', ''{{}}'', NULL, 1)'")
    assert status == "failed" and "checkpoint refused" in out
    # Also from a deferred constraint trigger that fires at commit, inside the step's transaction.
    a.execute(f"""
        CREATE TABLE public.bait (x int);
        CREATE FUNCTION public.forge() RETURNS trigger LANGUAGE plpgsql AS $f$ BEGIN
            PERFORM df._checkpoint_v1('{victim}', '{node}', 'guess', '{{"rows":[],"row_count":0}}', NULL, 1);
            RETURN NULL; END $f$;
        CREATE CONSTRAINT TRIGGER forge AFTER INSERT ON public.bait DEFERRABLE INITIALLY DEFERRED
            FOR EACH ROW EXECUTE FUNCTION public.forge();
    """)
    status, out = finish(a, "'INSERT INTO public.bait VALUES (1)'")
    assert status == "failed" and "checkpoint refused" in out
    assert db.execute("SELECT status FROM df.nodes WHERE instance_id = %s AND id = %s",
                      (victim, node)).fetchone()[0] == "running"


def test_a_session_role_left_behind_does_not_reach_the_next_step(setup, start_worker):
    start_worker(concurrency=1)
    a, group = setup["a"], setup["group"]
    status, out = finish(a, f"'SELECT set_config(''role'', ''{group}'', false)' ~> 'SELECT current_user AS u'")
    assert status == "completed", out
    assert json.loads(out)["rows"] == [{"u": setup["alice"]}]
    status, out = finish(a, "'SELECT current_user AS u, current_setting(''search_path'') AS p'")
    assert json.loads(out)["rows"][0]["u"] == setup["alice"]


def test_steering_the_workers_statements_steals_nothing(setup, start_worker, db):
    a, alice = setup["a"], setup["alice"]
    a.execute("""
        CREATE TABLE public.loot (v text);
        CREATE FUNCTION public.grab(v pg_catalog.text) RETURNS boolean LANGUAGE sql AS
            $f$ INSERT INTO public.loot VALUES (v) RETURNING true $f$;
        CREATE DOMAIN public.text AS pg_catalog.text CHECK (public.grab(VALUE));
        CREATE DOMAIN public.bytea AS pg_catalog.bytea CHECK (public.grab(VALUE::pg_catalog.text));
    """)
    a.execute(f'ALTER ROLE "{alice}" SET search_path = public, pg_catalog')
    a.execute(f'ALTER ROLE "{alice}" SET log_parameter_max_length_on_error = -1')
    start_worker()
    status, out = finish(a, "'SELECT 1 AS one' ~> 'SELECT 2 AS two'")
    assert status == "completed", out
    assert a.execute("SELECT count(*) FROM public.loot").fetchone()[0] == 0
    # With a tiny role-level statement timeout the worker's own statements still run untimed and log
    # no parameters.
    a.execute(f'ALTER ROLE "{alice}" SET statement_timeout = 1')
    status, out = finish(a, "'SELECT 3 AS three'")
    a.execute("SET statement_timeout = 0")
    assert a.execute("SELECT count(*) FROM public.loot").fetchone()[0] == 0
    if conftest._server is not None:
        log = Path(conftest._server.datadir / "server.log").read_text(errors="replace")
        assert "_checkpoint_v1" not in log or "$3 = '" not in log
