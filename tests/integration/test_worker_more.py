"""More real-worker tests: graceful shutdown, submitters refused after start, the statement timeout setting,
non-transactional steps, steps in another database, signal broadcast, race cancellation, loop caps,
schedules, nested loops, awaits, takeovers of a long workflow, df.in_workflow.

Expected values come from PGD_REFERENCE.md (sections 1.2, 2.4-2.9, 3.2, 4) and CONTRACT.md section 5.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from tests.conftest import await_instance

# -- helpers -------------------------------------------------------------------------------------

def start(conn: psycopg.Connection, expr: str) -> str:
    return conn.execute(f"SELECT df.start({expr})").fetchone()[0]


def run(conn: psycopg.Connection, expr: str, timeout: int = 30) -> tuple[str, str, str | None]:
    iid = start(conn, expr)
    status = await_instance(conn, iid, timeout)
    return iid, status, conn.execute("SELECT df.result(%s)", (iid,)).fetchone()[0]


def output(conn: psycopg.Connection, iid: str) -> str | None:
    return conn.execute("SELECT output FROM df.instances WHERE id = %s", (iid,)).fetchone()[0]


def wait_until(check: Callable[[], Any], timeout: float, what: str, pause: float = 0.02) -> Any:
    """Poll `check` until it returns something truthy (never a bare sleep of a guessed length)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(pause)


def active(db: psycopg.Connection, query_text: str) -> int:
    return db.execute("SELECT count(*) FROM pg_stat_activity WHERE query = %s AND state = 'active'",
                      (query_text,)).fetchone()[0]


def node_status(db: psycopg.Connection, iid: str, node_type: str) -> list[str]:
    return [r[0] for r in db.execute("SELECT status FROM df.nodes WHERE instance_id = %s AND node_type = %s "
                                     "ORDER BY id", (iid, node_type)).fetchall()]


def effects(conn: psycopg.Connection) -> list[tuple[int, int]]:
    return conn.execute("SELECT n, count(*)::int FROM public.effects GROUP BY n ORDER BY n").fetchall()


@pytest.fixture
def alice_role(make_role, db) -> str:
    role = make_role("alice")
    db.execute(f'GRANT CREATE ON SCHEMA public TO "{role}"')
    return role


@pytest.fixture
def alice(alice_role, connect_as) -> psycopg.Connection:
    conn = connect_as(alice_role)
    conn.execute("CREATE TABLE public.effects (n int)")
    return conn


def chain(steps: list[str]) -> str:
    return " ~> ".join("'" + s.replace("'", "''") + "'" for s in steps)


# -- graceful shutdown ---------------------------------------------------------------------------

def test_sigterm_finishes_the_step_in_hand_exits_0_and_another_worker_completes(alice, start_worker, db,
                                                                                fast_settings):
    # A long lease: if the stopping worker did not give the instance back, the next worker could not
    # take it for 30 s and the await below would time out.
    fast_settings(lease_seconds=30)
    steps = ["INSERT INTO public.effects VALUES (0)", "SELECT pg_sleep(1) AS slept"]
    for i in range(1, 9):
        steps += [f"INSERT INTO public.effects VALUES ({i})", "SELECT pg_sleep(0.5) AS napped"]
    iid = start(alice, chain(steps))
    first = start_worker(concurrency=2)
    wait_until(lambda: active(db, "SELECT pg_sleep(1) AS slept"), 20, "the sleeping step")
    first.send_signal(signal.SIGTERM)
    stopped_at = time.monotonic()
    assert first.wait(timeout=20) == 0, first.log_path.read_text()
    # It finished or gave back the step in hand; it did not run the rest of the workflow (8 more s).
    assert time.monotonic() - stopped_at < 4, "shutdown ran on past the step in hand"
    assert alice.execute("SELECT df.status(%s)", (iid,)).fetchone()[0] == "running"
    assert not active(db, "SELECT pg_sleep(1) AS slept")
    assert db.execute("SELECT lease_worker FROM df.instance_queue WHERE instance_id = %s",
                      (iid,)).fetchone()[0] is None, "the stopping worker kept its lease"
    assert db.execute("SELECT count(*) FROM df.workers").fetchone()[0] == 0
    start_worker(concurrency=2)
    assert await_instance(alice, iid, 20) == "completed", output(alice, iid)
    assert effects(alice) == [(i, 1) for i in range(9)]


# -- submitters refused after df.start -----------------------------------------------------------

