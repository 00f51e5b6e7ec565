"""df.start: validation, materialisation, identity, id claiming."""

from __future__ import annotations

import json
import re
import threading

import psycopg
import pytest
from psycopg import errors as pg_errors


def counts(db: psycopg.Connection) -> tuple[int, int, int]:
    row = db.execute("SELECT (SELECT count(*) FROM df.instances), (SELECT count(*) FROM df.nodes),"
                     " (SELECT count(*) FROM df.instance_queue)").fetchone()
    return row[0], row[1], row[2]


def test_start_returns_an_8_hex_id_and_materialises_the_graph(db, make_role, connect_as):
    alice = connect_as(make_role())
    iid = alice.execute("SELECT df.start(df.if('SELECT true', 'SELECT 1', 'SELECT 2') ~> "
                        "df.join3('SELECT 3', 'SELECT 4', 'SELECT 5'), 'my-label')").fetchone()[0]
    assert re.fullmatch(r"[0-9a-f]{8}", iid)
    inst = db.execute("SELECT label, status, submitted_by::text, root_node, transaction_mode FROM df.instances "
                      "WHERE id = %s", (iid,)).fetchone()
    assert inst[0] == "my-label" and inst[1] == "pending" and inst[4] == "caller"
    nodes = {r[0]: r for r in db.execute(
        "SELECT id, node_type, query, left_node, right_node, parent_id, slot FROM df.nodes WHERE instance_id = %s",
        (iid,)).fetchall()}
    assert len(nodes) == 9
    root = nodes[inst[3]]
    assert root[1] == "THEN" and root[2] is None and root[5] is None
    if_node, join_node = nodes[root[3]], nodes[root[4]]
    assert if_node[1] == "IF" and join_node[1] == "JOIN"
    cond = json.loads(if_node[2])["condition_node"]
    assert nodes[cond][2] == "SELECT true" and nodes[cond][6] == "condition"
    assert nodes[if_node[3]][2] == "SELECT 1" and nodes[if_node[4]][2] == "SELECT 2"
    extra = json.loads(join_node[2])["extra_nodes"]
    assert [nodes[e][2] for e in extra] == ["SELECT 5"]
    assert all(re.fullmatch(r"[0-9a-f]{8}", n) for n in nodes)
    assert db.execute("SELECT count(*) FROM df.instance_queue WHERE instance_id = %s", (iid,)).fetchone()[0] == 1


@pytest.mark.parametrize("call, sqlstate, message", [
    ("df.start('{\"node_type\":\"FOO\"}')", "DF001",
     "Invalid durable function: Unknown node_type 'FOO'. Valid types: SQL, THEN, IF, JOIN, LOOP, BREAK, RACE, "
     "SLEEP, WAIT_SCHEDULE, HTTP, HTTP_MULTIPART, SIGNAL"),
    ("df.start('{\"node_type\":\"THEN\",\"left_node\":{\"node_type\":\"FOO\"},"
     "\"right_node\":{\"node_type\":\"SQL\",\"query\":\"x\"}}')", "DF002",
     "Invalid durable function graph: root.left: Unknown node_type 'FOO'. Valid types: SQL, THEN, IF, JOIN, LOOP, "
     "BREAK, RACE, SLEEP, WAIT_SCHEDULE, HTTP, HTTP_MULTIPART, SIGNAL"),
    ("df.start('SELECT 1', transaction_mode => 'later')", "DF001",
     "invalid transaction_mode \"later\" for df.start(): expected 'caller' or 'new'"),
    ("df.start('SELECT 1', database => 'no_such_db')", "DF001", 'database "no_such_db" does not exist'),
])
def test_bad_input_gets_a_clear_error_and_writes_nothing(db, make_role, connect_as, call, sqlstate, message):
    alice = connect_as(make_role())
    before = counts(db)
    with pytest.raises(psycopg.Error) as info:
        alice.execute(f"SELECT {call}")
    assert info.value.sqlstate == sqlstate
    assert info.value.diag.message_primary == message
    assert counts(db) == before


_OK = '{"node_type":"SQL","query":"x"}'


