"""The worker's own database calls (its login role, through df._*_v1 functions)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from durable.store.db import resolve_dsn, wrap_errors
from durable.store.queries import query


@dataclass(frozen=True)
class Claim:
    instance_id: str
    token: uuid.UUID
    nudges: int


@dataclass(frozen=True)
class Loaded:
    instance: dict[str, Any]
    nodes: list[dict[str, Any]]
    signals: list[dict[str, Any]]
    vars: dict[str, str]


@dataclass
class Snapshot:
    """One held instance as the 0.3.0 API reads it (`df._snapshot`): rows the engine reads, mutable
    so the scheduler can keep it current between reads."""

    instance: dict[str, Any]
    nodes: dict[str, dict[str, Any]]
    signals: list[dict[str, Any]]
    vars: dict[str, str]
    lease_token: uuid.UUID | None
    nudges: int

    def loaded(self, now: datetime) -> Loaded:
        return Loaded({**self.instance, "now": now}, list(self.nodes.values()), self.signals, self.vars)

    def copy(self) -> Snapshot:
        """A copy whose rows can change without touching this one."""
        return Snapshot(dict(self.instance), {k: dict(v) for k, v in self.nodes.items()}, list(self.signals),
                        self.vars, self.lease_token, self.nudges)


@dataclass(frozen=True)
class Read:
    """What a claim or a load returned: the database's time and the instances."""

    now: datetime
    instances: list[Snapshot]
    settings: dict[str, Any] | None = None


def _ts(value: Any) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def _snapshot(raw: dict[str, Any]) -> Snapshot:
    nodes = {}
    for n in raw.get("nodes") or []:
        n["wake_at"] = _ts(n.get("wake_at"))
        nodes[n["id"]] = n
    instance = {k: raw[k] for k in ("id", "label", "root_node", "status", "execution_count", "submitter",
                                    "database")}
    token = raw.get("lease_token")
    return Snapshot(instance, nodes, list(raw.get("signals") or []), dict(raw.get("vars") or {}),
                    uuid.UUID(token) if token else None, int(raw.get("nudges") or 0))


def _written(raw: dict[str, Any]) -> tuple[datetime, dict[str, Any]]:
    return _ts(raw.get("now")) or datetime.now().astimezone(), dict(raw.get("results") or {})


def _read(raw: dict[str, Any] | None) -> Read:
    raw = raw or {}
    now = _ts(raw.get("now")) or datetime.now().astimezone()
    return Read(now, [_snapshot(r) for r in raw.get("instances") or []], raw.get("settings"))


