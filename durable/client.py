"""The Python client: the df.* functions, typed, with compare-and-swap errors as ConflictError.

    import durable
    with durable.connect("postgresql://app@db/app") as client:
        iid = client.start_dsl("'SELECT 1' ~> 'SELECT 2'", label="demo")
        client.wait(iid, timeout=30)
        print(client.result(iid))
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

from durable.errors import WaitTimeoutError
from durable.models import InstanceInfo, InstanceStatus, ListedInstance, NodeInfo
from durable.store import connect as _connect
from durable.store import wrap_errors
from durable.store.db import start_expression_query

TERMINAL = {InstanceStatus.COMPLETED, InstanceStatus.FAILED, InstanceStatus.CANCELLED}


class Client:
    """One connection (autocommit) as the calling role; every call is one df.* function."""

    def __init__(self, dsn: str | None = None) -> None:
        self._conn = _connect(dsn, autocommit=True)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _one(self, sql: Any, params: tuple[Any, ...] = ()) -> Any:
        with wrap_errors():
            row = self._conn.execute(sql, params).fetchone()
        return row[0] if row else None

    def _rows(self, sql: Any, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        with wrap_errors():
            cur = self._conn.execute(sql, params)
            names = [c.name for c in cur.description or ()]
            return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    # -- start and read ------------------------------------------------------------------------
    def start(self, graph: Any, *, label: str | None = None, database: str | None = None) -> str:
        """Start a workflow from an envelope (its JSON text, or an object whose str() is one), or from
        plain SQL text (one SQL step).  For the SQL DSL's operators use start_dsl()."""
        envelope = graph if isinstance(graph, str) else str(graph)
        return str(self._one("SELECT df.start(%s, %s, %s)", (envelope, label, database)))

    def status(self, instance_id: str) -> InstanceStatus | None:
        value = self._one("SELECT df.status(%s)", (instance_id,))
        return None if value is None else InstanceStatus(value)

    def result(self, instance_id: str) -> Any:
        """The root result, decoded from JSON (None until the instance completed)."""
        text = self._one("SELECT df.result(%s)", (instance_id,))
        return None if text is None else json.loads(text)

    def info(self, instance_id: str) -> InstanceInfo | None:
        rows = self._rows("SELECT * FROM df.instance_info(%s)", (instance_id,))
        return InstanceInfo(**rows[0]) if rows else None

    def nodes(self, instance_id: str) -> list[NodeInfo]:
        """The instance's nodes with their stored and inferred status (df.instance_nodes)."""
        return [NodeInfo(**row) for row in self._rows("SELECT * FROM df.instance_nodes(%s)", (instance_id,))]

    def list(self, *, status: str | None = None, label: str | None = None,
             page_size: int = 100) -> Iterator[ListedInstance]:
        """Every visible instance, newest first, paged with the keyset cursor."""
        cursor: str | None = None
        while True:
            rows = self._rows("SELECT * FROM df.list_instances(%s, %s, %s, %s)", (status, page_size, label, cursor))
            for row in rows:
                yield ListedInstance(**row)
            cursor = rows[-1]["next_cursor"] if rows else None
            if cursor is None:
                return

    # -- change (compare-and-swap) -------------------------------------------------------------
    def cancel(self, instance_id: str, reason: str = "Cancelled by user", *,
               expected_resource_version: int | None = None) -> str:
        return str(self._one("SELECT df.cancel(%s, %s, %s)", (instance_id, reason, expected_resource_version)))

    def signal(self, instance_id: str, name: str, data: Any = None, *,
               expected_resource_version: int | None = None) -> None:
        payload = "{}" if data is None else (data if isinstance(data, str) else json.dumps(data))
        self._one("SELECT df.signal(%s, %s, %s, %s)", (instance_id, name, payload, expected_resource_version))

    def set_metadata(self, instance_id: str, patch: dict[str, Any], *,
                     expected_resource_version: int | None = None) -> int:
        """Apply a JSON merge patch to {"labels": ..., "annotations": ...}; returns the new version."""
        return int(self._one("SELECT df.set_metadata(%s, %s::jsonb, %s)",
                             (instance_id, json.dumps(patch), expected_resource_version)))

    def delete(self, instance_id: str, *, expected_resource_version: int | None = None) -> bool:
        return bool(self._one("SELECT df.delete_instance(%s, %s)", (instance_id, expected_resource_version)))

    def wait(self, instance_id: str, timeout: float = 30.0) -> InstanceStatus:
        """Wait until the instance finishes; returns its final status.

        Wakes on NOTIFY (the session registers as a waiter, so finishing
        instances notify), and re-reads after 50 ms, then at doubling
        intervals up to every second: an instance that finished in the
        moment the session registered (its transaction saw no waiter, so it
        did not notify) costs 50 ms, not a second."""
        deadline = time.monotonic() + timeout
        with wrap_errors(), self._conn.pipeline():  # one round trip
            self._conn.execute("LISTEN durable_done")
            self._conn.execute("SELECT df._wait_begin_v1()")
            first: Any = self._conn.execute("SELECT df.status(%s)", (instance_id,))
        pause = 0.05
        try:
            status: InstanceStatus | None = None
            while True:
                if first is not None:
                    value, first = _only(first), None
                    status = None if value is None else InstanceStatus(value)
                else:
                    status = self.status(instance_id)
                if status in TERMINAL:
                    assert status is not None
                    return status
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise WaitTimeoutError(f"Timeout after {timeout:g}s waiting for instance {instance_id} "
                                           f"(status: {status})")
                with wrap_errors():
                    for _ in self._conn.notifies(timeout=min(remaining, pause), stop_after=1):
                        pass
                pause = min(pause * 2, 1.0)
        finally:
            with wrap_errors(), self._conn.pipeline():
                self._conn.execute("SELECT df._wait_end_v1()")
                self._conn.execute("UNLISTEN durable_done")

    def explain(self, what: str) -> str:
        """df.explain: an instance id, an envelope, or a DSL expression (evaluated, then rolled back)."""
        return str(self._one("SELECT df.explain(%s)", (what,)))

    def start_dsl(self, expression: str, *, label: str | None = None) -> str:
        """Start a workflow written in the SQL DSL, e.g. "'SELECT 1' ~> 'SELECT 2'".

        The expression is SQL evaluated with this connection's own rights, as
        if typed in psql; it is the caller's own code, not data."""
        return str(self._one(start_expression_query(expression, label)))


def _only(cur: Any) -> Any:
    row = cur.fetchone()
    return row[0] if row else None


def connect(dsn: str | None = None) -> Client:
    return Client(dsn)