# SQL leaves and THEN nodes that are valid skip the full per-node check; these look like them but are not.
@pytest.mark.parametrize("child, message", [
    ('{"node_type":"SQL"}', "SQL node requires a query"),
    ('{"node_type":"SQL","query":null}', "SQL node requires a query"),
    ('{"node_type":"SQL","query":5}', "Malformed Durofut JSON: invalid type: integer `5`, expected a string"),
    ('{"node_type":"SQL","query":"x","left_node":' + _OK + '}', "SQL node must not have left_node or right_node"),
    ('{"node_type":"SQL","query":"x","condition_node":' + _OK + '}',
     "condition_node is only allowed on IF and LOOP nodes"),
    ('{"node_type":"SQL","query":"x","extra_nodes":[' + _OK + ']}', "extra_nodes is only allowed on JOIN nodes"),
    ('{"node_type":"SQL","query":"x","result_name":"1st"}',
     "result name '1st' is not a valid identifier — must match [a-zA-Z_][a-zA-Z0-9_]*"),
    ('{"node_type":"SQL","query":"x","result_name":""}', "result name cannot be empty"),
    ('{"node_type":"THEN","left_node":' + _OK + '}', "THEN node requires left_node and right_node"),
    ('{"node_type":"THEN","left_node":' + _OK + ',"right_node":null}', "THEN node requires left_node and right_node"),
    ('{"node_type":"THEN","left_node":' + _OK + ',"right_node":' + _OK + ',"condition_node":' + _OK + '}',
     "condition_node is only allowed on IF and LOOP nodes"),
])
def test_nodes_shaped_like_the_common_ones_are_still_checked(db, make_role, connect_as, child, message):
    alice = connect_as(make_role())
    graph = '{"node_type":"THEN","left_node":' + child + ',"right_node":' + _OK + '}'
    with pytest.raises(psycopg.Error) as info:
        alice.execute("SELECT df.start(%s)", (graph,))
    assert info.value.sqlstate == "DF002"
    assert info.value.diag.message_primary == f"Invalid durable function graph: root.left: {message}"
    assert counts(db) == (0, 0, 0)


@pytest.mark.parametrize("child, query, result_name", [
    ('{"node_type":"SQL","query":"x","result_name":"r1"}', "x", "r1"),
    ('{"node_type":"SQL","query":"x","extra_nodes":[]}', "x", None),
    ('{"node_type":"SQL","query":"x","right_node":null}', "x", None),
    ('{"node_type":"THEN","left_node":' + _OK + ',"right_node":' + _OK + ',"query":"ignored"}', None, None),
])
def test_valid_nodes_outside_the_common_shapes_still_start(db, make_role, connect_as, child, query, result_name):
    alice = connect_as(make_role())
    graph = '{"node_type":"THEN","left_node":' + child + ',"right_node":' + _OK + '}'
    iid = alice.execute("SELECT df.start(%s)", (graph,)).fetchone()[0]
    row = db.execute("SELECT query, result_name FROM df.nodes WHERE instance_id = %s AND slot = 'left'",
                     (iid,)).fetchone()
    assert row == (query, result_name)


def test_transaction_mode_new_is_not_supported_yet(make_role, connect_as):
    alice = connect_as(make_role())
    with pytest.raises(psycopg.Error) as info:
        alice.execute("SELECT df.start('SELECT 1', transaction_mode => 'NEW')")
    assert info.value.sqlstate == "DF007"
    assert "not supported yet" in info.value.diag.message_primary


def test_depth_over_256_names_the_path(db, make_role, connect_as):
    alice = connect_as(make_role())
    expr = " ~> ".join(f"'s{i}'" for i in range(1, 259))
    with pytest.raises(psycopg.Error) as info:
        alice.execute(f"SELECT df.start({expr})")
    assert info.value.diag.message_primary == (
        "Invalid durable function graph: root" + ".left" * 257
        + ": Graph exceeds maximum nesting depth of 256. Simplify the workflow or break it into multiple instances.")
    assert counts(db) == (0, 0, 0)


def test_ten_thousand_nodes_start_and_ten_thousand_and_one_fail(db, make_role, connect_as):
    alice = connect_as(make_role())
    # 5000 SQL leaves joined pairwise: each join(a, b) adds 1 node -> 2500 joins of 2 leaves
    # (7500 nodes) chained by 2499 THENs = 9999 nodes.
    pairs = alice.execute("""
        SELECT string_agg(format('df.join(%L, %L)', 'SELECT ' || (2*g), 'SELECT ' || (2*g+1)), ' ~> ')
          FROM generate_series(1, 2500) g
    """).fetchone()[0]
    # A left-deep THEN chain of 2500 items is too deep (depth 2499): build a balanced one instead.
    items = pairs.split(" ~> ")
    while len(items) > 1:
        items = [f"df.seq({items[i]}, {items[i + 1]})" if i + 1 < len(items) else items[i]
                 for i in range(0, len(items), 2)]
    iid = alice.execute(f"SELECT df.start({items[0]})").fetchone()[0]
    assert db.execute("SELECT count(*) FROM df.nodes WHERE instance_id = %s", (iid,)).fetchone()[0] == 9999
    with pytest.raises(psycopg.Error) as info:
        alice.execute(f"SELECT df.start(df.seq({items[0]}, df.join('a', 'b')))")
    assert "Workflow exceeds maximum node count of 10000" in info.value.diag.message_primary


