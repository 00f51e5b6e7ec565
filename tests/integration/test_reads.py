"""Basic reads: status, result, instance_info, list_instances (both forms, keyset cursor), misc."""

from __future__ import annotations

import psycopg
import pytest

FN = "pg_durable::orchestration::execute-function-graph"


def test_unknown_ids_read_as_nothing(make_role, connect_as):
    alice = connect_as(make_role())
    assert alice.execute("SELECT df.status('deadbeef'), df.result('deadbeef')").fetchone() == (None, None)
    assert alice.execute("SELECT * FROM df.instance_info('deadbeef')").fetchall() == []
    assert alice.execute("SELECT df.status(NULL), df.result(NULL)").fetchone() == (None, None)


def test_writes_to_unknown_ids_raise_not_found(make_role, connect_as):
    alice = connect_as(make_role())
    for call in ("df.cancel('deadbeef')", "df.signal('deadbeef', 'go')"):
        with pytest.raises(psycopg.Error) as info:
            alice.execute(f"SELECT {call}")
        assert info.value.sqlstate == "DF003"
        assert info.value.diag.message_primary == "Instance not found or access denied: deadbeef"


def test_instance_info_columns_and_values(make_role, connect_as):
    alice = connect_as(make_role())
    iid = alice.execute("SELECT df.start('SELECT 1', 'lbl')").fetchone()[0]
    cur = alice.execute("SELECT * FROM df.instance_info(%s)", (iid,))
    assert [c.name for c in cur.description] == [
        "instance_id", "label", "function_name", "function_version", "current_execution_id", "status", "output",
        "resource_version", "labels", "annotations"]
    row = cur.fetchone()
    assert row[:7] == (iid, "lbl", FN, "1.0.0", 1, "pending", None)
    assert isinstance(row[7], int)


def test_rls_hides_other_roles_instances(make_role, connect_as):
    alice, bob = connect_as(make_role("alice")), connect_as(make_role("bob"))
    iid = alice.execute("SELECT df.start('SELECT 1')").fetchone()[0]
    assert bob.execute("SELECT df.status(%s)", (iid,)).fetchone()[0] is None
    assert bob.execute("SELECT * FROM df.instance_info(%s)", (iid,)).fetchall() == []
    assert bob.execute("SELECT count(*) FROM df.instances").fetchone()[0] == 0
    assert bob.execute("SELECT count(*) FROM df.nodes").fetchone()[0] == 0
    assert bob.execute("SELECT * FROM df.list_instances()").fetchall() == []
    for call in ("df.cancel(%s)", "df.signal(%s, 'go')"):
        with pytest.raises(psycopg.Error) as info:
            bob.execute(f"SELECT {call}", (iid,))
        assert info.value.sqlstate == "DF003"
    assert alice.execute("SELECT df.status(%s)", (iid,)).fetchone()[0] == "pending"


def test_list_instances_basic_form(make_role, connect_as):
    alice = connect_as(make_role())
    ids = [alice.execute("SELECT df.start('SELECT 1', 'l' || %s)", (i,)).fetchone()[0] for i in range(3)]
    alice.execute("SELECT df.cancel(%s)", (ids[0],))
    cur = alice.execute("SELECT * FROM df.list_instances()")
    assert [c.name for c in cur.description] == [
        "instance_id", "label", "function_name", "status", "execution_count", "output", "resource_version",
        "labels", "annotations"]
    rows = cur.fetchall()
    assert {r[0] for r in rows} == set(ids)
    assert [r[0] for r in alice.execute("SELECT * FROM df.list_instances('cancelled')")] == [ids[0]]
    assert len(alice.execute("SELECT * FROM df.list_instances(NULL, 2)").fetchall()) == 2


@pytest.mark.parametrize("limit, message", [
    (0, "limit_count must be at least 1"),
    (1001, "df.list_instances: limit_count (1001) exceeds pg_durable.list_instances_max_limit (1000); "
           "use a smaller limit_count and page with after_cursor"),
])
def test_list_limits(make_role, connect_as, limit, message):
    alice = connect_as(make_role())
    for call in ("df.list_instances(NULL, %s)", "df.list_instances(NULL, %s, NULL)"):
        with pytest.raises(psycopg.Error) as info:
            alice.execute(f"SELECT * FROM {call}", (limit,))
        assert info.value.diag.message_primary == message


def test_paginated_list_walks_every_instance_once(db, make_role, connect_as):
    alice = connect_as(make_role())
    ids = [alice.execute("SELECT df.start('SELECT 1', 'x')").fetchone()[0] for _ in range(7)]
    # Several instances share a created_at so the id tiebreak matters.
    db.execute("UPDATE df.instances SET created_at = '2024-06-15 12:30:00+00' WHERE id = ANY(%s)", (ids[:4],))
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        rows = alice.execute("SELECT * FROM df.list_instances(NULL, 3, 'x', %s)", (cursor,)).fetchall()
        pages += 1
        seen += [r[0] for r in rows]
        cursors = {r[8] for r in rows}
        assert len(cursors) == 1  # the same on every row of a page
        cursor = cursors.pop()
        if cursor is None:
            break
    assert pages == 3 and sorted(seen) == sorted(ids) and len(seen) == 7


