"""The worker's opt-in batched mode (`durable worker --batch N`) and the 0.3.0 step protocol.

Real worker processes against a real Postgres.  Batched mode runs up to N ready steps of one submitter in
ONE transaction; these tests check that it stays exactly-once and that no step of a batch can fail, undo
or steer a neighbour (errors, session state, commit-time failures, statements that cannot run in a
transaction block, cancels).  The protocol tests drive df._claim_v2 / df._advance_v2 / df._bind_v1 /
df._checkpoint_v2 by hand, as the worker and as submitters, and attack them.

To get several steps into one batch, the instances are started before the worker: its first claim takes
as many as it may hold (its concurrency) and dispatches their first steps together, grouped by submitter.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from psycopg import errors as pg_errors

TERMINAL = ("completed", "failed", "cancelled")

# -- helpers -------------------------------------------------------------------------------------


def start(conn: psycopg.Connection, expr: str) -> str:
    return conn.execute(f"SELECT df.start({expr})").fetchone()[0]


def chain(steps: list[str]) -> str:
    return " ~> ".join("'" + s.replace("'", "''") + "'" for s in steps)


def wait_until(check: Callable[[], Any], timeout: float, what: str, pause: float = 0.05) -> Any:
    """Poll `check` until it returns something truthy (never a bare sleep of a guessed length)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(pause)


def wait_all(db: psycopg.Connection, iids: list[str], timeout: float = 120) -> dict[str, str]:
    """Wait until every instance ended; their statuses."""
    def ended() -> dict[str, str] | None:
        rows = dict(db.execute("SELECT id, status FROM df.instances WHERE id = ANY (%s)", (iids,)).fetchall())
        return rows if all(rows.get(i) in TERMINAL for i in iids) else None

    return wait_until(ended, timeout, f"{len(iids)} instances to end", pause=0.2)


def output(db: psycopg.Connection, iid: str) -> str | None:
    return db.execute("SELECT output FROM df.instances WHERE id = %s", (iid,)).fetchone()[0]


def result(conn: psycopg.Connection, iid: str) -> Any:
    text = conn.execute("SELECT df.result(%s)", (iid,)).fetchone()[0]
    return None if text is None else json.loads(text)


def sql_nodes(db: psycopg.Connection, iid: str, queries: list[str]) -> list[tuple[str, Any]]:
    """(status, result) of an instance's SQL nodes, which must be exactly `queries`, in that order."""
    rows = {q: (s, None if r is None else json.loads(r)) for q, s, r in db.execute(
        "SELECT query, status, result_text FROM df.nodes WHERE instance_id = %s AND node_type = 'SQL'",
        (iid,)).fetchall()}
    assert sorted(rows) == sorted(queries)
    return [rows[q] for q in queries]


def node(db: psycopg.Connection, iid: str, query_text: str) -> tuple[str, Any]:
    row = db.execute("SELECT status, result_text FROM df.nodes WHERE instance_id = %s AND query = %s",
                     (iid, query_text)).fetchone()
    assert row is not None, f"no node {query_text!r} in {iid}"
    return row[0], None if row[1] is None else json.loads(row[1])


def effects(conn: psycopg.Connection, table: str = "public.effects") -> list[tuple[int, int]]:
    return conn.execute(f"SELECT n, count(*)::int FROM {table} GROUP BY n ORDER BY n").fetchall()


def active(db: psycopg.Connection, query_text: str) -> int:
    return db.execute("SELECT count(*) FROM pg_stat_activity WHERE query = %s AND state = 'active'",
                      (query_text,)).fetchone()[0]


def shared_xids(xids: list[str]) -> int:
    """How many transactions committed more than one of the given steps."""
    return sum(1 for count in Counter(xids).values() if count > 1)


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


# -- 1. many instances, exactly once, really batched ---------------------------------------------

def test_many_instances_batched_each_effect_once_and_steps_share_transactions(alice, db, start_worker):
    alice.execute("CREATE TABLE public.more (n int)")
    count = 200

    def steps(i: int) -> list[str]:
        return ["SELECT pg_current_xact_id()::text AS x", f"INSERT INTO public.effects VALUES ({i}) RETURNING n",
                f"INSERT INTO public.more VALUES ({i})", f"SELECT count(*)::int AS c FROM public.effects WHERE n = {i}"]

    iids = [start(alice, chain(steps(i))) for i in range(count)]
    start_worker(concurrency=16, batch=8)
    statuses = wait_all(db, iids, timeout=240)
    assert Counter(statuses.values()) == {"completed": count}, [output(db, i) for i in iids
                                                                 if statuses[i] != "completed"][:3]
    assert effects(alice) == [(i, 1) for i in range(count)]
    assert effects(alice, "public.more") == [(i, 1) for i in range(count)]
    xids = []
    for i, iid in enumerate(iids):
        assert result(alice, iid) == {"rows": [{"c": 1}], "row_count": 1}
        nodes = sql_nodes(db, iid, steps(i))
        assert [s for s, _ in nodes] == ["completed"] * 4
        assert nodes[1][1] == {"rows": [{"n": i}], "row_count": 1}
        assert nodes[3][1] == {"rows": [{"c": 1}], "row_count": 1}
        xids.append(nodes[0][1]["rows"][0]["x"])
    assert db.execute("SELECT count(*) FROM df.nodes WHERE instance_id = ANY (%s) AND status <> 'completed'",
                      (iids,)).fetchone()[0] == 0
    assert db.execute("SELECT count(*) FROM df.attempts").fetchone()[0] == 0
    assert db.execute("SELECT count(*) FROM df.instance_queue").fetchone()[0] == 0
    # Batching happened: the first steps of many instances committed in the same transaction.
    assert shared_xids(xids) >= 2, Counter(xids).most_common(3)
    assert len(set(xids)) < count // 2, f"{len(set(xids))} transactions for {count} first steps"


def test_batch_of_one_still_one_transaction_per_step(alice, db, start_worker):
    """The control for the xid check above: without --batch, no two steps share a transaction."""
    iids = [start(alice, "'SELECT pg_current_xact_id()::text AS x'") for _ in range(12)]
    start_worker(concurrency=12, batch=1)
    assert set(wait_all(db, iids).values()) == {"completed"}
    xids = [result(alice, iid)["rows"][0]["x"] for iid in iids]
    assert len(set(xids)) == len(xids)


# -- 2. a failing step in a batch ----------------------------------------------------------------

