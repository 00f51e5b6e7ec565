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
import logging
import re
import secrets
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.pq import ExecStatus, TransactionStatus
from psycopg.types.json import Jsonb
from psycopg.types.numeric import Int8
from psycopg.types.string import StrDumper
from psycopg_pool import ConnectionPool

from durable.store import results
from durable.store.queries import query
from durable.store.worker_db import Claim, WorkerDB

log = logging.getLogger("durable.worker")

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
# ... and, from the checkpoint on (after the step's own statements and constraints), lock trouble.
_CHECKPOINT_RETRIABLE = {"40P01", "40001", "55P03"}


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
    folded: Folded | None = None  # the decision that followed, written in the step's transaction


@dataclass
class Folded:
    """The decision that followed a step, written with its checkpoint (df._checkpoint_next_v1; a
    batch's, df._checkpoint_next_v2): what was written, the steps it started and what the database
    returned (status, node versions, now)."""

    item: dict[str, Any]
    jobs: list[StepJob]
    written: dict[str, Any]


class StepHandle:
    """A step that can be cancelled from another thread: `attach(conn)` is told the connection its
    statement runs on (False: it was cancelled already, do not start it); `cancel()` marks it and
    cancels the statement running on the attached connection, if any."""

    def __init__(self) -> None:
        self.conn: psycopg.Connection[Any] | None = None
        self.cancelled = False
        self.lock = threading.Lock()

    def attach(self, conn: psycopg.Connection[Any] | None) -> bool:
        with self.lock:
            self.conn = conn
            return not (conn is not None and self.cancelled)

    def cancel(self) -> None:
        with self.lock:
            self.cancelled = True
            if self.conn is not None:
                try:
                    self.conn.cancel_safe(timeout=5.0)
                except Exception as exc:  # noqa: BLE001 - the step may have just finished
                    log.debug("cancel of a step: %s", exc)


def _token() -> str:
    return secrets.token_hex(32)


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(eq=False)
class StepJob:
    """One attempt of a SQL step (0.3.0 API): the scheduler registers the hashes of its two secrets
    with the attempt; the step's transaction binds with the first and checkpoints with the second."""

    instance_id: str
    node_id: str
    token: uuid.UUID
    sql: str
    details: dict[str, Any] | None
    handle: StepHandle
    version: int = 0  # the node's version once the attempt is registered
    bind_secret: str = field(default_factory=_token, repr=False)
    secret: str = field(default_factory=_token, repr=False)
    # From the step's result, the decision that follows it (what to write with the checkpoint and the
    # steps it starts), or None to leave it to the scheduler; set when the step is its instance's only
    # one in flight, in either mode.
    then: Callable[[str], Then] | None = field(default=None, repr=False)

    def attempt(self) -> dict[str, str]:
        return {"node_id": self.node_id, "bind_hash": _hash(self.bind_secret), "secret_hash": _hash(self.secret)}


# The decision that follows a step, made from its result: what to write with the checkpoint and the
# steps it starts (None: the scheduler decides).
Then = tuple[dict[str, Any], list[StepJob]] | None