def test_submitter_made_nologin_mid_run_fails_the_instance(alice, alice_role, start_worker, db):
    start_worker()
    iid = start(alice, "'INSERT INTO public.effects VALUES (1)' ~> df.wait_for_signal('go') ~> "
                       "'INSERT INTO public.effects VALUES (2)'")
    wait_until(lambda: node_status(db, iid, "SIGNAL") == ["running"], 20, "the signal wait")
    db.execute(f'ALTER ROLE "{alice_role}" NOLOGIN')
    alice.execute("SELECT df.signal(%s, 'go')", (iid,))
    assert await_instance(alice, iid, 20) == "failed"
    out = output(alice, iid)
    assert f'"{alice_role}" does not have LOGIN privilege' in out, out
    assert effects(alice) == [(1, 1)]
    assert alice.execute("SELECT df.result(%s)", (iid,)).fetchone()[0] is None


def test_submitter_dropped_after_start_fails_the_instance(alice, alice_role, start_worker, db):
    iid = start(alice, "'SELECT 1 AS one' ~> 'SELECT 2 AS two'")
    alice.close()
    db.execute(f'DROP OWNED BY "{alice_role}"')   # the df grants and the effects table
    db.execute(f'DROP ROLE "{alice_role}"')
    start_worker()
    wait_until(lambda: db.execute("SELECT status IN ('completed', 'failed', 'cancelled') FROM df.instances "
                                  "WHERE id = %s", (iid,)).fetchone()[0], 20, "the instance to end")
    status, out = db.execute("SELECT status, output FROM df.instances WHERE id = %s", (iid,)).fetchone()
    assert status == "failed"
    assert "submitted_by role no longer exists in pg_roles" in out, out
    assert "completed" not in node_status(db, iid, "SQL")


# -- statement timeout ---------------------------------------------------------------------------

def test_statement_timeout_setting_fails_a_slow_step(alice, start_worker, db, fast_settings):
    fast_settings(statement_timeout_ms=300)
    start_worker()
    began = time.monotonic()
    iid, status, res = run(alice, "'SELECT pg_sleep(0.01) AS quick' ~> 'SELECT pg_sleep(20) AS slow' ~> "
                                  "'INSERT INTO public.effects VALUES (1)'")
    assert status == "failed" and res is None
    assert time.monotonic() - began < 10, "the timeout was retried or not applied"
    assert "canceling statement due to statement timeout" in output(alice, iid)
    assert node_status(db, iid, "SQL").count("failed") == 1
    assert effects(alice) == []
    # Back to off: the same pooled connection runs a longer step untimed.
    fast_settings(statement_timeout_ms=0)
    iid, status, _ = run(alice, "'SELECT pg_sleep(0.5) AS ok'")
    assert status == "completed", output(alice, iid)


# -- statements that cannot run in a transaction block (at-least-once path) ----------------------

@pytest.fixture
def nontx(alice):
    alice.execute("""
        CREATE TABLE public.t (n int);
        INSERT INTO public.t SELECT g FROM generate_series(1, 1000) AS g;
        DELETE FROM public.t WHERE n % 2 = 0;
        CREATE TABLE public.log (step text);
        CREATE PROCEDURE public.two_commits() LANGUAGE plpgsql AS $p$
        BEGIN
            INSERT INTO public.log VALUES ('first');
            COMMIT;
            INSERT INTO public.log VALUES ('second');
            COMMIT;
        END $p$;
    """)
    return alice


def test_vacuum_step_completes(nontx, start_worker, db):
    start_worker()
    iid, status, res = run(nontx, "'VACUUM public.t' ~> 'SELECT 1 AS after'")
    assert status == "completed", output(nontx, iid)
    assert json.loads(res)["rows"] == [{"after": 1}]
    vacuum_node = db.execute("SELECT status, result_text FROM df.nodes WHERE instance_id = %s AND query = "
                             "'VACUUM public.t'", (iid,)).fetchone()
    assert vacuum_node == ("completed", '{"rows":[],"row_count":0}')
    db.execute("SELECT pg_stat_clear_snapshot()")
    assert db.execute("SELECT vacuum_count FROM pg_stat_user_tables WHERE relid = 'public.t'::regclass"
                      ).fetchone()[0] >= 1


