"""df.instance_nodes (inferred status), df.instance_executions, df.metrics and
df.explain's instance mode, on hand-built instance states.

Rows are inserted directly as the superuser to simulate each stage an
instance goes through (PGD_REFERENCE 3.1/3.2).  The expected inferred
statuses and explain texts are written by hand from PGD_REFERENCE 3.2 / 3.4.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from psycopg import errors


def padded(*lines: str) -> str:
    width = max(len(line) for line in lines) + 4
    return "\n".join(line.ljust(width) for line in lines)


@dataclass
class N:
    """A hand-built df.nodes row."""

    id: str
    type: str
    query: str | None = None
    name: str | None = None
    left: str | None = None
    right: str | None = None
    parent: str | None = None
    slot: str | None = None
    status: str = "pending"
    result: Any = None  # JSON-able; only for completed/failed
    ex: str | None = None  # status_details execution_id


def build(
    db: psycopg.Connection,
    role: str,
    inst: str,
    nodes: list[N],
    *,
    status: str,
    label: str | None = None,
    output: str | None = None,
    execution_count: int = 1,
    created_at: str = "2024-06-15 12:00:00+00",
    completed_at: str | None = None,
) -> None:
    with db.transaction():
        db.execute(
            "INSERT INTO df.instances (id, label, root_node, status, submitted_by, created_at, completed_at, "
            "output, execution_count) VALUES (%s, %s, %s, %s, %s::regrole, %s, %s, %s, %s)",
            (inst, label, nodes[0].id, status, role, created_at, completed_at, output, execution_count),
        )
        for n in nodes:
            db.execute(
                "INSERT INTO df.nodes (id, instance_id, node_type, query, result_name, left_node, right_node, "
                "status, result, result_text, submitted_by, parent_id, slot, status_details) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s::jsonb, %s, %s::regrole, %s, %s, %s::jsonb)",
                (
                    n.id,
                    inst,
                    n.type,
                    n.query,
                    n.name,
                    n.left,
                    n.right,
                    n.status,
                    None if n.result is None else json.dumps(n.result),
                    None if n.result is None else json.dumps(n.result),
                    role,
                    n.parent,
                    n.slot,
                    None if n.ex is None else json.dumps({"execution_id": n.ex}),
                ),
            )


@pytest.fixture
def role(make_role: Callable[..., str]) -> str:
    return make_role()


@pytest.fixture
def user(role: str, connect_as: Callable[..., psycopg.Connection]) -> psycopg.Connection:
    return connect_as(role)


def inferred(conn: psycopg.Connection, inst: str) -> dict[str, tuple[str, str | None]]:
    rows = conn.execute(
        "SELECT node_id, inferred_status, inferred_status_from_ancestor_id FROM df.instance_nodes(%s)",
        (inst,),
    ).fetchall()
    out = {r[0]: (r[1], r[2]) for r in rows}
    assert len(out) == len(rows)
    return out


def explain(conn: psycopg.Connection, text: str) -> str:
    row = conn.execute("SELECT df.explain(%s)", (text,)).fetchone()
    assert row is not None
    return str(row[0])


I = "a1b2c3d4"  # noqa: E741  the instance id used by every scenario
SQ = '{"rows":[{"x":1}],"row_count":1}'


def then2(status: str, left: tuple[str, str | None], right: tuple[str, str | None]) -> list[N]:
    """THEN(SELECT 1, SELECT 2) with the given (status, execution_id) per node."""
    return [
        N(
            "00000001",
            "THEN",
            left="00000002",
            right="00000003",
            status=status,
            ex=None if status == "pending" else f"{I}::1",
        ),
        N(
            "00000002",
            "SQL",
            "SELECT 1",
            parent="00000001",
            slot="left",
            status=left[0],
            ex=left[1],
            result=json.loads(SQ) if left[0] == "completed" else None,
        ),
        N(
            "00000003",
            "SQL",
            "SELECT 2",
            parent="00000001",
            slot="right",
            status=right[0],
            ex=right[1],
            result=json.loads(SQ) if right[0] == "completed" else None,
        ),
    ]


# ---------------------------------------------------------------------------
# Stages
# ---------------------------------------------------------------------------


def test_pending(db: psycopg.Connection, role: str, user: psycopg.Connection) -> None:
    build(
        db, role, I, then2("pending", ("pending", None), ("pending", None)), status="pending", label="nightly"
    )
    assert inferred(user, I) == {
        "00000001": ("pending", None),
        "00000002": ("pending", None),
        "00000003": ("pending", None),
    }
    assert explain(user, I) == padded(
        "Instance: a1b2c3d4 (nightly)",
        "Status:   ○ pending",
        "",
        "SQL: SELECT 1 ○",
        "→ SQL: SELECT 2 ○",
    )
    # No worker has started it: no execution yet.
    assert user.execute("SELECT * FROM df.instance_executions(%s)", (I,)).fetchall() == []


def test_running(db: psycopg.Connection, role: str, user: psycopg.Connection) -> None:
    build(db, role, I, then2("running", ("completed", f"{I}::1"), ("running", f"{I}::1")), status="running")
    assert inferred(user, I) == {
        "00000001": ("running", None),
        "00000002": ("completed", None),
        "00000003": ("running", None),
    }
    assert explain(user, I) == padded(
        "Instance: a1b2c3d4", "Status:   ⏳ Running", "", "SQL: SELECT 1 ✓", "→ SQL: SELECT 2 ⏳"
    )
    # 1 started + THEN, SELECT 1, SELECT 2 started + SELECT 1 finished; duration 0 while unfinished.
    assert user.execute("SELECT * FROM df.instance_executions(%s)", (I,)).fetchall() == [
        (1, "Running", 5, 0, None)
    ]


def test_completed(db: psycopg.Connection, role: str, user: psycopg.Connection) -> None:
    build(
        db,
        role,
        I,
        then2("completed", ("completed", f"{I}::1"), ("completed", f"{I}::1")),
        status="completed",
        output=SQ,
        created_at="2024-06-15 12:00:00+00",
        completed_at="2024-06-15 12:00:01.5+00",
    )
    assert inferred(user, I) == {
        "00000001": ("completed", None),
        "00000002": ("completed", None),
        "00000003": ("completed", None),
    }
    assert explain(user, I) == padded(
        "Instance: a1b2c3d4",
        "Status:   ✓ Completed",
        "Output:   " + SQ,
        "",
        "SQL: SELECT 1 ✓",
        "→ SQL: SELECT 2 ✓",
    )
    # 1 started + 3 started + 3 finished + 1 completed; 1.5 s.
    assert user.execute("SELECT * FROM df.instance_executions(%s)", (I,)).fetchall() == [
        (1, "Completed", 8, 1500, SQ)
    ]


def test_failed_then_skips_the_rest(db: psycopg.Connection, role: str, user: psycopg.Connection) -> None:
    # 'SELECT 1' ~> 'SELECT 1/0' ~> 'SELECT 3' = THEN(THEN(a, b), c); b failed.
    err = "division by zero"
    nodes = [
        N("00000001", "THEN", left="00000002", right="00000005", status="failed", result=err, ex=f"{I}::1"),
        N(
            "00000002",
            "THEN",
            left="00000003",
            right="00000004",
            parent="00000001",
            slot="left",
            status="failed",
            result=err,
            ex=f"{I}::1",
        ),
        N(
            "00000003",
            "SQL",
            "SELECT 1",
            parent="00000002",
            slot="left",
            status="completed",
            result=json.loads(SQ),
            ex=f"{I}::1",
        ),
        N(
            "00000004",
            "SQL",
            "SELECT 1/0",
            parent="00000002",
            slot="right",
            status="failed",
            result=err,
            ex=f"{I}::1",
        ),
        N("00000005", "SQL", "SELECT 3", parent="00000001", slot="right"),
    ]
    build(db, role, I, nodes, status="failed", output=err)
    assert inferred(user, I) == {
        "00000001": ("failed", None),
        "00000002": ("failed", None),
        "00000003": ("completed", None),
        "00000004": ("failed", None),
        "00000005": ("skipped", "00000001"),  # the rest of a failed THEN
    }
    assert explain(user, I) == padded(
        "Instance: a1b2c3d4",
        "Status:   ✗ Failed",
        "Output:   division by zero",
        "",
        "SQL: SELECT 1 ✓",
        "→ SQL: SELECT 1/0 ✗",
        "→ SQL: SELECT 3 ⊘",
    )
    # skipped is never stored
    row = db.execute(
        "SELECT count(*) FROM df.nodes WHERE status NOT IN ('pending','running','completed','failed')"
    )
    assert row.fetchone() == (0,)


def test_cancelled(db: psycopg.Connection, role: str, user: psycopg.Connection) -> None:
    # A cancel can leave nodes running; inference reads node statuses only.
    build(
        db,
        role,
        I,
        then2("running", ("completed", f"{I}::1"), ("running", f"{I}::1")),
        status="cancelled",
        output="Cancelled by user",
    )
    assert inferred(user, I) == {
        "00000001": ("running", None),
        "00000002": ("completed", None),
        "00000003": ("running", None),
    }
    # Output is df.instance_info's: none for a cancelled instance.
    assert explain(user, I) == padded(
        "Instance: a1b2c3d4", "Status:   ✗ Cancelled", "", "SQL: SELECT 1 ✓", "→ SQL: SELECT 2 ⏳"
    )
    rows = user.execute(
        "SELECT execution_id, status, event_count, output FROM df.instance_executions(%s)", (I,)
    )
    assert rows.fetchall() == [(1, "Cancelled", 6, None)]


def test_race_loser_is_skipped(db: psycopg.Connection, role: str, user: psycopg.Connection) -> None:
    # df.race('SELECT 1', df.sleep(60)): each branch is a child scope "<id>::1::<branch root>".
    nodes = [
        N(
            "00000001",
            "RACE",
            left="00000002",
            right="00000003",
            status="completed",
            result=json.loads(SQ),
            ex=f"{I}::1",
            name="winner",
        ),
        N(
            "00000002",
            "SQL",
            "SELECT 1",
            parent="00000001",
            slot="left",
            status="completed",
            result=json.loads(SQ),
            ex=f"{I}::1::00000002::1",
        ),
        N(
            "00000003",
            "SLEEP",
            "60",
            parent="00000001",
            slot="right",
            status="running",
            ex=f"{I}::1::00000003::1",
        ),
    ]
    build(db, role, I, nodes, status="completed", output=SQ, completed_at="2024-06-15 12:00:02+00")
    assert inferred(user, I) == {
        "00000001": ("completed", None),
        "00000002": ("completed", None),
        "00000003": ("skipped", "00000001"),
    }
    assert explain(user, I) == padded(
        "Instance: a1b2c3d4",
        "Status:   ✓ Completed",
        "Output:   " + SQ,
        "",
        "RACE ✓",
        "    ║ branch 1:",
        "      ├─SQL: SELECT 1 ✓",
        "    ║ branch 2:",
        "      └─SLEEP 60s ⊘",
    )


def test_failed_join_branch_skips_unfinished_siblings(
    db: psycopg.Connection, role: str, user: psycopg.Connection
) -> None:
    # df.join3('SELECT 1/0', 'SELECT 1' ~> 'SELECT 2', 'SELECT 3')
    j = "JOIN branch 1 failed: division by zero"
    nodes = [
        N(
            "00000001",
            "JOIN",
            '{"extra_nodes":["00000006"]}',
            left="00000002",
            right="00000003",
            status="failed",
            result=j,
            ex=f"{I}::1",
        ),
        N(
            "00000002",
            "SQL",
            "SELECT 1/0",
            parent="00000001",
            slot="left",
            status="failed",
            result="division by zero",
            ex=f"{I}::1::00000002::1",
        ),
        N(
            "00000003",
            "THEN",
            left="00000004",
            right="00000005",
            parent="00000001",
            slot="right",
            status="running",
            ex=f"{I}::1::00000003::1",
        ),
        N(
            "00000004",
            "SQL",
            "SELECT 1",
            parent="00000003",
            slot="left",
            status="completed",
            result=json.loads(SQ),
            ex=f"{I}::1::00000003::1",
        ),
        N("00000005", "SQL", "SELECT 2", parent="00000003", slot="right"),
        N(
            "00000006",
            "SQL",
            "SELECT 3",
            parent="00000001",
            slot="extra1",
            status="running",
            ex=f"{I}::1::00000006::1",
        ),
    ]
    build(db, role, I, nodes, status="failed", output=j)
    assert inferred(user, I) == {
        "00000001": ("failed", None),
        "00000002": ("failed", None),
        "00000003": ("skipped", "00000001"),
        "00000004": ("completed", None),
        "00000005": ("skipped", "00000001"),
        "00000006": ("skipped", "00000001"),
    }
    assert explain(user, I) == padded(
        "Instance: a1b2c3d4",
        "Status:   ✗ Failed",
        "Output:   JOIN branch 1 failed: division by zero",
        "",
        "JOIN (3) ✗",
        "    ║ branch 1:",
        "      ├─SQL: SELECT 1/0 ✗",
        "    ║ branch 2:",
        "      ├─SQL: SELECT 1 ✓",
        "      → SQL: SELECT 2 ⊘",
        "    ║ branch 3:",
        "      └─SQL: SELECT 3 ⊘",
    )


def test_untaken_if_arm_is_skipped(db: psycopg.Connection, role: str, user: psycopg.Connection) -> None:
    nodes = [
        N(
            "00000001",
            "IF",
            '{"condition_node":"00000002"}',
            left="00000003",
            right="00000004",
            status="completed",
            result=json.loads(SQ),
            ex=f"{I}::1",
        ),
        N(
            "00000002",
            "SQL",
            "SELECT true",
            parent="00000001",
            slot="condition",
            status="completed",
            result={"rows": [{"bool": True}], "row_count": 1},
            ex=f"{I}::1",
        ),
        N(
            "00000003",
            "SQL",
            "SELECT 1",
            parent="00000001",
            slot="left",
            status="completed",
            result=json.loads(SQ),
            ex=f"{I}::1",
        ),
        N("00000004", "SQL", "SELECT 2", parent="00000001", slot="right"),
    ]
    build(db, role, I, nodes, status="completed", output=SQ, label="branchy")
    assert inferred(user, I) == {
        "00000001": ("completed", None),
        "00000002": ("completed", None),
        "00000003": ("completed", None),
        "00000004": ("skipped", "00000001"),
    }
    assert explain(user, I) == padded(
        "Instance: a1b2c3d4 (branchy)",
        "Status:   ✓ Completed",
        "Output:   " + SQ,
        "",
        "IF ✓",
        "    ? condition:",
        "      └─SQL: SELECT true ✓",
        "    ✓ then:",
        "      └─SQL: SELECT 1 ✓",
        "    ✗ else:",
        "      └─SQL: SELECT 2 ⊘",
    )


def mid_loop(c_status: str, c_ex: str | None, b_status: str = "running", b_ex: str = f"{I}::3") -> list[N]:
    # Root df.loop('SELECT 1' ~> 'SELECT 2', 'SELECT more()') in its 3rd iteration.
    return [
        N(
            "00000001",
            "LOOP",
            '{"condition_node":"00000005"}',
            left="00000002",
            status="running",
            ex=f"{I}::1",
        ),
        N(
            "00000002",
            "THEN",
            left="00000003",
            right="00000004",
            parent="00000001",
            slot="left",
            status="running",
            ex=f"{I}::3",
        ),
        N(
            "00000003",
            "SQL",
            "SELECT 1",
            parent="00000002",
            slot="left",
            status="completed",
            result=json.loads(SQ),
            ex=f"{I}::3",
        ),
        N(
            "00000004",
            "SQL",
            "SELECT 2",
            parent="00000002",
            slot="right",
            status=b_status,
            ex=b_ex,
            result=json.loads(SQ) if b_status == "completed" else None,
        ),
        N(
            "00000005",
            "SQL",
            "SELECT more()",
            parent="00000001",
            slot="condition",
            status=c_status,
            ex=c_ex,
            result={"rows": [{"more": True}], "row_count": 1} if c_status == "completed" else None,
        ),
    ]


def test_mid_loop(db: psycopg.Connection, role: str, user: psycopg.Connection) -> None:
    # Our engine resets the body to pending when an iteration starts: the condition is pending again.
    build(db, role, I, mid_loop("pending", None), status="running", execution_count=3)
    assert inferred(user, I) == {
        "00000001": ("running", None),
        "00000002": ("running", None),
        "00000003": ("completed", None),
        "00000004": ("running", None),
        "00000005": ("pending", None),
    }
    assert explain(user, I) == padded(
        "Instance: a1b2c3d4",
        "Status:   ⏳ Running",
        "",
        "LOOP (while) ⏳",
        "    ↻ body:",
        "      └─SQL: SELECT 1 ✓",
        "      → SQL: SELECT 2 ⏳",
        "    ? while:",
        "      └─SQL: SELECT more() ○",
    )
    # Executions 3 (current), 2, 1 (continued as new); events of execution 3:
    # 1 + THEN, SELECT 1, SELECT 2 started + SELECT 1 finished.
    assert user.execute("SELECT * FROM df.instance_executions(%s)", (I,)).fetchall() == [
        (3, "Running", 5, 0, None),
        (2, "ContinuedAsNew", None, None, None),
        (1, "ContinuedAsNew", None, None, None),
    ]
    assert user.execute("SELECT execution_id FROM df.instance_executions(%s, 2)", (I,)).fetchall() == [
        (3,),
        (2,),
    ]
    assert user.execute("SELECT execution_id FROM df.instance_executions(%s, 1)", (I,)).fetchall() == [(3,)]


def test_superseded_iteration_reads_pending(
    db: psycopg.Connection, role: str, user: psycopg.Connection
) -> None:
    # pg_durable leaves an earlier iteration's results in place: the condition
    # and SELECT 2 still say completed, stamped with generation 2 < 3.
    build(
        db,
        role,
        I,
        mid_loop("completed", f"{I}::2", b_status="completed", b_ex=f"{I}::2"),
        status="running",
        execution_count=3,
    )
    assert inferred(user, I) == {
        "00000001": ("running", None),
        "00000002": ("running", None),
        "00000003": ("completed", None),
        # superseded, no terminal ancestor: pending, from the highest-gen ancestor
        "00000004": ("pending", "00000002"),  # THEN (gen 3) > LOOP (gen 1)
        "00000005": ("pending", "00000001"),  # only the LOOP above it
    }
    lines = explain(user, I).split("\n")
    assert [line.rstrip() for line in lines[3:]] == [
        "LOOP (while) ⏳",
        "    ↻ body:",
        "      └─SQL: SELECT 1 ✓",
        "      → SQL: SELECT 2 ○",
        "    ? while:",
        "      └─SQL: SELECT more() ○",
    ]


def test_superseded_through_the_parent_generation(
    db: psycopg.Connection, role: str, user: psycopg.Connection
) -> None:
    # Root df.loop(df.join('SELECT 1', 'SELECT 2')) in execution 2.  Branch
    # 'SELECT 2' still holds its iteration-1 result, stamped "<id>::1::00000004::1":
    # gen 1 is the highest of its own scope, but that scope was spawned by
    # root generation 1 < 2, so it is superseded all the same.
    nodes = [
        N("00000001", "LOOP", left="00000002", status="running", ex=f"{I}::1"),
        N(
            "00000002",
            "JOIN",
            left="00000003",
            right="00000004",
            parent="00000001",
            slot="left",
            status="running",
            ex=f"{I}::2",
        ),
        N(
            "00000003",
            "SQL",
            "SELECT 1",
            parent="00000002",
            slot="left",
            status="completed",
            result=json.loads(SQ),
            ex=f"{I}::2::00000003::1",
        ),
        N(
            "00000004",
            "SQL",
            "SELECT 2",
            parent="00000002",
            slot="right",
            status="completed",
            result=json.loads(SQ),
            ex=f"{I}::1::00000004::1",
        ),
    ]
    build(db, role, I, nodes, status="running", execution_count=2)
    assert inferred(user, I) == {
        "00000001": ("running", None),
        "00000002": ("running", None),
        "00000003": ("completed", None),
        "00000004": ("pending", "00000002"),  # highest-gen ancestor: the JOIN (gen 2)
    }
    assert [line.rstrip() for line in explain(user, I).split("\n")[3:]] == [
        "LOOP (infinite) ⏳",
        "    ↻ body:",
        "      └─JOIN (2) ⏳",
        "          ║ branch 1:",
        "            ├─SQL: SELECT 1 ✓",
        "          ║ branch 2:",
        "            └─SQL: SELECT 2 ○",
    ]


def test_superseded_with_terminal_ancestor_reads_skipped(
    db: psycopg.Connection, role: str, user: psycopg.Connection
) -> None:
    # 'SELECT 0' ~> df.loop(df.if('SELECT k()', 'SELECT 1', 'SELECT 2'), 'SELECT more()'), finished.
    # The loop is a child scope "<id>::1::00000003"; iteration 1 took else, iteration 2 took then.
    L = f"{I}::1::00000003"
    nodes = [
        N(
            "00000001",
            "THEN",
            left="00000002",
            right="00000003",
            status="completed",
            result=json.loads(SQ),
            ex=f"{I}::1",
        ),
        N(
            "00000002",
            "SQL",
            "SELECT 0",
            parent="00000001",
            slot="left",
            status="completed",
            result=json.loads(SQ),
            ex=f"{I}::1",
        ),
        N(
            "00000003",
            "LOOP",
            '{"condition_node":"00000008"}',
            left="00000004",
            parent="00000001",
            slot="right",
            status="completed",
            result=json.loads(SQ),
            ex=f"{I}::1",
        ),
        N(
            "00000004",
            "IF",
            '{"condition_node":"00000005"}',
            left="00000006",
            right="00000007",
            parent="00000003",
            slot="left",
            status="completed",
            result=json.loads(SQ),
            ex=f"{L}::2",
        ),
        N(
            "00000005",
            "SQL",
            "SELECT k()",
            parent="00000004",
            slot="condition",
            status="completed",
            result=json.loads(SQ),
            ex=f"{L}::2",
        ),
        N(
            "00000006",
            "SQL",
            "SELECT 1",
            parent="00000004",
            slot="left",
            status="completed",
            result=json.loads(SQ),
            ex=f"{L}::2",
        ),
        N(
            "00000007",
            "SQL",
            "SELECT 2",
            parent="00000004",
            slot="right",
            status="completed",
            result=json.loads(SQ),
            ex=f"{L}::1",
        ),
        N(
            "00000008",
            "SQL",
            "SELECT more()",
            parent="00000003",
            slot="condition",
            status="completed",
            result={"rows": [{"more": False}], "row_count": 1},
            ex=f"{L}::2",
        ),
        # A stray row no edge reaches: shown with its stored status.
        N("0000000f", "SQL", "SELECT 'stray'", status="failed", result="x", ex=f"{I}::1"),
    ]
    build(db, role, I, nodes, status="completed", output=SQ)
    got = inferred(user, I)
    assert got == {
        "00000001": ("completed", None),
        "00000002": ("completed", None),
        "00000003": ("completed", None),
        "00000004": ("completed", None),
        "00000005": ("completed", None),
        "00000006": ("completed", None),
        # terminal but superseded; the nearest terminal current ancestor is the IF
        "00000007": ("skipped", "00000004"),
        "00000008": ("completed", None),
        "0000000f": ("failed", None),
    }


def test_instance_nodes_columns(db: psycopg.Connection, role: str, user: psycopg.Connection) -> None:
    build(db, role, I, then2("running", ("completed", f"{I}::1"), ("running", f"{I}::1")), status="running")
    cur = user.execute("SELECT * FROM df.instance_nodes(%s) WHERE node_id = '00000002'", (I,))
    assert [d.name for d in cur.description or []] == [
        "node_id",
        "node_type",
        "query",
        "result_name",
        "left_node",
        "right_node",
        "status",
        "result",
        "status_details",
        "inferred_status",
        "inferred_status_from_ancestor_id",
        "updated_at",
        "resource_version",
    ]
    row = cur.fetchone()
    assert row is not None
    assert row[:7] == ("00000002", "SQL", "SELECT 1", None, None, None, "completed")
    assert row[7] == '{"rows": [{"x": 1}], "row_count": 1}'  # jsonb as text
    assert row[8] == '{"execution_id": "a1b2c3d4::1"}'
    assert row[9:11] == ("completed", None)
    version = db.execute(
        "SELECT resource_version FROM df.nodes WHERE instance_id = %s AND id = '00000002'", (I,)
    )
    assert row[12] == (version.fetchone() or [None])[0]
    root = user.execute(
        "SELECT left_node, right_node FROM df.instance_nodes(%s) WHERE node_id = '00000001'", (I,)
    )
    assert root.fetchone() == ("00000002", "00000003")


def test_instance_nodes_compat_form(db: psycopg.Connection, role: str, user: psycopg.Connection) -> None:
    build(db, role, I, then2("running", ("completed", f"{I}::1"), ("running", f"{I}::1")), status="running")
    cur = user.execute("SELECT * FROM df.instance_nodes(%s, 3) ORDER BY node_id", (I,))
    assert [d.name for d in cur.description or []] == [
        "execution_id",
        "node_id",
        "node_type",
        "query",
        "result_name",
        "left_node",
        "right_node",
        "status",
        "result",
        "updated_at",
    ]
    rows = cur.fetchall()
    assert [r[:8] for r in rows] == [
        (1, "00000001", "THEN", None, None, "00000002", "00000003", "running"),
        (1, "00000002", "SQL", "SELECT 1", None, None, None, "completed"),
        (1, "00000003", "SQL", "SELECT 2", None, None, None, "running"),
    ]
    assert rows[1][8] == '{"rows": [{"x": 1}], "row_count": 1}'
    assert user.execute("SELECT * FROM df.instance_nodes(%s, NULL)", (I,)).fetchall() == []


def test_visibility(
    db: psycopg.Connection,
    role: str,
    user: psycopg.Connection,
    make_role: Callable[..., str],
    connect_as: Callable[..., psycopg.Connection],
) -> None:
    build(db, role, I, then2("running", ("completed", f"{I}::1"), ("running", f"{I}::1")), status="running")
    other = connect_as(make_role())
    assert other.execute("SELECT * FROM df.instance_nodes(%s)", (I,)).fetchall() == []
    assert other.execute("SELECT * FROM df.instance_nodes(%s, 1)", (I,)).fetchall() == []
    assert other.execute("SELECT * FROM df.instance_executions(%s)", (I,)).fetchall() == []
    assert explain(other, I) == "Instance 'a1b2c3d4' not found"
    # unknown ids and NULL (STRICT)
    assert user.execute("SELECT * FROM df.instance_nodes('ffffffff')").fetchall() == []
    assert user.execute("SELECT * FROM df.instance_nodes(NULL)").fetchall() == []
    assert user.execute("SELECT * FROM df.instance_executions('ffffffff')").fetchall() == []
    assert user.execute("SELECT * FROM df.instance_executions(%s, NULL)", (I,)).fetchall() == []
    # the owner of the rows sees them
    assert len(user.execute("SELECT * FROM df.instance_nodes(%s)", (I,)).fetchall()) == 3


def test_no_nodes(db: psycopg.Connection, role: str, user: psycopg.Connection) -> None:
    # df.start never leaves an instance without nodes; simulate a damaged one
    # (this test's database is thrown away afterwards).
    db.execute("ALTER TABLE df.instances DROP CONSTRAINT instances_root_node_same_instance_fkey")
    db.execute(
        "INSERT INTO df.instances (id, root_node, status, submitted_by) VALUES (%s, '00000001', 'pending', %s)",
        (I, role),
    )
    assert explain(user, I) == "No nodes found for instance 'a1b2c3d4'"
    assert user.execute("SELECT * FROM df.instance_nodes(%s)", (I,)).fetchall() == []


def test_explain_output_cut_by_characters(
    db: psycopg.Connection, role: str, user: psycopg.Connection
) -> None:
    out = json.dumps({"rows": [{"t": "é" * 80}], "row_count": 1}, ensure_ascii=False)
    build(
        db,
        role,
        I,
        then2("completed", ("completed", f"{I}::1"), ("completed", f"{I}::1")),
        status="completed",
        output=out,
    )
    lines = explain(user, I).split("\n")
    assert lines[2].rstrip() == "Output:   " + out[:57] + "..."


def test_instance_executions_limits(db: psycopg.Connection, role: str, user: psycopg.Connection) -> None:
    build(db, role, I, then2("running", ("completed", f"{I}::1"), ("running", f"{I}::1")), status="running")
    for bad in (0, -1):
        with pytest.raises(psycopg.Error) as info:
            user.execute("SELECT * FROM df.instance_executions(%s, %s)", (I, bad))
        assert info.value.sqlstate == "DF009"
        assert info.value.diag.message_primary == "limit_count must be at least 1"
    with pytest.raises(psycopg.Error) as info:
        user.execute("SELECT * FROM df.instance_executions(%s, 10001)", (I,))
    assert info.value.sqlstate == "DF009"
    assert len(user.execute("SELECT * FROM df.instance_executions(%s, 10000)", (I,)).fetchall()) == 1
    cur = user.execute("SELECT * FROM df.instance_executions(%s)", (I,))
    assert [d.name for d in cur.description or []] == [
        "execution_id",
        "status",
        "event_count",
        "duration_ms",
        "output",
    ]


def test_instance_executions_failed_duration(
    db: psycopg.Connection, role: str, user: psycopg.Connection
) -> None:
    # Execution 2 of a failed root loop: duration from the earliest change of a
    # node of this generation (failed has no completed_at: updated_at ends it).
    nodes = mid_loop("pending", None, b_status="failed", b_ex=f"{I}::2")
    nodes[0].status, nodes[0].result = "failed", "boom"
    nodes[1].ex = nodes[2].ex = f"{I}::2"
    nodes[1].status, nodes[1].result = "failed", "boom"
    nodes[3].result = "boom"
    build(db, role, I, nodes, status="failed", output="boom", execution_count=2)
    with db.transaction():
        # Set the clocks by hand: replica mode skips the triggers that stamp updated_at = now().
        db.execute("SET LOCAL session_replication_role = replica")
        db.execute("UPDATE df.nodes SET updated_at = '2024-06-15 12:00:10+00' WHERE instance_id = %s", (I,))
        db.execute("UPDATE df.nodes SET updated_at = '2024-06-15 12:00:07.25+00' WHERE id = '00000003'")
        db.execute("UPDATE df.instances SET updated_at = '2024-06-15 12:00:10+00' WHERE id = %s", (I,))
    rows = user.execute("SELECT * FROM df.instance_executions(%s)", (I,)).fetchall()
    # events: 1 + THEN, SELECT 1, SELECT 2 started + all three finished + 1 failed
    assert rows == [(2, "Failed", 8, 2750, "boom"), (1, "ContinuedAsNew", None, None, None)]
    # The engine keeps the root loop's iteration start in its state: that is the execution's start.
    with db.transaction():
        db.execute("SET LOCAL session_replication_role = replica")
        db.execute(
            'UPDATE df.nodes SET state = \'{"iteration": 2, "started_at": "2024-06-15T12:00:06+00:00"}\' '
            "WHERE instance_id = %s AND id = '00000001'",
            (I,),
        )
    rows = user.execute("SELECT duration_ms FROM df.instance_executions(%s)", (I,)).fetchall()
    assert rows == [(4000,), (None,)]


# ---------------------------------------------------------------------------
# df.metrics
# ---------------------------------------------------------------------------


def test_metrics_needs_a_grant(
    db: psycopg.Connection,
    user: psycopg.Connection,
    make_role: Callable[..., str],
    connect_as: Callable[..., psycopg.Connection],
) -> None:
    with pytest.raises(errors.InsufficientPrivilege):
        user.execute("SELECT * FROM df.metrics()")
    admin = make_role("admin", grant=False)
    db.execute("SELECT df.grant_usage(%s, with_grant => true)", (admin,))
    row = connect_as(admin).execute("SELECT * FROM df.metrics()").fetchone()
    assert row is not None and row[0] == 0
    prop = db.execute(
        "SELECT prosecdef, proisstrict, pg_get_function_result(oid) FROM pg_proc WHERE oid = 'df.metrics()'::regprocedure"
    ).fetchone()
    assert prop == (
        True,
        True,
        "TABLE(total_instances bigint, running_instances bigint, completed_instances bigint, "
        "failed_instances bigint, total_executions bigint, total_events bigint, id_space_used numeric)",
    )


def test_metrics_counts(db: psycopg.Connection, role: str) -> None:
    build(db, role, "00000a01", [N("00000001", "SQL", "SELECT 1")], status="pending")
    build(
        db,
        role,
        "00000a02",
        [N("00000001", "SQL", "SELECT 1", status="running", ex="00000a02::1")],
        status="running",
    )
    build(
        db,
        role,
        "00000a03",
        [N("00000001", "SQL", "SELECT 1", status="completed", result=1, ex="00000a03::1")],
        status="completed",
        output="1",
    )
    build(
        db,
        role,
        "00000a04",
        [N("00000001", "SQL", "SELECT 1", status="failed", result="x", ex="00000a04::4")],
        status="failed",
        output="x",
        execution_count=4,
    )
    build(
        db,
        role,
        "00000a05",
        [N("00000001", "SQL", "SELECT 1", status="running", ex="00000a05::1")],
        status="cancelled",
    )
    db.execute("UPDATE df.settings SET value = '1000' WHERE key = 'id_space'")
    row = db.execute("SELECT * FROM df.metrics()").fetchone()
    # events: a02 1+1; a03 1+2+1; a04 (current execution 4) 1+2+1; a05 1+1+1
    assert row is not None
    assert row[:6] == (5, 1, 1, 1, 1 + 1 + 4 + 1, 2 + 4 + 4 + 3)
    assert float(row[6]) == pytest.approx(0.005)


# ---------------------------------------------------------------------------
# Signatures
# ---------------------------------------------------------------------------


def test_signatures(db: psycopg.Connection) -> None:
    rows = db.execute(
        "SELECT p.oid::regprocedure::text, pg_get_function_arguments(p.oid), pg_get_function_result(p.oid), "
        "p.proisstrict, p.prosecdef, p.proconfig FROM pg_proc AS p "
        "WHERE p.pronamespace = 'df'::regnamespace "
        "AND p.proname IN ('instance_nodes', 'instance_executions', 'explain') ORDER BY 1"
    ).fetchall()
    assert [r[:5] for r in rows] == [
        ("df.explain(text)", "input text", "text", True, False),
        (
            "df.instance_executions(text,integer)",
            "instance_id text, limit_count integer DEFAULT 5",
            "TABLE(execution_id bigint, status text, event_count bigint, duration_ms bigint, output text)",
            True,
            False,
        ),
        (
            "df.instance_nodes(text)",
            "instance_id_param text",
            "TABLE(node_id text, node_type text, query text, result_name text, left_node text, right_node text, "
            "status text, result text, status_details text, inferred_status text, "
            "inferred_status_from_ancestor_id text, updated_at timestamp with time zone, resource_version bigint)",
            True,
            False,
        ),
        (
            "df.instance_nodes(text,integer)",
            "instance_id_param text, _last_n_executions integer",
            "TABLE(execution_id bigint, node_id text, node_type text, query text, result_name text, left_node text, "
            "right_node text, status text, result text, updated_at timestamp with time zone)",
            True,
            False,
        ),
    ]
    for r in rows:
        assert r[5] == ["search_path=pg_catalog, pg_temp"]


# ---------------------------------------------------------------------------
# Plan guard (STYLE.md 14): with 100,000 instances the lookups use indexes.
# ---------------------------------------------------------------------------


def _plan_nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _plan_nodes(child)


def _scans(conn: psycopg.Connection, sql: str) -> list[tuple[str, str, str | None]]:
    """(relation, scan type, index) of every table scan in the plan of sql."""
    row = conn.execute("EXPLAIN (FORMAT JSON) " + sql).fetchone()
    assert row is not None
    doc = row[0] if not isinstance(row[0], str) else json.loads(row[0])
    return [
        (node["Relation Name"], node["Node Type"], node.get("Index Name"))
        for node in _plan_nodes(doc[0]["Plan"])
        if "Relation Name" in node
    ]


def _only_index(scans: list[tuple[str, str, str | None]], *indexes: str) -> bool:
    return len(scans) == 1 and scans[0][1] in ("Index Scan", "Index Only Scan") and scans[0][2] in indexes


@pytest.fixture
def seeded(db: psycopg.Connection, role: str) -> str:
    with db.transaction():
        db.execute(
            "INSERT INTO df.instances (id, root_node, status, submitted_by, created_at) "
            "SELECT pg_catalog.lpad(pg_catalog.to_hex(g), 8, '0'), '00000001', 'running', %s::regrole, "
            "       '2024-01-01'::timestamptz + g * interval '1 second' "
            "  FROM generate_series(1, 100000) AS g",
            (role,),
        )
        db.execute(
            "INSERT INTO df.nodes (id, instance_id, node_type, query, status, submitted_by, status_details) "
            "SELECT '00000001', pg_catalog.lpad(pg_catalog.to_hex(g), 8, '0'), 'SQL', 'SELECT 1', 'running', "
            "       %s::regrole, jsonb_build_object('execution_id', pg_catalog.lpad(pg_catalog.to_hex(g), 8, '0') || '::1') "
            "  FROM generate_series(1, 100000) AS g",
            (role,),
        )
    db.execute("ANALYZE df.instances")
    db.execute("ANALYZE df.nodes")
    return role


@pytest.mark.timeout(300)
def test_plans_use_indexes(
    db: psycopg.Connection, seeded: str, connect_as: Callable[..., psycopg.Connection]
) -> None:
    user = connect_as(seeded)
    probe = "0000c350"  # instance 50000
    assert user.execute("SELECT inferred_status FROM df.instance_nodes(%s)", (probe,)).fetchall() == [
        ("running",)
    ]

    body = db.execute("SELECT prosrc FROM pg_proc WHERE oid = 'df._inferred_nodes_v1(text)'::regprocedure")
    src = (body.fetchone() or [""])[0]
    for conn in (db, user):
        # The query behind df.instance_nodes, planned as a function body is: generic, $1 unknown.
        conn.execute("SET plan_cache_mode = force_generic_plan")
        conn.execute("PREPARE inferred_nodes(text) AS " + src)
        scans = _scans(conn, f"EXECUTE inferred_nodes('{probe}')")
        conn.execute("DEALLOCATE inferred_nodes")
        conn.execute("RESET plan_cache_mode")
        assert {s[0] for s in scans} == {"nodes", "instances"}
        assert all(s[1] in ("Index Scan", "Index Only Scan", "Bitmap Heap Scan") for s in scans), scans

        # df.instance_info-like lookup by id.
        scans = _scans(conn, f"SELECT i.* FROM df.instances AS i WHERE i.id = '{probe}'")
        # instances_pkey (id) or instances_identity_key (id, submitted_by): both lead with id.
        assert len(scans) == 1 and scans[0][:2] == ("instances", "Index Scan"), scans
        assert scans[0][2] in ("instances_pkey", "instances_identity_key"), scans

        # list paging by (created_at DESC, id): first page and a keyset page.  Under
        # row-level security (submitted_by = the role) the per-submitter index serves the order too.
        ordered = ["idx_instances_created_at"] + (["idx_instances_submitted_by"] if conn is user else [])
        scans = _scans(conn, "SELECT i.id FROM df.instances AS i ORDER BY i.created_at DESC, i.id LIMIT 101")
        assert _only_index(scans, *ordered), scans
        ts, after = "'2024-01-01 12:00:00+00'::timestamptz", "'0000a8c0'"
        scans = _scans(
            conn,
            f"SELECT i.id FROM df.instances AS i WHERE i.created_at < {ts} OR (i.created_at = {ts} AND i.id > {after}) "
            "ORDER BY i.created_at DESC, i.id LIMIT 101",
        )
        assert _only_index(scans, *ordered), scans
