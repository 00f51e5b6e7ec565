"""Compare-and-swap on instances: expected_resource_version, metadata, conditional delete, fencing."""

from __future__ import annotations

import hashlib
import json
import threading
import uuid

import psycopg
import pytest

import durable
from durable.errors import ConflictError


@pytest.fixture
def alice(make_role, connect_as):
    role = make_role("alice")
    return role, connect_as(role)


def version(conn: psycopg.Connection, iid: str) -> int:
    return conn.execute("SELECT resource_version FROM df.instance_info(%s)", (iid,)).fetchone()[0]


def test_eight_threads_increment_a_counter_to_exactly_800(alice, dsn):
    from tests.conftest import dsn_as

    role, conn = alice
    iid = conn.execute("SELECT df.start(df.wait_for_signal('never'))").fetchone()[0]
    conn.execute("SELECT df.set_metadata(%s, '{\"annotations\": {\"count\": 0}}')", (iid,))
    errors: list[BaseException] = []
    conflicts = [0]

    def bump() -> None:
        try:
            with durable.connect(dsn_as(dsn, role)) as client:
                for _ in range(100):
                    while True:
                        info = client.info(iid)
                        assert info is not None
                        count = info.annotations["count"]
                        try:
                            client.set_metadata(iid, {"annotations": {"count": count + 1}},
                                                expected_resource_version=info.resource_version)
                            break
                        except ConflictError as exc:
                            assert exc.current_version is not None and exc.current_version > info.resource_version
                            conflicts[0] += 1
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=bump) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    annotations = conn.execute("SELECT annotations FROM df.instance_info(%s)", (iid,)).fetchone()[0]
    assert annotations == {"count": 800}
    assert conflicts[0] > 0  # the threads really raced


def test_fixed_interleaving_lost_update_vs_conflict(alice, make_role, connect_as):
    role, one = alice
    two = connect_as(role)
    iid = one.execute("SELECT df.start(df.wait_for_signal('never'))").fetchone()[0]
    one.execute("SELECT df.set_metadata(%s, '{\"annotations\": {\"n\": 0}}')", (iid,))
    # Without expected versions: both read n=0 and write n=1 -- one increment is lost.
    read_one = one.execute("SELECT annotations->>'n' FROM df.instance_info(%s)", (iid,)).fetchone()[0]
    read_two = two.execute("SELECT annotations->>'n' FROM df.instance_info(%s)", (iid,)).fetchone()[0]
    one.execute("SELECT df.set_metadata(%s, jsonb_build_object('annotations', jsonb_build_object('n', %s::int + 1)))",
                (iid, read_one))
    two.execute("SELECT df.set_metadata(%s, jsonb_build_object('annotations', jsonb_build_object('n', %s::int + 1)))",
                (iid, read_two))
    assert one.execute("SELECT annotations->>'n' FROM df.instance_info(%s)", (iid,)).fetchone()[0] == "1"
    # With them: the second write is a conflict and changes nothing.
    v = version(one, iid)
    one.execute("SELECT df.set_metadata(%s, '{\"annotations\": {\"n\": 2}}', %s)", (iid, v))
    with pytest.raises(psycopg.Error) as info:
        two.execute("SELECT df.set_metadata(%s, '{\"annotations\": {\"n\": 2}}', %s)", (iid, v))
    assert info.value.sqlstate == "DF004"
    assert info.value.diag.message_detail == f"current resource_version: {v + 1}"
    assert version(one, iid) == v + 1