def test_a_failing_step_in_a_batch_fails_only_its_own_instance(alice, db, start_worker):
    def bad_steps(i: int) -> list[str]:
        # Its own effect comes first, then the error: the effect must be undone with it.
        return [f"WITH w AS (INSERT INTO public.effects VALUES ({-i}) RETURNING n) SELECT n / 0 AS boom FROM w",
                f"INSERT INTO public.effects VALUES ({-100 - i})"]

    def good_steps(i: int) -> list[str]:
        return [f"INSERT INTO public.effects VALUES ({i}) RETURNING n, pg_current_xact_id()::text AS x",
                f"SELECT count(*)::int AS c FROM public.effects WHERE n = {i}"]

    good, bad = {}, {}
    for i in range(12):
        if i % 3 == 1:
            bad[i] = start(alice, chain(bad_steps(i)))
        else:
            good[i] = start(alice, chain(good_steps(i)))
    start_worker(concurrency=12, batch=12)
    statuses = wait_all(db, list(good.values()) + list(bad.values()))
    for i, iid in bad.items():
        assert statuses[iid] == "failed", output(db, iid)
        assert "division by zero" in output(db, iid)
        assert [s for s, _ in sql_nodes(db, iid, bad_steps(i))] == ["failed", "pending"]
    xids = []
    for i, iid in good.items():
        assert statuses[iid] == "completed", output(db, iid)
        assert result(alice, iid) == {"rows": [{"c": 1}], "row_count": 1}
        first = sql_nodes(db, iid, good_steps(i))[0]
        assert first[0] == "completed" and first[1]["rows"][0]["n"] == i
        xids.append(first[1]["rows"][0]["x"])
    assert effects(alice) == [(i, 1) for i in sorted(good)]
    # The good steps really ran in a batch with the failing ones (one transaction for several).
    assert shared_xids(xids) >= 1, xids


# -- 3. isolation between the steps of a batch ---------------------------------------------------

# A probe any step can call (schema-qualified, so it works whatever search_path a neighbour left):
# what the session looks like to a fresh step.  It creates the temp table the polluters create too.
PROBE = """
CREATE FUNCTION public.probe() RETURNS TABLE (search_path text, statement_timeout text, resolves boolean,
                                              work_mem text, read_only text, x text)
LANGUAGE plpgsql AS $f$
BEGIN
    CREATE TEMP TABLE t (x int);
    PERFORM pg_catalog.pg_sleep(0.01);  -- under a leaked statement_timeout = 1 this is cancelled
    RETURN QUERY SELECT pg_catalog.current_setting('search_path'), pg_catalog.current_setting('statement_timeout'),
                        pg_catalog.to_regclass('effects') IS NOT NULL, pg_catalog.current_setting('work_mem'),
                        pg_catalog.current_setting('transaction_read_only'),
                        pg_catalog.pg_current_xact_id()::text;
END
$f$
"""

POLLUTERS = [
    "SELECT set_config('search_path', 'nowhere', false) AS sp",
    "SET statement_timeout = 1",
    "CREATE TEMP TABLE t (x int)",
    "SELECT set_config('work_mem', '77kB', false) AS wm",
    "SET search_path = nowhere",
    "CREATE TEMP TABLE t (x int) ON COMMIT PRESERVE ROWS",
]


def test_session_state_of_a_step_does_not_reach_the_next_step_of_the_batch(alice, db, start_worker):
    alice.execute(PROBE)
    defaults = alice.execute("SELECT current_setting('search_path'), current_setting('work_mem')").fetchone()
    polluters, probes = [], []
    for polluter in POLLUTERS:
        polluters.append(start(alice, chain([polluter])))
        probes.append(start(alice, "'SELECT * FROM public.probe()'"))
    start_worker(concurrency=12, batch=12)
    statuses = wait_all(db, polluters + probes)
    for iid in polluters:
        assert statuses[iid] == "completed", output(db, iid)
    expected = {"search_path": defaults[0], "statement_timeout": "0", "resolves": True, "work_mem": defaults[1],
                "read_only": "off"}
    xids = []
    for iid in probes:
        assert statuses[iid] == "completed", output(db, iid)
        res = result(alice, iid)
        xids.append(res["rows"][0].pop("x"))
        assert res == {"rows": [expected], "row_count": 1}
    # ... and the probes did share transactions (with the polluters started between them).
    assert shared_xids(xids) >= 1, xids


def test_session_state_of_a_batch_does_not_reach_later_transactions(alice, db, start_worker):
    alice.execute(PROBE)
    defaults = alice.execute("SELECT current_setting('search_path'), current_setting('work_mem')").fetchone()
    first = [start(alice, chain([polluter])) for polluter in POLLUTERS]
    start_worker(concurrency=6, batch=6)
    statuses = wait_all(db, first)
    assert set(statuses.values()) == {"completed"}, [output(db, i) for i in first]
    # The same pooled connections now serve later transactions: single steps and batches.
    later = [start(alice, "'SELECT * FROM public.probe()'") for _ in range(12)]
    statuses = wait_all(db, later)
    expected = {"search_path": defaults[0], "statement_timeout": "0", "resolves": True, "work_mem": defaults[1],
                "read_only": "off"}
    for iid in later:
        assert statuses[iid] == "completed", output(db, iid)
        res = result(alice, iid)
        res["rows"][0].pop("x")
        assert res == {"rows": [expected], "row_count": 1}


# More session state a step can leave, each followed by a step that trips over it if it leaks.
# Between the steps of a batch the worker runs RESET ALL and DISCARD TEMP only, not the DEALLOCATE ALL and
# CLOSE ALL of its reset between transactions (durable/store/steps.py `_between_steps` vs `_RESET`).
LEAKS = [
    pytest.param("PREPARE p AS SELECT 1", "PREPARE p AS SELECT 2", id="prepared-statement"),
    pytest.param("DECLARE c CURSOR FOR SELECT 1", "DECLARE c CURSOR FOR SELECT 2", id="cursor"),
    pytest.param("SET TRANSACTION READ ONLY", "INSERT INTO public.effects VALUES (7)", id="read-only"),
]


@pytest.mark.parametrize("polluter, victim", LEAKS)
def test_a_step_cannot_trip_its_batch_neighbour(alice, db, start_worker, polluter, victim):
    pairs = [(start(alice, chain([polluter])), start(alice, chain([victim]))) for _ in range(3)]
    start_worker(concurrency=6, batch=6)
    statuses = wait_all(db, [i for pair in pairs for i in pair])
    # Each step completes when it runs alone; in a batch, none may fail because of a neighbour.
    for iid in [i for pair in pairs for i in pair]:
        assert statuses[iid] == "completed", output(db, iid)


# -- 4. a deferred constraint violated by one step of a batch ------------------------------------