class WorkerDB:
    """A small pool of the worker's own connections (autocommit: every call is one function)."""

    def __init__(self, dsn: str | None, *, max_size: int = 4) -> None:
        self.dsn = resolve_dsn(dsn)
        self.pool = ConnectionPool(self.dsn, min_size=1, max_size=max_size, open=False,
                                   kwargs={"autocommit": True, "application_name": "durable:worker"},
                                   name="durable-worker")

    def open(self) -> None:
        self.pool.open(wait=True, timeout=30)

    def close(self) -> None:
        self.pool.close()

    def _one(self, name: str, params: dict[str, Any]) -> Any:
        with wrap_errors(), self.pool.connection() as conn:
            row = conn.execute(query(name), params).fetchone()
            return row[0] if row else None

    def schema_versions(self) -> list[str]:
        """The versions recorded in df.schema_version (empty when durable is not installed)."""
        with wrap_errors(), self.pool.connection() as conn:
            if conn.execute("SELECT pg_catalog.to_regclass('df.schema_version') IS NULL").fetchone() == (True,):
                return []
            return [r[0] for r in conn.execute("SELECT version FROM df.schema_version").fetchall()]

    def register(self, worker_id: uuid.UUID, hostname: str, pid: int) -> None:
        self._one("register_worker", {"worker_id": worker_id, "hostname": hostname, "pid": pid})

    def heartbeat(self, worker_id: uuid.UUID, idle: bool) -> int:
        return int(self._one("heartbeat", {"worker_id": worker_id, "idle": idle}) or 0)

    def unregister(self, worker_id: uuid.UUID) -> None:
        self._one("unregister_worker", {"worker_id": worker_id})

    def settings(self) -> dict[str, str | None]:
        return dict(self._one("worker_settings", {}) or {})

    def claim(self, worker_id: uuid.UUID, limit: int) -> list[Claim]:
        with wrap_errors(), self.pool.connection() as conn:
            rows = conn.execute(query("claim"), {"worker_id": worker_id, "limit": limit}).fetchall()
        return [Claim(r[0], r[1], r[2]) for r in rows]

    # -- the 0.3.0 set-based API ----------------------------------------------------------------
    def claim_v2(self, worker_id: uuid.UUID, limit: int) -> Read:
        return _read(self._one("claim_v2", {"worker_id": worker_id, "limit": limit}))

    def load_v2(self, instance_ids: list[str]) -> Read:
        return _read(self._one("load_v2", {"instance_ids": instance_ids}))

    def nudges_v2(self, instance_ids: list[str]) -> dict[str, int]:
        return {k: int(v) for k, v in (self._one("nudges_v2", {"instance_ids": instance_ids}) or {}).items()}

    def advance_v2(self, worker_id: uuid.UUID, items: list[dict[str, Any]]) -> tuple[datetime, dict[str, Any]]:
        raw = self._one("advance_v2", {"worker_id": worker_id, "items": Jsonb(items)}) or {}
        return _written(raw)

    def claim_advance_v2(self, worker_id: uuid.UUID, limit: int, claimed: Callable[[Read], None],
                         decide: Callable[[], list[dict[str, Any]]]) -> tuple[datetime, dict[str, Any]] | None:
        """Claim (`claimed` gets what was claimed), decide (`decide` returns the decisions to write) and
        write, in one transaction: one commit where claim_v2 and advance_v2 make two.  Whatever fails
        rolls the claim back with the decisions."""
        with wrap_errors(), self.pool.connection() as conn, conn.transaction():
            row = conn.execute(query("claim_v2"), {"worker_id": worker_id, "limit": limit}).fetchone()
            claimed(_read(row[0] if row else None))
            items = decide()
            if not items:
                return None
            row = conn.execute(query("advance_v2"), {"worker_id": worker_id, "items": Jsonb(items)}).fetchone()
            return _written((row[0] if row else None) or {})

    # -- the 0.1.0 API (older schemas) -----------------------------------------------------------
    def load(self, instance_id: str) -> Loaded | None:
        params = {"instance_id": instance_id}
        with wrap_errors(), self.pool.connection() as conn:
            with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
                instance = cur.execute(query("load_instance"), params).fetchone()
                if instance is None:
                    return None
                nodes = cur.execute(query("load_nodes"), params).fetchall()
                signals = cur.execute(query("load_signals"), params).fetchall()
                variables = {r["name"]: r["value"] for r in cur.execute(query("load_vars"), params).fetchall()}
        return Loaded(instance, nodes, signals, variables)

    def apply(self, claim: Claim, updates: list[dict[str, Any]], consume: list[dict[str, Any]],
              status: str | None, output: str | None, execution_count: int | None) -> dict[str, Any]:
        result = self._one("apply", {
            "instance_id": claim.instance_id, "token": claim.token, "updates": Jsonb(updates),
            "consume": Jsonb(consume), "status": status, "output": output, "execution_count": execution_count,
        })
        return dict(result)

    def release(self, claim: Claim, wake_at: datetime | None) -> None:
        self._one("release", {"instance_id": claim.instance_id, "token": claim.token, "wake_at": wake_at,
                              "nudges": claim.nudges})

    def nudges(self, instance_id: str) -> int | None:
        value = self._one("nudges", {"instance_id": instance_id})
        return None if value is None else int(value)

    def begin_attempt(self, claim: Claim, node_id: str, secret_hash: bytes, backend_pid: int) -> None:
        self._one("begin_attempt", {"instance_id": claim.instance_id, "node_id": node_id, "token": claim.token,
                                    "secret_hash": secret_hash, "backend_pid": backend_pid})

    def submitter_refusal(self, instance_id: str) -> str | None:
        value = self._one("submitter_refusal", {"instance_id": instance_id})
        return None if value is None else str(value)

    def end_attempt(self, claim: Claim, node_id: str) -> None:
        self._one("end_attempt", {"instance_id": claim.instance_id, "node_id": node_id, "token": claim.token})

    def checkpoint_remote(self, claim: Claim, node_id: str, result_text: str, status_details: Any,
                          expected_version: int) -> int:
        return int(self._one("checkpoint_remote", {
            "instance_id": claim.instance_id, "node_id": node_id, "token": claim.token, "result_text": result_text,
            "status_details": Jsonb(status_details), "expected_version": expected_version}))

    def fire_fault(self, name: str) -> bool:
        return bool(self._one("fire_fault", {"name": name}))

    def listen_connection(self) -> psycopg.Connection[Any]:
        with wrap_errors():
            conn = psycopg.connect(self.dsn, autocommit=True, application_name="durable:listener")
            conn.execute(query("listen"))
        return conn


def to_json_text(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