def _then(job: StepJob, result_text: str) -> Then:
    """The decision that follows the job's step, if the scheduler gave it a way to make one."""
    then, job.then = job.then, None  # used once
    if then is None:
        return None
    try:
        return then(result_text)
    except Exception as exc:  # noqa: BLE001 - a bug: the step still checkpoints; the scheduler decides
        log.error("deciding after the step of instance %s failed: %s", job.instance_id, exc, exc_info=exc)
        return None


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
                                      configure=_configure, open=True, timeout=30,
                                      name=f"durable-step-{role}")
                self._pools[key] = pool
            return pool

    def run(self, claim: Claim, role: str | None, database: str | None, node_id: str, sql_text: str,
            status_details: dict[str, Any] | None, expected_version: int, timeout_ms: int,
            register: Callable[[psycopg.Connection[Any] | None], bool]) -> StepResult:
        """Run one step (the node must still be at `expected_version` when it checkpoints).  `register(conn)` lets the caller cancel it; it returns False when the
        step must not start (already cancelled)."""
        if role is None:
            return StepResult(Outcome.REFUSED, message=_NO_ROLE)
        if database == self.home_database:
            database = None
        if transaction_control(sql_text):
            return StepResult(Outcome.FAILED, message=_TX_CONTROL_REFUSED)
        got = self._connect(role, database, claim.instance_id)
        if isinstance(got, StepResult):
            return got
        pool, conn = got
        try:
            return self._run_on(conn, claim, node_id, sql_text, status_details, expected_version, timeout_ms,
                                register, elsewhere=database is not None)
        finally:
            register(None)
            _give_back(pool, conn)

    # -- the 0.3.0 protocol: attempts registered by the scheduler, bound and checkpointed here ---------
    def run_jobs(self, role: str | None, database: str | None, jobs: list[StepJob],
                 timeout_ms: int) -> list[tuple[StepJob, StepResult]]:
        """Run steps of one submitter: one alone in its own transaction, several in one transaction
        (the opt-in batched mode).  Every job gets a result."""
        if role is None:
            return [(j, StepResult(Outcome.REFUSED, message=_NO_ROLE)) for j in jobs]
        if database == self.home_database:
            database = None
        done: list[tuple[StepJob, StepResult]] = []
        todo: list[StepJob] = []
        for job in jobs:
            if transaction_control(job.sql):
                done.append((job, StepResult(Outcome.FAILED, message=_TX_CONTROL_REFUSED)))
            else:
                todo.append(job)
        if not todo:
            return done
        got = self._connect(role, database, todo[0].instance_id)
        if isinstance(got, StepResult):
            return done + [(j, got) for j in todo]
        pool, conn = got
        try:
            if database is not None:
                done += [(j, self._remote(conn, j, timeout_ms)) for j in todo]
            elif len(todo) == 1:
                done.append((todo[0], self._single(conn, todo[0], timeout_ms)))
            else:
                done += self._batch(conn, todo, timeout_ms)
        finally:
            for job in todo:
                job.handle.attach(None)
            _give_back(pool, conn)
        return done

    def _connect(self, role: str, database: str | None,
                 instance_id: str) -> tuple[ConnectionPool, psycopg.Connection[Any]] | StepResult:
        """A pooled connection logged in as the submitter, or why there is none: refused for good
        (the submitter may not run steps any more), or trouble to retry later."""
        try:
            pool = self._pool(role, database)
            stats = pool.get_stats()
            if not stats.get("pool_available", 0) and stats.get("pool_size", 0) < pool.max_size:
                # A new login is coming: a role made NOLOGIN (or worse) is refused now, not after a timeout.
                refusal = self._refusal(instance_id)
                if refusal is not None:
                    return StepResult(Outcome.REFUSED, message=refusal)
            return pool, pool.getconn()
        except Exception as exc:  # noqa: BLE001 - any connect failure: refused for good, or try again later
            refusal = self._refusal(instance_id)
            if refusal is not None:
                return StepResult(Outcome.REFUSED, message=refusal)
            return StepResult(Outcome.RETRY, message=f"cannot connect as {role}: {str(exc).strip()}")

    def _single(self, conn: psycopg.Connection[Any], job: StepJob, timeout_ms: int) -> StepResult:
        """One step, one transaction: [BEGIN, prepare and bind, statement] then [constraints, guard,
        checkpoint, COMMIT], each group one round trip."""
        if not job.handle.attach(conn):
            return StepResult(Outcome.CANCELLED)
        bound: psycopg.Cursor[Any] | None = None
        try:
            with conn.pipeline() as p:
                bound = conn.execute(query("step_begin"), {"timeout": f"{timeout_ms}ms", **_bind_params([job])})
                cur = conn.cursor()
                cur.execute(job.sql.encode(), binary=True)  # extended protocol: one statement only
                p.sync()
            xid = str(_row(bound)[1])
            result_text = results.rows_json(cur, self.max_result_bytes)
        except BaseException as exc:
            _rollback(conn)
            if bound is not None and not _ran(bound):
                return _refused_bind(exc)
            if isinstance(exc, (pg_errors.ActiveSqlTransaction, pg_errors.InvalidTransactionTermination)):
                return self._single_on_its_own(conn, job, timeout_ms)
            return _classify(exc)
        self.fault("after_statement")
        return self._commit(conn, [job], [result_text], xid, [_then(job, result_text)])[0]

    def _commit(self, conn: psycopg.Connection[Any], jobs: list[StepJob], texts: list[str], xid: str,
                thens: list[Then] | None = None) -> list[StepResult]:
        """Fire deferred constraints, guard the session, checkpoint every job, with the decisions that
        follow them where `thens` has one, and commit: one round trip.  One result per job: all
        completed (with the decisions written, where they were), or all the same failure; the
        versions land in the jobs."""
        thens = thens or [None] * len(jobs)
        folds = any(t is not None for t in thens)
        constraints: psycopg.Cursor[Any] | None = None
        checkpoint: psycopg.Cursor[Any] | None = None
        if folds and len(jobs) == 1:
            (job,), (then,) = jobs, thens
            assert then is not None
            sql = query("checkpoint_next")
            params: dict[str, Any] = {
                "xid": xid, "instance_id": job.instance_id, "node_id": job.node_id, "secret": job.secret,
                "result": texts[0], "details": Jsonb(job.details), "version": Int8(job.version),
                "next": Jsonb(then[0])}
        else:
            sql = query("checkpoint_next_batch") if folds else query("checkpoint_v2")
            params = {"xid": xid, "instance_ids": [j.instance_id for j in jobs], "node_ids": [j.node_id for j in jobs],
                      "secrets": [j.secret for j in jobs], "results": texts,
                      "details": [Jsonb(j.details) for j in jobs], "versions": [Int8(j.version) for j in jobs]}
            if folds:
                params["nexts"] = [None if t is None else Jsonb(t[0]) for t in thens]
        try:
            with conn.pipeline():
                constraints = conn.execute(query("step_constraints"))
                conn.execute(query("step_guard"))
                checkpoint = conn.execute(sql, params)
                conn.commit()
            out = _row(checkpoint)[0]
        except BaseException as exc:
            _rollback(conn)
            failure = _commit_failure(exc, constraints)
            return [failure] * len(jobs)
        if not folds:
            versions, written = out, [None] * len(jobs)
        else:  # one step's decision comes back alone, a batch's as a list
            versions, written = out["versions"], out["next"] if len(jobs) > 1 else [out["next"]]
        for job, version in zip(jobs, versions, strict=True):
            job.version = int(version)
        self.fault("after_commit")
        return [StepResult(Outcome.COMPLETED, version=job.version, result_text=text,
                           folded=None if then is None or w is None else Folded(then[0], then[1], w))
                for job, text, then, w in zip(jobs, texts, thens, written, strict=True)]

    def _single_on_its_own(self, conn: psycopg.Connection[Any], job: StepJob, timeout_ms: int) -> StepResult:
        """A statement that cannot run in a transaction block: bound and run in autocommit
        (at-least-once), then checkpointed in a transaction of its own."""
        try:
            conn.autocommit = True
            try:
                conn.execute(query("step_prepare_session"), {"timeout": f"{timeout_ms}ms"})
                conn.execute(query("bind"), _bind_params([job], autocommit=True))
            except BaseException as exc:
                return _refused_bind(exc)
            cur = conn.cursor()
            cur.execute(job.sql.encode(), binary=True)
            result_text = results.rows_json(cur, self.max_result_bytes)
        except BaseException as exc:
            return _classify(exc)
        finally:
            conn.autocommit = False
        try:
            xid = str(_row(conn.execute(query("step_guard")))[4])
        except BaseException as exc:
            _rollback(conn)
            return _classify(exc)
        return self._commit(conn, [job], [result_text], xid)[0]

    def _remote(self, conn: psycopg.Connection[Any], job: StepJob, timeout_ms: int) -> StepResult:
        """A step in another database: at-least-once (run, then recorded under the lease)."""
        if not job.handle.attach(conn):
            return StepResult(Outcome.CANCELLED)
        try:
            result_text = self._autocommit(conn, job.sql, timeout_ms)
        except BaseException as exc:
            return _classify(exc)
        try:
            version = self.db.checkpoint_remote(Claim(job.instance_id, job.token, 0), job.node_id, result_text,
                                                job.details, job.version)
        except Exception as exc:  # noqa: BLE001
            state = getattr(exc, "sqlstate_seen", None) or getattr(exc, "sqlstate", None)
            return StepResult(Outcome.STALE if state == "DF014" else Outcome.RETRY, message=str(exc))
        job.version = version
        return StepResult(Outcome.COMPLETED, result_text=result_text, version=version)

    def _batch(self, conn: psycopg.Connection[Any], jobs: list[StepJob],
               timeout_ms: int) -> list[tuple[StepJob, StepResult]]:
        """Several steps in one transaction (the opt-in batched mode).  First all at once, in one
        pipeline; if a step fails, again with a savepoint each, so that only it is undone; if the
        commit fails, each step again in a transaction of its own: no step is undone by a neighbour."""
        done: list[tuple[StepJob, StepResult]] = []
        live = []
        for job in jobs:
            if job.handle.attach(conn):
                live.append(job)
            else:
                done.append((job, StepResult(Outcome.CANCELLED)))
        if not live:
            return done
        timeout = {"timeout": f"{timeout_ms}ms"}
        try:
            with conn.pipeline() as p:
                bound = conn.execute(query("step_begin"), {**timeout, **_bind_params(live)})
                cursors = []
                for i, job in enumerate(live):
                    if i:
                        self._between_steps(conn, timeout)
                    cur = conn.cursor()
                    cur.execute(job.sql.encode(), binary=True)
                    cursors.append(cur)
                    conn.execute(query("step_constraints"))
                p.sync()
            xid = str(_row(bound)[1])
            texts = [results.rows_json(cur, self.max_result_bytes) for cur in cursors]
        except BaseException as exc:
            _rollback(conn)
            if not _ran(bound):
                return done + [(j, _refused_bind(exc)) for j in live]
            # From here on each step is cancellable only while its own statement runs: a cancel of
            # one instance must not interrupt a neighbour's statement.
            for job in live:
                job.handle.attach(None)
            return done + self._batch_with_savepoints(conn, live, timeout_ms)
        self.fault("after_statement")
        outcomes = self._commit(conn, live, texts, xid, [_then(j, t) for j, t in zip(live, texts, strict=True)])
        if outcomes[0].outcome is Outcome.COMPLETED:
            return done + list(zip(live, outcomes, strict=True))
        return done + [(j, self._single(conn, j, timeout_ms)) for j in live]

    def _between_steps(self, conn: psycopg.Connection[Any], timeout: dict[str, str]) -> None:
        """Nothing one step of a batch left in its session reaches the next one (df._step_reset_v1:
        what the reset between transactions does, that can be done inside one)."""
        conn.execute(query("step_reset"), timeout)

    def _batch_with_savepoints(self, conn: psycopg.Connection[Any], jobs: list[StepJob],
                               timeout_ms: int) -> list[tuple[StepJob, StepResult]]:
        timeout = {"timeout": f"{timeout_ms}ms"}
        failed: list[tuple[StepJob, StepResult]] = []
        alone: list[StepJob] = []
        kept: list[tuple[StepJob, str]] = []
        try:
            xid = str(_row(conn.execute(query("step_begin"), {**timeout, **_bind_params(jobs)}))[1])
        except BaseException as exc:
            _rollback(conn)
            return [(j, _refused_bind(exc)) for j in jobs]
        for i, job in enumerate(jobs):
            if job.handle.cancelled:
                failed.append((job, StepResult(Outcome.CANCELLED)))
                continue
            try:
                conn.execute("SAVEPOINT durable_step")
                if i:
                    self._between_steps(conn, timeout)
                if not job.handle.attach(conn):
                    raise _Cancelled()
                try:
                    cur = conn.cursor()
                    cur.execute(job.sql.encode(), binary=True)
                finally:
                    job.handle.attach(None)
                text = results.rows_json(cur, self.max_result_bytes)
                conn.execute(query("step_constraints"))
                conn.execute("RELEASE SAVEPOINT durable_step")
                kept.append((job, text))
            except BaseException as exc:
                try:
                    conn.execute("ROLLBACK TO SAVEPOINT durable_step")
                except BaseException:  # noqa: BLE001 - the connection itself is gone
                    _rollback(conn)
                    return failed + [(j, _classify(exc)) for j in jobs[i:]] + \
                        [(j, StepResult(Outcome.RETRY, message=str(exc))) for j in alone + [k for k, _ in kept]]
                if isinstance(exc, (pg_errors.ActiveSqlTransaction, pg_errors.InvalidTransactionTermination)):
                    alone.append(job)
                elif isinstance(exc, _Cancelled):
                    failed.append((job, StepResult(Outcome.CANCELLED)))
                else:
                    failed.append((job, StepResult(Outcome.CANCELLED) if job.handle.cancelled else _classify(exc)))
        out = list(failed)
        if kept:
            self.fault("after_statement")
            outcomes = self._commit(conn, [j for j, _ in kept], [t for _, t in kept], xid,
                                    [_then(j, t) for j, t in kept])
            if outcomes[0].outcome is Outcome.COMPLETED:
                out += [(j, o) for (j, _), o in zip(kept, outcomes, strict=True)]
            else:
                out += [(j, self._single(conn, j, timeout_ms)) for j, _ in kept]
        else:
            _rollback(conn)
        out += [(j, self._single(conn, j, timeout_ms)) for j in alone]
        return out

    def _refusal(self, instance_id: str) -> str | None:
        """Why the submitter may not run steps, or None (also when it cannot be told: the database may
        be down, or a 0.1.0 schema lacks the function; the login attempt then decides)."""
        try:
            return self.db.submitter_refusal(instance_id)
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
        if isinstance(exc, _StepEscaped):
            return StepResult(Outcome.FAILED, message=str(exc))
        if isinstance(exc, _Fenced):
            return StepResult(Outcome.STALE, message=str(exc.__cause__ or "checkpoint refused"))
        return _classify(exc)