def test_create_index_concurrently_step_completes(nontx, start_worker, db):
    start_worker()
    iid = start(nontx, "'CREATE INDEX CONCURRENTLY t_n_idx ON public.t (n)'")
    # Not df.await_instance: its snapshot, held for the whole call, is one CREATE INDEX CONCURRENTLY
    # waits for (in the same database).
    status = wait_until(lambda: db.execute("SELECT status FROM df.instances WHERE id = %s AND status IN "
                                           "('completed', 'failed', 'cancelled')", (iid,)).fetchone(),
                        30, "the index step")[0]
    assert status == "completed", output(nontx, iid)
    assert db.execute("SELECT indisvalid FROM pg_index WHERE indexrelid = 'public.t_n_idx'::regclass"
                      ).fetchone()[0] is True


def test_procedure_that_commits_completes(nontx, start_worker):
    start_worker()
    iid, status, res = run(nontx, "'CALL public.two_commits()' ~> 'SELECT count(*)::int AS c FROM public.log'")
    assert status == "completed", output(nontx, iid)
    assert json.loads(res)["rows"] == [{"c": 2}]
    assert nontx.execute("SELECT step FROM public.log ORDER BY step").fetchall() == [("first",), ("second",)]


# -- another database ----------------------------------------------------------------------------

@pytest.fixture
def other_db(db, dsn, alice_role):
    name = f"other_{uuid.uuid4().hex[:8]}"
    db.execute(f'CREATE DATABASE "{name}"')
    params = conninfo_to_dict(dsn)
    params["dbname"] = name
    with psycopg.connect(make_conninfo(**params), autocommit=True) as conn:
        conn.execute("CREATE TABLE public.marks (db text, n int)")
        conn.execute(f'GRANT SELECT, INSERT ON public.marks TO "{alice_role}"')
    yield name, make_conninfo(**params)
    db.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def test_a_step_in_another_database_runs_there(alice, other_db, start_worker):
    name, other_dsn = other_db
    start_worker()
    iid = alice.execute("SELECT df.start('INSERT INTO public.marks SELECT current_database(), 1 RETURNING db' ~> "
                        "'INSERT INTO public.marks SELECT current_database(), 2 RETURNING db, n', "
                        "database => %s)", (name,)).fetchone()[0]
    assert await_instance(alice, iid, 30) == "completed", output(alice, iid)
    assert json.loads(alice.execute("SELECT df.result(%s)", (iid,)).fetchone()[0]) == {
        "rows": [{"db": name, "n": 2}], "row_count": 1}
    with psycopg.connect(other_dsn) as conn:
        assert conn.execute("SELECT db, n FROM public.marks ORDER BY n").fetchall() == [(name, 1), (name, 2)]


# -- signals -------------------------------------------------------------------------------------

def test_a_signal_reaches_two_waits_active_at_once(alice, start_worker, db):
    start_worker()
    iid = start(alice, "df.wait_for_signal('go') & df.wait_for_signal('go')")
    wait_until(lambda: node_status(db, iid, "SIGNAL") == ["running", "running"], 20, "both waits")
    assert alice.execute("SELECT df.signal(%s, 'go', '{\"v\": 7}')", (iid,)).fetchone()[0] == "OK"
    assert await_instance(alice, iid, 20) == "completed", output(alice, iid)
    got = json.loads(alice.execute("SELECT df.result(%s)", (iid,)).fetchone()[0])
    assert got == [{"signal_name": "go", "timed_out": False, "data": {"v": 7}}] * 2


# -- race ----------------------------------------------------------------------------------------

def test_race_loser_sql_is_cancelled_in_the_server_and_infers_skipped(alice, start_worker, db):
    start_worker()
    iid = start(alice, "'SELECT pg_sleep(30)' | df.wait_for_signal('win')")
    wait_until(lambda: active(db, "SELECT pg_sleep(30)"), 20, "the losing step to run")
    wait_until(lambda: node_status(db, iid, "SIGNAL") == ["running"], 20, "the signal wait")
    alice.execute("SELECT df.signal(%s, 'win', '\"first\"')", (iid,))
    signalled = time.monotonic()
    assert await_instance(alice, iid, 20) == "completed", output(alice, iid)
    assert json.loads(alice.execute("SELECT df.result(%s)", (iid,)).fetchone()[0]) == {
        "signal_name": "win", "timed_out": False, "data": "first"}
    wait_until(lambda: not active(db, "SELECT pg_sleep(30)"), 5, "the loser's statement to be cancelled")
    assert time.monotonic() - signalled < 6
    rows = {r[0]: r[1:] for r in alice.execute(
        "SELECT node_type, status, inferred_status, inferred_status_from_ancestor_id FROM df.instance_nodes(%s)",
        (iid,)).fetchall()}
    race_id = db.execute("SELECT root_node FROM df.instances WHERE id = %s", (iid,)).fetchone()[0]
    assert rows["RACE"][:2] == ("completed", "completed")
    assert rows["SIGNAL"][:2] == ("completed", "completed")
    assert rows["SQL"][1:] == ("skipped", race_id)
    assert rows["SQL"][0] != "completed"


