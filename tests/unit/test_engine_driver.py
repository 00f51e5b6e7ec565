"""A tiny stand-in for the worker, so that engine tests read like scenarios.

It builds graphs from pg_durable envelopes (the same shapes ``df.sql``,
``df.seq`` ... produce, materialised as ``df.start`` does), applies each
Decision to an in-memory copy of the node rows, answers SQL steps from a
miniature ``SELECT`` evaluator or canned handlers, advances a fake clock to
the next timer, and records everything it was asked to do.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from durable.engine import (
    Decision,
    EngineSettings,
    InstanceView,
    Node,
    NodeState,
    Signal,
    complete_sql,
    decide,
    fail_sql,
)

T0 = datetime(2024, 6, 15, 12, 30, 0, tzinfo=UTC)
IID = "a1b2c3d4"

# --- envelopes (PGD_REFERENCE 2.1) -------------------------------------------------------

Env = dict[str, Any]


def sql(query: str, name: str | None = None) -> Env:
    return named({"node_type": "SQL", "query": query}, name)


def named(env: Env, name: str | None) -> Env:
    if name is not None:
        env = dict(env, result_name=name)
    return env


def then(*steps: Env, name: str | None = None) -> Env:
    env = steps[0]
    for s in steps[1:]:
        env = {"node_type": "THEN", "left_node": env, "right_node": s}
    return named(env, name)


def if_(cond: Env, then_: Env, else_: Env, name: str | None = None) -> Env:
    return named({"node_type": "IF", "left_node": then_, "right_node": else_, "condition_node": cond}, name)


def if_rows(result: str, then_: Env, else_: Env, name: str | None = None) -> Env:
    q = json.dumps({"condition_type": "result_has_rows", "result_name": result}, separators=(",", ":"))
    return named({"node_type": "IF", "left_node": then_, "right_node": else_, "query": q}, name)


def join(a: Env, b: Env, c: Env | None = None, name: str | None = None) -> Env:
    env: Env = {"node_type": "JOIN", "left_node": a, "right_node": b}
    if c is not None:
        env["extra_nodes"] = [c]
    return named(env, name)


def race(a: Env, b: Env, name: str | None = None) -> Env:
    return named({"node_type": "RACE", "left_node": a, "right_node": b}, name)


def loop(body: Env, cond: Env | None = None, name: str | None = None) -> Env:
    env: Env = {"node_type": "LOOP", "left_node": body}
    if cond is not None:
        env["condition_node"] = cond
    return named(env, name)


def brk(value: str | None = None) -> Env:
    return {"node_type": "BREAK", "query": json.dumps({"break_value": value}, separators=(",", ":"))}


def sleep(seconds: int) -> Env:
    return {"node_type": "SLEEP", "query": str(seconds)}


def schedule(expr: str) -> Env:
    return {"node_type": "WAIT_SCHEDULE", "query": json.dumps({"cron_expr": expr}, separators=(",", ":"))}


def signal(name: str, timeout: int | None = None, result_name: str | None = None) -> Env:
    q = json.dumps({"signal_name": name, "timeout_seconds": timeout}, separators=(",", ":"))
    return named({"node_type": "SIGNAL", "query": q}, result_name)


def http(url: str = "https://example.com/hook") -> Env:
    q = json.dumps({"url": url, "method": "POST", "body": None, "headers": None, "timeout_seconds": 30})
    return {"node_type": "HTTP", "query": q}


def materialize(env: Env) -> tuple[str, dict[str, Node]]:
    """Give every envelope node an 8-hex id (in pre-order) like df.start does."""
    nodes: dict[str, Node] = {}
    counter = iter(range(1, 1_000_000))

    def walk(e: Env, parent: str | None, slot: str | None) -> str:
        nid = f"{next(counter):08x}"
        nodes[nid] = Node(id=nid, node_type=e["node_type"])  # placeholder for order
        left = walk(e["left_node"], nid, "left") if "left_node" in e else None
        right = walk(e["right_node"], nid, "right") if "right_node" in e else None
        cond = walk(e["condition_node"], nid, "condition") if "condition_node" in e else None
        extras = tuple(walk(x, nid, f"extra{i}") for i, x in enumerate(e.get("extra_nodes", [])))
        query = e.get("query")
        if cond is not None:
            query = json.dumps({"condition_node": cond}, separators=(",", ":"))
        elif extras:
            query = json.dumps({"extra_nodes": list(extras)}, separators=(",", ":"))
        nodes[nid] = Node(
            id=nid,
            node_type=e["node_type"],
            query=query,
            result_name=e.get("result_name"),
            left=left,
            right=right,
            condition=cond,
            extras=extras,
            parent=parent,
            slot=slot,
        )
        return nid

    root = walk(env, None, None)
    return root, nodes


# --- results -------------------------------------------------------------------------------


def rows(*records: dict[str, Any]) -> str:
    return json.dumps({"rows": list(records), "row_count": len(records)}, separators=(",", ":"))


class StepFailed(Exception):
    pass


_ITEM = re.compile(
    r"\s*(?P<v>\(?-?\d+(?:\.\d+)?\)?|'(?:[^']|'')*'|true|false|NULL)(?:\s+AS\s+(?P<n>\w+))?\s*(?:,|$)",
    re.IGNORECASE,
)


def mini_select(text: str) -> str:
    """Evaluate ``SELECT lit [AS name], ... [WHERE false]`` and ``FAIL message``."""
    if text.startswith("FAIL "):
        raise StepFailed(text[5:])
    m = re.fullmatch(r"SELECT (.*?)( WHERE false)?", text, re.DOTALL)
    if not m:
        raise StepFailed(f"mini_select cannot run: {text}")
    body, empty = m.group(1), m.group(2)
    record: dict[str, Any] = {}
    pos = 0
    while pos < len(body):
        im = _ITEM.match(body, pos)
        if not im or im.end() == pos:
            raise StepFailed(f"mini_select cannot parse: {body[pos:]}")
        v = im.group("v")
        value: Any
        if v.startswith("'"):
            value = v[1:-1].replace("''", "'")
        elif v.lower() in ("true", "false"):
            value = v.lower() == "true"
        elif v.upper() == "NULL":
            value = None
        else:
            num = v.strip("()")
            value = float(num) if "." in num else int(num)
        record[im.group("n") or "?column?"] = value
        pos = im.end()
    return rows() if empty else rows(record)


Handler = Callable[[str, str, int], str]  # (sql, node id, nth execution of that node) -> result text


@dataclass
class Driver:
    env: Env
    handler: Handler | None = None
    vars: dict[str, str] = field(default_factory=dict)
    label: str | None = None
    settings: EngineSettings = field(default_factory=EngineSettings)
    now: datetime = T0

    def __post_init__(self) -> None:
        self.root, self.nodes = materialize(self.env)
        self.states: dict[str, NodeState] = {n: NodeState() for n in self.nodes}
        self.signals: list[tuple[Signal, bool]] = []  # (signal, consumed)
        self.next_signal_id = 1
        self.status = "running"
        self.output: str | None = None
        self.execution_count = 1
        self.running_sql: dict[str, str] = {}  # node id -> sql, in start order
        self.executed: list[tuple[str, str]] = []  # (node id, sql) of every step run
        self.cancelled: list[str] = []
        self.consumed: list[tuple[int, str]] = []
        self.decisions: list[Decision] = []
        self.runs: dict[str, int] = {}
        self.wake_at: datetime | None = None

    # -- views and decisions ---------------------------------------------------------

    def view(self) -> InstanceView:
        return InstanceView(
            instance_id=IID,
            label=self.label,
            root=self.root,
            nodes=self.nodes,
            states=dict(self.states),
            vars=self.vars,
            signals=[s for s, used in self.signals if not used],
            now=self.now,
            execution_count=self.execution_count,
            settings=self.settings,
        )

    def decide(self) -> Decision:
        d = decide(self.view())
        self.decisions.append(d)
        updated = {u.node_id for u in d.updates}
        assert len(updated) == len(d.updates), "a node is updated twice in one decision"
        for u in d.updates:
            old = self.states[u.node_id]
            self.states[u.node_id] = NodeState(
                status=u.status,
                result_text=u.result_text,
                wake_at=u.wake_at,
                state=json.loads(json.dumps(u.state)),  # persisted verbatim: must be JSON-able
                status_details=u.status_details,
                resource_version=old.resource_version + 1,
            )
        for r in d.run_sql:
            assert r.node_id in updated and self.states[r.node_id].status == "running"
            assert self.nodes[r.node_id].node_type == "SQL"
            self.running_sql[r.node_id] = r.sql
        for nid in d.cancel:
            self.cancelled.append(nid)
            self.running_sql.pop(nid, None)
        ids = {s.id for s, used in self.signals if not used}
        for sid, nid in d.consume:
            assert sid in ids, "consumed a signal that is not queued"
            self.consumed.append((sid, nid))
        used = {sid for sid, _ in d.consume}
        self.signals = [(s, u or s.id in used) for s, u in self.signals]
        self.status, self.output = d.instance_status, d.output
        self.execution_count = d.execution_count
        self.wake_at = d.wake_at
        # in_flight: every running step still wanted, with the text it started with
        assert {r.node_id for r in d.in_flight} == set(self.running_sql), (d.in_flight, self.running_sql)
        for r in d.in_flight:
            assert self.running_sql.get(r.node_id) == r.sql
        return d

    def settle(self) -> Decision:
        """decide(), then check that deciding again at once changes nothing."""
        d = self.decide()
        again = decide(self.view())
        assert again.updates == [] and again.run_sql == [] and again.consume == [] and again.cancel == [], (
            again
        )
        assert again.instance_status == d.instance_status and again.output == d.output
        return d

    # -- the outside world ---------------------------------------------------------------

    def send(self, name: str, data: str = "{}") -> int:
        sid = self.next_signal_id
        self.next_signal_id += 1
        self.signals.append((Signal(sid, name, data), False))
        return sid

    def finish(self, nid: str, result: str | None = None, error: str | None = None) -> None:
        """The worker records a step's end (as complete_sql / fail_sql would have it)."""
        view = self.view()
        u = fail_sql(view, nid, error) if error is not None else complete_sql(view, nid, result or rows())
        old = self.states[nid]
        assert old.status == "running"
        self.states[nid] = replace(
            old,
            status=u.status,
            result_text=u.result_text,
            wake_at=u.wake_at,
            state=u.state,
            status_details=u.status_details,
            resource_version=old.resource_version + 1,
        )
        self.running_sql.pop(nid, None)

    def execute(self, nid: str) -> None:
        sql_text = self.running_sql[nid]
        n = self.runs.get(nid, 0) + 1
        self.runs[nid] = n
        self.executed.append((nid, sql_text))
        try:
            result = self.handler(sql_text, nid, n) if self.handler else mini_select(sql_text)
        except StepFailed as exc:
            self.finish(nid, error=str(exc))
            return
        self.finish(nid, result)

    def run(
        self,
        *,
        order: Callable[[list[str]], str] | None = None,
        max_steps: int = 10_000,
        advance_time: bool = True,
        stop_after: int | None = None,
    ) -> Driver:
        """Play the worker until the instance ends or waits only for signals.

        ``stop_after`` stops (without complaint) after that many steps.
        """
        if stop_after is not None:
            max_steps = stop_after
        self.settle()
        for _ in range(max_steps):
            if self.status != "running":
                return self
            if self.running_sql:
                pending = list(self.running_sql)
                nid = order(pending) if order else pending[0]
                self.execute(nid)
                self.settle()
                continue
            if advance_time and self.wake_at is not None:
                assert self.wake_at > self.now, "a due timer was left waiting"
                self.now = self.wake_at
                self.settle()
                continue
            return self
        if stop_after is not None:
            return self
        raise AssertionError("the instance did not settle")

    # -- reading ------------------------------------------------------------------------

    def node(self, path: str) -> str:
        """Node id by path from the root: 'left.right.condition.extra0'."""
        nid = self.root
        for part in path.split(".") if path else []:
            node = self.nodes[nid]
            nxt = {
                "left": node.left,
                "right": node.right,
                "condition": node.condition,
                "body": node.left,
            }.get(part)
            if part.startswith("extra"):
                nxt = node.extras[int(part[5:])]
            assert nxt is not None, f"no {part} under {nid}"
            nid = nxt
        return nid

    def st(self, path: str = "") -> NodeState:
        return self.states[self.node(path)]

    def result(self, path: str = "") -> Any:
        text = self.st(path).result_text
        return None if text is None else json.loads(text)

    def exec_id(self, path: str = "") -> str | None:
        d = self.st(path).status_details
        return None if d is None else str(d["execution_id"])

    def later(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


# --- the driver's own pieces ------------------------------------------------------------------


def test_materialize_matches_df_start_shapes() -> None:
    root, nodes = materialize(if_(sql("SELECT true"), sql("SELECT 1"), sql("SELECT 2")))
    assert nodes[root].query == '{"condition_node":"00000004"}'
    assert nodes[root].condition == "00000004" and nodes[root].left == "00000002"
    assert nodes["00000004"].parent == root and nodes["00000004"].slot == "condition"
    root, nodes = materialize(join(sql("a"), sql("b"), sql("c")))
    assert nodes[root].extras == ("00000004",)
    assert nodes[root].query == '{"extra_nodes":["00000004"]}'


def test_mini_select() -> None:
    assert mini_select("SELECT 42 AS answer") == '{"rows":[{"answer":42}],"row_count":1}'
    assert mini_select("SELECT 'it''s' AS s, (-1) AS n, NULL AS z, true AS b") == (
        '{"rows":[{"s":"it\'s","n":-1,"z":null,"b":true}],"row_count":1}'
    )
    assert mini_select("SELECT 1 AS x WHERE false") == '{"rows":[],"row_count":0}'
    with pytest.raises(StepFailed, match="boom"):
        mini_select("FAIL boom")
