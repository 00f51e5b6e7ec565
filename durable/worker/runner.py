"""Advance one claimed instance: load, decide (pure engine), apply (CAS), run steps.

The engine decides; this module only performs I/O.  Completed SQL steps are
checkpointed by the step's own transaction; everything else the engine
decides is written by `df._apply_v1` under the lease, compare-and-swap on
each node's resource_version.  A conflict is retried from a fresh read at
most five times, then the claim is released (never the instance failed).
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import FIRST_COMPLETED, Future, wait
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from durable.errors import ConflictError, DurableError, LeaseLostError
from durable.store.steps import Outcome, StepHandle, StepResult
from durable.store.worker_db import Claim, Loaded
from durable.worker import view as views

if TYPE_CHECKING:

    from durable.worker.worker import Worker

log = logging.getLogger("durable.worker")

MAX_CONFLICT_RETRIES = 5
# A timer due sooner than this is waited for while holding the instance.
HOLD_HORIZON = timedelta(seconds=2)
TERMINAL = ("completed", "failed", "cancelled")


class _InFlight(StepHandle):
    """A SQL step running on a submitter connection, cancellable from here."""

    def __init__(self, node_id: str) -> None:
        super().__init__()
        self.node_id = node_id
        self.future: Future[StepResult] | None = None


class InstanceRunner:
    def __init__(self, worker: Worker, claim: Claim) -> None:
        self.worker = worker
        self.db = worker.db
        self.claim = claim
        self.nudges = claim.nudges
        self.inflight: dict[str, _InFlight] = {}
        self.versions: dict[str, int] = {}   # node versions this runner wrote last
        self.conflicts = 0

    @property
    def iid(self) -> str:
        return self.claim.instance_id

    def run(self) -> None:
        try:
            self._run()
        except _Finished:
            pass
        except LeaseLostError:
            log.warning("instance %s: lease lost, another worker took over", self.iid)
            self._cancel_all()
        except Exception:
            self._cancel_all()
            self._release(datetime.now(UTC) + timedelta(seconds=1))
            raise

    # ------------------------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            loaded = self.db.load(self.iid)
            if loaded is None:
                return
            if loaded.instance["status"] in TERMINAL:
                self._cancel_all()
                self._release(None)
                return
            v = views.build(loaded, self.worker.settings)
            decision = views.decide(v)
            if not self._apply(decision, v, loaded):
                continue
            if decision.instance_status in ("completed", "failed"):
                self._cancel_all()
                return
            for node_id in decision.cancel:
                if node_id in self.inflight:
                    self.inflight[node_id].cancel()
            # in_flight: every SQL step that should be running, including those an earlier
            # holder of the lease started and never checkpointed (they run again).
            stopping = self.worker.stopping.is_set()
            for step in [] if stopping else (decision.in_flight or decision.run_sql):
                if step.node_id not in self.inflight:
                    version = self.versions.get(step.node_id, v.state_of(step.node_id).resource_version)
                    self._start_step(loaded, step, views.details_of(decision, v, step.node_id), version)
            if self.worker.stopping.is_set() and not self.inflight:
                self._release(datetime.now(UTC))
                return
            if self.inflight:
                self._wait_for_steps()
                continue
            wake_at = decision.wake_at
            now = v.now or datetime.now(UTC)
            if wake_at is not None and wake_at - now <= HOLD_HORIZON and not self.worker.stopping.is_set():
                self._sleep_until(wake_at, now)
                continue
            self._release(wake_at)
            return

    def _apply(self, decision: views.Decision, v: Any, loaded: Loaded) -> bool:
        """Write a decision; False means read again (conflict)."""
        updates = views.updates_payload(decision, v)
        consume = [{"signal_id": sid, "node_id": nid} for sid, nid in decision.consume]
        status = decision.instance_status if decision.instance_status in ("completed", "failed") else None
        if not updates and not consume and status is None and \
                decision.execution_count == loaded.instance["execution_count"] and \
                loaded.instance["status"] == "running":
            return True
        try:
            result = self.db.apply(self.claim, updates, consume, status, decision.output, decision.execution_count)
        except ConflictError:
            self.conflicts += 1
            if self.conflicts > MAX_CONFLICT_RETRIES:
                raise
            return False
        self.conflicts = 0
        self.versions.update(result.get("versions") or {})
        if result.get("status") == "cancelled":
            self._cancel_all()
            self._release(None)
            raise _Finished()
        return True

    # -- steps ---------------------------------------------------------------------------------
    def _start_step(self, loaded: Loaded, step: views.RunSql, details: dict[str, Any] | None,
                    version: int) -> None:
        assert self.worker.steps is not None
        node_id, sql_text = step.node_id, step.sql
        handle = _InFlight(node_id)
        self.inflight[node_id] = handle
        timeout_ms = int(self.worker.setting("statement_timeout_ms", 0))
        inst = loaded.instance
        handle.future = self.worker.step_pool.submit(
            self.worker.steps.run, self.claim, inst["submitter"], inst["database"], node_id, sql_text,
            details, version, timeout_ms, handle.attach)

    def _wait_for_steps(self) -> None:
        futures = {h.future: h for h in self.inflight.values() if h.future is not None}
        done, _ = wait(futures, timeout=0.25, return_when=FIRST_COMPLETED)
        for fut in done:
            handle = futures[fut]
            del self.inflight[handle.node_id]
            self._step_done(handle, fut.result())
        if not done:
            self._check_nudged()

    def _step_done(self, handle: _InFlight, result: StepResult) -> None:
        if result.outcome is Outcome.COMPLETED:
            return  # checkpointed in the step's own transaction
        if handle.cancelled or result.outcome is Outcome.STALE:
            return  # asked for, or superseded: read again and decide (a lost lease shows there)
        if result.outcome is Outcome.LEASE_LOST:
            raise LeaseLostError()
        if result.outcome is Outcome.RETRY:
            log.warning("instance %s step %s: %s (retrying)", self.iid, handle.node_id, result.message)
            self._cancel_all()
            self._release(datetime.now(UTC) + timedelta(seconds=1))
            raise _Finished()
        fresh = self.db.load(self.iid)
        if fresh is None:
            raise _Finished()
        if result.outcome is Outcome.REFUSED:
            self._cancel_all()
            self.db.apply(self.claim, [], [], "failed", result.message, fresh.instance["execution_count"])
            raise _Finished()
        v = views.build(fresh, self.worker.settings)
        update = views.fail_sql(v, handle.node_id, result.message or "step failed")
        if update:
            try:
                self.db.apply(self.claim, [update], [], None, None, None)
            except ConflictError:
                pass  # read again and decide

    def _check_nudged(self) -> None:
        current = self.db.nudges(self.iid)
        if current is None:
            return
        if current != self.nudges:
            self.nudges = current

    def _cancel_all(self) -> None:
        for handle in list(self.inflight.values()):
            handle.cancel()
        for handle in list(self.inflight.values()):
            if handle.future is not None:
                try:
                    handle.future.result(timeout=30)
                except Exception as exc:  # noqa: BLE001
                    log.debug("cancelled step %s ended with %s", handle.node_id, exc)
        self.inflight.clear()

    def _sleep_until(self, wake_at: datetime, now: datetime) -> None:
        seq = self.worker.nudge_seq
        deadline = time.monotonic() + max(0.0, (wake_at - now).total_seconds())
        with self.worker.nudged:
            while time.monotonic() < deadline and seq == self.worker.nudge_seq and not self.worker.stopping.is_set():
                self.worker.nudged.wait(deadline - time.monotonic())
        self._check_nudged()

    def _release(self, wake_at: datetime | None) -> None:
        try:
            self.db.release(Claim(self.iid, self.claim.token, self.nudges), wake_at)
        except DurableError as exc:
            log.warning("instance %s: release failed: %s", self.iid, exc)


class _Finished(Exception):
    """The runner is done with this instance (already released or finished)."""