@pytest.mark.parametrize("call", [
    "df.cancel(%(id)s, 'x', %(v)s)",
    "df.signal(%(id)s, 'go', '{}', %(v)s)",
    "df.set_metadata(%(id)s, '{\"labels\": {\"a\": \"b\"}}', %(v)s)",
])
def test_a_stale_expected_version_changes_nothing(alice, db, call):
    _, conn = alice
    iid = conn.execute("SELECT df.start(df.wait_for_signal('never'))").fetchone()[0]
    v = version(conn, iid)
    before = db.execute("SELECT i.*, (SELECT count(*) FROM df.signals) FROM df.instances i WHERE id = %s",
                        (iid,)).fetchone()
    with pytest.raises(psycopg.Error) as info:
        conn.execute(f"SELECT {call}", {"id": iid, "v": v - 1})
    assert info.value.sqlstate == "DF004"
    assert info.value.diag.message_primary == f"resource_version mismatch for instance {iid}: expected {v - 1}, current {v}"
    after = db.execute("SELECT i.*, (SELECT count(*) FROM df.signals) FROM df.instances i WHERE id = %s",
                       (iid,)).fetchone()
    assert before == after
    conn.execute(f"SELECT {call}", {"id": iid, "v": v})  # the current version is accepted
    assert version(conn, iid) > v


def test_merge_patch_semantics_and_validation(alice):
    _, conn = alice
    iid = conn.execute("SELECT df.start(df.wait_for_signal('never'))").fetchone()[0]
    v0 = version(conn, iid)
    v1 = conn.execute("""SELECT df.set_metadata(%s, '{"labels": {"team": "a", "tier": "gold"},
                                                   "annotations": {"cfg": {"x": 1, "y": 2}}}')""", (iid,)).fetchone()[0]
    assert v1 == v0 + 1
    conn.execute("""SELECT df.set_metadata(%s, '{"labels": {"tier": null}, "annotations": {"cfg": {"y": null, "z": 3}}}')""",
                 (iid,))
    labels, annotations = conn.execute("SELECT labels, annotations FROM df.instance_info(%s)", (iid,)).fetchone()
    assert labels == {"team": "a"} and annotations == {"cfg": {"x": 1, "z": 3}}
    for bad, message in [
        ('{"status": "completed"}', 'only "labels" and "annotations" can be patched'),
        ('{"labels": {"n": 1}}', "label values must be strings"),
        ('{"labels": [1]}', "must stay JSON objects"),
        ('[1]', "patch must be a JSON object"),
    ]:
        with pytest.raises(psycopg.Error) as info:
            conn.execute("SELECT df.set_metadata(%s, %s::jsonb)", (iid, bad))
        assert info.value.sqlstate == "DF001" and message in info.value.diag.message_primary
    assert conn.execute("SELECT df.set_metadata(NULL, '{}'), df.cancel(NULL), df.signal(%s, NULL)",
                        (iid,)).fetchone() == (None, None, None)


def test_conditional_delete(alice, db):
    _, conn = alice
    iid = conn.execute("SELECT df.start(df.wait_for_signal('never'))").fetchone()[0]
    with pytest.raises(psycopg.Error) as info:
        conn.execute("SELECT df.delete_instance(%s)", (iid,))
    assert info.value.sqlstate == "DF001" and "is still pending" in info.value.diag.message_primary
    conn.execute("SELECT df.cancel(%s)", (iid,))
    v = version(conn, iid)
    with pytest.raises(psycopg.Error) as info:
        conn.execute("SELECT df.delete_instance(%s, %s)", (iid, v - 1))
    assert info.value.sqlstate == "DF004"
    assert conn.execute("SELECT df.delete_instance(%s, %s)", (iid, v)).fetchone()[0] is True
    assert db.execute("SELECT count(*) FROM df.nodes WHERE instance_id = %s", (iid,)).fetchone()[0] == 0
    with pytest.raises(psycopg.Error) as info:
        conn.execute("SELECT df.delete_instance(%s)", (iid,))
    assert info.value.sqlstate == "DF003"


