"""durable: a durable orchestration engine that lives in PostgreSQL."""

from __future__ import annotations

__version__ = "0.2.0"

from durable.client import Client, connect  # noqa: E402
from durable.errors import ConflictError, DurableError  # noqa: E402
from durable.models import InstanceInfo, InstanceStatus, ListedInstance  # noqa: E402

__all__ = [
    "Client",
    "ConflictError",
    "DurableError",
    "InstanceInfo",
    "InstanceStatus",
    "ListedInstance",
    "__version__",
    "connect",
]