class _NotInTransactionBlock(Exception):
    pass


class _Cancelled(Exception):
    """The step was cancelled before its statement started."""


class _StepEscaped(Exception):
    pass


class _Fenced(Exception):
    """Our own checkpoint was refused: the lease or the instance is gone."""


def _commit_failure(exc: BaseException, constraints: psycopg.Cursor[Any] | None) -> StepResult:
    """What a failed checkpoint and commit mean for its steps."""
    if constraints is not None and not _ran(constraints):
        return _classify(exc)  # the step's own deferred constraint or trigger
    if isinstance(exc, pg_errors.Error) and exc.sqlstate == "DF014":
        message = exc.diag.message_primary or ""
        if message.endswith("the step ended its transaction"):
            return StepResult(Outcome.FAILED, message="the step ended its transaction")
        return StepResult(Outcome.STALE, message=message)
    if isinstance(exc, pg_errors.Error) and exc.sqlstate in _CHECKPOINT_RETRIABLE:
        # The checkpoint's own locks (a deadlock, a lock timeout): not the step's failure.
        return StepResult(Outcome.RETRY, message=exc.diag.message_primary)
    return _classify(exc)


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
    conn.prepare_threshold = None  # the reset between steps deallocates server-side prepared statements
    conn.adapters.register_dumper(str, _TextDumper)
    results.configure(conn)