def test_caller_variables_are_captured_at_start(db, make_role, connect_as):
    alice = connect_as(make_role())
    alice.execute("SELECT df.setvar('region', 'eu')")
    iid = alice.execute("SELECT df.start('SELECT {region}')").fetchone()[0]
    alice.execute("SELECT df.setvar('region', 'us')")
    assert db.execute("SELECT name, value FROM df.instance_vars WHERE instance_id = %s",
                      (iid,)).fetchall() == [("region", "eu")]


def test_start_is_in_the_callers_transaction(db, make_role, connect_as):
    alice = connect_as(make_role(), autocommit=False)
    alice.execute("SELECT df.start('SELECT 1')")
    alice.rollback()
    assert counts(db) == (0, 0, 0)


# -- identity ------------------------------------------------------------------------------------

def test_submitted_by_is_the_role_that_really_called(db, make_role, connect_as):
    alice, bob = make_role("alice"), make_role("bob")
    db.execute(f'GRANT "{bob}" TO "{alice}"')
    conn = connect_as(alice)
    conn.execute(f'SET ROLE "{bob}"')
    iid = conn.execute("SELECT df.start('SELECT 1')").fetchone()[0]
    assert db.execute("SELECT submitted_by::text FROM df.instances WHERE id = %s", (iid,)).fetchone()[0] == bob


def test_security_definer_callers_are_the_function_owner(db, make_role, connect_as):
    alice, bob = make_role("alice"), make_role("bob")
    db.execute(f'GRANT CREATE ON SCHEMA public TO "{alice}"')
    a = connect_as(alice)
    a.execute("CREATE FUNCTION public.start_for_me() RETURNS text LANGUAGE sql SECURITY DEFINER "
              "AS $$ SELECT df.start('SELECT 1') $$")
    a.execute("GRANT EXECUTE ON FUNCTION public.start_for_me() TO PUBLIC")
    iid = connect_as(bob).execute("SELECT public.start_for_me()").fetchone()[0]
    assert db.execute("SELECT submitted_by::text FROM df.instances WHERE id = %s", (iid,)).fetchone()[0] == alice


def test_a_forged_ticket_is_refused(db, make_role, connect_as):
    alice = connect_as(make_role())
    with pytest.raises(psycopg.Error) as info:
        alice.execute("SELECT df._start_v1(gen_random_uuid(), 'SELECT 1', NULL, NULL, 'caller')")
    assert info.value.sqlstate == "DF005"
    # A ticket inserted by hand still names its real inserter, whatever the row said.
    alice.execute("BEGIN")
    alice.execute("INSERT INTO df.caller_tickets (id, caller, xid) VALUES "
                  "('00000000-0000-0000-0000-000000000001', 'postgres'::regrole, '1')")
    iid = alice.execute("SELECT df._start_v1('00000000-0000-0000-0000-000000000001', 'SELECT 1', NULL, NULL, "
                        "'caller')").fetchone()[0]
    alice.execute("COMMIT")
    role = alice.execute("SELECT current_user").fetchone()[0]
    assert db.execute("SELECT submitted_by::text FROM df.instances WHERE id = %s", (iid,)).fetchone()[0] == role


@pytest.mark.parametrize("attrs, message", [
    ("SUPERUSER", "superuser instances are disabled"),
    ("BYPASSRLS", "has BYPASSRLS"),
])
def test_privileged_roles_are_refused_as_submitters(db, make_role, connect_as, attrs, message):
    role = make_role("priv", attrs=attrs)
    with pytest.raises(psycopg.Error) as info:
        connect_as(role).execute("SELECT df.start('SELECT 1')")
    assert info.value.sqlstate == "DF005" and message in info.value.diag.message_primary
    assert counts(db) == (0, 0, 0)


@pytest.mark.parametrize("group", ["durable_worker", "durable_owner"])
def test_members_of_the_worker_or_owner_role_are_refused(db, make_role, connect_as, group):
    role = make_role()
    db.execute(f'GRANT {group} TO "{role}"')
    with pytest.raises(psycopg.Error) as info:
        connect_as(role).execute("SELECT df.start('SELECT 1')")
    assert info.value.sqlstate == "DF005"


