"""Review of the folded decision (df._checkpoint_next_v1 and the scheduler's fold), 8f5e70d..8bf3aa0.

Three tests demonstrated defects the review found (a timer not armed while a step runs, in the
scheduler and in the fold; the queue row locked before the caller was known to hold the attempt);
they pass since the fixes.  The others pin properties verified in review.
"""

from __future__ import annotations

import json
import time
import uuid

import psycopg
import pytest

from tests.conftest import await_instance
from tests.integration.test_batched import (
    _begin_chain,
    _bind,
    _chain_state,
    _checkpoint_next,
    _refused,
    _start_next,
    start,
)


@pytest.fixture
def chain(db, worker_dsn, make_role, connect_as):
    """alice's two-step chain with the first step's attempt registered (as test_batched's chain_protocol)."""
    alice_role = make_role("alice")
    iid = start(connect_as(alice_role), "'SELECT 1' ~> 'SELECT 2'")
    worker = psycopg.connect(worker_dsn, autocommit=True)
    try:
        yield (alice_role, *_begin_chain(worker, iid))
    finally:
        worker.close()


def _timed(conn: psycopg.Connection, expr: str, timeout: int = 40) -> tuple[str, float, str | None]:
    t0 = time.monotonic()
    iid = conn.execute(f"SELECT df.start({expr})").fetchone()[0]
    status = await_instance(conn, iid, timeout)
    return status, time.monotonic() - t0, conn.execute("SELECT df.result(%s)", (iid,)).fetchone()[0]


# -- scheduler: timers while a step is in flight ------------------------------------------------------

def test_race_of_a_long_step_against_a_sleep_is_won_by_the_sleep(db, make_role, connect_as, start_worker):
    alice = connect_as(make_role("alice"))
    start_worker()
    status, elapsed, result = _timed(alice, "df.race('SELECT pg_sleep(6)', df.sleep(1))")
    assert status == "completed"
    assert elapsed < 4.5, (elapsed, result)
    assert "pg_sleep" not in (result or "")


def test_race_started_by_a_folded_checkpoint_is_won_by_the_sleep(db, make_role, connect_as, start_worker):
    alice = connect_as(make_role("alice"))
    start_worker()
    status, elapsed, result = _timed(alice, "'SELECT 1' ~> df.race('SELECT pg_sleep(6)', df.sleep(1))")
    assert status == "completed"
    assert elapsed < 4.5, (elapsed, result)
    assert "pg_sleep" not in (result or "")


# -- df._checkpoint_next_v1: cancels and takeovers around the checkpoint (verified, pinned) ------------

def test_a_cancel_committed_between_the_statement_and_the_checkpoint_refuses_it(chain, connect_as,
                                                                              db):
    alice_role, a, second = chain
    step = connect_as(alice_role, autocommit=False)
    _bind(step, a)  # ... the step's statement would run here ...
    client = connect_as(alice_role)
    assert "cancelled" in client.execute("SELECT df.cancel(%s)", (a.iid,)).fetchone()[0]
    err = _refused(lambda: _checkpoint_next(step, a, _start_next(second, "b2", "s2")))
    assert err.sqlstate == "DF014"
    step.rollback()
    status, nodes, attempts, _ = _chain_state(db, a.iid)
    assert status == "cancelled"
    assert attempts == [a.node_id]  # only the first step's own attempt; the next step never got one
    assert db.execute("SELECT status FROM df.nodes WHERE instance_id = %s AND id = %s",
                      (a.iid, second["id"])).fetchone()[0] == "pending"


def test_a_cancel_waits_for_a_checkpoint_in_progress_and_then_cancels(chain, connect_as, db):
    """Same lock order as df._own_instance (queue row, then instance row): the cancel waits, no deadlock."""
    alice_role, a, second = chain
    step = connect_as(alice_role, autocommit=False)
    _bind(step, a)
    out = _checkpoint_next(step, a, _start_next(second, "b2", "s2"))
    assert out["next"]["status"] == "running"
    client = connect_as(alice_role)
    client.execute("SET lock_timeout = '300ms'")
    with pytest.raises(psycopg.errors.LockNotAvailable):
        client.execute("SELECT df.cancel(%s)", (a.iid,))
    step.commit()
    assert "cancelled" in client.execute("SELECT df.cancel(%s)", (a.iid,)).fetchone()[0]
    assert _chain_state(db, a.iid)[0] == "cancelled"


