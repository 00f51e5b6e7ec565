"""Running a SQL step as its submitter, exactly once.

The step runs on a connection authenticated as the submitting role itself
(never `SET ROLE` from a privileged session: a step can `RESET ROLE`).  Its
statement and its checkpoint commit in one transaction; the checkpoint goes
through a SECURITY DEFINER function that checks a per-attempt secret the
submitter cannot read.
"""

from __future__ import annotations

import enum
import hashlib
import re
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.types.json import Jsonb
from psycopg.types.string import StrDumper
from psycopg_pool import ConnectionPool

from durable.store import results
from durable.store.queries import query
from durable.store.worker_db import Claim, WorkerDB

# The worker's own secrets and client certificate never reach a submitter's connection.
_DROPPED_PARAMS = ("user", "password", "sslcert", "sslkey", "sslpassword")

# Statements that would end or split the step's transaction ahead of its checkpoint.
_TX_CONTROL = re.compile(
    r"^(BEGIN|START\s+TRANSACTION|COMMIT|END|ROLLBACK|ABORT|SAVEPOINT|RELEASE|PREPARE\s+TRANSACTION)\b",
    re.I,
)

# Infrastructure trouble: retried later, never stored as the step's failure.
_RETRIABLE_PREFIXES = ("08",)
_RETRIABLE = {"53300", "57P01", "57P02", "57P03"}


class Outcome(enum.Enum):
    COMPLETED = "completed"
    FAILED = "failed"          # the step's own error: fails the node
    CANCELLED = "cancelled"    # cancelled by the worker (instance cancel, race loser)
    LEASE_LOST = "lease_lost"  # fenced: another worker owns the instance now
    STALE = "stale"            # the checkpoint was refused (node moved on, instance ended, or lease lost)
    RETRY = "retry"            # infrastructure trouble: try again later
    REFUSED = "refused"        # the submitter may not run steps (anymore): fails the instance


@dataclass
class StepResult:
    outcome: Outcome
    result_text: str | None = None
    message: str | None = None
    version: int | None = None


def _skip_leading_noise(text: str) -> str:
    """The text after leading whitespace, parentheses, `--` comments and (nested) `/* */` comments."""
    i, n = 0, len(text)
    while i < n:
        if text[i].isspace() or text[i] == "(":
            i += 1
        elif text.startswith("--", i):
            end = text.find("\n", i)
            i = n if end < 0 else end + 1
        elif text.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if text.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif text.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
        else:
            break
    return text[i:]


def transaction_control(sql_text: str) -> bool:
    """Whether a step's text is a transaction-control statement (refused before it runs).  A COMMIT
    hidden anywhere else still cannot win: the step's transaction id is checked before its checkpoint."""
    return bool(_TX_CONTROL.match(_skip_leading_noise(sql_text)))


class _TextDumper(StrDumper):
    """Send str parameters typed as text (by OID), never as unknown: no cast a submitter's
    domain or search_path could take over."""


