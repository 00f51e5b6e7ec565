"""Issue 10: what the faster df.start and the keyset list page must keep doing.

Behaviour and plans only, never timings: the node rows df.start writes follow
the flattened graph exactly (pre-order ids walked from a random base), the
flattening matches a model of pg_durable's flatten_graph, and a deep page of
df.list_instances reads through an index condition on created_at, with the
ordering it promises (created_at DESC, then id).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

LEAVES = ["SQL", "SLEEP", "BREAK", "SIGNAL", "HTTP"]


# ---------------------------------------------------------------------------
# A model of flatten_graph for valid graphs: one row per node in pre-order,
# children in the order left, right, condition_node, extra_nodes.
# ---------------------------------------------------------------------------


def _random_graph(rnd: random.Random, depth: int, budget: list[int]) -> dict[str, Any]:
    budget[0] -= 1
    if depth >= 5 or budget[0] <= 0 or rnd.random() < 0.35:
        node: dict[str, Any] = {"node_type": rnd.choice(LEAVES), "query": f"q{rnd.randint(0, 99)}"}
        if rnd.random() < 0.3:
            node["result_name"] = rnd.choice(["a", "b_1", "_x"])
        return node
    kind = rnd.choice(["THEN", "RACE", "JOIN", "IF", "LOOP"])
    node = {"node_type": kind, "left_node": _random_graph(rnd, depth + 1, budget)}
    if kind != "LOOP":
        node["right_node"] = _random_graph(rnd, depth + 1, budget)
    if kind == "JOIN" and rnd.random() < 0.7:
        node["extra_nodes"] = [_random_graph(rnd, depth + 1, budget) for _ in range(rnd.randint(1, 3))]
    if kind == "IF":
        if rnd.random() < 0.5:
            node["condition_node"] = _random_graph(rnd, depth + 1, budget)
        else:
            node["query"] = json.dumps({"condition_type": "result_has_rows", "result_name": "a"})
    if kind == "LOOP" and rnd.random() < 0.4:
        node["condition_node"] = _random_graph(rnd, depth + 1, budget)
    return node


def _model_flatten(graph: dict[str, Any]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []

    def visit(node: dict[str, Any], parent: int | None, slot: str | None, path: str, depth: int) -> int:
        row: dict[str, Any] = {"parent_ord": parent, "slot": slot, "depth": depth, "path": path,
                               "node_type": node["node_type"], "result_name": node.get("result_name"),
                               "left_ord": None, "right_ord": None, "cond_ord": None, "extra_ords": None}
        leaf = node["node_type"] in LEAVES
        row["query"] = node.get("query") if leaf or (node["node_type"] == "IF" and "condition_node" not in node) \
            else None
        rows.append(row)
        ord_ = row["ord"] = len(rows)
        if "left_node" in node:
            row["left_ord"] = visit(node["left_node"], ord_, "left", path + ".left", depth + 1)
        if "right_node" in node:
            row["right_ord"] = visit(node["right_node"], ord_, "right", path + ".right", depth + 1)
        if "condition_node" in node:
            row["cond_ord"] = visit(node["condition_node"], ord_, "condition", path + ".condition_node", depth + 1)
        if node.get("extra_nodes"):
            row["extra_ords"] = [visit(e, ord_, f"extra{i + 1}", f"{path}.extra_nodes[{i}]", depth + 1)
                                 for i, e in enumerate(node["extra_nodes"])]
        return ord_

    visit(graph, None, None, "root", 0)
    return rows


def _graphs() -> list[dict[str, Any]]:
    rnd = random.Random(20261123)
    return [_random_graph(rnd, 0, [rnd.randint(1, 30)]) for _ in range(60)]


def test_flatten_matches_the_model_of_flatten_graph(db: psycopg.Connection) -> None:
    cols = ["ord", "parent_ord", "slot", "depth", "path", "node_type", "query", "result_name", "left_ord",
            "right_ord", "cond_ord", "extra_ords"]
    for graph in _graphs():
        got = db.execute(f"SELECT {', '.join(cols)} FROM df._flatten_v1(%s::jsonb)",
                         (json.dumps(graph),)).fetchall()
        assert [dict(zip(cols, r, strict=True)) for r in got] == _model_flatten(graph), graph


def _preorder(nodes: dict[str, dict[str, Any]], root: str) -> list[str]:
    """The node ids in pre-order, from the stored rows alone (children by slot)."""
    kids: dict[str, list[tuple[tuple[int, int], str]]] = {}
    for nid, n in nodes.items():
        if n["parent_id"] is not None:
            slot = n["slot"]
            key = {"left": (0, 0), "right": (1, 0), "condition": (2, 0)}.get(slot) or (3, int(slot[5:]))
            kids.setdefault(n["parent_id"], []).append((key, nid))
    out: list[str] = []

    def visit(nid: str) -> None:
        out.append(nid)
        for _, child in sorted(kids.get(nid, [])):
            visit(child)

    visit(root)
    return out


def test_started_rows_follow_the_flattened_graph(db: psycopg.Connection, make_role: Callable[..., str],
                                                 connect_as: Callable[..., psycopg.Connection]) -> None:
    alice = connect_as(make_role())
    for graph in _graphs()[:25]:
        envelope = json.dumps(graph)
        iid = alice.execute("SELECT df.start(%s)", (envelope,)).fetchone()[0]
        root = db.execute("SELECT root_node FROM df.instances WHERE id = %s", (iid,)).fetchone()[0]
        nodes = {r["id"]: r for r in db.cursor(row_factory=psycopg.rows.dict_row).execute(
            "SELECT id, node_type, query, result_name, left_node, right_node, parent_id, slot, status "
            "FROM df.nodes WHERE instance_id = %s", (iid,)).fetchall()}
        model = _model_flatten(graph)
        order = _preorder(nodes, root)
        assert len(order) == len(nodes) == len(model)
        # Ids: a random base walked by 2654435761 modulo 2^32, in pre-order.
        base = int(order[0], 16)
        assert [int(n, 16) for n in order] == [(base + k * 2654435761) % 2**32 for k in range(len(order))]
        by_ord = {k + 1: nid for k, nid in enumerate(order)}
        for row in model:
            n = nodes[by_ord[row["ord"]]]
            assert (n["node_type"], n["result_name"], n["slot"], n["status"]) == \
                (row["node_type"], row["result_name"], row["slot"], "pending")
            assert n["parent_id"] == (by_ord[row["parent_ord"]] if row["parent_ord"] else None)
            assert n["left_node"] == (by_ord[row["left_ord"]] if row["left_ord"] else None)
            assert n["right_node"] == (by_ord[row["right_ord"]] if row["right_ord"] else None)
            # References as json_build_object renders them (the text 0.2.0 stored).
            if row["cond_ord"]:
                assert n["query"] == '{"condition_node" : "' + by_ord[row["cond_ord"]] + '"}'
            elif row["extra_ords"]:
                extra = ",".join(f'"{by_ord[e]}"' for e in row["extra_ords"])
                assert n["query"] == '{"extra_nodes" : [' + extra + "]}"
            else:
                assert n["query"] == row["query"]


# ---------------------------------------------------------------------------
# The keyset list page (STYLE.md 14): an index condition on created_at.
# ---------------------------------------------------------------------------

N_SEEDED = 100_000


@pytest.fixture
def seeded(db: psycopg.Connection, make_role: Callable[..., str]) -> str:
    role = make_role()
    with db.transaction():
        # Three instances per second, so pages split ties on created_at; every 100th has a label,
        # every 50th failed.
        db.execute(
            "INSERT INTO df.instances (id, label, root_node, status, submitted_by, created_at) "
            "SELECT pg_catalog.lpad(pg_catalog.to_hex(g), 8, '0'), CASE WHEN g %% 100 = 0 THEN 'lbl' END, "
            "       '00000001', CASE WHEN g %% 50 = 0 THEN 'failed' ELSE 'running' END, %s::regrole, "
            "       '2024-01-01'::timestamptz + (g / 3) * interval '1 second' "
            "  FROM generate_series(1, %s) AS g",
            (role, N_SEEDED),
        )
        db.execute(
            "INSERT INTO df.nodes (id, instance_id, node_type, query, status, submitted_by) "
            "SELECT '00000001', pg_catalog.lpad(pg_catalog.to_hex(g), 8, '0'), 'SQL', 'SELECT 1', 'running', "
            "       %s::regrole FROM generate_series(1, %s) AS g",
            (role, N_SEEDED),
        )
    db.execute("ANALYZE df.instances")
    return role


def _plan_nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _plan_nodes(child)


@pytest.mark.timeout(300)
def test_a_deep_list_page_reads_through_an_index_condition_on_created_at(
        db: psycopg.Connection, seeded: str) -> None:
    # The cursor of instance 10,000 of 100,000: newest first, its page starts 90,000 rows deep.
    cursor = db.execute("SELECT df._encode_cursor(created_at, id) FROM df.instances WHERE id = %s",
                        (f"{10_000:08x}",)).fetchone()[0]
    # auto_explain shows the plan of the query inside the function, as it really ran; the
    # caller's role makes row-level security apply.
    db.execute("LOAD 'auto_explain'")
    db.execute("SET auto_explain.log_min_duration = 0")
    db.execute("SET auto_explain.log_nested_statements = on")
    db.execute("SET auto_explain.log_format = json")
    db.execute("SET auto_explain.log_analyze = on")
    db.execute("SET auto_explain.log_timing = off")
    db.execute("SET auto_explain.log_level = notice")
    notices: list[str] = []
    db.add_notice_handler(lambda diag: notices.append(diag.message_primary or ""))
    db.execute(f'SET ROLE "{seeded}"')
    try:
        for status, label, index in [(None, None, ("idx_instances_created_at", "idx_instances_submitted_by")),
                                     ("failed", None, ("idx_instances_status",)),
                                     (None, "lbl", ("idx_instances_label",))]:
            for limit in (1, 7, 100):
                notices.clear()
                got = db.execute("SELECT instance_id, created_at, next_cursor "
                                 "FROM df.list_instances(%s, %s, %s, %s)",
                                 (status, limit, label, cursor)).fetchall()
                # The promised order: created_at DESC, then id; strictly after the cursor's row.
                want = db.execute(
                    "SELECT i.id::text, i.created_at FROM df.instances AS i, "
                    "      (SELECT created_at AS ts, id AS id0 FROM df.instances WHERE id = %s) AS c "
                    " WHERE (i.created_at < c.ts OR (i.created_at = c.ts AND i.id > c.id0)) "
                    "   AND (%s::text IS NULL OR i.status = %s) AND (%s::text IS NULL OR i.label = %s) "
                    " ORDER BY i.created_at DESC, i.id LIMIT %s",
                    (f"{10_000:08x}", status, status, label, label, limit + 1)).fetchall()
                assert [r[:2] for r in got] == want[:limit]
                more = len(want) > limit
                assert all((r[2] is not None) == more for r in got)
                plans = [json.loads(n.split("plan:", 1)[1]) for n in notices if n.startswith("duration")]
                page = [p for p in plans if "WITH page AS" in p["Query Text"]]
                assert len(page) == 1, notices
                scans = [n for n in _plan_nodes(page[0]["Plan"]) if n.get("Relation Name") == "instances"]
                assert len(scans) == 1, scans
                scan = scans[0]
                assert scan["Node Type"] in ("Index Scan", "Index Only Scan"), scan
                assert scan["Index Name"] in index, scan
                assert "created_at <=" in scan["Index Cond"], scan
                # A deep page reads its own rows (and the ties it skips), not the 90,000 before it.
                read = scan["Actual Rows"] + scan.get("Rows Removed by Filter", 0)
                assert read <= limit + 1 + 3, scan
    finally:
        db.execute("RESET ROLE")


def test_pages_split_ties_on_created_at_by_id(make_role: Callable[..., str],
                                              connect_as: Callable[..., psycopg.Connection]) -> None:
    alice = connect_as(make_role(), autocommit=False)
    # One transaction: every instance gets the same created_at (now()).
    ids = sorted(alice.execute("SELECT df.start('SELECT 1')").fetchone()[0] for _ in range(7))
    alice.commit()
    seen: list[str] = []
    cursor = None
    while True:
        rows = alice.execute("SELECT instance_id, next_cursor FROM df.list_instances(NULL, 3, NULL, %s)",
                             (cursor,)).fetchall()
        seen += [r[0] for r in rows]
        cursor = rows[-1][1] if rows else None
        if cursor is None:
            break
    alice.commit()
    assert seen == ids
