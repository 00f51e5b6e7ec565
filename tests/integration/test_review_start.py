"""Review of 4519568 (df.start made cheaper): the fast root parse, the depth-first _flatten_v1, the
single-version insert and the split version triggers, the one-query _submitter_refusal.

The tests named "bug" failed on 4519568 (fixed since) and say what the code before it did.  The
differential tests load the functions as they were at 4519568^ (from git) under other names and
compare; they skip where the history is not there.
"""

from __future__ import annotations

import json
import random
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from durable import schema
from e2e.upgrade import catalog

ROOT = Path(__file__).resolve().parents[2]
BEFORE = "4519568^"
VALID_TYPES = "SQL, THEN, IF, JOIN, LOOP, BREAK, RACE, SLEEP, WAIT_SCHEDULE, HTTP, HTTP_MULTIPART, SIGNAL"
TYPES = VALID_TYPES.split(", ")
FLATTEN_COLUMNS = (
    "ord, parent_ord, slot, depth, path, node_type, query, result_name, left_ord, right_ord, cond_ord, extra_ords"
)


def _old_function(path: str, name: str, new_name: str) -> str:
    try:
        text = subprocess.run(["git", "show", f"{BEFORE}:{path}"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip(f"git history ({BEFORE}) not available")
    m = re.search(r"CREATE FUNCTION " + re.escape(name) + r"\(.*?\$\$;", text, re.S)
    assert m is not None
    return m.group(0).replace(f"CREATE FUNCTION {name}(", f"CREATE FUNCTION {new_name}(", 1)


@pytest.fixture
def user(db: psycopg.Connection, make_role: Callable[..., str],
         connect_as: Callable[..., psycopg.Connection]) -> psycopg.Connection:
    """An ordinary LOGIN role with df usage."""
    return connect_as(make_role())


def outcome(conn: psycopg.Connection, query: str, arg: str) -> tuple[str, object]:
    try:
        with conn.transaction():
            return "ok", conn.execute(query, (arg,)).fetchall()
    except psycopg.Error as exc:
        return exc.sqlstate or "", exc.diag.message_primary


def balanced(n: int) -> dict:
    """A tree of exactly n nodes (n odd): THEN inside, SQL leaves."""
    if n == 1:
        return {"node_type": "SQL", "query": "SELECT 1"}
    left = (n - 1) // 2
    if left % 2 == 0:
        left -= 1
    return {"node_type": "THEN", "left_node": balanced(left), "right_node": balanced(n - 1 - left)}


def chain(n: int, leaf: dict) -> dict:
    node = leaf
    for _ in range(n):
        node = {"node_type": "LOOP", "left_node": node}
    return node


def random_node(r: random.Random, depth: int, budget: list[int]) -> object:
    """A random, often invalid, graph: wrong child shapes, JSON nulls, bad fields, unknown members."""
    budget[0] -= 1
    if r.random() < 0.03:
        return r.choice([None, [], [1], "s", 1, True, {}, ["left_node"], "left_node"])
    node: dict = {}
    t = r.random()
    if t < 0.9:
        node["node_type"] = r.choice(TYPES)
    elif t < 0.95:
        node["node_type"] = r.choice(["FOO", 1, None, ["SQL"]])
    nt = node.get("node_type")
    if nt in ("THEN", "IF", "JOIN", "RACE", "LOOP") and depth <= 6 and budget[0] > 0:
        node["left_node"] = random_node(r, depth + 1, budget)
        if nt != "LOOP" or r.random() < 0.05:
            node["right_node"] = random_node(r, depth + 1, budget)
        if (nt in ("IF", "LOOP") and r.random() < 0.7) or r.random() < 0.03:
            node["condition_node"] = random_node(r, depth + 1, budget)
        if (nt == "JOIN" and r.random() < 0.5) or r.random() < 0.02:
            node["extra_nodes"] = [random_node(r, depth + 1, budget) for _ in range(r.randint(0, 3))]
    if nt == "IF" and "condition_node" not in node and r.random() < 0.7:
        node["query"] = json.dumps({"condition_type": "result_has_rows", "result_name": "a"})
    if nt not in ("THEN", "IF", "JOIN", "RACE", "LOOP") and r.random() < 0.95:
        node["query"] = "SELECT 1"
    if r.random() < 0.1:
        node["result_name"] = r.choice(["a", "", "1bad", None, 3, "b_2"])
    if r.random() < 0.03:
        node["query"] = r.choice([None, 5, [], {}])
    if r.random() < 0.03:
        node["extra_nodes"] = r.choice([None, {}, [], [None], "x", [{}]])
    for k in ("left_node", "right_node", "condition_node"):
        if r.random() < 0.02:
            node[k] = r.choice([None, [], {}, "x", 0, False])
    if r.random() < 0.05:
        node["zz"] = r.choice([1, None, [], {"a": 1}])
    return node


# ----- bug: the fast root parse drops "left_node": [] and friends --------------------------------------

EMPTY_ARRAY_CHILD_ROOTS = [
    # (root text, what df.start raised before 4519568)
    ('{"node_type":"SQL","query":"SELECT 1","left_node":[]}',
     "Invalid durable function graph: root: SQL node must not have left_node or right_node"),
    ('{"node_type":"LOOP","left_node":{"node_type":"SQL","query":"SELECT 1"},"condition_node":[]}',
     "Invalid durable function graph: root.condition_node: condition_node must be a Durofut JSON object"),
    ('{"node_type":"LOOP","left_node":{"node_type":"SQL","query":"SELECT 1"},"right_node":[]}',
     "Invalid durable function graph: root: LOOP node must not have right_node"),
    ('{"node_type":"RACE","left_node":[],"right_node":{"node_type":"SQL","query":"SELECT 1"}}',
     "Invalid durable function graph: root.left: Durofut children must be JSON objects"),
]


@pytest.mark.parametrize(("text", "message"), EMPTY_ARRAY_CHILD_ROOTS)
def test_bug_fast_root_parse_keeps_an_empty_array_child(user: psycopg.Connection, text: str, message: str) -> None:
    # The strict parse (taken for the same root behind a leading space) keeps "left_node": []; only an
    # empty extra_nodes is left out.  The fast path drops every member whose value is [].
    fast = user.execute("SELECT df._ensure_strict_v1(%s)", (text,)).fetchone()[0]
    strict = user.execute("SELECT df._ensure_strict_v1(%s)", (" " + text,)).fetchone()[0]
    assert fast == strict
    with pytest.raises(psycopg.Error) as info:
        user.execute("SELECT df.start(%s)", (text,))
    assert info.value.sqlstate == "DF002"
    assert info.value.diag.message_primary == message


def test_fast_root_parse_agrees_with_the_old_code_on_random_roots(db: psycopg.Connection) -> None:
    """Apart from the [] children above, the new _ensure_strict_v1 returns what it did before."""
    db.execute(_old_function("sql/src/30_dsl.sql", "df._ensure_strict_v1", "df._ensure_strict_before"))
    r = random.Random(3)
    diffs = []
    for _ in range(1500):
        tree = random_node(r, 0, [r.randint(1, 5)])
        text = json.dumps(tree, separators=(",", ":"))
        if r.random() < 0.2 and isinstance(tree, dict) and tree:
            k = r.choice([*tree, "zz", "query", "extra_nodes"])
            text = text[:-1] + "," + json.dumps(k) + ":" + json.dumps(r.choice([None, 1, "x", {}])) + "}"
        if re.search(r'"(left_node|right_node|condition_node)":\[\]', text):
            continue  # the bug above
        old = outcome(db, "SELECT df._ensure_strict_before(%s)", text)
        new = outcome(db, "SELECT df._ensure_strict_v1(%s)", text)
        if old != new:
            diffs.append((text, old, new))
    assert diffs == []


# ----- _flatten_v1: the same rows and errors as the recursive CTE, up to 10,000 nodes -------------------


def test_flatten_agrees_with_the_old_cte_on_random_graphs(db: psycopg.Connection) -> None:
    db.execute(_old_function("sql/src/30_dsl.sql", "df._flatten_v1", "df._flatten_before"))
    r = random.Random(1)
    diffs, errors = [], 0
    for _ in range(2000):
        text = json.dumps(random_node(r, 0, [r.randint(1, 80)]))
        old = outcome(db, f"SELECT {FLATTEN_COLUMNS} FROM df._flatten_before(%s::jsonb)", text)
        new = outcome(db, f"SELECT {FLATTEN_COLUMNS} FROM df._flatten_v1(%s::jsonb)", text)
        errors += old[0] != "ok"
        if old != new:
            diffs.append((text, old, new))
    assert diffs == []
    assert 500 < errors < 1500  # both outcomes well covered


EDGE_GRAPHS = {
    "depth 256": chain(256, {"node_type": "SQL", "query": "x"}),
    "depth 257": chain(257, {"node_type": "SQL", "query": "x"}),
    "extra null": {"node_type": "JOIN", "left_node": {"node_type": "SQL", "query": "a"},
                   "right_node": {"node_type": "SQL", "query": "b"}, "extra_nodes": [None]},
    "null children": {"node_type": "LOOP", "left_node": {"node_type": "SQL", "query": "a"}, "right_node": None,
                      "condition_node": None, "extra_nodes": None},
    "array child naming a member": {"node_type": "THEN", "left_node": ["left_node"],
                                    "right_node": {"node_type": "SQL", "query": "b"}},
    "if_rows": {"node_type": "IF", "left_node": {"node_type": "SQL", "query": "a"},
                "right_node": {"node_type": "SQL", "query": "b"},
                "query": '{"condition_type":"result_has_rows","result_name":"r"}'},
    "two invalid, the left one deeper": {
        "node_type": "THEN", "left_node": chain(5, {"node_type": "FOO"}), "right_node": {"node_type": "BAR"}},
    "10000 nodes": {"node_type": "JOIN", "left_node": balanced(9997), "right_node": balanced(1),
                    "extra_nodes": [{"node_type": "SQL", "query": "z"}]},
    "invalid 10001st": {"node_type": "THEN", "left_node": balanced(9999), "right_node": {"node_type": "FOO"}},
    "10001 extras": {"node_type": "JOIN", "left_node": balanced(1), "right_node": balanced(1),
                     "extra_nodes": [{"node_type": "SQL", "query": "z"}] * 9999},
}


@pytest.mark.parametrize("name", list(EDGE_GRAPHS))
def test_flatten_edge_cases_as_before(db: psycopg.Connection, name: str) -> None:
    db.execute(_old_function("sql/src/30_dsl.sql", "df._flatten_v1", "df._flatten_before"))
    text = json.dumps(EDGE_GRAPHS[name])
    old = outcome(db, f"SELECT {FLATTEN_COLUMNS} FROM df._flatten_before(%s::jsonb)", text)
    new = outcome(db, f"SELECT {FLATTEN_COLUMNS} FROM df._flatten_v1(%s::jsonb)", text)
    assert old == new


# ----- risk: a wide extra_nodes deep down is pushed whole, each entry with its full path ---------------


def _peak_mb(conn: psycopg.Connection) -> int:
    pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        pytest.skip("the server's backend is not a local process")
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) // 1024  # type: ignore[union-attr]


def test_bug_flatten_memory_is_bounded_by_the_node_limit(dsn: str, db: psycopg.Connection) -> None:
    # 600 kB of envelope: 250 LOOPs over a JOIN with 300,000 extra_nodes.  Only the first 10,000 nodes
    # can ever be visited, but every extra is pushed with a ~1.3 kB path: the backend peaked at ~700 MB
    # (the CTE before: ~230 MB; capping the pushes at 10001 - v_n: ~90 MB), and it grows linearly, so a
    # few MB of df.start argument takes gigabytes.
    tree = chain(250, {"node_type": "JOIN", "left_node": {"node_type": "SQL", "query": "a"},
                       "right_node": {"node_type": "SQL", "query": "b"}, "extra_nodes": [{}] * 300_000})
    with psycopg.connect(dsn, autocommit=True) as conn:
        before = _peak_mb(conn)
        with pytest.raises(psycopg.Error) as info:
            conn.execute("SELECT count(*) FROM df._flatten_v1(%s::jsonb)", (json.dumps(tree),))
        assert info.value.sqlstate == "DF002"
        assert _peak_mb(conn) - before < 300


# ----- behaviour change: over 10,000 nodes, the first 10,001 in pre-order decide -----------------------


def test_over_the_node_limit_the_first_10001_nodes_in_pre_order_decide(user: psycopg.Connection) -> None:
    # Before 4519568 the CTE took the first 10,001 nodes breadth-first; the walk pops them in pre-order,
    # as pg_durable's does.  An invalid node after the 10,001st in pre-order is never reached...
    big_then_bad = {"node_type": "THEN", "left_node": balanced(10_001), "right_node": {"node_type": "FOO"}}
    state, message = outcome(user, "SELECT count(*) FROM df._flatten_v1(%s::jsonb)", json.dumps(big_then_bad))
    assert (state, message) == ("DF002", "Invalid durable function graph: root: Workflow exceeds maximum node "
                                         "count of 10000. Simplify the workflow or break it into multiple instances.")
    # ...and one before it is reported, however many nodes follow.
    bad_then_big = {"node_type": "THEN", "left_node": {"node_type": "FOO"}, "right_node": balanced(10_001)}
    state, message = outcome(user, "SELECT count(*) FROM df._flatten_v1(%s::jsonb)", json.dumps(bad_then_big))
    assert state == "DF002" and str(message).startswith("Invalid durable function graph: root.left: Unknown node_type")


# ----- behaviour change: df.start claims an id before it checks the graph -------------------------------


def test_id_exhaustion_is_reported_before_a_graph_error(db: psycopg.Connection, user: psycopg.Connection) -> None:
    # Since 4519568 df.start claims the id, then checks the graph in the statement that writes the nodes
    # (docs/dsl.md says so); before, an invalid graph got DF002 even with the id space full.  Either way
    # nothing is written.
    db.execute("UPDATE df.settings SET value = '1' WHERE key = 'id_space'")
    user.execute("SELECT df.start('SELECT 1')")
    bad = """{"node_type":"THEN","left_node":{"node_type":"FOO"},"right_node":{"node_type":"SQL","query":"x"}}"""
    with pytest.raises(psycopg.Error) as info:
        user.execute("SELECT df.start(%s)", (bad,))
    assert info.value.sqlstate == "DF006"
    user.rollback()
    db.execute("UPDATE df.settings SET value = '4294967296' WHERE key = 'id_space'")
    with pytest.raises(psycopg.Error) as info:
        user.execute("SELECT df.start(%s)", (bad,))
    assert info.value.sqlstate == "DF002"
    user.rollback()
    assert db.execute("SELECT count(*) FROM df.instances").fetchone() == (1,)


# ----- resource_version: one first version per instance, the insert trigger still covers other writers --


def test_start_gives_every_row_one_fresh_version(db: psycopg.Connection, user: psycopg.Connection) -> None:
    hwm = db.execute("SELECT df._initial_version()").fetchone()[0]
    iid = user.execute("SELECT df.start(df.join3('a', 'b', 'c') ~> 'd')").fetchone()[0]
    versions = db.execute(
        "SELECT array_agg(DISTINCT v) FROM (SELECT resource_version AS v FROM df.instances WHERE id = %s "
        "UNION ALL SELECT resource_version FROM df.nodes WHERE instance_id = %s) AS x", (iid, iid)).fetchone()[0]
    assert len(versions) == 1 and versions[0] > hwm
    # An UPDATE still bumps by exactly one; an INSERT without a version still gets a fresh one.
    db.execute("UPDATE df.instances SET labels = '{\"a\":\"b\"}' WHERE id = %s", (iid,))
    assert db.execute("SELECT resource_version FROM df.instances WHERE id = %s", (iid,)).fetchone()[0] == versions[0] + 1
    db.execute("BEGIN")
    db.execute("INSERT INTO df.instances (id, root_node, submitted_by) VALUES ('ffffffff', 'ffffffff', "
               "(SELECT submitted_by FROM df.instances WHERE id = %s))", (iid,))
    fresh = db.execute("SELECT resource_version FROM df.instances WHERE id = 'ffffffff'").fetchone()[0]
    db.execute("ROLLBACK")
    assert fresh > versions[0]


def test_users_still_cannot_insert_rows_with_their_own_version(user: psycopg.Connection) -> None:
    for stmt in ("INSERT INTO df.instances (id, root_node, submitted_by, resource_version) "
                 "VALUES ('aaaaaaaa', 'bbbbbbbb', current_user::regrole, 1)",
                 "INSERT INTO df.nodes (id, instance_id, node_type, query, submitted_by, resource_version) "
                 "VALUES ('aaaaaaaa', 'aaaaaaaa', 'SQL', 'x', current_user::regrole, 1)"):
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            user.execute(stmt)


# ----- _submitter_refusal: the same verdict for every kind of role ---------------------------------------


def test_submitter_refusal_verdicts_as_before(db: psycopg.Connection, make_role: Callable[..., str]) -> None:
    db.execute(_old_function("sql/src/20_core.sql", "df._submitter_refusal", "df._submitter_refusal_before"))
    su_group = make_role("sugrp", login=False, grant=False, attrs="SUPERUSER")
    by_group = make_role("bygrp", login=False, grant=False, attrs="BYPASSRLS")
    middle = make_role("mid", login=False, grant=False)
    db.execute(f'GRANT "{su_group}" TO "{middle}"')
    roles = {
        "plain": make_role(),
        "nologin": make_role(login=False),
        "superuser": make_role(attrs="SUPERUSER"),
        "superuser nologin": make_role(login=False, attrs="SUPERUSER"),
        "bypassrls": make_role(attrs="BYPASSRLS"),
        "bypassrls nologin": make_role(login=False, attrs="BYPASSRLS"),
        "owner member": make_role(),
        "worker member": make_role(),
        "owner member with bypassrls": make_role(attrs="BYPASSRLS"),
        "superuser group member": make_role(),
        "superuser group member, nested": make_role(),
        "bypassrls group member": make_role(),
        "dropped": make_role(grant=False),
    }
    db.execute(f'GRANT durable_owner TO "{roles["owner member"]}"')
    db.execute(f'GRANT durable_worker TO "{roles["worker member"]}"')
    db.execute(f'GRANT durable_owner TO "{roles["owner member with bypassrls"]}"')
    db.execute(f'GRANT "{su_group}" TO "{roles["superuser group member"]}"')
    db.execute(f'GRANT "{middle}" TO "{roles["superuser group member, nested"]}"')
    db.execute(f'GRANT "{by_group}" TO "{roles["bypassrls group member"]}"')
    oids = {name: db.execute("SELECT %s::regrole::oid", (role,)).fetchone()[0] for name, role in roles.items()}
    db.execute(f'DROP ROLE "{roles["dropped"]}"')
    verdicts = set()
    for setting in ("off", "on"):
        db.execute("UPDATE df.settings SET value = %s WHERE key = 'enable_superuser_instances'", (setting,))
        for name, oid in oids.items():
            old, new = db.execute("SELECT df._submitter_refusal_before(%s::oid::regrole), "
                                  "df._submitter_refusal(%s::oid::regrole)", (oid, oid)).fetchone()
            assert old == new, (setting, name)
            verdicts.add(re.sub(r'"[^"]*"', "R", old or ""))
    assert len(verdicts) == 7  # none, LOGIN, superuser off, BYPASSRLS, engine role, privileged member, gone


def test_security_definer_functions_keep_their_search_path(db: psycopg.Connection) -> None:
    rows = db.execute("""
        SELECT p.oid::regprocedure::text FROM pg_proc AS p
         WHERE p.pronamespace = 'df'::regnamespace AND p.prosecdef
           AND NOT ('search_path=pg_catalog, pg_temp' = ANY (COALESCE(p.proconfig, '{}')))""").fetchall()
    assert rows == []


# ----- the upgrade: same catalog as a fresh install (triggers included), second run a no-op ---------------


def test_upgrade_from_0_2_0_equals_a_fresh_install(db: psycopg.Connection, dsn: str) -> None:
    params = psycopg.conninfo.conninfo_to_dict(dsn)
    names = [f"review_{k}_{random.randrange(1 << 30):x}" for k in ("upg", "fresh")]
    for name in names:
        db.execute(f'CREATE DATABASE "{name}"')
    try:
        upgraded, fresh = (psycopg.conninfo.make_conninfo(**{**params, "dbname": n}) for n in names)
        schema.install(upgraded, version="0.2.0")
        schema.upgrade(upgraded)
        schema.install(fresh)
        assert catalog.diff(catalog.snapshot(upgraded), catalog.snapshot(fresh)) == []
        before = catalog.snapshot(upgraded)
        schema.upgrade(upgraded)
        assert catalog.snapshot(upgraded) == before
    finally:
        for name in names:
            db.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