class StepRunner:
    """Per-submitter connection pools and the step protocol."""

    def __init__(self, dsn: str, db: WorkerDB, *, max_per_role: int = 10,
                 fault: Callable[[str], None] = lambda name: None,
                 max_result_bytes: int = 64 * 1024 * 1024) -> None:
        self.max_result_bytes = max_result_bytes
        self.base = conninfo_to_dict(dsn)
        self.home_database = str(self.base.get("dbname") or "")
        self.db = db
        self.max_per_role = max_per_role
        self.fault = fault
        self._pools: dict[tuple[str, str | None], ConnectionPool] = {}
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            pool.close()

    def conninfo_for(self, role: str, database: str | None) -> str:
        params = {k: v for k, v in self.base.items() if k not in _DROPPED_PARAMS}
        params["user"] = role
        if database:
            params["dbname"] = database
        params["application_name"] = "durable:step"
        params["options"] = "-c client_connection_check_interval=2000"
        return make_conninfo("", **params)

    def _pool(self, role: str, database: str | None) -> ConnectionPool:
        key = (role, database)
        with self._lock:
            pool = self._pools.get(key)
            if pool is None:
                pool = ConnectionPool(self.conninfo_for(role, database), min_size=0, max_size=self.max_per_role,
                                      configure=_configure, reset=_reset, open=True, timeout=30,
                                      name=f"durable-step-{role}")
                self._pools[key] = pool
            return pool

    def run(self, claim: Claim, role: str | None, database: str | None, node_id: str, sql_text: str,
            status_details: dict[str, Any] | None, expected_version: int, timeout_ms: int,
            register: Callable[[psycopg.Connection[Any] | None], bool]) -> StepResult:
        """Run one step (the node must still be at `expected_version` when it checkpoints).  `register(conn)` lets the caller cancel it; it returns False when the
        step must not start (already cancelled)."""
        if role is None:
            return StepResult(Outcome.REFUSED, message="submitted_by role no longer exists in pg_roles")
        if database == self.home_database:
            database = None
        if transaction_control(sql_text):
            return StepResult(Outcome.FAILED, message=(
                "transaction control statements (BEGIN, COMMIT, ROLLBACK, SAVEPOINT, ...) cannot be workflow "
                "steps: each step already runs in its own transaction"))
        try:
            pool = self._pool(role, database)
            if not pool.get_stats().get("pool_available", 0):
                # A new login is coming: a role made NOLOGIN (or worse) is refused now, not after a timeout.
                refusal = self._refusal(claim)
                if refusal is not None:
                    return StepResult(Outcome.REFUSED, message=refusal)
            conn = pool.getconn()
        except Exception as exc:  # noqa: BLE001 - any connect failure: refused for good, or try again later
            refusal = self._refusal(claim)
            if refusal is not None:
                return StepResult(Outcome.REFUSED, message=refusal)
            return StepResult(Outcome.RETRY, message=f"cannot connect as {role}: {str(exc).strip()}")
        try:
            return self._run_on(conn, claim, node_id, sql_text, status_details, expected_version, timeout_ms,
                                register, elsewhere=database is not None)
        finally:
            register(None)
            pool.putconn(conn)  # a broken connection is discarded, a good one reset (DISCARD ALL)

    def _refusal(self, claim: Claim) -> str | None:
        """Why the submitter may not run steps, or None (also when it cannot be told: the database may
        be down, or a 0.1.0 schema lacks the function; the login attempt then decides)."""
        try:
            return self.db.submitter_refusal(claim.instance_id)
        except Exception:  # noqa: BLE001
            return None

    def _run_on(self, conn: psycopg.Connection[Any], claim: Claim, node_id: str, sql_text: str,
                status_details: dict[str, Any] | None, expected_version: int, timeout_ms: int,
                register: Callable[[psycopg.Connection[Any] | None], bool], *, elsewhere: bool) -> StepResult:
        secret = secrets.token_hex(32)
        try:
            self.db.begin_attempt(claim, node_id, hashlib.sha256(secret.encode()).digest(), conn.info.backend_pid)
        except Exception as exc:  # noqa: BLE001
            return _from_worker_error(exc)
        if not register(conn):
            self.db.end_attempt(claim, node_id)
            return StepResult(Outcome.CANCELLED)
        checkpoint: dict[str, Any] = {"instance_id": claim.instance_id, "node_id": node_id, "secret": secret,
                      "status_details": Jsonb(status_details), "expected_version": expected_version}
        if elsewhere:
            return self._elsewhere(conn, claim, node_id, sql_text, timeout_ms, checkpoint)
        try:
            result_text = self._in_one_transaction(conn, sql_text, timeout_ms, checkpoint)
        except _NotInTransactionBlock:
            try:
                result_text = self._on_its_own(conn, sql_text, timeout_ms, checkpoint)
            except BaseException as exc:
                return self._failed(exc, conn, claim, node_id)
        except BaseException as exc:
            return self._failed(exc, conn, claim, node_id)
        self.fault("after_commit")
        return StepResult(Outcome.COMPLETED, result_text=result_text, version=int(checkpoint["version"]))

    def _in_one_transaction(self, conn: psycopg.Connection[Any], sql_text: str, timeout_ms: int,
                            checkpoint: dict[str, Any]) -> str:
        with conn.transaction():
            xid = _row(conn.execute(query("step_prepare"), {"timeout": f"{timeout_ms}ms"}))[1]
            try:
                cur = conn.cursor()
                cur.execute(sql_text.encode(), binary=True)  # extended protocol: one statement only
                result_text = results.rows_json(cur, self.max_result_bytes)
            except (pg_errors.ActiveSqlTransaction, pg_errors.InvalidTransactionTermination) as exc:
                raise _NotInTransactionBlock() from exc
            conn.execute(query("step_constraints"))
            self.fault("after_statement")
            guard_xid = _row(conn.execute(query("step_guard")))[4]
            if guard_xid != xid:
                raise _StepEscaped("the step ended its transaction")
            checkpoint["result_text"] = result_text
            checkpoint["version"] = _checkpoint(conn, checkpoint)
        return result_text

    def _autocommit(self, conn: psycopg.Connection[Any], sql_text: str, timeout_ms: int) -> str:
        """Run a step's statement on its own, outside any transaction block; its result text."""
        conn.autocommit = True
        try:
            conn.execute(query("step_prepare_session"), {"timeout": f"{timeout_ms}ms"})
            cur = conn.cursor()
            cur.execute(sql_text.encode(), binary=True)
            return results.rows_json(cur, self.max_result_bytes)
        finally:
            conn.autocommit = False

    def _on_its_own(self, conn: psycopg.Connection[Any], sql_text: str, timeout_ms: int,
                    checkpoint: dict[str, Any]) -> str:
        """Statements that cannot run in a transaction block: at-least-once, checkpoint after."""
        conn.rollback()
        result_text = self._autocommit(conn, sql_text, timeout_ms)
        with conn.transaction():
            conn.execute(query("step_guard"))
            checkpoint["result_text"] = result_text
            checkpoint["version"] = _checkpoint(conn, checkpoint)
        return result_text

    def _elsewhere(self, conn: psycopg.Connection[Any], claim: Claim, node_id: str, sql_text: str,
                   timeout_ms: int, checkpoint: dict[str, Any]) -> StepResult:
        """A step in another database: at-least-once (run, then record under the lease)."""
        try:
            result_text = self._autocommit(conn, sql_text, timeout_ms)
        except BaseException as exc:
            return self._failed(exc, conn, claim, node_id)
        try:
            version = self.db.checkpoint_remote(claim, node_id, result_text, checkpoint["status_details"].obj,
                                                checkpoint["expected_version"])
        except Exception as exc:  # noqa: BLE001
            state = getattr(exc, "sqlstate_seen", None) or getattr(exc, "sqlstate", None)
            return StepResult(Outcome.STALE if state == "DF014" else Outcome.RETRY, message=str(exc))
        return StepResult(Outcome.COMPLETED, result_text=result_text, version=version)

    def _failed(self, exc: BaseException, conn: psycopg.Connection[Any], claim: Claim, node_id: str) -> StepResult:
        try:
            self.db.end_attempt(claim, node_id)
        except Exception:  # noqa: BLE001 - the lease may be gone; the attempt dies with it
            pass
        if isinstance(exc, (results.UnsupportedColumn, results.ResultTooLarge)):
            return StepResult(Outcome.FAILED, message=str(exc))
        if isinstance(exc, _StepEscaped):
            return StepResult(Outcome.FAILED, message=str(exc))
        if isinstance(exc, _Fenced):
            return StepResult(Outcome.STALE, message=str(exc.__cause__ or "checkpoint refused"))
        if isinstance(exc, pg_errors.Error):
            state = exc.sqlstate or ""
            if state == "57014":
                return StepResult(Outcome.CANCELLED, message=exc.diag.message_primary)
            if state == "42601" and "multiple commands" in (exc.diag.message_primary or ""):
                return StepResult(Outcome.FAILED, message=(
                    "a SQL step must be exactly one statement: cannot insert multiple commands into a "
                    "prepared statement"))
            if state.startswith(_RETRIABLE_PREFIXES) or state in _RETRIABLE:
                return StepResult(Outcome.RETRY, message=exc.diag.message_primary)
            return StepResult(Outcome.FAILED, message=exc.diag.message_primary or str(exc))
        if isinstance(exc, psycopg.OperationalError):
            return StepResult(Outcome.RETRY, message=str(exc).strip())
        raise exc


