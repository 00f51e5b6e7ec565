"""The data the worker hands the engine, and what the engine hands back.

Everything here is immutable and free of I/O: the worker builds an
:class:`InstanceView` from the rows it read, calls :func:`durable.engine.decide`,
and writes the :class:`Decision` back with compare-and-swap writes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

NodeType = Literal[
    "SQL",
    "THEN",
    "IF",
    "JOIN",
    "LOOP",
    "BREAK",
    "RACE",
    "SLEEP",
    "WAIT_SCHEDULE",
    "HTTP",
    "HTTP_MULTIPART",
    "SIGNAL",
]
NODE_TYPES: tuple[str, ...] = (
    "SQL",
    "THEN",
    "IF",
    "JOIN",
    "LOOP",
    "BREAK",
    "RACE",
    "SLEEP",
    "WAIT_SCHEDULE",
    "HTTP",
    "HTTP_MULTIPART",
    "SIGNAL",
)
#: Leaf types: the ones that do (or wait for) outside work.
LEAF_TYPES: frozenset[str] = frozenset(
    {"SQL", "BREAK", "SLEEP", "WAIT_SCHEDULE", "HTTP", "HTTP_MULTIPART", "SIGNAL"}
)

NodeStatus = Literal["pending", "running", "completed", "failed"]
InstanceStatus = Literal["running", "completed", "failed"]
TERMINAL: frozenset[str] = frozenset({"completed", "failed"})


@dataclass(frozen=True)
class Node:
    """One node of a materialised workflow graph (a df.nodes row's structure).

    ``condition`` is the IF/LOOP condition child (from the materialised query
    ``{"condition_node": "<id>"}``); an if_rows IF has ``condition=None`` and
    keeps its ``{"condition_type": "result_has_rows", ...}`` query.  ``extras``
    are a 3-way JOIN's extra branches.  ``parent``/``slot`` locate the node
    under its parent (``None`` for the root); the engine walks from the root
    and uses them only to find a node's context.
    """

    id: str
    node_type: str
    query: str | None = None
    result_name: str | None = None
    left: str | None = None
    right: str | None = None
    condition: str | None = None
    extras: tuple[str, ...] = ()
    parent: str | None = None
    slot: str | None = None

    def children(self) -> tuple[str, ...]:
        """Child ids in evaluation order (condition first for IF and last for LOOP)."""
        out: list[str] = []
        if self.node_type == "IF" and self.condition is not None:
            out.append(self.condition)
        if self.left is not None:
            out.append(self.left)
        if self.right is not None:
            out.append(self.right)
        out.extend(self.extras)
        if self.node_type == "LOOP" and self.condition is not None:
            out.append(self.condition)
        return tuple(out)


@dataclass(frozen=True)
class NodeState:
    """The mutable part of a node row, as stored.

    ``result_text`` is JSON text with column order kept (a failed node's is the
    error message as a JSON string).  ``state`` is the engine's own JSON-able
    bookkeeping, persisted verbatim.
    """

    status: str = "pending"
    result_text: str | None = None
    wake_at: datetime | None = None
    state: Mapping[str, Any] = field(default_factory=dict)
    status_details: Mapping[str, Any] | None = None
    resource_version: int = 1


@dataclass(frozen=True)
class Signal:
    """An unconsumed signal, in send order."""

    id: int
    name: str
    data_text: str


@dataclass(frozen=True)
class EngineSettings:
    loop_min_iteration_seconds: float = 1.0
    loop_max_iterations: int = 100000


@dataclass(frozen=True)
class InstanceView:
    """Everything decide() may look at: the stored state of one instance, and the time."""

    instance_id: str
    label: str | None
    root: str
    nodes: Mapping[str, Node]
    states: Mapping[str, NodeState]
    vars: Mapping[str, str] = field(default_factory=dict)
    signals: Sequence[Signal] = ()
    now: datetime | None = None
    execution_count: int = 1
    settings: EngineSettings = field(default_factory=EngineSettings)

    def state_of(self, node_id: str) -> NodeState:
        return self.states.get(node_id) or NodeState()


@dataclass(frozen=True)
class NodeUpdate:
    """The full new stored values of one node (written with CAS on the version read)."""

    node_id: str
    status: str
    result_text: str | None
    wake_at: datetime | None
    state: Mapping[str, Any]
    status_details: Mapping[str, Any] | None


@dataclass(frozen=True)
class RunSql:
    """A SQL step to execute now; ``sql`` is already substituted."""

    node_id: str
    sql: str
    database: str | None = None


@dataclass(frozen=True)
class Decision:
    """What the worker must do after one decide() call.

    ``updates`` are the nodes whose stored values change, in the order they
    first changed.  ``run_sql`` are the SQL steps started now (they are in
    ``updates`` as running).  ``in_flight`` lists every SQL step that is
    running and still wanted after this decision (``run_sql`` included), with
    the same substituted text, so that a worker that takes an instance over can
    re-run steps whose attempts died.  ``consume`` pairs (signal id, node id);
    a broadcast signal appears once per receiving node.  ``cancel`` are running
    leaf nodes whose work is no longer wanted.  ``wake_at`` is the earliest
    timer the instance now waits on.
    """

    updates: list[NodeUpdate]
    run_sql: list[RunSql]
    consume: list[tuple[int, str]]
    cancel: list[str]
    instance_status: str
    output: str | None
    execution_count: int
    wake_at: datetime | None
    in_flight: list[RunSql] = field(default_factory=list)