# Everything DISCARD ALL resets except the session's cached plans (DISCARD PLANS): those hold no state
# a step could leave (they are re-planned when a table or search_path they depend on changes), and
# keeping them spares re-planning the checkpoint functions at every step.  One round trip (simple
# protocol), outside any transaction block.
_RESET = ("CLOSE ALL; SET SESSION AUTHORIZATION DEFAULT; RESET ALL; DEALLOCATE ALL; UNLISTEN *; "
          "SELECT pg_catalog.pg_advisory_unlock_all(); DISCARD TEMP; DISCARD SEQUENCES")


def _give_back(pool: ConnectionPool, conn: psycopg.Connection[Any]) -> None:
    """Reset the connection (nothing a step leaves in its session reaches the next one) and return it to
    its pool; one that cannot be reset is closed, and the pool drops it.  On this thread: a hand-off
    to the pool's own threads would cost more than the round trip."""
    try:
        if conn.info.transaction_status != TransactionStatus.IDLE:
            conn.rollback()
        conn.autocommit = True
        try:
            conn.execute(_RESET)
        finally:
            conn.autocommit = False
    except Exception as exc:  # noqa: BLE001 - broken or not clean: never reuse it
        log.debug("a step connection could not be reset (%s): closed", exc)
        conn.close()
    pool.putconn(conn)