def test_cursor_encoding_matches_pg_durable(db, make_role, connect_as):
    alice = connect_as(make_role())
    iid = alice.execute("SELECT df.start('SELECT 1')").fetchone()[0]
    other = alice.execute("SELECT df.start('SELECT 1')").fetchone()[0]
    db.execute("UPDATE df.instances SET created_at = '2024-06-15 12:30:00.123456+00' WHERE id = %s", (iid,))
    db.execute("UPDATE df.instances SET created_at = '2024-06-15 12:30:01+00' WHERE id = %s", (other,))
    alice.execute("SET TimeZone = 'UTC'")
    # First page (1 row: `other`) points at `other`; to see iid's cursor ask for a page ending at iid.
    rows = alice.execute("SELECT instance_id, next_cursor FROM df.list_instances(NULL, 1, NULL)").fetchall()
    raw = f"v1|2024-06-15T12:30:01.000000+00|{other}"
    assert rows == [(other, raw.encode().hex())]
    expected = "76317c323032342d30362d31355431323a33303a30302e3132333435362b30307c" + iid.encode().hex()
    assert alice.execute("SELECT df._encode_cursor('2024-06-15 12:30:00.123456+00', %s)", (iid,)).fetchone()[0] \
        == expected
    alice.execute("SET TimeZone = 'Asia/Kolkata'")
    assert alice.execute("SELECT df._encode_cursor('2024-06-15 12:30:00.123456+00', 'a1b2c3d4')").fetchone()[0] == (
        "76317c323032342d30362d31355431383a30303a30302e3132333435362b30353a33307c6131623263336434")
    # Upper-case hex decodes too, and resumes after the cursor row.
    rows = alice.execute("SELECT instance_id FROM df.list_instances(NULL, 5, NULL, %s)",
                         (raw.encode().hex().upper(),)).fetchall()
    assert rows == [(iid,)]


@pytest.mark.parametrize("cursor", ["zz", "abc", "", "76317c", "v2|2024-06-15T12:30:00.123456+00|a1b2c3d4",
                                    "v1|2024-06-15|a1b2c3d4", "v1||a1b2c3d4", "v1|2024-06-15T12:30:00.123456+00|"])
def test_bad_cursors(make_role, connect_as, cursor):
    alice = connect_as(make_role())
    value = cursor if not cursor.startswith("v") else cursor.encode().hex()
    with pytest.raises(psycopg.Error) as info:
        alice.execute("SELECT * FROM df.list_instances(NULL, 10, NULL, %s)", (value,))
    assert info.value.sqlstate == "DF010"
    assert info.value.diag.message_primary == "df.list_instances: invalid after_cursor"


def test_version_target_database_and_run(make_role, connect_as):
    alice = connect_as(make_role())
    version = alice.execute("SELECT df.version()").fetchone()[0]
    assert version.startswith("0.3.0 (built ")
    assert alice.execute("SELECT df.target_database() = current_database()").fetchone()[0] is True
    assert alice.execute("SELECT df.run()").fetchone()[0] == "Triggered run for all pending instances"
    assert alice.execute("SELECT df.run('abcd1234')").fetchone()[0] == "Triggered run for instance: abcd1234"


def test_await_instance_errors(make_role, connect_as):
    alice = connect_as(make_role())
    with pytest.raises(psycopg.Error) as info:
        alice.execute("SELECT df.await_instance('deadbeef')")
    assert info.value.diag.message_primary == "Instance not found: deadbeef"
    iid = alice.execute("SELECT df.start('SELECT 1')").fetchone()[0]
    with pytest.raises(psycopg.Error) as info:
        alice.execute("SELECT df.await_instance(%s, 0)", (iid,))
    assert info.value.diag.message_primary == "Timeout must be positive"
    with pytest.raises(psycopg.Error) as info:
        alice.execute("SELECT df.await_instance(%s, 1)", (iid,))  # no worker runs: it times out
    assert info.value.sqlstate == "DF011"
    assert info.value.diag.message_primary.startswith(f"Timeout after 1s waiting for instance {iid} (status: pending).")


def test_await_in_the_starting_transaction_raises_at_once(make_role, connect_as):
    alice = connect_as(make_role(), autocommit=False)
    iid = alice.execute("SELECT df.start('SELECT 1')").fetchone()[0]
    with pytest.raises(psycopg.Error) as info:
        alice.execute("SELECT df.await_instance(%s, 30)", (iid,))
    assert "was started in this transaction" in info.value.diag.message_primary


def test_result_of_an_unknown_id_is_null_even_when_others_completed(db, make_role, connect_as):
    alice = connect_as(make_role())
    iid = alice.execute("SELECT df.start('SELECT 1')").fetchone()[0]
    db.execute("UPDATE df.nodes SET status = 'completed', result = '{\"rows\":[],\"row_count\":0}' "
               "WHERE instance_id = %s", (iid,))
    assert alice.execute("SELECT df.result(%s)", (iid,)).fetchone()[0] == '{"rows": [], "row_count": 0}'
    assert alice.execute("SELECT df.result('deadbeef'), df.status('deadbeef')").fetchone() == (None, None)
