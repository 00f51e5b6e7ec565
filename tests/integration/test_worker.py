"""Real worker processes against a real Postgres: every node type, crashes, concurrency, cancel, signals."""

from __future__ import annotations

import json
import os
import signal
import time

import psycopg
import pytest

from tests.conftest import await_instance


def run(conn: psycopg.Connection, expr: str, timeout: int = 30) -> tuple[str, str, str | None]:
    iid = conn.execute(f"SELECT df.start({expr})").fetchone()[0]
    status = await_instance(conn, iid, timeout)
    return iid, status, conn.execute("SELECT df.result(%s)", (iid,)).fetchone()[0]


def output(conn: psycopg.Connection, iid: str) -> str | None:
    return conn.execute("SELECT output FROM df.instance_info(%s)", (iid,)).fetchone()[0]


@pytest.fixture
def alice(make_role, connect_as, db):
    role = make_role("alice")
    db.execute(f'GRANT CREATE ON SCHEMA public TO "{role}"')
    return connect_as(role)


# -- node types ----------------------------------------------------------------------------------

@pytest.mark.parametrize("expr, result", [
    ("'SELECT 42 AS answer'", {"rows": [{"answer": 42}], "row_count": 1}),
    ("'SELECT 1 AS a' ~> 'SELECT 2 AS b'", {"rows": [{"b": 2}], "row_count": 1}),
    ("'SELECT 5 AS n' |=> 'n' ~> 'SELECT $n * 2 AS doubled'", {"rows": [{"doubled": 10}], "row_count": 1}),
    ("df.if('SELECT true', 'SELECT 1 AS t', 'SELECT 2 AS e')", {"rows": [{"t": 1}], "row_count": 1}),
    ("'SELECT 0' ?> 'SELECT 1 AS t' !> 'SELECT 2 AS e'", {"rows": [{"e": 2}], "row_count": 1}),
    ("'SELECT 1 AS x WHERE false' |=> 'r' ~> df.if_rows('r', 'SELECT 1 AS yes', 'SELECT 2 AS no')",
     {"rows": [{"no": 2}], "row_count": 1}),
    ("'SELECT 1 AS a' & 'SELECT 2 AS b'", [{"rows": [{"a": 1}], "row_count": 1}, {"rows": [{"b": 2}], "row_count": 1}]),
    ("df.join3('SELECT 1 AS a', 'SELECT 2 AS b', 'SELECT 3 AS c')",
     [{"rows": [{"a": 1}], "row_count": 1}, {"rows": [{"b": 2}], "row_count": 1}, {"rows": [{"c": 3}], "row_count": 1}]),
    ("'SELECT 1 AS fast' | df.sleep(30)", {"rows": [{"fast": 1}], "row_count": 1}),
    ("df.sleep(0)", {"slept": True, "seconds": 0}),
    ("df.loop('SELECT 7 AS x' ~> df.break('done'))", "done"),
    ("df.loop(df.break('{\"status\": \"done\"}'))", {"status": "done"}),
    ("df.loop('SELECT 1 AS once', 'SELECT false')", {"rows": [{"once": 1}], "row_count": 1}),
])
def test_node_types_end_to_end(alice, start_worker, expr, result):
    start_worker()
    iid, status, res = run(alice, expr)
    assert status == "completed", output(alice, iid)
    assert json.loads(res) == result


def test_sql_results_keep_types_and_column_order(alice, start_worker):
    start_worker()
    iid, status, res = run(alice, """$q$SELECT 1 AS a, 1.50::numeric AS b, timestamptz '2024-06-15 12:30:00+00' AS c,
        'it''s "q"'::text AS d, '{"k":[1,2]}'::jsonb AS e, 'NaN'::float8 AS f,
        date '2024-06-15' AS g, true AS h, 2 AS zeta, 0.1::float4 AS r$q$""")
    assert status == "completed", output(alice, iid)
    assert output(alice, iid) == ('{"rows":[{"a":1,"b":"1.50","c":"2024-06-15T12:30:00+00:00","d":"it\'s \\"q\\"",'
                                  '"e":{"k":[1,2]},"f":null,"g":"2024-06-15","h":true,"zeta":2,"r":0.1}],"row_count":1}')