def test_a_deferred_constraint_violation_fails_only_its_step(alice, db, start_worker):
    alice.execute("CREATE TABLE public.parent (id int PRIMARY KEY)")
    alice.execute("INSERT INTO public.parent VALUES (1)")
    alice.execute("CREATE TABLE public.child (pid int REFERENCES public.parent DEFERRABLE INITIALLY DEFERRED, "
                  "n int)")
    def bad_steps(i: int) -> list[str]:
        # The statement itself succeeds; only the deferred check refuses it.
        return [f"INSERT INTO public.child VALUES (999, {i}) RETURNING n", f"INSERT INTO public.effects VALUES ({-i})"]

    def good_steps(i: int) -> list[str]:
        return [f"INSERT INTO public.child VALUES (1, {i}) RETURNING n, pg_current_xact_id()::text AS x",
                f"INSERT INTO public.effects VALUES ({i})"]

    good, bad = {}, {}
    for i in range(10):
        if i in (3, 7):
            bad[i] = start(alice, chain(bad_steps(i)))
        else:
            good[i] = start(alice, chain(good_steps(i)))
    start_worker(concurrency=10, batch=10)
    statuses = wait_all(db, list(good.values()) + list(bad.values()))
    for i, iid in bad.items():
        assert statuses[iid] == "failed", output(db, iid)
        assert 'violates foreign key constraint "child_pid_fkey"' in output(db, iid), output(db, iid)
        assert [s for s, _ in sql_nodes(db, iid, bad_steps(i))] == ["failed", "pending"]
    xids = []
    for i, iid in good.items():
        assert statuses[iid] == "completed", output(db, iid)
        xids.append(sql_nodes(db, iid, good_steps(i))[0][1]["rows"][0]["x"])
    assert alice.execute("SELECT n, count(*)::int FROM public.child GROUP BY n ORDER BY n").fetchall() == [
        (i, 1) for i in range(10) if i not in (3, 7)]
    assert effects(alice) == [(i, 1) for i in range(10) if i not in (3, 7)]
    assert shared_xids(xids) >= 1


# -- 5. a statement that cannot run in a transaction block ---------------------------------------

def test_vacuum_in_a_batch_completes_and_so_do_its_neighbours(alice, db, start_worker):
    alice.execute("CREATE TABLE public.t (n int)")
    alice.execute("INSERT INTO public.t SELECT g FROM generate_series(1, 1000) AS g")
    alice.execute("DELETE FROM public.t WHERE n % 2 = 0")
    iids = []
    for i in range(8):
        if i == 2:
            iids.append(start(alice, chain(["VACUUM public.t", "INSERT INTO public.effects VALUES (100)"])))
        else:
            iids.append(start(alice, chain([f"INSERT INTO public.effects VALUES ({i})",
                                            "SELECT 1 AS after"])))
    start_worker(concurrency=8, batch=8)
    statuses = wait_all(db, iids)
    for iid in iids:
        assert statuses[iid] == "completed", output(db, iid)
    assert node(db, iids[2], "VACUUM public.t") == ("completed", {"rows": [], "row_count": 0})
    assert effects(alice) == [(i, 1) for i in range(8) if i != 2] + [(100, 1)]
    db.execute("SELECT pg_stat_clear_snapshot()")
    assert db.execute("SELECT vacuum_count FROM pg_stat_user_tables WHERE relid = 'public.t'::regclass"
                      ).fetchone()[0] >= 1


# -- 6. cancel of an instance whose step is in a batch -------------------------------------------

def test_cancel_of_a_long_step_in_a_batch(alice, db, start_worker):
    long_sql = "SELECT pg_sleep(30) AS slept, 1 AS long_one"
    iids = []
    for i in range(6):
        if i == 0:
            victim = start(alice, chain([long_sql, "INSERT INTO public.effects VALUES (-1)"]))
            iids.append(victim)
        else:
            iids.append(start(alice, chain([f"INSERT INTO public.effects VALUES ({i})",
                                            f"INSERT INTO public.effects VALUES ({10 + i})"])))
    start_worker(concurrency=6, batch=6)
    wait_until(lambda: active(db, long_sql), 30, "the long step")
    started = time.monotonic()
    alice.execute("SELECT df.cancel(%s, 'stop')", (victim,))
    wait_until(lambda: not active(db, long_sql), 10, "the long statement to be cancelled")
    assert time.monotonic() - started < 10
    statuses = wait_all(db, iids, timeout=60)
    assert statuses[victim] == "cancelled"
    for iid in iids[1:]:
        assert statuses[iid] == "completed", output(db, iid)
    assert effects(alice) == sorted([(i, 1) for i in range(1, 6)] + [(10 + i, 1) for i in range(1, 6)])
    assert node(db, victim, long_sql)[0] != "completed"
    assert db.execute("SELECT count(*) FROM df.attempts").fetchone()[0] == 0
    assert not active(db, long_sql)


def test_cancel_of_one_instance_does_not_interrupt_a_neighbours_statement(alice, db, start_worker):
    """The batch shares one connection: cancelling one instance's step must not cancel the statement of
    another instance that is running on that connection at the time."""
    slow_sql = "SELECT pg_sleep(4) AS slow_neighbour"
    # Batch order follows the start order: the failing step first sends the batch down the
    # savepoint path, where the quick step (kept, awaiting the commit) precedes the slow neighbour.
    failing = start(alice, "'SELECT 1/0 AS boom'")
    quick = start(alice, chain(["INSERT INTO public.effects VALUES (1)", "INSERT INTO public.effects VALUES (2)"]))
    slow = start(alice, chain([slow_sql, "INSERT INTO public.effects VALUES (3)"]))
    start_worker(concurrency=3, batch=3)
    wait_until(lambda: active(db, slow_sql), 30, "the slow neighbour")
    alice.execute("SELECT df.cancel(%s, 'stop')", (quick,))
    statuses = wait_all(db, [failing, quick, slow], timeout=60)
    assert statuses[failing] == "failed"
    assert statuses[quick] == "cancelled"
    assert statuses[slow] == "completed", output(db, slow)
    assert effects(alice) == [(3, 1)]


# -- 7. the 0.3.0 step protocol, by hand ---------------------------------------------------------

