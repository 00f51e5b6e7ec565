"""durable: a durable orchestration engine that lives in PostgreSQL."""

from __future__ import annotations

__version__ = "0.3.0"

from durable.client import Client, connect  # noqa: E402
from durable.errors import ConflictError, DurableError  # noqa: E402
from durable.graph import (  # noqa: E402
    Node,
    StepLike,
    break_,
    http,
    http_multipart,
    if_,
    if_rows,
    join,
    loop,
    race,
    seq,
    sleep,
    sql,
    step,
    wait_for_schedule,
    wait_for_signal,
)
from durable.models import InstanceInfo, InstanceStatus, ListedInstance  # noqa: E402

__all__ = [
    "Client",
    "ConflictError",
    "DurableError",
    "InstanceInfo",
    "InstanceStatus",
    "ListedInstance",
    "Node",
    "StepLike",
    "__version__",
    "break_",
    "connect",
    "http",
    "http_multipart",
    "if_",
    "if_rows",
    "join",
    "loop",
    "race",
    "seq",
    "sleep",
    "sql",
    "step",
    "wait_for_schedule",
    "wait_for_signal",
]