def test_unsupported_column_type_fails_the_node(alice, start_worker):
    start_worker()
    iid, status, _ = run(alice, "'SELECT interval ''1 day'' AS x'")
    assert status == "failed"
    assert "Unsupported column type 'INTERVAL' for column 'x'" in output(alice, iid)


def test_failure_names_the_node_and_skips_the_rest(alice, start_worker, db):
    alice.execute("CREATE TABLE public.marks (n int)")
    start_worker()
    iid, status, res = run(alice, "'SELECT 1/0' ~> 'INSERT INTO public.marks VALUES (1)'")
    assert status == "failed" and res is None
    assert "division by zero" in output(alice, iid)
    assert alice.execute("SELECT count(*) FROM public.marks").fetchone()[0] == 0


def test_multi_statement_and_transaction_control_steps_fail_clearly(alice, start_worker):
    start_worker()
    iid, status, _ = run(alice, "'SELECT 1; SELECT 2'")
    assert status == "failed" and "exactly one statement" in output(alice, iid)
    iid, status, _ = run(alice, "'COMMIT'")
    assert status == "failed" and "transaction control" in output(alice, iid)


def test_nested_combinations(alice, start_worker):
    start_worker()
    alice.execute("CREATE TABLE public.counter (n int)")
    alice.execute("INSERT INTO public.counter VALUES (0)")
    # a loop containing a join and a race, breaking from inside the join after three rounds
    iid, status, res = run(alice, """df.loop(
        ('UPDATE public.counter SET n = n + 1 RETURNING n' |=> 'c')
        ~> (('SELECT $c AS seen' | df.sleep(30)) & df.if('SELECT $c >= 3', df.break('three'), 'SELECT 0'))
    )""")
    assert status == "completed", output(alice, iid)
    assert json.loads(res) == "three"
    assert alice.execute("SELECT n FROM public.counter").fetchone()[0] == 3
    # join inside if, nested loops with named results
    iid, status, res = run(alice, """df.if('SELECT true', ('SELECT 1 AS a' |=> 'a') & ('SELECT 2 AS b' |=> 'b'),
                                         'SELECT 0') ~> 'SELECT $a + $b AS total'""")
    assert status == "completed", output(alice, iid)
    assert json.loads(res) == {"rows": [{"total": 3}], "row_count": 1}


def test_break_outside_a_loop_fails_the_instance(alice, start_worker):
    start_worker()
    iid, status, _ = run(alice, "df.break()")
    assert status == "failed"
    assert output(alice, iid).startswith("df.break() was called outside of a loop.")


def test_variables_and_system_values(alice, start_worker):
    alice.execute("SELECT df.setvar('greeting', '''hello''')")
    start_worker()
    iid, status, res = run(alice, "'SELECT {greeting} AS g, ''{sys_instance_id}'' AS id, ''{sys_label}'' AS l'")
    assert status == "completed", output(alice, iid)
    assert json.loads(res)["rows"] == [{"g": "hello", "id": iid, "l": ""}]


# -- signals and cancel --------------------------------------------------------------------------

def test_early_signal_is_queued_and_delivered(alice, start_worker):
    iid = alice.execute("SELECT df.start(df.sleep(1) ~> (df.wait_for_signal('go') |=> 's') ~> "
                        "'SELECT $s.data AS got')").fetchone()[0]
    alice.execute("SELECT df.signal(%s, 'go', '{\"x\": 1}')", (iid,))
    start_worker()
    assert await_instance(alice, iid) == "completed", output(alice, iid)
    assert json.loads(alice.execute("SELECT df.result(%s)", (iid,)).fetchone()[0])["rows"] == [{"got": "{\"x\":1}"}]  # objects substitute as quoted JSON text


