"""The worker's scheduler for schema 0.3.0 and later: every held instance in memory, one thread.

One loop owns every instance this worker holds.  It reads instances when it
claims them (one call for many), keeps their rows current from what it
writes and from what each step's checkpoint returns, decides with the pure
engine, and writes the decisions of all instances that moved in one call
(`df._advance_v2`), which also registers the attempts of the steps it
starts.  It never waits for the database: writes and claims run on a few
I/O threads while it goes on with the instances they do not touch (an
instance whose write is in flight waits for it).  Steps run on submitter
connections in a thread pool, one transaction each, or in the opt-in
batched mode several of one submitter in one transaction.  It reads an
instance again only when it must: a nudge (cancel, signal), a conflict, a
refused checkpoint or a cancelled step.

NOTIFY is a hint, polling the guarantee: nudges are polled for every held
instance four times a second, new work every poll interval.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Container
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from durable.engine.model import InstanceView
from durable.store.steps import Folded, Outcome, StepHandle, StepJob, StepResult
from durable.store.worker_db import Read, Snapshot
from durable.worker import view as views

if TYPE_CHECKING:
    from durable.worker.worker import Worker

log = logging.getLogger("durable.worker")

MAX_CONFLICT_RETRIES = 5
# A timer due sooner than this is waited for while holding the instance.
HOLD_HORIZON = timedelta(seconds=2)
NUDGE_POLL_SECONDS = 0.25
COMBINE_PAUSE_SECONDS = 60  # after a failed claim-and-write, claims and writes commit apart this long
MAX_WRITES = 3  # decisions written at once, each for many instances
TERMINAL = ("completed", "failed", "cancelled")
RETRY_DELAY = timedelta(seconds=1)


@dataclass(eq=False)
class Held:
    """One instance this worker holds a lease on."""

    iid: str
    token: Any
    nudges: int
    snap: Snapshot
    read_at: float                                   # monotonic time of `now`
    now: datetime                                    # the database's time when last read or written
    inflight: dict[str, StepJob] = field(default_factory=dict)
    ended: set[str] = field(default_factory=set)     # nodes whose attempt is over (secret to kill)
    fails: list[tuple[str, str]] = field(default_factory=list)
    reload: bool = False
    dirty: bool = True
    timer: datetime | None = None
    conflicts: int = 0
    fail_instance: str | None = None                 # refused submitter: fail the whole instance
    retry: bool = False                              # infrastructure trouble: give it back for a second
    writing: bool = False                            # a write of its decision is in flight
    structure: dict[str, Any] | None = None          # the engine's nodes (they never change)
    nudges_at: float = 0.0                           # monotonic time `nudges` was read
    unsure: bool = False                             # claimed by a transaction that may have rolled back

    @property
    def pending(self) -> bool:
        """Something besides its running steps waits to be decided or read for the instance."""
        return bool(self.fails or self.ended or self.reload or self.retry) or self.fail_instance is not None


class Scheduler:
    def __init__(self, worker: Worker, *, batch: int = 1) -> None:
        self.worker = worker
        self.db = worker.db
        self.batch = max(1, batch)
        self.held: dict[str, Held] = {}
        self.done: deque[list[tuple[StepJob, StepResult]]] = deque()
        # Writes and claims run on I/O threads; their outcomes come back through these.
        self.io = ThreadPoolExecutor(MAX_WRITES + 1, thread_name_prefix="durable-io")
        self.written: deque[tuple[list[dict[str, Any]], dict[str, list[StepJob]], Future[Any]]] = deque()
        self.writes = 0
        self.claimed: deque[Future[Read]] = deque()
        self.claiming = False
        self.claim_asked = 0
        self.more_due = False
        self.idle_since: float | None = None
        self.max_held = worker.concurrency
        self.last_claim = 0.0
        self.last_nudge_poll = 0.0
        self.nudge_seq = worker.nudge_seq
        self.work_seq = -1
        self._settings_seen: Any = None
        self._settings: Any = None
        self.backoff = 0.0
        self.combine_after = 0.0                     # monotonic time from which claims write decisions too

    # -- the loop -------------------------------------------------------------------------------
    def run(self) -> None:
        stop_deadline: float | None = None
        while True:
            stopping = self.worker.stopping.is_set()
            if stopping:
                stop_deadline = stop_deadline or time.monotonic() + 60
                idle = not self.held and not self.writes and not self.claiming
                if idle or time.monotonic() > stop_deadline:
                    break
            self._wait()
            try:
                self._round(stopping)
                self.backoff = 0.0
            except Exception as exc:  # noqa: BLE001 - the database may be restarting: read again, later
                for h in self.held.values():
                    h.reload = True
                self._back_off("worker round", exc)
        for h in list(self.held.values()):
            self._cancel_steps(h)
        self.io.shutdown(wait=True)

    def _back_off(self, what: str, exc: Exception) -> None:
        """Wait before touching the database again: 0.5 s, doubling up to 5 s while it keeps failing."""
        self.backoff = min(max(self.backoff * 2, 0.5), 5.0)
        log.warning("%s failed (retrying in %.1fs): %s", what, self.backoff, exc)
        self.worker.stopping.wait(self.backoff)

    def busy(self) -> bool:
        return bool(self.held)

    def _wait(self) -> None:
        if self.done or self.written or self.claimed:
            return
        # Dirty instances can go ahead unless every write slot is taken (a returning write wakes us).
        can_write = self.writes < MAX_WRITES
        if any((h.dirty and can_write or h.reload) and not h.writing for h in self.held.values()):
            return
        timeout = self._poll_interval() - (time.monotonic() - self.last_claim)
        if self.held:
            timeout = min(timeout, NUDGE_POLL_SECONDS - (time.monotonic() - self.last_nudge_poll))
            timers = [h.timer for h in self.held.values() if h.timer is not None]
            if timers:
                now = datetime.now(UTC)
                timeout = min(timeout, min((t - now).total_seconds() for t in timers))
        if timeout > 0:
            self.worker.wakeup.wait(timeout)
        self.worker.wakeup.clear()

    def _round(self, stopping: bool) -> None:
        self._collect()
        self._poll_nudges()
        self._timers()
        self._reload([h for h in self.held.values() if h.reload and not h.writing])
        self._advance(stopping)
        if not stopping:
            self._claim()

    # -- what happened ----------------------------------------------------------------------------
    def _collect(self) -> None:
        while self.claimed:
            self._claimed(self.claimed.popleft())
        while self.written:
            self._written(*self.written.popleft())
        started: list[StepJob] = []  # by the decisions written with the steps: dispatched together
        try:
            while self.done:
                for job, result in self.done.popleft():
                    h = self.held.get(job.instance_id)
                    if h is None or h.inflight.get(job.node_id) is not job:
                        continue
                    del h.inflight[job.node_id]
                    started += self._step_done(h, job, result)
        finally:  # even if a later result could not be taken in: these steps are in flight already
            if started:
                self._dispatch(started)

    def _step_done(self, h: Held, job: StepJob, result: StepResult) -> list[StepJob]:
        """Take in a step's outcome; returns the steps the decision written with it started."""
        outcome = result.outcome
        if outcome is Outcome.COMPLETED:
            node = h.snap.nodes.get(job.node_id)
            if node is not None:
                node.update(status="completed", result_text=result.result_text, wake_at=None,
                            status_details=job.details, resource_version=result.version)
            if result.folded is not None:
                return self._folded(h, result.folded)
            h.dirty = True
            return []
        h.dirty = True
        h.ended.add(job.node_id)
        if job.handle.cancelled or outcome in (Outcome.STALE, Outcome.LEASE_LOST):
            h.reload = True  # asked for, or superseded: read again and decide (a lost lease shows there)
        elif outcome is Outcome.RETRY:
            log.warning("instance %s step %s: %s (retrying)", h.iid, job.node_id, result.message)
            h.retry = True
        elif outcome is Outcome.REFUSED:
            h.fail_instance = result.message or "the submitter may not run steps"
        else:
            h.fails.append((job.node_id, result.message or "step failed"))
        return []

    def _folded(self, h: Held, folded: Folded) -> list[StepJob]:
        """Take in the decision a step's transaction wrote after it; returns the steps it started."""
        if h.writing or h.pending or self.worker.stopping.is_set():
            # Another write or read of the instance is under way, so what it holds is no longer certain,
            # something else is pending for it, or the worker is stopping and gives the instance back:
            # read it again and decide.
            h.reload = h.dirty = True
            return []
        written = folded.written
        now = datetime.fromisoformat(written["now"])
        return self._applied(h, {**folded.item, "id": h.iid}, written, now, folded.jobs)

    def _poll_nudges(self) -> None:
        nudged = self.worker.nudge_seq != self.nudge_seq
        if not self.held or not (nudged or time.monotonic() - self.last_nudge_poll >= NUDGE_POLL_SECONDS):
            return
        self.nudge_seq = self.worker.nudge_seq
        self.last_nudge_poll = now = time.monotonic()
        # Without a notification, an instance read in the last interval is known well enough.
        polled = [h for h in self.held.values() if nudged or now - h.nudges_at >= NUDGE_POLL_SECONDS]
        if not polled:
            return
        current = self.db.nudges_v2([h.iid for h in polled])
        for h in polled:
            h.nudges_at = now
            if current.get(h.iid, h.nudges) != h.nudges:
                h.reload = True

    def _timers(self) -> None:
        now = datetime.now(UTC)
        for h in self.held.values():
            if h.timer is not None and h.timer <= now:
                h.timer = None
                h.dirty = True

    def _reload(self, held: list[Held]) -> None:
        if not held:
            return
        read = self.db.load_v2([h.iid for h in held])
        found = {s.instance["id"]: s for s in read.instances}
        for h in held:
            snap = found.get(h.iid)
            if snap is None or snap.lease_token != h.token:
                if snap is not None and snap.instance["status"] not in TERMINAL and not h.unsure:
                    log.warning("instance %s: lease lost, another worker took over", h.iid)
                self._drop(h)
                continue
            h.snap, h.nudges, h.now, h.read_at = snap, snap.nudges, read.now, time.monotonic()
            h.nudges_at = h.read_at
            h.reload, h.dirty, h.unsure = False, True, False

    # -- deciding and writing ---------------------------------------------------------------------
    def _engine_settings(self) -> Any:
        raw = self.worker.settings
        if raw is not self._settings_seen:
            self._settings_seen, self._settings = raw, views.settings_of(raw)
        return self._settings

    def _now(self, h: Held) -> datetime:
        return self._clock(h)()

    def _clock(self, h: Held) -> Callable[[], datetime]:
        """The instance's current time (the database's, as last read, moved on by the local clock)."""
        fake = self.worker.settings.get("fake_now")
        if fake:
            try:
                fixed = datetime.fromisoformat(str(fake))
                return lambda: fixed
            except ValueError:
                pass
        base, read_at = h.now, h.read_at
        return lambda: base + timedelta(seconds=time.monotonic() - read_at)

    def _advance(self, stopping: bool) -> None:
        """Decide every instance that moved and send the decisions in one write (in the background)."""
        if self.writes >= MAX_WRITES:
            return
        items, plans = self._decisions(stopping)
        if not items:
            return
        if self._alone(items):
            self._written(items, plans, _run_here(self.db.advance_v2, self.worker.worker_id, items))
            return
        future = self.io.submit(self.db.advance_v2, self.worker.worker_id, items)
        future.add_done_callback(lambda f: self._arrived(self.written, (items, plans, f)))

    def _decisions(self, stopping: bool) -> tuple[list[dict[str, Any]], dict[str, list[StepJob]]]:
        """The decisions of every instance that moved (counted as a write when there are any), and the
        steps each would start."""
        items: list[dict[str, Any]] = []
        plans: dict[str, list[StepJob]] = {}
        for h in list(self.held.values()):
            if not h.dirty or h.reload or h.writing:
                continue
            h.dirty = False
            item = self._item(h, stopping, plans)
            if item is not None:
                h.writing = True
                items.append(item)
        if items:
            self.writes += 1
        return items, plans

    def _alone(self, items: list[dict[str, Any]]) -> bool:
        """Nothing but this write is going on (no other instance, no step, no write, no claim): the
        loop would only wait for it, so it writes on its own thread instead of handing it off."""
        return self.writes == 1 and not self.claiming and len(items) == len(self.held) and \
            not any(h.inflight for h in self.held.values())

    def _arrived(self, into: deque[Any], what: Any) -> None:
        into.append(what)
        self.worker.wakeup.set()

    def _written(self, items: list[dict[str, Any]], plans: dict[str, list[StepJob]], future: Future[Any]) -> None:
        self.writes -= 1
        try:
            now, results = future.result()
        except Exception as exc:  # noqa: BLE001 - the database may be restarting: read again, later
            for item in items:
                h = self.held.get(item["id"])
                if h is not None:
                    h.writing, h.reload = False, True
            self._back_off("writing decisions", exc)
            return
        started: list[StepJob] = []
        for item in items:
            h = self.held.get(item["id"])
            if h is None:
                continue
            h.writing = False
            started += self._applied(h, item, results.get(h.iid) or {"error": "lease"}, now, plans.get(h.iid, []))
        self._dispatch(started)

    def _item(self, h: Held, stopping: bool, plans: dict[str, list[StepJob]]) -> dict[str, Any] | None:
        base: dict[str, Any] = {"id": h.iid, "token": str(h.token), "ended": sorted(h.ended), "nudges": h.nudges}
        if h.fail_instance is not None or h.retry or h.conflicts > MAX_CONFLICT_RETRIES:
            self._cancel_steps(h)
            if h.fail_instance is not None:
                return {**base, "status": "failed", "output": h.fail_instance,
                        "execution_count": h.snap.instance["execution_count"]}
            wake = datetime.now(UTC) + (RETRY_DELAY if h.retry else timedelta(0))
            return {**base, "release": True, "wake_at": wake.isoformat()}
        if h.snap.instance["status"] in TERMINAL:
            self._cancel_steps(h)
            return {**base, "release": True, "wake_at": None}
        now = self._now(h)
        loaded = h.snap.loaded(now)
        if h.structure is None:
            h.structure = views.structure(loaded)
        v = views.build(loaded, self._engine_settings(), h.structure)
        if h.fails:
            updates = [u for node_id, message in h.fails if (u := views.fail_sql(v, node_id, message))]
            h.fails.clear()
            if updates:
                return {**base, "updates": updates, "redecide": True}
        decision = views.decide(v)
        item = {**base, "updates": views.updates_payload(decision, v),
                "consume": [{"signal_id": sid, "node_id": nid} for sid, nid in decision.consume],
                "execution_count": decision.execution_count}
        if decision.instance_status in ("completed", "failed"):
            self._cancel_steps(h)
            return {**item, "status": decision.instance_status, "output": decision.output}
        for node_id in decision.cancel:
            if node_id in h.inflight:
                h.inflight[node_id].handle.cancel()
        jobs = [] if stopping else _started(h.iid, h.token, decision, v, running=h.inflight)
        if jobs:
            plans[h.iid] = jobs
            item["attempts"] = [j.attempt() for j in jobs]
        # A timer wakes the instance while it is held, also while steps run (a race against a sleep).
        wake_at = decision.wake_at
        h.timer = None if wake_at is None else datetime.now(UTC) + (wake_at - now)
        if not jobs and not h.inflight:
            if stopping:
                return {**item, "release": True, "wake_at": datetime.now(UTC).isoformat()}
            if wake_at is None or wake_at - now > HOLD_HORIZON:
                return {**item, "release": True, "wake_at": wake_at.isoformat() if wake_at else None}
        if not item["updates"] and not item["consume"] and not jobs and not h.ended and \
                decision.execution_count == h.snap.instance["execution_count"] and \
                h.snap.instance["status"] == "running":
            return None
        return item

    def _applied(self, h: Held, item: dict[str, Any], result: dict[str, Any], now: datetime,
                 jobs: list[StepJob]) -> list[StepJob]:
        """Take in the outcome of a written decision; the steps it started (to run now)."""
        error = result.get("error")
        if error == "conflict":
            h.conflicts += 1
            h.reload = True
            return []
        if error == "refused":
            h.fail_instance = str(result.get("message"))
            h.dirty = True
            return []
        if error is not None:
            if h.snap.instance["status"] not in TERMINAL:
                log.warning("instance %s: lease lost, another worker took over", h.iid)
            self._drop(h)
            return []
        h.conflicts = 0
        h.ended.clear()
        status = result.get("status")
        if status in TERMINAL or item.get("release"):
            self._drop(h)
            return []
        versions = result.get("versions") or {}
        for update in item.get("updates") or []:
            node = h.snap.nodes[update["node_id"]]
            node.update(status=update["status"], result_text=update["result_text"], state=update["state"],
                        status_details=update["status_details"], resource_version=versions[update["node_id"]],
                        wake_at=datetime.fromisoformat(update["wake_at"]) if update["wake_at"] else None)
        consumed = {c["signal_id"] for c in item.get("consume") or []}
        if consumed:
            h.snap.signals = [s for s in h.snap.signals if s["id"] not in consumed]
        h.snap.instance["status"] = status
        if item.get("execution_count") is not None:
            h.snap.instance["execution_count"] = item["execution_count"]
        h.now, h.read_at = now, time.monotonic()
        if item.get("redecide"):
            h.dirty = True  # a failure was recorded: decide on it next round
        for job in jobs:
            job.version = int(h.snap.nodes[job.node_id]["resource_version"])
            h.inflight[job.node_id] = job
        return jobs

    # -- steps ------------------------------------------------------------------------------------
    def _dispatch(self, jobs: list[StepJob]) -> None:
        groups: dict[tuple[str | None, str | None], list[StepJob]] = {}
        for job in jobs:
            h = self.held[job.instance_id]
            if len(h.inflight) == 1 and not (h.pending or h.dirty):
                job.then = self._then(h, job)
            groups.setdefault((h.snap.instance["submitter"], h.snap.instance["database"]), []).append(job)
        timeout_ms = int(self.worker.setting("statement_timeout_ms", 0))
        for (role, database), group in groups.items():
            size = self.batch if database is None else 1
            for i in range(0, len(group), size):
                chunk = group[i:i + size]
                future = self.worker.step_pool.submit(self._run_jobs, role, database, chunk, timeout_ms)
                future.add_done_callback(self._finished)

    def _then(self, h: Held, job: StepJob) -> Callable[[str], tuple[dict[str, Any], list[StepJob]] | None]:
        """How the step's transaction decides what follows it, on a copy of the instance (it runs on the
        step's thread): when the step's result only starts the next steps or ends the instance, the
        decision is written with the checkpoint, in the same commit; anything else (a timer to arm, a
        signal, a cancel, a loop's next iteration) is left to the scheduler (None)."""
        snap, structure, settings, clock = h.snap.copy(), h.structure, self._engine_settings(), self._clock(h)
        count, iid, token, stopping = snap.instance["execution_count"], h.iid, h.token, self.worker.stopping
        node_id, details = job.node_id, job.details  # not the job itself: it holds this function

        def decide(result_text: str) -> tuple[dict[str, Any], list[StepJob]] | None:
            if stopping.is_set():
                return None  # no new steps: the scheduler gives the instance back
            snap.nodes[node_id].update(status="completed", result_text=result_text, wake_at=None,
                                       status_details=details, resource_version=-1)
            v = views.build(snap.loaded(clock()), settings, structure)
            decision = views.decide(v)
            if decision.consume or decision.cancel or decision.wake_at is not None \
                    or decision.execution_count != count or any(u.node_id == node_id for u in decision.updates):
                return None
            item: dict[str, Any] = {"updates": views.updates_payload(decision, v)}
            if decision.instance_status in ("completed", "failed"):
                return {**item, "status": decision.instance_status, "output": decision.output}, []
            jobs = _started(iid, token, decision, v, running={node_id})
            if not jobs:
                return None
            return {**item, "attempts": [j.attempt() for j in jobs]}, jobs

        return decide

    def _run_jobs(self, role: str | None, database: str | None, jobs: list[StepJob],
                  timeout_ms: int) -> list[tuple[StepJob, StepResult]]:
        steps = self.worker.steps
        assert steps is not None
        try:
            return steps.run_jobs(role, database, jobs, timeout_ms)
        except Exception as exc:  # noqa: BLE001 - a bug: log it loudly, give the instances back, keep going
            log.error("running steps failed: %s", exc, exc_info=exc)
            return [(job, StepResult(Outcome.RETRY, message=f"the worker failed: {exc}")) for job in jobs]

    def _finished(self, future: Any) -> None:
        self.done.append(future.result())
        self.worker.wakeup.set()

    def _cancel_steps(self, h: Held) -> None:
        for job in h.inflight.values():
            job.handle.cancel()
        h.inflight.clear()

    def _drop(self, h: Held) -> None:
        self._cancel_steps(h)
        self.held.pop(h.iid, None)

    # -- claiming ---------------------------------------------------------------------------------
    def _claim(self) -> None:
        """Claim when woken by new work, every poll interval, and at once while the queue has more
        (the last claim got all it asked for) and a quarter of the slots are free."""
        free = self.max_held - len(self.held)
        due = time.monotonic() - self.last_claim >= self._poll_interval()
        woken = self.worker.work_seq != self.work_seq
        more = self.more_due and free >= max(1, self.max_held // 4)
        if self.claiming or free <= 0 or not (due or woken or more):
            if not self.held and not self.claiming and not self.worker.reported_idle:
                self.worker.reported_idle = True  # tell starts to notify again (see df._wake_workers)
                self.io.submit(self.worker.report_idle)
            return
        self.work_seq = self.worker.work_seq
        self.last_claim = time.monotonic()
        self.claiming, self.claim_asked = True, free
        if not self.held and not self.writes:  # nothing else to do meanwhile: claim on this thread
            if time.monotonic() >= self.combine_after:
                self._claim_and_advance(free)
            else:
                self._claimed(_run_here(self.db.claim_v2, self.worker.worker_id, free))
            return
        future = self.io.submit(self.db.claim_v2, self.worker.worker_id, free)
        future.add_done_callback(lambda f: self._arrived(self.claimed, f))

    def _claim_and_advance(self, free: int) -> None:
        """Claim, decide what was claimed and write those decisions in one transaction, on this thread:
        an idle worker's claim is on the way of every new instance, and one commit is saved."""
        claimed: list[str] = []
        items: list[dict[str, Any]] = []
        plans: dict[str, list[StepJob]] = {}
        stopping = self.worker.stopping.is_set()

        def hold(read: Read) -> None:
            claimed.extend(snap.instance["id"] for snap in read.instances)
            self._claimed(_run_here(lambda: read), fault=False)

        def decide() -> list[dict[str, Any]]:
            nonlocal items, plans
            items, plans = self._decisions(stopping)
            return items

        try:
            written = self.db.claim_advance_v2(self.worker.worker_id, free, hold, decide)
        except Exception as exc:  # noqa: BLE001 - the database may be restarting: read again, later
            # The claim rolled back with the decisions, unless the connection was lost in COMMIT:
            # reading the instances again keeps those this worker holds and lets go of the others.
            # Claims go the two-transaction way for a while, so that an instance whose decision
            # cannot be written is held (and fails there) instead of failing every idle claim.
            self.combine_after = time.monotonic() + COMBINE_PAUSE_SECONDS
            self.claiming = False
            if items:
                self.writes -= 1
            for iid in claimed:
                h = self.held.get(iid)
                if h is not None:
                    h.writing, h.reload, h.unsure = False, True, True
            self._back_off("claim", exc)
            return
        for _ in claimed:
            self.worker.fault("after_claim")
        if written is not None:
            self._written(items, plans, _run_here(lambda: written))

    def _poll_interval(self) -> float:
        """The poll interval, shorter right after the worker went idle: a start made in the moment it
        reported idle did not notify it (50 ms, doubling up to the configured interval)."""
        if self.held:
            self.idle_since = None
            return self.worker.poll_interval
        if self.idle_since is None:
            self.idle_since = time.monotonic()
        idle_for = time.monotonic() - self.idle_since
        return min(self.worker.poll_interval, max(0.05, idle_for))

    def _claimed(self, future: Future[Read], *, fault: bool = True) -> None:
        self.claiming = False
        try:
            read = future.result()
        except Exception as exc:  # noqa: BLE001 - the database may be restarting: claim again, later
            self._back_off("claim", exc)
            return
        self.backoff = 0.0
        if read.settings is not None:
            self.worker.settings = read.settings
        for snap in read.instances:
            if fault:
                self.worker.fault("after_claim")
            iid = snap.instance["id"]
            now = time.monotonic()
            self.held[iid] = Held(iid, snap.lease_token, snap.nudges, snap, now, read.now, nudges_at=now)
        self.more_due = len(read.instances) >= self.claim_asked


def _started(iid: str, token: Any, decision: views.Decision, view: InstanceView,
             running: Container[str]) -> list[StepJob]:
    """The attempts of the SQL steps a decision runs that are not running already.  `in_flight` is every
    SQL step that should be running, including those an earlier holder of the lease started and never
    checkpointed (they run again)."""
    return [StepJob(iid, step.node_id, token, step.sql, views.details_of(decision, view, step.node_id),
                    StepHandle())
            for step in decision.in_flight or decision.run_sql if step.node_id not in running]


def _run_here(fn: Callable[..., Any], *args: Any) -> Future[Any]:
    """Call `fn` on this thread; its outcome as a done Future (what an I/O thread would have returned)."""
    future: Future[Any] = Future()
    try:
        future.set_result(fn(*args))
    except Exception as exc:  # noqa: BLE001 - handed on, as from an I/O thread
        future.set_exception(exc)
    return future