def test_members_of_a_bypassrls_role_are_refused(db, make_role, connect_as):
    role, powerful = make_role(), make_role("powerful", attrs="BYPASSRLS", grant=False)
    db.execute(f'GRANT "{powerful}" TO "{role}"')
    with pytest.raises(psycopg.Error) as info:
        connect_as(role).execute("SELECT df.start('SELECT 1')")
    assert info.value.sqlstate == "DF005"


def test_nologin_role_is_refused(db, make_role, connect_as):
    alice, group = make_role(), make_role("group", login=False)
    db.execute(f'GRANT "{group}" TO "{alice}"')
    conn = connect_as(alice)
    conn.execute(f'SET ROLE "{group}"')
    with pytest.raises(psycopg.Error) as info:
        conn.execute("SELECT df.start('SELECT 1')")
    assert info.value.diag.message_primary.startswith(f'current_user "{group}" does not have LOGIN privilege.')


def test_roles_without_usage_cannot_start(db, make_role, connect_as):
    outsider = make_role("outsider", grant=False)
    with pytest.raises(pg_errors.InsufficientPrivilege):
        connect_as(outsider).execute("SELECT df.start('SELECT 1')")


# -- ids -----------------------------------------------------------------------------------------

def test_collisions_re_roll_and_exhaustion_raises(db, make_role, connect_as):
    alice = connect_as(make_role())
    db.execute("UPDATE df.settings SET value = '2' WHERE key = 'id_space'")
    db.execute("UPDATE df.settings SET value = '200' WHERE key = 'max_id_attempts'")
    ids = {alice.execute("SELECT df.start('SELECT 1')").fetchone()[0] for _ in range(2)}
    assert ids == {"00000000", "00000001"}  # the second start re-rolled past the taken id
    db.execute("UPDATE df.settings SET value = '10' WHERE key = 'max_id_attempts'")
    with pytest.raises(psycopg.Error) as info:
        alice.execute("SELECT df.start('SELECT 1')")
    assert info.value.sqlstate == "DF006"
    assert info.value.diag.message_primary.startswith("Failed to create instance: exhausted 10 attempts")
    assert counts(db)[0] == 2


def test_concurrent_starts_never_share_an_id(db, make_role, connect_as):
    db.execute("UPDATE df.settings SET value = '4096' WHERE key = 'id_space'")
    db.execute("UPDATE df.settings SET value = '1000' WHERE key = 'max_id_attempts'")
    role = make_role()
    conns = [connect_as(role, autocommit=False) for _ in range(8)]
    results: list[str] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(conns))

    def starter(conn: psycopg.Connection) -> None:
        try:
            barrier.wait()
            for _ in range(25):
                results.append(conn.execute("SELECT df.start('SELECT 1')").fetchone()[0])
                conn.commit()
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=starter, args=(c,)) for c in conns]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(results) == 200 and len(set(results)) == 200
    assert db.execute("SELECT count(DISTINCT id) FROM df.instances").fetchone()[0] == 200


def test_the_same_node_id_in_two_instances_is_fine(db, make_role, connect_as):
    alice = connect_as(make_role())
    a = alice.execute("SELECT df.start('SELECT 1')").fetchone()[0]
    b = alice.execute("SELECT df.start('SELECT 2')").fetchone()[0]
    node_a = db.execute("SELECT id FROM df.nodes WHERE instance_id = %s", (a,)).fetchone()[0]
    # Re-key b's only node to a's node id: the composite key (instance_id, id) allows it.
    db.execute("BEGIN")
    db.execute("UPDATE df.instances SET root_node = %s WHERE id = %s", (node_a, b))
    db.execute("UPDATE df.nodes SET id = %s WHERE instance_id = %s", (node_a, b))
    db.execute("COMMIT")
    assert db.execute("SELECT count(*) FROM df.nodes WHERE id = %s", (node_a,)).fetchone()[0] == 2


def test_versions_start_above_the_clock_and_advance_by_one(db, make_role, connect_as):
    alice = connect_as(make_role())
    before = db.execute("SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::bigint").fetchone()[0]
    iid = alice.execute("SELECT df.start('SELECT 1')").fetchone()[0]
    v1 = db.execute("SELECT resource_version FROM df.instances WHERE id = %s", (iid,)).fetchone()[0]
    assert v1 >= before
    alice.execute("SELECT df.cancel(%s)", (iid,))
    v2 = db.execute("SELECT resource_version FROM df.instances WHERE id = %s", (iid,)).fetchone()[0]
    assert v2 == v1 + 1
    # Even a superuser's direct write advances it.
    db.execute("UPDATE df.instances SET label = 'x' WHERE id = %s", (iid,))
    assert db.execute("SELECT resource_version FROM df.instances WHERE id = %s", (iid,)).fetchone()[0] == v1 + 2