def test_a_lease_taken_over_mid_step_refuses_the_checkpoint_and_its_decision(chain, connect_as, db,
                                                                             worker_dsn):
    alice_role, a, second = chain
    step = connect_as(alice_role, autocommit=False)
    _bind(step, a)
    db.execute("UPDATE df.instance_queue SET lease_expires_at = clock_timestamp() - interval '1 second' "
               "WHERE instance_id = %s", (a.iid,))
    with psycopg.connect(worker_dsn, autocommit=True) as other:
        read = other.execute("SELECT df._claim_v2(%s, 10)", (uuid.uuid4(),)).fetchone()[0]
        assert [s["id"] for s in read["instances"]] == [a.iid]
        assert read["instances"][0]["lease_token"] != a.token
    err = _refused(lambda: _checkpoint_next(step, a, {"updates": [], "status": "completed", "output": "x"}))
    assert err.sqlstate == "DF014"
    step.rollback()
    status, nodes, attempts, queued = _chain_state(db, a.iid)
    assert (status, queued) == ("running", 1)
    assert db.execute("SELECT status FROM df.nodes WHERE instance_id = %s AND id = %s",
                      (a.iid, a.node_id)).fetchone()[0] == "running"


# -- df._checkpoint_next_v1: locks taken before the caller is known to be the submitter -----------------

def test_another_role_naming_an_instance_is_refused_without_waiting_on_its_locks(chain, make_role,
                                                                               connect_as, db):
    _, a, _ = chain
    holder = psycopg.connect(db.info.dsn, autocommit=False)  # a v2 checkpoint of alice's, in progress
    try:
        holder.execute("SELECT 1 FROM df.instance_queue WHERE instance_id = %s FOR KEY SHARE", (a.iid,))
        mallory = connect_as(make_role("mallory"), autocommit=False)
        mallory.execute("SET lock_timeout = '300ms'")
        err = _refused(lambda: _checkpoint_next(mallory, a, None, secret="guess"))
        mallory.rollback()
        assert err.sqlstate == "DF014", err.sqlstate
    finally:
        holder.rollback()
        holder.close()


# -- the checkpoint's own lock waits are not the step's failure ------------------------------------------

def test_a_role_lock_timeout_does_not_fail_a_step_whose_checkpoint_waits(db, make_role, connect_as,
                                                                        start_worker):
    """A submitter's `lock_timeout` applies to its steps' own statements, not to the checkpoint's locks:
    a checkpoint that waits for the instance's row (here held by another session) still records."""
    role = make_role("alice")
    db.execute(f'ALTER ROLE "{role}" SET lock_timeout = \'50ms\'')
    alice = connect_as(role)
    start_worker()
    iid = start(alice, "'SELECT pg_sleep(0.6)' ~> 'SELECT 2 AS two'")
    holder = psycopg.connect(db.info.dsn, autocommit=False)
    try:
        deadline = time.monotonic() + 20
        while db.execute("SELECT count(*) FROM pg_stat_activity WHERE usename = %s AND state = 'active' "
                         "AND query = 'SELECT pg_sleep(0.6)'", (role,)).fetchone()[0] == 0:  # the first step runs
            assert time.monotonic() < deadline, "the first step never started"
            time.sleep(0.02)
        holder.execute("SELECT 1 FROM df.instances WHERE id = %s FOR SHARE", (iid,))
        time.sleep(1.0)  # the step's statement ends meanwhile; its checkpoint waits for this lock
    finally:
        holder.rollback()
        holder.close()
    assert await_instance(alice, iid, 30) == "completed"
    assert json.loads(alice.execute("SELECT df.result(%s)", (iid,)).fetchone()[0]) == \
        {"rows": [{"two": 2}], "row_count": 1}
