"""Attacks from the security review, each kept as a regression test."""

from __future__ import annotations

import time

import psycopg
import pytest

from tests.conftest import await_instance, dsn_as


def _role(make_role, connect_as, db, prefix):
    role = make_role(prefix)
    db.execute(f'GRANT CREATE ON SCHEMA public TO "{role}"')
    return role, connect_as(role)


def _output(conn, iid):
    return conn.execute("SELECT output FROM df.instance_info(%s)", (iid,)).fetchone()[0]


@pytest.mark.parametrize("scs_off", [False, True])
def test_standard_conforming_strings_off_cannot_turn_a_value_into_code(make_role, connect_as, db, start_worker,
                                                                         scs_off):
    role, alice = _role(make_role, connect_as, db, "scs")
    alice.execute("CREATE TABLE public.victim_rows (name text)")
    alice.execute("INSERT INTO public.victim_rows VALUES ('a'), ('b'), ('c')")
    if scs_off:  # the role can do this itself; a database default does the same
        alice.execute(f'ALTER ROLE "{role}" SET standard_conforming_strings = off')
    start_worker()
    expr = ("$q$SELECT chr(92) || ''' OR true --' AS v$q$ |=> 'x' "
            "~> 'DELETE FROM public.victim_rows WHERE name = $x RETURNING name'")
    iid = alice.execute(f"SELECT df.start({expr})").fetchone()[0]
    assert await_instance(alice, iid, 60) == "completed", _output(alice, iid)
    assert alice.execute("SELECT count(*) FROM public.victim_rows").fetchone()[0] == 3
    assert _output(alice, iid) == '{"rows":[],"row_count":0}'


def test_an_open_signal_transaction_stalls_only_its_own_instance(make_role, connect_as, db, start_worker,
                                                                 fast_settings):
    fast_settings(lease_seconds=2)
    alice_role, alice = _role(make_role, connect_as, db, "alice")
    _, bob = _role(make_role, connect_as, db, "bob")
    bob.execute("CREATE SEQUENCE public.bob_attempts")
    start_worker(concurrency=4)
    a_iid = alice.execute("SELECT df.start('SELECT pg_sleep(8)')").fetchone()[0]
    deadline = time.monotonic() + 20
    while not db.execute("SELECT lease_token IS NOT NULL FROM df.instance_queue WHERE instance_id = %s",
                         (a_iid,)).fetchone()[0]:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    held = connect_as(alice_role, autocommit=False)
    held.execute("SELECT df.signal(%s, 'hold', '{}')", (a_iid,))  # ... and the transaction stays open
    try:
        b_iid = bob.execute("SELECT df.start('SELECT nextval(''public.bob_attempts'') AS n, pg_sleep(4)')"
                            ).fetchone()[0]
        time.sleep(3)  # longer than the lease: only heartbeats keep bob's lease alive
        blocked = db.execute("SELECT left(query, 60) FROM pg_stat_activity WHERE application_name = "
                             "'durable:worker' AND wait_event_type = 'Lock' AND query LIKE '%heartbeat%'").fetchall()
        assert blocked == []
        assert await_instance(bob, b_iid, 30) == "completed"
        assert bob.execute("SELECT last_value FROM public.bob_attempts").fetchone()[0] == 1
    finally:
        held.rollback()


def test_commit_time_triggers_run_under_the_step_timeout(make_role, connect_as, db, start_worker, fast_settings):
    fast_settings(lease_seconds=2, statement_timeout_ms=1000)
    _, alice = _role(make_role, connect_as, db, "deferral")
    alice.execute("CREATE TABLE public.d (x int)")
    alice.execute("CREATE FUNCTION public.slow() RETURNS trigger LANGUAGE plpgsql AS "
                  "$$BEGIN PERFORM pg_sleep(10); RETURN NULL; END$$")
    alice.execute("CREATE CONSTRAINT TRIGGER slow AFTER INSERT ON public.d DEFERRABLE INITIALLY DEFERRED "
                  "FOR EACH ROW EXECUTE FUNCTION public.slow()")
    start_worker()
    iid = alice.execute("SELECT df.start('INSERT INTO public.d VALUES (1)')").fetchone()[0]
    started = time.monotonic()
    assert await_instance(alice, iid, 30) == "failed"
    assert time.monotonic() - started < 8
    assert "statement timeout" in _output(alice, iid)
    assert alice.execute("SELECT count(*) FROM public.d").fetchone()[0] == 0


def test_a_result_larger_than_the_cap_fails_the_step_not_the_worker(make_role, connect_as, db, start_worker,
                                                                    fast_settings):
    fast_settings(max_result_bytes=10000)
    _, alice = _role(make_role, connect_as, db, "big")
    start_worker()
    iid = alice.execute("SELECT df.start('SELECT g, repeat(''x'', 100) AS pad FROM generate_series(1, 1000) g')"
                        ).fetchone()[0]
    assert await_instance(alice, iid, 30) == "failed"
    assert "larger than 10000 bytes" in _output(alice, iid)
    small = alice.execute("SELECT df.start('SELECT 1 AS one')").fetchone()[0]
    assert await_instance(alice, small, 30) == "completed"


def test_a_checkpoint_from_a_session_that_is_not_the_submitter_is_refused(db, dsn, make_role, connect_as,
                                                                          worker_dsn):
    import hashlib
    import json
    import uuid

    alice, mallory = make_role("alice"), make_role("mallory")
    iid = connect_as(alice).execute("SELECT df.start('SELECT 1')").fetchone()[0]
    node = db.execute("SELECT root_node FROM df.instances WHERE id = %s", (iid,)).fetchone()[0]
    with psycopg.connect(worker_dsn, autocommit=True) as worker, \
            psycopg.connect(dsn_as(dsn, mallory)) as wrong:
        _, token, _ = worker.execute("SELECT * FROM df._claim_v1(%s, 1)", (uuid.uuid4(),)).fetchone()
        v = db.execute("SELECT resource_version FROM df.nodes WHERE instance_id = %s", (iid,)).fetchone()[0]
        update = [{"node_id": node, "expected_version": v, "status": "running", "result_text": None,
                   "wake_at": None, "state": None, "status_details": None}]
        worker.execute("SELECT df._apply_v1(%s, %s, %s, '[]', NULL, NULL, 1)", (iid, token, json.dumps(update)))
        secret = "k" * 64
        worker.execute("SELECT df._begin_attempt_v1(%s, %s, %s, %s, %s)",
                       (iid, node, token, hashlib.sha256(secret.encode()).digest(), wrong.info.backend_pid))
        with pytest.raises(psycopg.Error) as info:
            wrong.execute("SELECT df._checkpoint_v1(%s, %s, %s, '{\"rows\":[],\"row_count\":0}', NULL, %s)",
                          (iid, node, secret, v + 1))
        assert info.value.sqlstate == "DF014" and "not its submitter" in info.value.diag.message_primary