def test_race_of_a_loop_and_a_signal(alice, start_worker, db, fast_settings):
    fast_settings(loop_min_iteration_seconds=0.02)
    start_worker()
    iid = start(alice, "df.loop('INSERT INTO public.effects VALUES (1)') | df.wait_for_signal('stop')")
    wait_until(lambda: alice.execute("SELECT count(*) >= 3 FROM public.effects").fetchone()[0], 20,
               "three iterations")
    alice.execute("SELECT df.signal(%s, 'stop', 'now')", (iid,))
    assert await_instance(alice, iid, 20) == "completed", output(alice, iid)
    assert json.loads(alice.execute("SELECT df.result(%s)", (iid,)).fetchone()[0]) == {
        "signal_name": "stop", "timed_out": False, "data": "now"}
    loop = alice.execute("SELECT status, result FROM df.instance_nodes(%s) WHERE node_type = 'LOOP'",
                         (iid,)).fetchone()
    assert loop == ("failed", '"Loop branch cancelled after losing RACE"')
    ran = alice.execute("SELECT count(*) FROM public.effects").fetchone()[0]
    time.sleep(0.3)  # ten padded iterations' worth: none may start after the race ended
    assert alice.execute("SELECT count(*) FROM public.effects").fetchone()[0] == ran


# -- loops ---------------------------------------------------------------------------------------

def test_loop_iteration_cap_fails_with_the_reference_message(alice, start_worker, fast_settings):
    fast_settings(loop_max_iterations=3, loop_min_iteration_seconds=0)
    start_worker()
    iid, status, res = run(alice, "df.loop('INSERT INTO public.effects VALUES (1)')")
    assert status == "failed" and res is None
    assert output(alice, iid).startswith("Loop exceeded maximum iteration count of 3. ")
    assert alice.execute("SELECT count(*) FROM public.effects").fetchone()[0] == 3


def test_break_from_inside_a_join_inside_a_loop(alice, start_worker):
    start_worker()
    alice.execute("CREATE TABLE public.counter (n int); INSERT INTO public.counter VALUES (0)")
    # In the second iteration the break ends the loop although the join's other branch is still
    # waiting for a signal.
    iid, status, res = run(alice, """df.loop(
            ('UPDATE public.counter SET n = n + 1 RETURNING n' |=> 'c')
            ~> df.if('SELECT $c >= 2', df.wait_for_signal('never') & df.break('out'), 'SELECT 0')
        ) |=> 'l' ~> 'SELECT $l AS got'""")
    assert status == "completed", output(alice, iid)
    assert json.loads(res) == {"rows": [{"got": "out"}], "row_count": 1}
    assert alice.execute("SELECT n FROM public.counter").fetchone()[0] == 2


def test_nested_loops_with_named_results(alice, start_worker):
    start_worker()
    alice.execute("""CREATE TABLE public.oc (n int); INSERT INTO public.oc VALUES (0);
                     CREATE TABLE public.ic (n int); INSERT INTO public.ic VALUES (0);
                     CREATE TABLE public.seen (o int, i int)""")
    iid, status, res = run(alice, """df.loop(
            ('UPDATE public.oc SET n = n + 1 RETURNING n' |=> 'o')
            ~> (df.loop('UPDATE public.ic SET n = n + 1 RETURNING n' |=> 'i', 'SELECT $i % 3 <> 0') |=> 'inner')
            ~> 'INSERT INTO public.seen VALUES ($o, $inner) RETURNING o, i',
            'SELECT $o < 2')""")
    assert status == "completed", output(alice, iid)
    assert json.loads(res) == {"rows": [{"o": 2, "i": 6}], "row_count": 1}
    assert alice.execute("SELECT o, i FROM public.seen ORDER BY o").fetchall() == [(1, 3), (2, 6)]


# -- schedules -----------------------------------------------------------------------------------