_NO_ROLE = "submitted_by role no longer exists in pg_roles"
_TX_CONTROL_REFUSED = ("transaction control statements (BEGIN, COMMIT, ROLLBACK, SAVEPOINT, ...) cannot be workflow "
                       "steps: each step already runs in its own transaction")


def _bind_params(jobs: list[StepJob], *, autocommit: bool = False) -> dict[str, Any]:
    return {"instance_ids": [j.instance_id for j in jobs], "node_ids": [j.node_id for j in jobs],
            "secrets": [j.bind_secret for j in jobs], "autocommit": autocommit}


def _ran(cur: psycopg.Cursor[Any]) -> bool:
    """Whether a statement sent in a pipeline got its result (an error stops the ones after it)."""
    res = cur.pgresult
    return res is not None and res.status in (ExecStatus.COMMAND_OK, ExecStatus.TUPLES_OK)


def _rollback(conn: psycopg.Connection[Any]) -> None:
    try:
        conn.rollback()
    except Exception:  # noqa: BLE001 - a broken connection is discarded by the pool
        pass


def _refused_bind(exc: BaseException) -> StepResult:
    """The attempt could not be bound: superseded (cancelled, lease lost) or the database is away."""
    if isinstance(exc, pg_errors.Error) and exc.sqlstate == "DF014":
        return StepResult(Outcome.STALE, message=exc.diag.message_primary)
    if isinstance(exc, psycopg.Error):
        return StepResult(Outcome.RETRY, message=str(exc).strip())  # ours, not the step's: never its failure
    raise exc


def _classify(exc: BaseException) -> StepResult:
    """What a step's error means for its node."""
    if isinstance(exc, (results.UnsupportedColumn, results.ResultTooLarge)):
        return StepResult(Outcome.FAILED, message=str(exc))
    if isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError)) and not exc.sqlstate:
        return StepResult(Outcome.RETRY, message=str(exc).strip())  # the connection, not the step
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
