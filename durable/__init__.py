"""durable: a durable orchestration engine that lives in PostgreSQL."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.3.0"

# The public names load on first use (PEP 562): a worker process, which needs none of them, does not
# pay for the client and its models (pydantic) in start-up time and memory.
_LAZY = {
    "Client": "durable.client", "connect": "durable.client",
    "ConflictError": "durable.errors", "DurableError": "durable.errors",
    "InstanceInfo": "durable.models", "InstanceStatus": "durable.models", "ListedInstance": "durable.models",
    **dict.fromkeys(("Node", "StepLike", "break_", "http", "http_multipart", "if_", "if_rows", "join", "loop",
                     "race", "seq", "sleep", "sql", "step", "wait_for_schedule", "wait_for_signal"),
                    "durable.graph"),
}

if TYPE_CHECKING:
    from durable.client import Client, connect
    from durable.errors import ConflictError, DurableError
    from durable.graph import (
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
    from durable.models import InstanceInfo, InstanceStatus, ListedInstance


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'durable' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


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