def test_wait_schedule_waits_for_the_next_minute(alice, start_worker, db, fast_settings):
    fast_settings(fake_now="2030-06-15 11:59:59.5+00")
    start_worker()
    iid = start(alice, "df.wait_for_schedule('* * * * *') ~> 'SELECT 1 AS ticked'")
    wake = wait_until(lambda: db.execute("SELECT wake_at FROM df.nodes WHERE instance_id = %s AND "
                                         "node_type = 'WAIT_SCHEDULE' AND status = 'running'",
                                         (iid,)).fetchone(), 20, "the schedule wait")[0]
    assert wake == db.execute("SELECT timestamptz '2030-06-15 12:00:00+00'").fetchone()[0]
    assert alice.execute("SELECT df.status(%s)", (iid,)).fetchone()[0] == "running"
    fast_settings(fake_now="2030-06-15 12:00:00+00")
    assert await_instance(alice, iid, 20) == "completed", output(alice, iid)
    assert db.execute("SELECT result FROM df.nodes WHERE instance_id = %s AND node_type = 'WAIT_SCHEDULE'",
                      (iid,)).fetchone()[0] == {"scheduled": True}


# -- await ---------------------------------------------------------------------------------------

def test_await_returns_failed_and_cancelled(alice, alice_role, connect_as, start_worker):
    start_worker()
    iid, status, _ = run(alice, "'SELECT 1/0'")
    assert status == "failed"
    # Ending while the await is polling.
    iid = start(alice, "df.sleep(1) ~> 'SELECT 1/0'")
    assert await_instance(alice, iid, 20) == "failed"
    iid = start(alice, "df.wait_for_signal('never')")
    waiter = connect_as(alice_role)
    got: list[str] = []
    thread = threading.Thread(target=lambda: got.append(await_instance(waiter, iid, 20)))
    thread.start()
    time.sleep(0.3)  # let the await start polling
    alice.execute("SELECT df.cancel(%s, 'enough')", (iid,))
    thread.join(25)
    assert got == ["cancelled"]
    assert await_instance(alice, iid, 5) == "cancelled"


# -- a long workflow across killed workers -------------------------------------------------------

def _holder_pid(db: psycopg.Connection, iid: str) -> int | None:
    row = db.execute("SELECT w.pid FROM df.instance_queue AS q JOIN df.workers AS w ON w.worker_id = q.lease_worker "
                     "WHERE q.instance_id = %s AND q.lease_expires_at > clock_timestamp()", (iid,)).fetchone()
    return row[0] if row else None


def test_twenty_steps_across_killed_workers_each_effect_once(alice, start_worker, db, fast_settings):
    fast_settings(lease_seconds=2)
    iid = start(alice, chain([f"INSERT INTO public.effects SELECT {i} FROM pg_sleep(0.05)" for i in range(20)]))
    workers = {p.pid: p for p in (start_worker(concurrency=1), start_worker(concurrency=1))}
    for threshold in (4, 11):
        wait_until(lambda t=threshold: alice.execute("SELECT count(*) >= %s FROM public.effects", (t,)).fetchone()[0],
                   30, f"{threshold} effects")
        pid = wait_until(lambda: _holder_pid(db, iid), 10, "the holding worker")
        os.kill(pid, signal.SIGKILL)
        workers.pop(pid).wait()
        fresh = start_worker(concurrency=1)
        workers[fresh.pid] = fresh
    assert await_instance(alice, iid, 60) == "completed", output(alice, iid)
    assert effects(alice) == [(i, 1) for i in range(20)]


# -- df.in_workflow ------------------------------------------------------------------------------

def test_in_workflow_inside_a_step_only_and_setvar_there_raises(alice, start_worker):
    start_worker()
    assert alice.execute("SELECT df.in_workflow()").fetchone()[0] is False
    iid, status, res = run(alice, "'SELECT df.in_workflow() AS inside'")
    assert status == "completed", output(alice, iid)
    assert json.loads(res) == {"rows": [{"inside": True}], "row_count": 1}
    iid, status, _ = run(alice, "'SELECT df.setvar(''k'', ''v'')'")
    assert status == "failed"
    assert "df.setvar() cannot be called inside a workflow" in output(alice, iid)
    assert alice.execute("SELECT df.getvar('k')").fetchone()[0] is None
    # Resetting what pg_durable used as the marker changes nothing.
    iid, status, _ = run(alice, "'DO $d$ BEGIN PERFORM set_config(''df.in_workflow'', ''false'', false); "
                                "PERFORM df.setvar(''k'', ''v''); END $d$'")
    assert status == "failed"
    assert "df.setvar() cannot be called inside a workflow" in output(alice, iid)
    assert alice.execute("SELECT df.in_workflow()").fetchone()[0] is False
    assert alice.execute("SELECT df.setvar('k', 'v')").fetchone()[0] == "OK"