def test_signal_while_waiting_and_timeout(alice, start_worker):
    start_worker()
    iid = alice.execute("SELECT df.start(df.wait_for_signal('approve'))").fetchone()[0]
    time.sleep(0.5)
    alice.execute("SELECT df.signal(%s, 'approve', 'yes')", (iid,))
    assert await_instance(alice, iid) == "completed"
    assert json.loads(alice.execute("SELECT df.result(%s)", (iid,)).fetchone()[0]) == {
        "signal_name": "approve", "timed_out": False, "data": "yes"}
    iid, status, res = run(alice, "df.wait_for_signal('never', 1)")
    assert status == "completed" and json.loads(res)["timed_out"] is True


def test_signal_to_a_finished_instance_is_an_error(alice, start_worker):
    start_worker()
    iid, status, _ = run(alice, "'SELECT 1'")
    with pytest.raises(psycopg.Error) as info:
        alice.execute("SELECT df.signal(%s, 'late')", (iid,))
    assert info.value.sqlstate == "DF008"


def test_cancel_reaches_a_running_statement(alice, start_worker, db):
    start_worker()
    iid = alice.execute("SELECT df.start('SELECT pg_sleep(30)')").fetchone()[0]
    deadline = time.monotonic() + 15
    while not db.execute("SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(30)' "
                         "AND state = 'active'").fetchone()[0]:
        assert time.monotonic() < deadline, "the step never started"
        time.sleep(0.05)
    started = time.monotonic()
    assert alice.execute("SELECT df.cancel(%s, 'stop')", (iid,)).fetchone()[0] == f"Instance {iid} cancelled: stop"
    while db.execute("SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(30)' "
                     "AND state = 'active'").fetchone()[0]:
        assert time.monotonic() - started < 5, "the running statement was not cancelled"
        time.sleep(0.05)
    assert alice.execute("SELECT df.status(%s)", (iid,)).fetchone()[0] == "cancelled"
    time.sleep(0.5)
    assert alice.execute("SELECT df.status(%s)", (iid,)).fetchone()[0] == "cancelled"
    assert db.execute("SELECT count(*) FROM df.instance_queue WHERE instance_id = %s", (iid,)).fetchone()[0] == 0


# -- exactly once under crashes and concurrency --------------------------------------------------

def _fifty_inserts() -> str:
    return " ~> ".join(f"'INSERT INTO public.effects VALUES ({i})'" for i in range(50))


def test_kill_9_mid_workflow_loses_nothing_and_repeats_nothing(alice, start_worker, db, fast_settings):
    fast_settings(lease_seconds=2)
    alice.execute("CREATE TABLE public.effects (n int)")
    iid = alice.execute(f"SELECT df.start({_fifty_inserts()})").fetchone()[0]
    first = start_worker(concurrency=1)
    deadline = time.monotonic() + 30
    while alice.execute("SELECT count(*) FROM public.effects").fetchone()[0] < 10:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    start_worker(concurrency=1)
    assert await_instance(alice, iid, 60) == "completed"
    rows = alice.execute("SELECT n, count(*) FROM public.effects GROUP BY n ORDER BY n").fetchall()
    assert rows == [(i, 1) for i in range(50)]


@pytest.mark.parametrize("point", ["after_statement", "after_commit", "after_claim"])
def test_fault_points_keep_effects_exactly_once(alice, start_worker, db, fast_settings, point):
    fast_settings(lease_seconds=2)
    alice.execute("CREATE TABLE public.effects (n int)")
    db.execute("UPDATE df.settings SET value = %s WHERE key = 'fault_points'", (json.dumps({point: "crash"}),))
    iid = alice.execute("SELECT df.start('INSERT INTO public.effects VALUES (1)' ~> "
                        "'INSERT INTO public.effects VALUES (2)')").fetchone()[0]
    crashed = start_worker(concurrency=1)
    assert crashed.wait(timeout=30) == -signal.SIGKILL
    assert db.execute("SELECT value FROM df.settings WHERE key = 'fault_points'").fetchone()[0] == "{}"
    start_worker(concurrency=1)
    assert await_instance(alice, iid, 60) == "completed"
    assert alice.execute("SELECT n FROM public.effects ORDER BY n").fetchall() == [(1,), (2,)]