class _NotInTransactionBlock(Exception):
    pass


class _StepEscaped(Exception):
    pass


class _Fenced(Exception):
    """Our own checkpoint was refused: the lease or the instance is gone."""


def _row(cur: psycopg.Cursor[Any]) -> Any:
    row = cur.fetchone()
    if row is None:
        raise psycopg.InterfaceError("the statement returned no row")
    return row


def _checkpoint(conn: psycopg.Connection[Any], params: dict[str, Any]) -> int:
    try:
        return int(_row(conn.execute(query("checkpoint"), params))[0])
    except pg_errors.Error as exc:
        if exc.sqlstate == "DF014":
            raise _Fenced() from exc
        raise


def _from_worker_error(exc: BaseException) -> StepResult:
    state = getattr(exc, "sqlstate", None) or getattr(exc, "sqlstate_seen", None)
    if state == "DF014":
        return StepResult(Outcome.LEASE_LOST, message="lease lost")
    if state == "DF005":
        return StepResult(Outcome.REFUSED, message=str(exc))
    return StepResult(Outcome.RETRY, message=str(exc))


def _configure(conn: psycopg.Connection[Any]) -> None:
    conn.prepare_threshold = None  # DISCARD ALL between steps drops server-side prepared statements
    conn.adapters.register_dumper(str, _TextDumper)
    results.configure(conn)


def _reset(conn: psycopg.Connection[Any]) -> None:
    """Nothing a step leaves in its session reaches the next one."""
    conn.autocommit = True
    try:
        conn.execute("DISCARD ALL")
    finally:
        conn.autocommit = False