def test_reads_return_the_authoritative_version(alice, db):
    _, conn = alice
    iid = conn.execute("SELECT df.start('SELECT 1')").fetchone()[0]
    stored = db.execute("SELECT resource_version FROM df.instances WHERE id = %s", (iid,)).fetchone()[0]
    assert version(conn, iid) == stored
    assert conn.execute("SELECT resource_version FROM df.list_instances() WHERE instance_id = %s",
                        (iid,)).fetchone()[0] == stored
    assert conn.execute("SELECT resource_version FROM df.list_instances(NULL, 10, NULL) WHERE instance_id = %s",
                        (iid,)).fetchone()[0] == stored
    node_versions = {r[0]: r[1] for r in db.execute("SELECT id, resource_version FROM df.nodes WHERE instance_id = %s",
                                                    (iid,))}
    read = {r[0]: r[1] for r in conn.execute("SELECT node_id, resource_version FROM df.instance_nodes(%s)", (iid,))}
    assert read == node_versions


def test_python_client_conflict_carries_the_current_version(alice, dsn):
    from tests.conftest import dsn_as

    role, conn = alice
    iid = conn.execute("SELECT df.start(df.wait_for_signal('never'))").fetchone()[0]
    with durable.connect(dsn_as(dsn, role)) as client:
        info = client.info(iid)
        assert info is not None
        client.signal(iid, "x", {"a": 1}, expected_resource_version=info.resource_version)
        with pytest.raises(ConflictError) as exc:
            client.cancel(iid, expected_resource_version=info.resource_version)
        assert exc.value.current_version == info.resource_version + 1
        assert client.cancel(iid, expected_resource_version=info.resource_version + 1).startswith(f"Instance {iid}")


def test_a_worker_whose_lease_was_taken_over_cannot_write(db, worker_dsn, make_role, connect_as):
    alice = connect_as(make_role())
    iid = alice.execute("SELECT df.start('SELECT 1 AS x')").fetchone()[0]
    node = db.execute("SELECT root_node FROM df.instances WHERE id = %s", (iid,)).fetchone()[0]
    worker = psycopg.connect(worker_dsn, autocommit=True)
    try:
        a_id, b_id = uuid.uuid4(), uuid.uuid4()
        _, token_a, _ = worker.execute("SELECT * FROM df._claim_v1(%s, 1)", (a_id,)).fetchone()
        v = db.execute("SELECT resource_version FROM df.nodes WHERE instance_id = %s", (iid,)).fetchone()[0]
        update = [{"node_id": node, "expected_version": v, "status": "running", "result_text": None,
                   "wake_at": None, "state": None, "status_details": None}]
        worker.execute("SELECT df._apply_v1(%s, %s, %s, '[]', NULL, NULL, 1)", (iid, token_a, json.dumps(update)))
        secret = "s" * 64
        step = connect_as(db.execute("SELECT submitted_by::text FROM df.instances WHERE id = %s",
                                     (iid,)).fetchone()[0], autocommit=False)
        worker.execute("SELECT df._begin_attempt_v1(%s, %s, %s, %s, %s)",
                       (iid, node, token_a, hashlib.sha256(secret.encode()).digest(), step.info.backend_pid))
        # A's lease runs out and B takes the instance over.
        db.execute("UPDATE df.instance_queue SET lease_expires_at = clock_timestamp() - interval '1 second'")
        _, token_b, _ = worker.execute("SELECT * FROM df._claim_v1(%s, 1)", (b_id,)).fetchone()
        assert token_b != token_a
        # A's late checkpoint and A's late transition are both refused.
        with pytest.raises(psycopg.Error) as info:
            step.execute("SELECT df._checkpoint_v1(%s, %s, %s, '{\"rows\":[],\"row_count\":0}', NULL, %s)",
                         (iid, node, secret, v + 1))
        assert info.value.sqlstate == "DF014"
        step.rollback()
        with pytest.raises(psycopg.Error) as info:
            worker.execute("SELECT df._apply_v1(%s, %s, '[]', '[]', 'completed', 'late', 1)", (iid, token_a))
        assert info.value.sqlstate == "DF014"
        assert db.execute("SELECT status FROM df.instances WHERE id = %s", (iid,)).fetchone()[0] == "running"
        assert db.execute("SELECT status FROM df.nodes WHERE instance_id = %s", (iid,)).fetchone()[0] == "running"
    finally:
        worker.close()