@pytest.mark.parametrize("workers", [2, 4])
def test_many_workers_many_instances_each_effect_once(alice, start_worker, workers):
    alice.execute("CREATE TABLE public.effects (i int, step int)")
    ids = [alice.execute("SELECT df.start(format('INSERT INTO public.effects VALUES (%%s, 1)', %s::int) ~> "
                         "format('INSERT INTO public.effects VALUES (%%s, 2)', %s::int))", (i, i)).fetchone()[0]
           for i in range(200)]
    for _ in range(workers):
        start_worker(concurrency=2)
    for iid in ids:
        assert await_instance(alice, iid, 120) == "completed"
    assert alice.execute("SELECT count(*), count(DISTINCT (i, step)) FROM public.effects").fetchone() == (400, 400)


def test_worker_refuses_a_schema_it_was_not_built_for(db, worker_dsn, tmp_path):
    import subprocess
    import sys

    db.execute("UPDATE df.schema_version SET version = '0.0.1'")
    proc = subprocess.run([sys.executable, "-m", "durable.cli", "worker", "--dsn", worker_dsn],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "run `durable upgrade` first" in proc.stderr and "Traceback" not in proc.stderr


def test_a_dropped_submitter_fails_the_instance(db, make_role, connect_as, start_worker):
    role = make_role("gone")
    iid = connect_as(role).execute("SELECT df.start('SELECT 1')").fetchone()[0]
    db.execute("SELECT df.revoke_usage(%s)", (role,))
    db.execute(f'DROP OWNED BY "{role}"')
    db.execute(f'DROP ROLE "{role}"')
    start_worker()
    deadline = time.monotonic() + 30
    while db.execute("SELECT status FROM df.instances WHERE id = %s", (iid,)).fetchone()[0] != "failed":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert db.execute("SELECT output FROM df.instances WHERE id = %s", (iid,)).fetchone()[0] == \
        "submitted_by role no longer exists in pg_roles"


def test_a_step_in_another_database_runs_there(db, dsn, make_role, connect_as, start_worker):
    role = make_role()
    db.execute("DROP DATABASE IF EXISTS durable_other_db WITH (FORCE)")
    db.execute(f'CREATE DATABASE durable_other_db OWNER "{role}"')
    try:
        alice = connect_as(role)
        start_worker()
        iid = alice.execute("SELECT df.start('SELECT current_database() AS db', database => 'durable_other_db')"
                            ).fetchone()[0]
        assert await_instance(alice, iid) == "completed", output(alice, iid)
        assert json.loads(alice.execute("SELECT df.result(%s)", (iid,)).fetchone()[0])["rows"] == [
            {"db": "durable_other_db"}]
    finally:
        db.execute("DROP DATABASE IF EXISTS durable_other_db WITH (FORCE)")


def test_a_submitter_made_nologin_before_its_first_step_fails_the_instance(db, make_role, connect_as,
                                                                          start_worker):
    role = make_role("nologin")
    iid = connect_as(role).execute("SELECT df.start('SELECT 1')").fetchone()[0]
    db.execute(f'ALTER ROLE "{role}" NOLOGIN')  # the worker has no pooled connection for it yet
    start_worker()
    deadline = time.monotonic() + 15
    while db.execute("SELECT status FROM df.instances WHERE id = %s", (iid,)).fetchone()[0] != "failed":
        assert time.monotonic() < deadline, "the refused submitter was retried instead of failing"
        time.sleep(0.05)
    assert "does not have LOGIN privilege" in db.execute("SELECT output FROM df.instances WHERE id = %s",
                                                          (iid,)).fetchone()[0]
