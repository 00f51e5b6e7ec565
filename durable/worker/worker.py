"""The worker process: claim loop, heartbeat, listener, graceful shutdown.

NOTIFY is a hint, polling the guarantee.  Side tasks (heartbeat, listener)
are supervised: if one dies the worker stops loudly instead of running
half-alive.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import socket
import sys
import threading
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from durable.errors import DurableError
from durable.store.db import resolve_dsn
from durable.store.steps import StepRunner
from durable.store.worker_db import Claim, WorkerDB

log = logging.getLogger("durable.worker")

# The oldest schema this worker runs against: every df._*_v1 function it calls exists there unchanged.
# Raise it when the worker starts calling something newer.
MIN_SCHEMA = "0.1.0"
# From this schema on the worker uses the set-based API (durable.worker.scheduler); before it, one
# thread per held instance (durable.worker.runner), which stays correct against every later schema.
SET_BASED_SCHEMA = "0.3.0"


class Worker:
    def __init__(self, dsn: str | None, *, concurrency: int = 4, poll_interval: float = 1.0,
                 batch: int = 1) -> None:
        self.dsn = resolve_dsn(dsn)
        self.concurrency = max(1, concurrency)
        self.batch = max(1, batch)
        self.schema_version = MIN_SCHEMA
        self.work_seq = 0                       # notifications of new work so far
        self.reported_idle = True               # what the last heartbeat said
        self._scheduler: Any = None
        self.poll_interval = poll_interval
        self.worker_id = uuid.uuid4()
        self.db = WorkerDB(self.dsn, max_size=self.concurrency + 2)
        self.steps: StepRunner | None = None
        self.stopping = threading.Event()
        self.wakeup = threading.Event()         # new work may be due
        self.nudged = threading.Condition()     # a held instance was cancelled or signalled
        self.nudge_seq = 0
        self.settings: dict[str, Any] = {}
        self._runners: dict[str, Future[None]] = {}
        self._runner_pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="durable-instance")
        self.step_pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="durable-step")
        self._side_error: BaseException | None = None

    # -- settings and fault points -------------------------------------------------------------
    def setting(self, key: str, default: float) -> float:
        value = self.settings.get(key)
        try:
            return float(value) if value is not None else default
        except ValueError:
            return default

    def fault(self, name: str) -> None:
        """A test fault point: when armed (owner-only df.settings), die like kill -9, once."""
        armed = self.settings.get("fault_points")
        if armed and name in armed and self.db.fire_fault(name):
            log.warning("fault point %s: killing the worker", name)
            os.kill(os.getpid(), signal.SIGKILL)

    def check_schema(self) -> None:
        """Refuse to run against a schema this worker was not built for."""
        from durable.schema import Scripts, parse_version

        wanted = Scripts.packaged().newest()
        versions = self.db.schema_versions()
        if not versions:
            raise DurableError("durable is not installed in this database: run `durable install`")
        current = max(versions, key=parse_version)
        self.schema_version = current
        if parse_version(current) < parse_version(MIN_SCHEMA):
            raise DurableError(f"the database has durable {current}; this worker needs {MIN_SCHEMA} or newer: "
                               f"run `durable upgrade` first")
        if parse_version(current) > parse_version(wanted):
            raise DurableError(f"the database has durable {current}, newer than this worker ({wanted}): "
                               "upgrade the durable package")

    def refresh_settings(self) -> None:
        self.settings = self.db.settings()

    # -- side tasks ----------------------------------------------------------------------------
    def _supervised(self, name: str, target: Any) -> threading.Thread:
        def run() -> None:
            try:
                target()
            except BaseException as exc:  # noqa: BLE001
                if not self.stopping.is_set():
                    log.error("side task %s died: %s", name, exc)
                    self._side_error = exc
                    self.stopping.set()
                    self.wakeup.set()

        thread = threading.Thread(target=run, name=f"durable-{name}", daemon=True)
        thread.start()
        return thread

    def _heartbeat_loop(self) -> None:
        failures = 0
        while not self.stopping.is_set():
            interval = max(0.2, self.setting("lease_seconds", 30.0) / 3)
            try:
                idle = not self.busy()
                self.db.heartbeat(self.worker_id, idle=idle)
                self.reported_idle = idle
                failures = 0
            except Exception as exc:  # noqa: BLE001 - the database may be restarting
                failures += 1
                log.warning("heartbeat failed (%s): %s", failures, exc)
            self.stopping.wait(interval)

    def _listen_loop(self) -> None:
        backoff = 0.5
        while not self.stopping.is_set():
            try:
                conn = self.db.listen_connection()
            except Exception as exc:  # noqa: BLE001
                log.warning("listener cannot connect: %s", exc)
                self.stopping.wait(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            backoff = 0.5
            try:
                while not self.stopping.is_set():
                    heard = False
                    for note in conn.notifies(timeout=1.0, stop_after=1):
                        heard = True
                        if note.channel == "durable_nudge":
                            self.nudge()
                        else:
                            self.work_seq += 1
                            self.wakeup.set()
                    if not heard:
                        conn.execute("SELECT 1")  # a quiet second: ping (a dead connection raises here)
            except Exception as exc:  # noqa: BLE001
                if not self.stopping.is_set():
                    log.warning("listener lost its connection: %s", exc)
                    self.wakeup.set()
            finally:
                try:
                    conn.close()
                except Exception:  # noqa: BLE001
                    pass

    def nudge(self) -> None:
        with self.nudged:
            self.nudge_seq += 1
            self.nudged.notify_all()
        self.wakeup.set()

    def report_idle(self) -> None:
        """Tell the database at once that this worker went idle (starts notify idle workers only),
        then claim once more: a start made before the report did not notify."""
        try:
            self.db.heartbeat(self.worker_id, idle=True)
        except Exception as exc:  # noqa: BLE001 - the next heartbeat says it again
            log.debug("idle report failed: %s", exc)
        self.work_seq += 1
        self.wakeup.set()

    def busy(self) -> bool:
        if self._scheduler is not None:
            return bool(self._scheduler.busy())
        return bool(self._runners)

    # -- main loop -----------------------------------------------------------------------------
    def run(self) -> int:
        from durable.schema import parse_version
        from durable.worker.scheduler import Scheduler

        self.db.open()
        self.check_schema()
        self.refresh_settings()
        self.steps = StepRunner(self.dsn, self.db, max_per_role=int(self.setting("max_user_connections", 10)),
                                fault=self.fault,
                                max_result_bytes=int(self.setting("max_result_bytes", 64 * 1024 * 1024)))
        self.db.register(self.worker_id, socket.gethostname(), os.getpid())
        self._supervised("heartbeat", self._heartbeat_loop)
        self._supervised("listener", self._listen_loop)
        set_based = parse_version(self.schema_version) >= parse_version(SET_BASED_SCHEMA)
        if set_based:
            self._scheduler = Scheduler(self, batch=self.batch)
        log.info("worker %s started (concurrency %s%s)", self.worker_id, self.concurrency,
                 f", batches of up to {self.batch} steps" if self.batch > 1 else "")
        try:
            if set_based:
                self._scheduler.run()
            else:
                self._run_per_instance()
        finally:
            self.shutdown()
        if self._side_error is not None:
            raise DurableError(f"worker stopped: a side task died: {self._side_error}")
        return 0

    def _run_per_instance(self) -> None:
        """Schemas before 0.3.0: one thread per held instance (durable.worker.runner)."""
        from durable.worker.runner import InstanceRunner

        backoff = 0.5
        while not self.stopping.is_set():
            self._reap()
            free = self.concurrency - len(self._runners)
            claims: list[Claim] = []
            if free > 0:
                try:
                    self.refresh_settings()
                    claims = self.db.claim(self.worker_id, free)
                    backoff = 0.5
                except Exception as exc:  # noqa: BLE001 - reconnect with backoff
                    log.warning("claim failed: %s", exc)
                    self.stopping.wait(backoff)
                    backoff = min(backoff * 2, 5.0)
                    continue
            for claim in claims:
                self.fault("after_claim")
                runner = InstanceRunner(self, claim)
                future = self._runner_pool.submit(runner.run)
                # A slot frees up: claim more at once, not at the next poll.
                future.add_done_callback(lambda _: self.wakeup.set())
                self._runners[claim.instance_id] = future
            if claims and len(claims) == free:
                continue
            self.wakeup.wait(self.poll_interval)
            self.wakeup.clear()

    def _reap(self) -> None:
        for iid, fut in list(self._runners.items()):
            if fut.done():
                del self._runners[iid]
                exc = fut.exception()
                if exc is not None:
                    log.error("instance %s runner failed: %s", iid, exc, exc_info=exc)

    def stop(self) -> None:
        self.stopping.set()
        self.wakeup.set()
        self.nudge()

    def shutdown(self) -> None:
        self.stopping.set()
        self._runner_pool.shutdown(wait=True)
        self.step_pool.shutdown(wait=True)
        try:
            self.db.unregister(self.worker_id)
        except Exception as exc:  # noqa: BLE001
            log.warning("could not unregister: %s", exc)
        if self.steps is not None:
            self.steps.close()
        self.db.close()


def run_worker(dsn: str | None, *, concurrency: int = 4, batch: int = 1) -> int:
    # The scheduler thread hands work to step and I/O threads all the time: let a woken thread have
    # the interpreter within 1 ms rather than Python's default 5.
    sys.setswitchinterval(0.001)
    # Every step allocates a few hundred short-lived objects that reference counting frees; collecting
    # the young generation every 700 allocations only walks them again.
    gc.set_threshold(20_000, 20, 20)
    logging.basicConfig(level=os.environ.get("DURABLE_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    worker = Worker(dsn, concurrency=concurrency, batch=batch)

    def on_signal(signum: int, frame: Any) -> None:
        log.info("signal %s: stopping (finishing what is in hand)", signum)
        worker.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return worker.run()