def test_the_version_triggers_run_unless_the_statement_bumped_the_version_itself(alice, db):
    """0.3.0: the version triggers have a WHEN, so that the worker's writes (which set resource_version + 1
    and updated_at = now() themselves) skip the call.  Any other write must still come out at exactly
    one more, at now(), whatever it tried to set."""
    role, conn = alice
    iid = conn.execute("SELECT df.start('SELECT 1' ~> 'SELECT 2')").fetchone()[0]
    rows = db.execute("SELECT id, resource_version FROM df.nodes WHERE instance_id = %s", (iid,)).fetchall()
    first = {v for _, v in rows} | {version(conn, iid)}
    assert len(first) == 1, "df.start gives every row of an instance one first version"
    (v0,) = first
    node = rows[0][0]

    def node_row() -> tuple[int, bool]:
        row = db.execute("SELECT resource_version, updated_at = now() FROM df.nodes WHERE instance_id = %s AND id = %s",
                         (iid, node)).fetchone()
        assert row is not None
        return row[0], row[1]

    with db.transaction():
        db.execute("UPDATE df.nodes SET state = '{}' WHERE instance_id = %s AND id = %s", (iid, node))
        assert node_row() == (v0 + 1, True)  # not set by the statement: the trigger
        db.execute("UPDATE df.nodes SET resource_version = resource_version + 5 WHERE instance_id = %s AND id = %s",
                   (iid, node))
        assert node_row() == (v0 + 2, True)  # set wrong: the trigger puts it right
        db.execute("UPDATE df.nodes SET resource_version = resource_version + 1, updated_at = now() - interval '1 day'"
                   " WHERE instance_id = %s AND id = %s", (iid, node))
        assert node_row() == (v0 + 3, True)  # an old updated_at: the trigger again
        db.execute("UPDATE df.nodes SET resource_version = resource_version + 1, updated_at = now()"
                   " WHERE instance_id = %s AND id = %s", (iid, node))
        assert node_row() == (v0 + 4, True)  # what the worker writes: kept as it is
        db.execute("UPDATE df.instances SET resource_version = 1, labels = '{}' WHERE id = %s", (iid,))
        assert db.execute("SELECT resource_version FROM df.instances WHERE id = %s", (iid,)).fetchone() == (v0 + 1,)
    # A new row without a version gets one from the clock, above what this id could have had before.
    with db.transaction(force_rollback=True):
        # The bare row's deferred foreign key is never checked: the transaction rolls back.
        db.execute("INSERT INTO df.instances (id, root_node, submitted_by) VALUES ('0000abcd', '0000abcd', %s::regrole)",
                   (role,))
        (v_new,) = db.execute("SELECT resource_version FROM df.instances WHERE id = '0000abcd'").fetchone()
        assert v_new is not None and v_new > v0


def test_a_finished_instance_never_changes_status_again(alice, db):
    """The terminal guard (a trigger with a WHEN since 0.3.0) still refuses every way out of a final
    status, whoever writes, and lets everything else through."""
    _, conn = alice
    iid = conn.execute("SELECT df.start('SELECT 1')").fetchone()[0]
    db.execute("UPDATE df.instances SET status = 'running' WHERE id = %s", (iid,))  # not final: allowed
    db.execute("UPDATE df.instances SET status = 'failed', output = 'x' WHERE id = %s", (iid,))
    for status in ("running", "pending", "completed", "cancelled"):
        with pytest.raises(psycopg.Error) as info, db.transaction():
            db.execute("UPDATE df.instances SET status = %s WHERE id = %s", (status, iid))
        assert info.value.sqlstate == "DF008"
    db.execute("UPDATE df.instances SET status = 'failed', labels = '{\"a\":\"b\"}' WHERE id = %s", (iid,))
    assert db.execute("SELECT status, labels FROM df.instances WHERE id = %s", (iid,)).fetchone() == (
        "failed", {"a": "b"})
