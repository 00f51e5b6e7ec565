"""durable: a durable orchestration engine that lives in PostgreSQL."""

from __future__ import annotations

from durable.errors import ConflictError, DurableError

__version__ = "0.1.0"

__all__ = ["ConflictError", "DurableError", "__version__"]