def _h(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class Attempt:
    """A SQL step's attempt registered the way the worker does: claimed with df._claim_v2, its node set
    running and its two secret hashes registered with df._advance_v2."""

    def __init__(self, worker: psycopg.Connection, iid: str, node_id: str, token: str, version: int,
                 bind_secret: str, secret: str) -> None:
        self.worker, self.iid, self.node_id, self.token, self.version = worker, iid, node_id, token, version
        self.bind_secret, self.secret = bind_secret, secret


def _begin(worker: psycopg.Connection, iid: str) -> Attempt:
    read = worker.execute("SELECT df._claim_v2(%s, 10)", (uuid.uuid4(),)).fetchone()[0]
    snap = next(s for s in read["instances"] if s["id"] == iid)
    root = next(n for n in snap["nodes"] if n["id"] == snap["root_node"])
    assert root["node_type"] == "SQL"
    bind_secret, secret = "b" * 32 + uuid.uuid4().hex, "c" * 32 + uuid.uuid4().hex
    item = {"id": iid, "token": snap["lease_token"], "nudges": snap["nudges"], "ended": [], "consume": [],
            "execution_count": snap["execution_count"],
            "updates": [{"node_id": root["id"], "expected_version": root["resource_version"], "status": "running",
                         "result_text": None, "wake_at": None, "state": None, "status_details": None}],
            "attempts": [{"node_id": root["id"], "bind_hash": _h(bind_secret), "secret_hash": _h(secret)}]}
    out = worker.execute("SELECT df._advance_v2(%s, %s)", (uuid.uuid4(), json.dumps([item]))).fetchone()[0]
    res = out["results"][iid]
    assert "error" not in res, res
    return Attempt(worker, iid, root["id"], snap["lease_token"], res["versions"][root["id"]], bind_secret, secret)


def _bind(conn: psycopg.Connection, a: Attempt, secret: str | None = None) -> None:
    conn.execute("SELECT df._bind_v1(%s::text[], %s::text[], %s::text[])", ([a.iid], [a.node_id], [secret or a.bind_secret]))


def _checkpoint(conn: psycopg.Connection, a: Attempt, secret: str | None = None, xid: str | None = None) -> Any:
    return conn.execute(
        "SELECT df._checkpoint_v2(coalesce(%s, pg_current_xact_id()::text), %s::text[], %s::text[], %s::text[], "
        "%s::text[], %s::jsonb[], %s::bigint[])",
        (xid, [a.iid], [a.node_id], [secret or a.secret], ['{"rows":[],"row_count":0}'], [None],
         [a.version])).fetchone()[0]


def _state(db: psycopg.Connection, a: Attempt) -> tuple[Any, ...]:
    return db.execute("""SELECT n.status, n.result_text, n.resource_version, at.backend_pid, at.bind_hash IS NULL,
                                i.status
                           FROM df.nodes n JOIN df.instances i ON i.id = n.instance_id
                           LEFT JOIN df.attempts at ON at.instance_id = n.instance_id AND at.node_id = n.id
                          WHERE n.instance_id = %s AND n.id = %s""", (a.iid, a.node_id)).fetchone()


def _refused(call: Callable[[], Any]) -> psycopg.Error:
    with pytest.raises(psycopg.Error) as info:
        call()
    return info.value


@pytest.fixture
def protocol(db, dsn, worker_dsn, make_role, connect_as):
    """alice's instance with a registered attempt, the worker connection, and helpers."""
    alice_role = make_role("alice")
    alice = connect_as(alice_role)
    iid = start(alice, "'SELECT 1 AS one'")
    worker = psycopg.connect(worker_dsn, autocommit=True)
    try:
        yield alice_role, alice, _begin(worker, iid)
    finally:
        worker.close()


def test_the_protocol_by_hand_completes_a_step(protocol, connect_as, db):
    """The control for the refusals below: the right role, secrets and backend are accepted."""
    alice_role, _, a = protocol
    step = connect_as(alice_role, autocommit=False)
    _bind(step, a)
    versions = _checkpoint(step, a)
    step.commit()
    assert versions == [a.version + 1]
    assert db.execute("SELECT status, result_text, resource_version FROM df.nodes WHERE instance_id = %s AND "
                      "id = %s", (a.iid, a.node_id)).fetchone() == ("completed", '{"rows":[],"row_count":0}',
                                                                    a.version + 1)
    assert db.execute("SELECT count(*) FROM df.attempts").fetchone()[0] == 0


def test_guessed_secrets_are_refused_and_write_nothing(protocol, connect_as, db):
    alice_role, _, a = protocol
    before = _state(db, a)
    assert before == ("running", None, a.version, None, False, "running")
    step = connect_as(alice_role, autocommit=False)
    err = _refused(lambda: _bind(step, a, secret="guess"))
    assert err.sqlstate == "DF014"
    step.rollback()
    err = _refused(lambda: _bind(step, a, secret=a.secret))  # the checkpoint secret is not the bind secret
    assert err.sqlstate == "DF014"
    step.rollback()
    err = _refused(lambda: _checkpoint(step, a, secret="guess"))
    assert err.sqlstate == "DF014"
    step.rollback()
    err = _refused(lambda: _checkpoint(step, a, secret=a.bind_secret))
    assert err.sqlstate == "DF014"
    step.rollback()
    assert _state(db, a) == before
    # Bound with the right secret, a guessed checkpoint secret is still refused, and writes nothing.
    _bind(step, a)
    err = _refused(lambda: _checkpoint(step, a, secret="guess"))
    assert err.sqlstate == "DF014"
    step.rollback()
    assert _state(db, a) == before


def test_a_role_that_is_not_the_submitter_cannot_bind_or_checkpoint(protocol, make_role, connect_as, db):
    _, _, a = protocol
    mallory = connect_as(make_role("mallory"), autocommit=False)
    before = _state(db, a)
    err = _refused(lambda: _bind(mallory, a))
    assert err.sqlstate == "DF014"
    mallory.rollback()
    assert _state(db, a) == before
    # Even on the attempt's own backend (bound to mallory's session by the superuser) with both secrets.
    db.execute("UPDATE df.attempts SET backend_pid = %s, bind_hash = NULL WHERE instance_id = %s",
               (mallory.info.backend_pid, a.iid))
    err = _refused(lambda: _checkpoint(mallory, a))
    assert err.sqlstate == "DF014"
    mallory.rollback()
    assert db.execute("SELECT status, result_text FROM df.nodes WHERE instance_id = %s AND id = %s",
                      (a.iid, a.node_id)).fetchone() == ("running", None)


def test_a_bind_is_one_use(protocol, connect_as, db):
    alice_role, _, a = protocol
    first = connect_as(alice_role)
    _bind(first, a)  # committed (autocommit)
    pid = first.info.backend_pid
    assert _state(db, a)[3:5] == (pid, True)
    again = connect_as(alice_role)
    err = _refused(lambda: _bind(again, a))
    assert err.sqlstate == "DF014"
    err = _refused(lambda: _bind(first, a))
    assert err.sqlstate == "DF014"
    assert _state(db, a)[3] == pid


def test_a_checkpoint_from_a_backend_that_did_not_bind_is_refused(protocol, connect_as, db):
    alice_role, _, a = protocol
    binder = connect_as(alice_role)
    _bind(binder, a)
    other = connect_as(alice_role, autocommit=False)
    err = _refused(lambda: _checkpoint(other, a))
    assert err.sqlstate == "DF014"
    other.rollback()
    assert db.execute("SELECT status FROM df.nodes WHERE instance_id = %s AND id = %s",
                      (a.iid, a.node_id)).fetchone()[0] == "running"
    # The binding backend can, in a transaction of its own (the xid is the checkpoint's, given).
    binder.autocommit = False
    assert _checkpoint(binder, a) == [a.version + 1]
    binder.commit()


def test_a_checkpoint_naming_another_transaction_is_refused(protocol, connect_as, db):
    alice_role, _, a = protocol
    step = connect_as(alice_role, autocommit=False)
    _bind(step, a)
    old_xid = step.execute("SELECT pg_current_xact_id()::text").fetchone()[0]
    step.commit()
    err = _refused(lambda: _checkpoint(step, a, xid=old_xid))
    assert err.sqlstate == "DF014" and err.diag.message_primary.endswith("the step ended its transaction")
    step.rollback()
    assert _state(db, a)[0] == "running"


def test_a_bind_after_the_lease_expired_is_refused(protocol, connect_as, db, worker_dsn):
    alice_role, _, a = protocol
    db.execute("UPDATE df.instance_queue SET lease_expires_at = clock_timestamp() - interval '1 second' "
               "WHERE instance_id = %s", (a.iid,))
    step = connect_as(alice_role, autocommit=False)
    err = _refused(lambda: _bind(step, a))
    assert err.sqlstate == "DF014"
    step.rollback()


@pytest.mark.parametrize("statement", [
    "SELECT df._claim_v2(gen_random_uuid(), 10)",
    "SELECT df._advance_v2(gen_random_uuid(), '[]')",
    "SELECT df._load_v2(ARRAY['aaaaaaaa'])",
    "SELECT df._nudges_v2(ARRAY['aaaaaaaa'])",
    "SELECT df._snapshot(ARRAY['aaaaaaaa'])",
])
def test_worker_functions_are_refused_to_a_plain_role(make_role, connect_as, statement):
    alice = connect_as(make_role())
    alice.execute("SELECT df.start('SELECT 1')")
    with pytest.raises(pg_errors.InsufficientPrivilege):
        alice.execute(statement)


def test_the_worker_role_cannot_bind_or_checkpoint_as_the_submitter(protocol, worker_dsn, dsn, db):
    """The worker holds the lease and knows the secrets, but it is not the submitter: it cannot record a
    step's result without running it as the submitter."""
    _, _, a = protocol
    with psycopg.connect(worker_dsn) as worker_step:
        err = _refused(lambda: _bind(worker_step, a))
        assert err.sqlstate == "DF014"
        worker_step.rollback()
    assert _state(db, a)[0] == "running"



# -- 7. the default mode's checkpoint with the decision that follows (df._checkpoint_next_v1) -------

def _begin_chain(worker: psycopg.Connection, iid: str) -> tuple[Attempt, dict[str, Any]]:
    """Claim a chain `'first' ~> 'second'` and register the attempt of its first step (as the worker's
    first decision does); the attempt and the second step's node row."""
    read = worker.execute("SELECT df._claim_v2(%s, 10)", (uuid.uuid4(),)).fetchone()[0]
    snap = next(s for s in read["instances"] if s["id"] == iid)
    root = next(n for n in snap["nodes"] if n["id"] == snap["root_node"])
    first = next(n for n in snap["nodes"] if n["id"] == root["left_node"])
    second = next(n for n in snap["nodes"] if n["id"] == root["right_node"])
    bind_secret, secret = "b" * 32 + uuid.uuid4().hex, "c" * 32 + uuid.uuid4().hex
    item = {"id": iid, "token": snap["lease_token"], "nudges": snap["nudges"], "ended": [], "consume": [],
            "execution_count": snap["execution_count"],
            "updates": [{"node_id": n["id"], "expected_version": n["resource_version"], "status": "running",
                         "result_text": None, "wake_at": None, "state": None, "status_details": None}
                        for n in (root, first)],
            "attempts": [{"node_id": first["id"], "bind_hash": _h(bind_secret), "secret_hash": _h(secret)}]}
    out = worker.execute("SELECT df._advance_v2(%s, %s)", (uuid.uuid4(), json.dumps([item]))).fetchone()[0]
    res = out["results"][iid]
    assert "error" not in res, res
    attempt = Attempt(worker, iid, first["id"], snap["lease_token"], res["versions"][first["id"]], bind_secret,
                      secret)
    return attempt, second


def _checkpoint_next(conn: psycopg.Connection, a: Attempt, nxt: dict[str, Any] | None, secret: str | None = None,
                     xid: str | None = None) -> Any:
    return conn.execute(
        "SELECT df._checkpoint_next_v1(coalesce(%s, pg_current_xact_id()::text), %s, %s, %s, %s, NULL, %s, %s)",
        (xid, a.iid, a.node_id, secret or a.secret, '{"rows":[],"row_count":0}', a.version,
         None if nxt is None else json.dumps(nxt))).fetchone()[0]


def _start_next(node: dict[str, Any], bind_secret: str, secret: str, version: int | None = None) -> dict[str, Any]:
    """The decision that starts `node` (what the worker writes with the first step's checkpoint)."""
    return {"updates": [{"node_id": node["id"], "expected_version": node["resource_version"] if version is None
                         else version, "status": "running", "result_text": None, "wake_at": None, "state": None,
                         "status_details": {"execution_id": "x"}}],
            "attempts": [{"node_id": node["id"], "bind_hash": _h(bind_secret), "secret_hash": _h(secret)}]}


@pytest.fixture
def chain_protocol(db, worker_dsn, make_role, connect_as):
    """alice's two-step chain with the first step's attempt registered, and its second node."""
    alice_role = make_role("alice")
    alice = connect_as(alice_role)
    iid = start(alice, "'SELECT 1' ~> 'SELECT 2'")
    worker = psycopg.connect(worker_dsn, autocommit=True)
    try:
        yield (alice_role, *_begin_chain(worker, iid))
    finally:
        worker.close()


def _chain_state(db: psycopg.Connection, iid: str) -> tuple[Any, ...]:
    return db.execute("""SELECT i.status, (SELECT array_agg(n.status || ':' || n.resource_version ORDER BY n.id)
                                             FROM df.nodes n WHERE n.instance_id = i.id),
                                (SELECT array_agg(a.node_id ORDER BY a.node_id) FROM df.attempts a
                                  WHERE a.instance_id = i.id),
                                (SELECT count(*) FROM df.instance_queue q WHERE q.instance_id = i.id)
                           FROM df.instances i WHERE i.id = %s""", (iid,)).fetchone()


def test_checkpoint_next_records_the_step_and_starts_the_next_then_ends_the_instance(chain_protocol, connect_as,
                                                                                   db):
    alice_role, a, second = chain_protocol
    step = connect_as(alice_role, autocommit=False)
    _bind(step, a)
    bind2, secret2 = "d" * 32 + uuid.uuid4().hex, "e" * 32 + uuid.uuid4().hex
    out = _checkpoint_next(step, a, _start_next(second, bind2, secret2))
    step.commit()
    assert out["versions"] == [a.version + 1]
    assert out["next"]["status"] == "running"
    assert out["next"]["versions"] == {second["id"]: second["resource_version"] + 1}
    assert db.execute("SELECT status, result_text FROM df.nodes WHERE instance_id = %s AND id = %s",
                      (a.iid, a.node_id)).fetchone() == ("completed", '{"rows":[],"row_count":0}')
    # The second step's attempt is registered under the lease, with the hashes the worker chose.
    row = db.execute("SELECT lease_token::text, secret_hash, bind_hash, backend_pid FROM df.attempts "
                     "WHERE instance_id = %s AND node_id = %s", (a.iid, second["id"])).fetchone()
    assert row == (a.token, bytes.fromhex(_h(secret2)), bytes.fromhex(_h(bind2)), None)
    # The second step runs the same way and its checkpoint ends the instance.
    b = Attempt(a.worker, a.iid, second["id"], a.token, second["resource_version"] + 1, bind2, secret2)
    _bind(step, b)
    out = _checkpoint_next(step, b, {"updates": [], "status": "completed", "output": '{"done":true}'})
    step.commit()
    assert out["next"]["status"] == "completed"
    status, nodes, attempts, queued = _chain_state(db, a.iid)
    assert (status, attempts, queued) == ("completed", None, 0)
    assert db.execute("SELECT output, completed_at IS NOT NULL FROM df.instances WHERE id = %s",
                      (a.iid,)).fetchone() == ('{"done":true}', True)


def test_checkpoint_next_with_guessed_secrets_or_another_transaction_writes_nothing(chain_protocol, connect_as,
                                                                                   db):
    alice_role, a, second = chain_protocol
    before = _chain_state(db, a.iid)
    step = connect_as(alice_role, autocommit=False)
    nxt = _start_next(second, "guess-bind", "guess")
    for secret in ("guess", a.bind_secret):  # a guess, and the bind secret in place of the checkpoint's
        _bind(step, a)
        err = _refused(lambda s=secret: _checkpoint_next(step, a, nxt, secret=s))
        assert err.sqlstate == "DF014"
        step.rollback()
        assert _chain_state(db, a.iid) == before
    _bind(step, a)
    old_xid = step.execute("SELECT pg_current_xact_id()::text").fetchone()[0]
    step.commit()
    err = _refused(lambda: _checkpoint_next(step, a, {"updates": [], "status": "completed", "output": "forged"},
                                            xid=old_xid))
    assert err.diag.message_primary.endswith("the step ended its transaction")
    step.rollback()
    assert db.execute("SELECT status, output FROM df.instances WHERE id = %s", (a.iid,)).fetchone() == \
        ("running", None)


def test_checkpoint_next_of_another_role_is_refused_even_on_the_bound_backend(chain_protocol, make_role,
                                                                             connect_as, db):
    _, a, second = chain_protocol
    mallory = connect_as(make_role("mallory"), autocommit=False)
    db.execute("UPDATE df.attempts SET backend_pid = %s, bind_hash = NULL WHERE instance_id = %s",
               (mallory.info.backend_pid, a.iid))
    before = _chain_state(db, a.iid)
    err = _refused(lambda: _checkpoint_next(mallory, a, {"updates": [], "status": "completed", "output": "x"}))
    assert err.sqlstate == "DF014"
    mallory.rollback()
    assert _chain_state(db, a.iid) == before


def test_checkpoint_next_leaves_a_stale_decision_to_the_worker(chain_protocol, connect_as, db):
    """A decision made from a node version that changed meanwhile is not written: the step's result is,
    and the worker decides again."""
    alice_role, a, second = chain_protocol
    step = connect_as(alice_role, autocommit=False)
    _bind(step, a)
    out = _checkpoint_next(step, a, _start_next(second, "b2", "s2", version=second["resource_version"] - 1))
    step.commit()
    assert out == {"versions": [a.version + 1], "next": None}
    status, nodes, attempts, queued = _chain_state(db, a.iid)
    assert (status, attempts, queued) == ("running", None, 1)
    assert db.execute("SELECT status, resource_version FROM df.nodes WHERE instance_id = %s AND id = %s",
                      (a.iid, second["id"])).fetchone() == ("pending", second["resource_version"])


def test_checkpoint_next_cannot_touch_another_instance(chain_protocol, make_role, connect_as, db):
    """The decision's node updates and attempts are confined to the checkpointed step's instance."""
    alice_role, a, _ = chain_protocol
    bob = connect_as(make_role("bob"))
    other = start(bob, "'SELECT 1'")
    victim = db.execute("SELECT id, resource_version FROM df.nodes WHERE instance_id = %s", (other,)).fetchone()
    step = connect_as(alice_role, autocommit=False)
    _bind(step, a)
    forged = {"updates": [{"node_id": victim[0], "expected_version": victim[1], "status": "completed",
                           "result_text": '{"forged":true}', "wake_at": None, "state": None, "status_details": None}],
              "attempts": [{"node_id": victim[0], "bind_hash": _h("b"), "secret_hash": _h("s")}]}
    out = _checkpoint_next(step, a, forged)
    step.commit()
    assert out["next"] is None
    assert db.execute("SELECT status, result_text, resource_version FROM df.nodes WHERE instance_id = %s",
                      (other,)).fetchone() == ("pending", None, victim[1])
    assert db.execute("SELECT count(*) FROM df.attempts WHERE instance_id = %s", (other,)).fetchone()[0] == 0


def test_checkpoint_next_starts_no_step_for_a_submitter_refused_meanwhile(chain_protocol, connect_as, db):
    alice_role, a, second = chain_protocol
    step = connect_as(alice_role, autocommit=False)
    _bind(step, a)
    db.execute(f'ALTER ROLE "{alice_role}" BYPASSRLS')
    out = _checkpoint_next(step, a, _start_next(second, "b2", "s2"))
    step.commit()
    assert out["next"] is None
    assert db.execute("SELECT status FROM df.nodes WHERE instance_id = %s AND id = %s",
                      (a.iid, second["id"])).fetchone()[0] == "pending"


# -- 8. the batched mode's checkpoint with the decisions that follow (df._checkpoint_next_v2) ----------

def _begin_chains(worker: psycopg.Connection, iids: list[str]) -> list[tuple[Attempt, dict[str, Any]]]:
    """Claim chains `'first' ~> 'second'` in one claim and register their first steps' attempts in one
    decision write, as a worker does; per instance, the attempt and the second step's node row."""
    read = worker.execute("SELECT df._claim_v2(%s, 10)", (uuid.uuid4(),)).fetchone()[0]
    items, rows = [], []
    for iid in iids:
        snap = next(s for s in read["instances"] if s["id"] == iid)
        nodes = {n["id"]: n for n in snap["nodes"]}
        root = nodes[snap["root_node"]]
        first, second = nodes[root["left_node"]], nodes[root["right_node"]]
        bind_secret, secret = "b" * 32 + uuid.uuid4().hex, "c" * 32 + uuid.uuid4().hex
        items.append({"id": iid, "token": snap["lease_token"], "nudges": snap["nudges"], "ended": [], "consume": [],
                      "execution_count": snap["execution_count"],
                      "updates": [{"node_id": n["id"], "expected_version": n["resource_version"], "status": "running",
                                   "result_text": None, "wake_at": None, "state": None, "status_details": None}
                                  for n in (root, first)],
                      "attempts": [{"node_id": first["id"], "bind_hash": _h(bind_secret), "secret_hash": _h(secret)}]})
        rows.append((iid, first, second, snap["lease_token"], bind_secret, secret))
    out = worker.execute("SELECT df._advance_v2(%s, %s)", (uuid.uuid4(), json.dumps(items))).fetchone()[0]
    begun = []
    for iid, first, second, token, bind_secret, secret in rows:
        res = out["results"][iid]
        assert "error" not in res, res
        begun.append((Attempt(worker, iid, first["id"], token, res["versions"][first["id"]], bind_secret, secret),
                      second))
    return begun


def _bind_all(conn: psycopg.Connection, attempts: list[Attempt]) -> None:
    conn.execute("SELECT df._bind_v1(%s::text[], %s::text[], %s::text[])",
                 ([a.iid for a in attempts], [a.node_id for a in attempts], [a.bind_secret for a in attempts]))


def _checkpoint_batch(conn: psycopg.Connection, attempts: list[Attempt], nexts: list[dict[str, Any] | None],
                      secrets: list[str] | None = None) -> Any:
    return conn.execute(
        "SELECT df._checkpoint_next_v2(pg_current_xact_id()::text, %s::text[], %s::text[], %s::text[], %s::text[], "
        "%s::jsonb[], %s::bigint[], %s::jsonb[])",
        ([a.iid for a in attempts], [a.node_id for a in attempts], secrets or [a.secret for a in attempts],
         [f'{{"rows":[{{"n":{i}}}],"row_count":1}}' for i in range(len(attempts))], [None] * len(attempts),
         [a.version for a in attempts], [None if n is None else json.dumps(n) for n in nexts])).fetchone()[0]


def _ended(output: str) -> dict[str, Any]:
    return {"updates": [], "status": "completed", "output": output}


@pytest.fixture
def chains_protocol(db, worker_dsn, make_role, connect_as):
    """Three of alice's two-step chains, their first steps' attempts registered together."""
    alice_role = make_role("alice")
    alice = connect_as(alice_role)
    iids = [start(alice, "'SELECT 1' ~> 'SELECT 2'") for _ in range(3)]
    worker = psycopg.connect(worker_dsn, autocommit=True)
    try:
        yield alice_role, _begin_chains(worker, iids)
    finally:
        worker.close()


def test_checkpoint_next_batch_records_every_step_and_writes_every_decision(chains_protocol, connect_as, db):
    alice_role, begun = chains_protocol
    (a, sa), (b, sb), (c, _) = begun
    step = connect_as(alice_role, autocommit=False)
    _bind_all(step, [a, b, c])
    out = _checkpoint_batch(step, [a, b, c], [_start_next(sa, "ba", "sa"), _start_next(sb, "bb", "sb"), None])
    step.commit()
    assert out["versions"] == [a.version + 1, b.version + 1, c.version + 1]
    assert [n if n is None else (n["status"], n["versions"]) for n in out["next"]] == [
        ("running", {sa["id"]: sa["resource_version"] + 1}), ("running", {sb["id"]: sb["resource_version"] + 1}),
        None]
    for x, i in ((a, 0), (b, 1), (c, 2)):
        assert db.execute("SELECT status, result_text FROM df.nodes WHERE instance_id = %s AND id = %s",
                          (x.iid, x.node_id)).fetchone() == ("completed", f'{{"rows":[{{"n":{i}}}],"row_count":1}}')
    # The next steps' attempts are registered under each instance's own lease; c's decision is the worker's.
    for x, s, secret in ((a, sa, "sa"), (b, sb, "sb")):
        assert db.execute("SELECT lease_token::text, secret_hash, backend_pid FROM df.attempts "
                          "WHERE instance_id = %s AND node_id = %s", (x.iid, s["id"])).fetchone() == \
            (x.token, bytes.fromhex(_h(secret)), None)
    assert _chain_state(db, c.iid)[2] is None
    # The second steps, in one transaction again: their decisions end both instances.
    a2 = Attempt(a.worker, a.iid, sa["id"], a.token, sa["resource_version"] + 1, "ba", "sa")
    b2 = Attempt(b.worker, b.iid, sb["id"], b.token, sb["resource_version"] + 1, "bb", "sb")
    _bind_all(step, [a2, b2])
    out = _checkpoint_batch(step, [a2, b2], [_ended('"A"'), _ended('"B"')])
    step.commit()
    assert [n["status"] for n in out["next"]] == ["completed", "completed"]
    for x, expected in ((a, '"A"'), (b, '"B"')):
        status, _, attempts, queued = _chain_state(db, x.iid)
        assert (status, attempts, queued) == ("completed", None, 0)
        assert db.execute("SELECT output FROM df.instances WHERE id = %s", (x.iid,)).fetchone()[0] == expected


def test_checkpoint_next_batch_with_one_guessed_secret_writes_nothing(chains_protocol, connect_as, db):
    alice_role, begun = chains_protocol
    attempts = [a for a, _ in begun]
    before = [_chain_state(db, a.iid) for a in attempts]
    step = connect_as(alice_role, autocommit=False)
    _bind_all(step, attempts)
    secrets = [a.secret for a in attempts]
    secrets[1] = attempts[1].bind_secret  # the bind secret in place of the checkpoint's
    err = _refused(lambda: _checkpoint_batch(step, attempts, [_ended("forged")] * 3, secrets=secrets))
    assert err.sqlstate == "DF014"
    step.rollback()
    assert [_chain_state(db, a.iid) for a in attempts] == before


def test_checkpoint_next_batch_of_another_role_is_refused_even_on_the_bound_backend(chains_protocol, make_role,
                                                                                   connect_as, db):
    _, begun = chains_protocol
    attempts = [a for a, _ in begun]
    mallory = connect_as(make_role("mallory"), autocommit=False)
    db.execute("UPDATE df.attempts SET backend_pid = %s, bind_hash = NULL WHERE instance_id = ANY(%s)",
               (mallory.info.backend_pid, [a.iid for a in attempts]))
    before = [_chain_state(db, a.iid) for a in attempts]
    err = _refused(lambda: _checkpoint_batch(mallory, attempts, [_ended("x")] * 3))
    assert err.sqlstate == "DF014"
    mallory.rollback()
    assert [_chain_state(db, a.iid) for a in attempts] == before


def test_checkpoint_next_batch_leaves_stale_or_forged_decisions_to_the_worker(chains_protocol, make_role,
                                                                              connect_as, db):
    """Each decision stands alone: one made from a node version that changed meanwhile, one naming a
    node of another instance of the batch, and one naming another role's node are not written (the
    steps' results are; the first test is the control that sound ones are)."""
    alice_role, begun = chains_protocol
    (a, sa), (b, sb), (c, sc) = begun
    bob = connect_as(make_role("bob"))
    other = start(bob, "'SELECT 1'")
    victim = db.execute("SELECT id, resource_version FROM df.nodes WHERE instance_id = %s", (other,)).fetchone()
    forged_other = _start_next({"id": victim[0], "resource_version": victim[1]}, "bv", "sv")
    step = connect_as(alice_role, autocommit=False)
    _bind_all(step, [a, b, c])
    out = _checkpoint_batch(step, [a, b, c], [
        _start_next(sa, "ba", "sa", version=sa["resource_version"] - 1),  # stale
        _start_next(sc, "bb", "sb"),                                       # c's node, in b's decision
        forged_other])                                                     # bob's node, in c's decision
    step.commit()
    assert out == {"versions": [a.version + 1, b.version + 1, c.version + 1], "next": [None, None, None]}
    for x, s in ((a, sa), (b, sb), (c, sc)):
        assert db.execute("SELECT status, resource_version FROM df.nodes WHERE instance_id = %s AND id = %s",
                          (x.iid, s["id"])).fetchone() == ("pending", s["resource_version"])
        assert db.execute("SELECT status FROM df.nodes WHERE instance_id = %s AND id = %s",
                          (x.iid, x.node_id)).fetchone()[0] == "completed"
        assert _chain_state(db, x.iid)[2] is None  # no attempt started
    assert db.execute("SELECT status, result_text, resource_version FROM df.nodes WHERE instance_id = %s",
                      (other,)).fetchone() == ("pending", None, victim[1])
    assert db.execute("SELECT count(*) FROM df.attempts WHERE instance_id = %s", (other,)).fetchone()[0] == 0


def test_checkpoint_next_batch_starts_no_step_for_a_submitter_refused_meanwhile(chains_protocol, connect_as, db):
    """No step starts for a submitter refused since; an instance's end is still written."""
    alice_role, begun = chains_protocol
    (a, sa), (b, _), (c, _) = begun
    step = connect_as(alice_role, autocommit=False)
    _bind_all(step, [a, b, c])
    db.execute(f'ALTER ROLE "{alice_role}" BYPASSRLS')
    out = _checkpoint_batch(step, [a, b, c], [_start_next(sa, "ba", "sa"), _ended('"ended"'), None])
    step.commit()
    assert out["next"][0] is None and out["next"][2] is None
    assert out["next"][1]["status"] == "completed"
    assert db.execute("SELECT status FROM df.nodes WHERE instance_id = %s AND id = %s",
                      (a.iid, sa["id"])).fetchone()[0] == "pending"
    assert db.execute("SELECT status FROM df.instances WHERE id = %s", (b.iid,)).fetchone()[0] == "completed"


def test_a_batched_chain_writes_its_next_decisions_in_the_batch_commit(alice, start_worker, db):
    """In the batched mode too, the decisions that follow the steps are written by the batch's own
    checkpoint (df._checkpoint_next_v2); df._advance_v2 runs for the instances' first decisions only.
    Counted by track_functions."""
    db.execute(f'ALTER DATABASE "{db.info.dbname}" SET track_functions = \'pl\'')
    iids = [start(alice, chain([f"INSERT INTO public.effects VALUES ({i})", "SELECT 1 AS one",
                                "SELECT 2 AS two"])) for i in range(8)]
    worker = start_worker(concurrency=8, batch=8)
    assert set(wait_all(db, iids, timeout=60).values()) == {"completed"}
    worker.terminate()
    assert worker.wait(timeout=20) == 0  # its sessions end, and report their counts

    def calls() -> dict[str, int] | None:
        db.execute("SELECT pg_stat_clear_snapshot()")
        counts = dict(db.execute("SELECT funcname, calls FROM pg_stat_user_functions WHERE schemaname = 'df' "
                                 "AND funcname IN ('_advance_v2', '_checkpoint_next_v2', '_checkpoint_v2', "
                                 "'_checkpoint_next_v1')").fetchall())
        return counts if counts.get("_checkpoint_next_v2", 0) >= 2 else None

    counts = wait_until(calls, 20, "the worker's function counts")
    claims_and_first_decisions = counts.get("_advance_v2", 0)
    # 24 steps: without the fold every batch's decisions would be one more _advance_v2 call each.
    assert claims_and_first_decisions <= 2, counts
    assert counts.get("_checkpoint_next_v2", 0) + counts.get("_checkpoint_next_v1", 0) \
        + counts.get("_checkpoint_v2", 0) >= 3, counts
    assert sorted(effects(alice)) == [(i, 1) for i in range(8)]
