"""Review of the batched fold (df._checkpoint_next_v2), the key-only joins and the scheduler's
dispatch of started steps, 227c7e0..23e3bc2.

Two tests pin defects the review found and that were fixed: another role holding a lock on
someone else's instance through df._checkpoint_v2 (it now refuses a caller without every attempt before
any lock), and the key-only joins scanning the whole instances index after a skewed ANALYZE of
df.attempts (the queue and instance rows are read once by "= ANY" again).  The others pin properties
verified in review.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from typing import Any

import psycopg
import pytest

from tests.integration.test_batched import (
    Attempt,
    _bind_all,
    _chain_state,
    _checkpoint_batch,
    _ended,
    _h,
    _refused,
    _start_next,
    start,
)
from tests.integration.test_batched import chains_protocol as chains_protocol  # noqa: PLC0414 - a fixture

# -- locks of another role's instance, taken before the caller is known to hold an attempt ----------------


def _hold_alices_instance(db, make_role, connect_as, call: str) -> None:
    """mallory (no secrets) names alice's instance and one of her own, whose rows her second session
    holds (a df.signal left open); while her call waits there, alice cancels her own instance."""
    alice = connect_as(make_role("alice"))
    victim = start(alice, "'SELECT 1'")
    mallory_role = make_role("mallory")
    mallory = connect_as(mallory_role)
    own = start(mallory, "'SELECT 1'")
    while own <= victim:  # locked in id order: her own instance after alice's
        own = start(mallory, "'SELECT 1'")
    holder = connect_as(mallory_role, autocommit=False)
    holder.execute("SELECT df.signal(%s, 'x')", (own,))
    caller = connect_as(mallory_role, autocommit=False)
    errors: list[BaseException] = []

    def forge() -> None:
        try:
            caller.execute(call, ([victim, own], ["00000000", "00000000"], ["guess", "guess"]))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    thread = threading.Thread(target=forge)
    thread.start()
    try:
        deadline = time.monotonic() + 2
        while thread.is_alive() and time.monotonic() < deadline:
            row = db.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s",
                             (caller.info.backend_pid,)).fetchone()
            if row[0] == "Lock":
                break
            time.sleep(0.02)
        alice.execute("SET lock_timeout = '500ms'")
        assert "cancelled" in alice.execute("SELECT df.cancel(%s)", (victim,)).fetchone()[0]
    finally:
        holder.rollback()
        thread.join(10)
        caller.rollback()
    assert errors and getattr(errors[0], "sqlstate", None) == "DF014", errors


def test_checkpoint_v2_without_secrets_holds_no_lock_of_another_role(db, make_role, connect_as):
    _hold_alices_instance(db, make_role, connect_as,
                          "SELECT df._checkpoint_v2(pg_current_xact_id()::text, %s::text[], %s::text[], %s::text[], "
                          "ARRAY['{}', '{}']::text[], '{NULL,NULL}'::jsonb[], '{1,1}'::bigint[])")


def test_checkpoint_next_v2_without_secrets_holds_no_lock_of_another_role(db, make_role, connect_as):
    """The control: the new function checks every attempt before its first lock."""
    _hold_alices_instance(db, make_role, connect_as,
                          "SELECT df._checkpoint_next_v2(pg_current_xact_id()::text, %s::text[], %s::text[], "
                          "%s::text[], ARRAY['{}', '{}']::text[], '{NULL,NULL}'::jsonb[], '{1,1}'::bigint[], "
                          "'{NULL,NULL}'::jsonb[])")


# -- df._checkpoint_next_v2: all or none, an instance named twice, arguments that do not line up -----------

def _start_second(a: Attempt, second: dict[str, Any]) -> Attempt:
    """Register an attempt of the chain's second node too (as the worker would for a join's branch)."""
    bind_secret, secret = "b" * 32 + uuid.uuid4().hex, "c" * 32 + uuid.uuid4().hex
    nudges = a.worker.execute("SELECT nudges FROM df.instance_queue WHERE instance_id = %s", (a.iid,)).fetchone()[0]
    item = {"id": a.iid, "token": a.token, "nudges": nudges, "ended": [], "consume": [],
            "updates": [{"node_id": second["id"], "expected_version": second["resource_version"],
                         "status": "running", "result_text": None, "wake_at": None, "state": None,
                         "status_details": None}],
            "attempts": [{"node_id": second["id"], "bind_hash": _h(bind_secret), "secret_hash": _h(secret)}]}
    out = a.worker.execute("SELECT df._advance_v2(%s, %s)", (uuid.uuid4(), json.dumps([item]))).fetchone()[0]
    res = out["results"][a.iid]
    assert "error" not in res, res
    return Attempt(a.worker, a.iid, second["id"], a.token, res["versions"][second["id"]], bind_secret, secret)


def test_an_instance_named_twice_gets_no_decision_but_both_results(chains_protocol, connect_as, db):
    alice_role, begun = chains_protocol
    (a, sa), (b, sb), _ = begun
    a2 = _start_second(a, sa)
    step = connect_as(alice_role, autocommit=False)
    _bind_all(step, [a, a2, b])
    out = _checkpoint_batch(step, [a, a2, b], [_ended('"a"'), _ended('"a2"'), _start_next(sb, "bb", "sb")])
    step.commit()
    assert out["versions"] == [a.version + 1, a2.version + 1, b.version + 1]
    assert out["next"][:2] == [None, None] and out["next"][2]["status"] == "running"
    status, _, attempts, queued = _chain_state(db, a.iid)
    assert (status, attempts, queued) == ("running", None, 1)  # the worker decides a's end itself
    assert db.execute("SELECT array_agg(status ORDER BY id) FROM df.nodes WHERE instance_id = %s AND id = ANY(%s)",
                      (a.iid, [a.node_id, a2.node_id])).fetchone()[0] == ["completed", "completed"]


def test_a_step_named_twice_is_refused_all_or_none(chains_protocol, connect_as, db):
    alice_role, begun = chains_protocol
    (a, _), (b, sb), _ = begun
    before = [_chain_state(db, x.iid) for x in (a, b)]
    step = connect_as(alice_role, autocommit=False)
    _bind_all(step, [a, b])
    err = _refused(lambda: _checkpoint_batch(step, [a, a, b], [_ended("x"), _ended("y"), _start_next(sb, "b", "s")]))
    assert err.sqlstate == "DF014"
    step.rollback()
    assert [_chain_state(db, x.iid) for x in (a, b)] == before


@pytest.mark.parametrize("bad", ["short_nexts", "null_versions", "empty"])
def test_arguments_that_do_not_line_up_are_refused(chains_protocol, connect_as, db, bad):
    alice_role, begun = chains_protocol
    attempts = [a for a, _ in begun]
    before = [_chain_state(db, a.iid) for a in attempts]
    step = connect_as(alice_role, autocommit=False)
    _bind_all(step, attempts)
    args: list[Any] = [[a.iid for a in attempts], [a.node_id for a in attempts], [a.secret for a in attempts],
                       ["{}"] * 3, [None] * 3, [a.version for a in attempts], [None] * 3]
    if bad == "short_nexts":
        args[6] = [None] * 2
    elif bad == "null_versions":
        args[5] = None
    else:
        args = [[], [], [], [], [], [], []]
    err = _refused(lambda: step.execute(
        "SELECT df._checkpoint_next_v2(pg_current_xact_id()::text, %s::text[], %s::text[], %s::text[], %s::text[], "
        "%s::jsonb[], %s::bigint[], %s::jsonb[])", args))
    assert err.sqlstate == "DF014"
    step.rollback()
    assert [_chain_state(db, a.iid) for a in attempts] == before


# -- plan safety of the key-only joins (no "= ANY (p_instance_ids)" on the joined tables) ------------------

_SCAN = re.compile(r"on (instances|instance_queue|nodes) \w+ .*actual (?:time=\S+ )?rows=(\d+) loops=(\d+)")


def test_bind_and_checkpoint_read_only_their_instances_whatever_the_attempts_statistics(db, dsn):
    n, k = 100_000, 32
    me = db.execute("SELECT quote_ident(session_user)").fetchone()[0]
    with db.transaction():
        db.execute("SET LOCAL session_replication_role = replica")  # seeded rows, no triggers
        db.execute("CREATE TEMP TABLE ids AS SELECT DISTINCT left(md5(g::text), 8) AS id FROM generate_series(1, %s) g",
                   (n,))
        db.execute("INSERT INTO df.instances (id, root_node, submitted_by, resource_version, status) "
                   "SELECT id, id, %s::regrole, 1, 'running' FROM ids", (me,))
        db.execute("INSERT INTO df.nodes (id, instance_id, node_type, query, submitted_by, resource_version, status) "
                   "SELECT id, id, 'SQL', 'SELECT 1', %s::regrole, 1, 'running' FROM ids", (me,))
        db.execute("INSERT INTO df.instance_queue (instance_id, lease_token, lease_worker, lease_expires_at) "
                   "SELECT id, gen_random_uuid(), gen_random_uuid(), clock_timestamp() + interval '1 hour' FROM ids")
        # A quiet moment: two attempts in flight, of one instance (a join's two steps), when analyzed.
        low = db.execute("SELECT min(id) FROM ids").fetchone()[0]
        for node in ("aaaaaaaa", "bbbbbbbb"):
            db.execute("INSERT INTO df.attempts (instance_id, node_id, lease_token, secret_hash) "
                       "VALUES (%s, %s, gen_random_uuid(), '\\x00')", (low, node))
    db.execute("ALTER TABLE df.attempts SET (autovacuum_enabled = off)")
    db.execute("ANALYZE df.instances, df.nodes, df.instance_queue, df.attempts")
    with db.transaction():
        db.execute("SET LOCAL session_replication_role = replica")
        db.execute("DELETE FROM df.attempts")
        db.execute("INSERT INTO df.attempts (instance_id, node_id, lease_token, secret_hash, bind_hash) "
                   "SELECT q.instance_id, q.instance_id, q.lease_token, sha256(convert_to('s' || q.instance_id, "
                   "'UTF8')), sha256(convert_to('b' || q.instance_id, 'UTF8')) "
                   "FROM df.instance_queue q ORDER BY md5(q.instance_id) LIMIT %s", (2 * k,))
    ids = [r[0] for r in db.execute("SELECT instance_id FROM df.attempts ORDER BY instance_id").fetchall()]
    first, second = ids[0::2], ids[1::2]  # both spread over the whole id space
    conn = psycopg.connect(dsn, autocommit=False)
    plans: list[str] = []
    conn.add_notice_handler(lambda d: plans.append(d.message_primary or ""))
    try:
        conn.execute("LOAD 'auto_explain'")
        for setting in ("log_min_duration = 0", "log_nested_statements = on", "log_level = notice",
                        "log_analyze = on", "log_timing = off"):
            conn.execute(f"SET auto_explain.{setting}")
        conn.execute("SELECT df._bind_v1(%s::text[], %s::text[], %s::text[])", (first, first, ["b" + i for i in first]))
        conn.execute("SELECT df._checkpoint_next_v2(pg_current_xact_id()::text, %s::text[], %s::text[], %s::text[], "
                     "%s::text[], %s::jsonb[], %s::bigint[], %s::jsonb[])",
                     (first, first, ["s" + i for i in first], ["{}"] * k, [None] * k, [1] * k,
                      [json.dumps(_ended("x"))] * k))
        conn.commit()
        conn.execute("SELECT df._bind_v1(%s::text[], %s::text[], %s::text[])",
                     (second, second, ["b" + i for i in second]))
        conn.execute("SELECT df._checkpoint_v2(pg_current_xact_id()::text, %s::text[], %s::text[], %s::text[], "
                     "%s::text[], %s::jsonb[], %s::bigint[])",
                     (second, second, ["s" + i for i in second], ["{}"] * k, [None] * k, [1] * k))
        conn.commit()
    finally:
        conn.close()
    assert len(plans) > 5, plans
    wide = [(m.group(0)[:120], plan.splitlines()[1][:80]) for plan in plans for m in _SCAN.finditer(plan)
            if int(m.group(2)) * int(m.group(3)) > 10 * k]
    assert not wide, wide
