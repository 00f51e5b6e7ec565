"""Between the rows the store reads and the pure engine's types."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from durable import engine
from durable.engine.model import (
    Decision,
    EngineSettings,
    InstanceView,
    Node,
    NodeState,
    NodeUpdate,
    RunSql,
    Signal,
)
from durable.store.worker_db import Loaded

__all__ = ["Decision", "RunSql", "build", "decide", "details_of", "fail_sql", "settings_of", "structure",
           "updates_payload"]


def _node(row: dict[str, Any]) -> Node:
    condition: str | None = None
    extras: tuple[str, ...] = ()
    query = row["query"]
    if row["node_type"] in ("IF", "LOOP", "JOIN") and query and query.startswith("{"):
        try:
            parsed = json.loads(query)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            if isinstance(parsed.get("condition_node"), str):
                condition = parsed["condition_node"]
            if isinstance(parsed.get("extra_nodes"), list):
                extras = tuple(str(x) for x in parsed["extra_nodes"])
    return Node(id=row["id"], node_type=row["node_type"], query=query, result_name=row["result_name"],
                left=row["left_node"], right=row["right_node"], condition=condition, extras=extras,
                parent=row["parent_id"], slot=row["slot"])


def _state(row: dict[str, Any]) -> NodeState:
    return NodeState(status=row["status"], result_text=row["result_text"], wake_at=row["wake_at"],
                     state=row["state"] or {}, status_details=row["status_details"],
                     resource_version=row["resource_version"])


def settings_of(raw: dict[str, Any]) -> EngineSettings:
    def num(key: str, default: float) -> float:
        try:
            return float(raw[key]) if raw.get(key) is not None else default
        except ValueError:
            return default

    return EngineSettings(loop_min_iteration_seconds=num("loop_min_iteration_seconds", 1.0),
                          loop_max_iterations=int(num("loop_max_iterations", 100000)))


def structure(loaded: Loaded) -> dict[str, Node]:
    """The nodes of an instance as the engine sees them (they never change: keep them)."""
    return {r["id"]: _node(r) for r in loaded.nodes}


def build(loaded: Loaded, settings: dict[str, Any] | EngineSettings,
          nodes: dict[str, Node] | None = None) -> InstanceView:
    inst = loaded.instance
    now = inst.get("now") or datetime.now(UTC)
    return InstanceView(
        instance_id=inst["id"], label=inst["label"], root=inst["root_node"],
        nodes=nodes if nodes is not None else structure(loaded),
        states={r["id"]: _state(r) for r in loaded.nodes},
        vars=loaded.vars,
        signals=[Signal(id=s["id"], name=s["signal_name"], data_text=s["data"]) for s in loaded.signals],
        now=now, execution_count=inst["execution_count"],
        settings=settings if isinstance(settings, EngineSettings) else settings_of(settings),
    )


def decide(view: InstanceView) -> Decision:
    return engine.decide(view)


def _payload(update: NodeUpdate, expected_version: int) -> dict[str, Any]:
    return {
        "node_id": update.node_id, "expected_version": expected_version, "status": update.status,
        "result_text": update.result_text,
        "wake_at": update.wake_at.isoformat() if update.wake_at is not None else None,
        "state": dict(update.state) if update.state else None,
        "status_details": dict(update.status_details) if update.status_details is not None else None,
    }


def updates_payload(decision: Decision, view: InstanceView) -> list[dict[str, Any]]:
    return [_payload(u, view.state_of(u.node_id).resource_version) for u in decision.updates]


def details_of(decision: Decision, view: InstanceView, node_id: str) -> dict[str, Any] | None:
    for u in decision.updates:
        if u.node_id == node_id:
            return dict(u.status_details) if u.status_details is not None else None
    details = view.state_of(node_id).status_details
    return dict(details) if details is not None else None


def fail_sql(view: InstanceView, node_id: str, message: str) -> dict[str, Any] | None:
    state = view.state_of(node_id)
    if state.status != "running":
        return None
    update = engine.fail_sql(view, node_id, message)
    return _payload(update, state.resource_version)