# -- the default mode writes the decision that follows a step in the step's own commit -------------------

def test_a_sequential_workflow_writes_each_next_decision_in_the_step_commit(alice, start_worker, db):
    """After each step of a chain, the decision that starts the next step (or ends the instance) is
    written by the step's own checkpoint (df._checkpoint_next_v1); the worker's separate decision write
    (df._advance_v2) runs only for an instance's first decision.  Counted by track_functions."""
    db.execute(f'ALTER DATABASE "{db.info.dbname}" SET track_functions = \'pl\'')
    worker = start_worker()
    for _ in range(2):  # one after the other: each instance's decisions are written on their own
        iid = start(alice, chain(["INSERT INTO public.effects VALUES (1)", "INSERT INTO public.effects VALUES (2)",
                                  "SELECT count(*) AS n FROM public.effects"]))
        assert await_instance(alice, iid, 30) == "completed"
    worker.terminate()
    assert worker.wait(timeout=20) == 0  # its sessions end, and report their counts

    def calls() -> dict[str, int] | None:
        db.execute("SELECT pg_stat_clear_snapshot()")
        counts = dict(db.execute("SELECT funcname, calls FROM pg_stat_user_functions WHERE schemaname = 'df' "
                                 "AND funcname IN ('_advance_v2', '_checkpoint_next_v1', '_checkpoint_v2')"
                                 ).fetchall())
        return counts if counts.get("_checkpoint_next_v1", 0) >= 6 else None

    counts = wait_until(calls, 20, "the worker's function counts")
    assert counts == {"_advance_v2": 2, "_checkpoint_next_v1": 6}, counts
    assert effects(alice) == [(1, 2), (2, 2)]


def test_an_idle_worker_claims_and_writes_the_first_decision_in_one_transaction(alice, start_worker, db):
    """The claim (the queue row's lease) and the first decision (the instance running, its step's node
    and attempt) commit together: one commit on the way of every new instance, not two.  Seen while
    the step runs: the rows carry the same transaction id (a lease long enough that no heartbeat
    renews the queue row meanwhile)."""
    db.execute("UPDATE df.settings SET value = '60' WHERE key = 'lease_seconds'")
    start_worker()
    iid = start(alice, "'SELECT pg_sleep(3)'")
    wait_until(lambda: node_status(db, iid, "SQL") == ["running"], 20, "the step to start")
    rows = db.execute(
        "SELECT (SELECT q.xmin::text FROM df.instance_queue AS q WHERE q.instance_id = %(id)s), "
        "       (SELECT i.xmin::text FROM df.instances AS i WHERE i.id = %(id)s), "
        "       (SELECT a.lease_token = q.lease_token FROM df.attempts AS a JOIN df.instance_queue AS q "
        "          ON q.instance_id = a.instance_id WHERE a.instance_id = %(id)s)", {"id": iid}).fetchone()
    assert rows is not None
    queue_xmin, instance_xmin, same_lease = rows
    assert same_lease is True
    assert queue_xmin == instance_xmin
    assert await_instance(alice, iid, 30) == "completed"


def test_a_failed_first_write_does_not_lose_the_claimed_instance(alice, start_worker, db):
    """The first decisions are written in the claim's transaction: when that write fails (here a
    trigger refuses the first attempt row, once), the claim rolls back with it, the worker claims again
    (claim and write apart for a while) and the step runs once."""
    db.execute("CREATE SEQUENCE public.fail_once")
    db.execute("GRANT USAGE ON SEQUENCE public.fail_once TO PUBLIC")  # the trigger runs as the engine's owner
    db.execute("""CREATE FUNCTION public.fail_once() RETURNS trigger LANGUAGE plpgsql AS $$
                  BEGIN
                      IF nextval('public.fail_once') = 1 THEN RAISE EXCEPTION 'injected'; END IF;
                      RETURN NEW;
                  END $$""")
    db.execute("CREATE TRIGGER fail_once BEFORE INSERT ON df.attempts FOR EACH ROW EXECUTE FUNCTION public.fail_once()")
    start_worker()
    iid = start(alice, "'INSERT INTO public.effects VALUES (1)'")
    assert await_instance(alice, iid, 30) == "completed"
    assert effects(alice) == [(1, 1)]
    assert db.execute("SELECT last_value >= 2 FROM public.fail_once").fetchone() == (True,)
