"""Pydantic models of what durable stores and returns; status enums mirror the CHECK constraints."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any, NewType

from pydantic import BaseModel, ConfigDict

InstanceId = NewType("InstanceId", str)
NodeId = NewType("NodeId", str)


class InstanceStatus(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (InstanceStatus.COMPLETED, InstanceStatus.FAILED, InstanceStatus.CANCELLED)


class NodeStatus(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"


class NodeType(enum.StrEnum):
    SQL = "SQL"
    THEN = "THEN"
    IF = "IF"
    JOIN = "JOIN"
    LOOP = "LOOP"
    BREAK = "BREAK"
    RACE = "RACE"
    SLEEP = "SLEEP"
    WAIT_SCHEDULE = "WAIT_SCHEDULE"
    HTTP = "HTTP"
    HTTP_MULTIPART = "HTTP_MULTIPART"
    SIGNAL = "SIGNAL"


class InstanceInfo(BaseModel):
    """A row of df.instance_info()."""

    model_config = ConfigDict(frozen=True)

    instance_id: InstanceId
    label: str | None
    function_name: str
    function_version: str
    current_execution_id: int
    status: InstanceStatus
    output: str | None
    resource_version: int
    labels: dict[str, str] = {}
    annotations: dict[str, Any] = {}


class ListedInstance(BaseModel):
    """A row of the paginated df.list_instances()."""

    model_config = ConfigDict(frozen=True)

    instance_id: InstanceId
    label: str | None
    function_name: str
    status: InstanceStatus
    execution_count: int
    output: str | None
    created_at: datetime | None
    completed_at: datetime | None
    next_cursor: str | None
    resource_version: int
    labels: dict[str, str] = {}
    annotations: dict[str, Any] = {}


class NodeInfo(BaseModel):
    """A row of df.instance_nodes(): a node with its stored and inferred status."""

    model_config = ConfigDict(frozen=True)

    node_id: NodeId
    node_type: NodeType
    query: str | None
    result_name: str | None
    left_node: str | None
    right_node: str | None
    status: NodeStatus
    result: str | None
    status_details: str | None
    inferred_status: str | None
    inferred_status_from_ancestor_id: str | None
    updated_at: datetime | None
    resource_version: int
