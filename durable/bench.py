"""`durable bench`: how fast durable runs on this PostgreSQL, measured against the machine's own limit.

Everything runs in scratch objects created from a superuser DSN and removed
afterwards: a database `durable_bench_<random>` with durable installed, an
ordinary LOGIN role that submits workflows and a worker LOGIN role in
`durable_worker` (both with random passwords kept in a private password file,
so they authenticate through the DSN's own host, whatever its method).

Scenarios (issue 10):
  1. commit ceiling: pgbench's built-in `-N` script at scale 10 with 4 clients
     (pgbench from PATH, else an equivalent run from Python, reported as such),
     for as long as scenario 2's runs took;
  2. throughput: instances of 3 sequential `SELECT 1` steps, all started up
     front by the ordinary role, run by K real worker processes
     (`python -m durable.cli worker`); steps/s from the first worker's
     registration to the last completion; every instance and every step
     checked completed with the right result;
  3. latency: sequential 1-step instances, start call to the client seeing
     completion (Client.wait, woken by NOTIFY);
  4. start rate: df.start of a 3-node graph from 4 connections, no worker;
  5. memory: the peak RSS (VmHWM) of every worker process of scenario 2;
  6. scale: with N finished instances bulk-inserted into df.instances and
     df.nodes, the times of df.instance_info, a df.list_instances page and the
     worker's claim statement, and their plans (auto_explain's EXPLAIN JSON of
     the statements inside the functions).

Nothing here changes how the engine runs: default settings, the shipped
worker command, the public client.  The benchmark only reads the tables to
time and verify, and writes them directly only to seed scenario 6.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import platform
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from durable import __version__, schema
from durable.client import Client
from durable.errors import DurableError
from durable.store.db import resolve_dsn
from durable.store.queries import query

Progress = Callable[[str], None]

# The result of `SELECT 1` as pg_durable stores it (PGD_REFERENCE 2.4: SQL results; THEN -> right result).
EXPECTED_SELECT_1: dict[str, Any] = {"rows": [{"?column?": 1}], "row_count": 1}
STEP = "SELECT 1"
DEFAULT_WORKERS = (1, 2, 4)
# Instances each worker process holds at once (its --concurrency); see docs/performance.md for the sweep.
DEFAULT_CONCURRENCY = 32
# Steps of one submitter per transaction in the opt-in batched mode (`durable worker --batch N`), and
# the instances each worker holds then (batches fill from the instances held).
DEFAULT_BATCH = 64
DEFAULT_BATCHED_CONCURRENCY = 256

TARGETS = {
    "steps_per_s_vs_ceiling": 0.5,
    "steps_per_s_batched_vs_ceiling": 2.0,
    "latency_p50_ms": 3.0,
    "latency_p99_ms": 15.0,
    "starts_per_s_vs_ceiling": 0.5,
    "worker_rss_mb": 60.0,
    "instance_info_ms": 5.0,
    "list_page_ms": 10.0,
}


@dataclass(frozen=True)
class Plan:
    """How big each scenario is."""

    workers: tuple[int, ...]
    concurrency: int
    batch: int                  # scenario 2, batched mode
    batched_concurrency: int
    instances: int              # scenario 2, per worker count
    batched_instances: int      # scenario 2, batched mode: more, so that a run still lasts 20 s and more
    pgbench_scale: int          # scenario 1
    min_ceiling_seconds: int
    latency_samples: int        # scenario 3
    latency_warmup: int
    starts_per_connection: int  # scenario 4 (4 connections)
    start_history: int          # scenario 4: finished instances in the tables before it starts
    scale_instances: int        # scenario 6
    scale_pending: int
    scale_samples: int


def make_plan(quick: bool, workers: Sequence[int] | None = None, *, concurrency: int | None = None,
              instances: int | None = None, scale_instances: int | None = None) -> Plan:
    if quick:
        plan = Plan(workers=DEFAULT_WORKERS, concurrency=DEFAULT_CONCURRENCY, batch=DEFAULT_BATCH,
                    batched_concurrency=DEFAULT_BATCHED_CONCURRENCY, instances=150, batched_instances=150,
                    pgbench_scale=1,
                    min_ceiling_seconds=2, latency_samples=20, latency_warmup=2, starts_per_connection=50,
                    start_history=500,
                    scale_instances=2_000, scale_pending=20, scale_samples=20)
    else:
        plan = Plan(workers=DEFAULT_WORKERS, concurrency=DEFAULT_CONCURRENCY, batch=DEFAULT_BATCH,
                    batched_concurrency=DEFAULT_BATCHED_CONCURRENCY, instances=20_000, batched_instances=60_000,
                    pgbench_scale=10,
                    min_ceiling_seconds=10, latency_samples=200, latency_warmup=5, starts_per_connection=2_000,
                    start_history=20_000,
                    scale_instances=1_000_000, scale_pending=1_000, scale_samples=200)
    if workers:
        if any(k < 1 for k in workers):
            raise DurableError("--workers must be at least 1")
        plan = _replace(plan, workers=tuple(workers))
    if concurrency is not None:
        plan = _replace(plan, concurrency=max(1, concurrency))
    if instances is not None:
        plan = _replace(plan, instances=max(1, instances), batched_instances=max(1, instances))
    if scale_instances is not None:
        plan = _replace(plan, scale_instances=max(1, scale_instances))
    return plan


def _replace(plan: Plan, **changes: Any) -> Plan:
    return dataclasses.replace(plan, **changes)


# ---------------------------------------------------------------------------------------------------
# Scratch objects
# ---------------------------------------------------------------------------------------------------

@dataclass
class Scratch:
    admin_dsn: str          # superuser, scratch database
    user_dsn: str           # the ordinary submitting role
    worker_dsn: str         # the worker role (member of durable_worker)
    database: str
    user_role: str
    worker_role: str
    workdir: Path
    passfile: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    removed: dict[str, Any] = field(default_factory=dict)


def _superuser_check(conn: psycopg.Connection[Any]) -> None:
    row = conn.execute("SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user").fetchone()
    if not row or not row[0]:
        raise DurableError("durable bench needs a superuser DSN: it creates a scratch database and roles, "
                           "seeds tables directly and reads plans with auto_explain")


def _global_roles(conn: psycopg.Connection[Any]) -> set[str]:
    rows = conn.execute("SELECT rolname FROM pg_catalog.pg_roles WHERE rolname IN ('durable_owner', 'durable_worker')")
    return {r[0] for r in rows.fetchall()}


@contextlib.contextmanager
def scratch(dsn: str | None, progress: Progress) -> Iterator[Scratch]:
    """Create the scratch database and roles; remove them (and stop every worker) however we leave."""
    base = resolve_dsn(dsn)
    params = conninfo_to_dict(base)
    tag = secrets.token_hex(4)
    database = f"durable_bench_{tag}"
    user_role, worker_role = f"durable_bench_{tag}_user", f"durable_bench_{tag}_worker"
    passwords = {user_role: secrets.token_hex(16), worker_role: secrets.token_hex(16)}
    workdir = Path(tempfile.mkdtemp(prefix="durable-bench-"))
    passfile = workdir / "pgpass"
    passfile.write_text("".join(f"*:*:*:{role}:{pw}\n" for role, pw in passwords.items()))
    passfile.chmod(0o600)

    def derived(user: str | None, *, passfile_too: bool) -> str:
        p = dict(params, dbname=database)
        if user is not None:
            p["user"] = user
            p.pop("password", None)
        if passfile_too:
            p["passfile"] = str(passfile)
        return make_conninfo("", **p)

    s = Scratch(admin_dsn=derived(None, passfile_too=False), user_dsn=derived(user_role, passfile_too=True),
                worker_dsn=derived(worker_role, passfile_too=True), database=database, user_role=user_role,
                worker_role=worker_role, workdir=workdir, passfile=passfile)
    try:
        with psycopg.connect(base, autocommit=True) as conn:
            _superuser_check(conn)
            existing_global = _global_roles(conn)
            progress(f"scratch: creating database {database} and roles {user_role}, {worker_role}")
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    try:
        schema.install(s.admin_dsn)
        with psycopg.connect(s.admin_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(user_role), sql.Literal(passwords[user_role])))
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {} IN ROLE durable_worker").format(
                sql.Identifier(worker_role), sql.Literal(passwords[worker_role])))
            conn.execute("SELECT df.grant_usage(%s)", (user_role,))
        yield s
    finally:
        _stop_all(s)
        try:
            s.removed = _remove(base, s, existing_global)
        except psycopg.Error as exc:
            s.removed = {"database": database, "roles": [user_role, worker_role], "ok": False,
                         "error": " ".join(str(exc).split())}
        shutil.rmtree(workdir, ignore_errors=True)
        if s.removed.get("ok"):
            progress(f"scratch: removed database {database} and roles {user_role}, {worker_role}")
        else:
            progress(f"scratch: could not remove everything ({s.removed.get('error', 'objects left')}): "
                     f"drop database {database} and roles {user_role}, {worker_role} by hand")


def _stop_all(s: Scratch) -> None:
    for proc in s.procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in s.procs:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    s.procs.clear()


def _remove(base: str, s: Scratch, existing_global: set[str]) -> dict[str, Any]:
    removed: dict[str, Any] = {"database": s.database, "roles": [s.user_role, s.worker_role]}
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(s.database)))
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}, {}").format(sql.Identifier(s.user_role),
                                                                   sql.Identifier(s.worker_role)))
        # durable's own cluster-wide roles, if this run created them and nothing else uses them now.
        dropped: list[str] = []
        for role in ("durable_worker", "durable_owner"):
            if role in existing_global:
                continue
            try:
                members = conn.execute("SELECT count(*) FROM pg_catalog.pg_auth_members WHERE roleid = %s::regrole",
                                       (role,)).fetchone()
                if members and members[0] == 0:
                    conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
                    dropped.append(role)
            except psycopg.Error:
                pass  # used by another database meanwhile: it stays
        removed["durable_roles_dropped"] = dropped
        left = conn.execute(
            "SELECT (SELECT count(*) FROM pg_catalog.pg_database WHERE datname = %s), "
            "       (SELECT count(*) FROM pg_catalog.pg_roles WHERE rolname IN (%s, %s))",
            (s.database, s.user_role, s.worker_role)).fetchone()
        removed["ok"] = left == (0, 0)
    return removed


# ---------------------------------------------------------------------------------------------------
# Helpers: worker processes, CPU, percentiles
# ---------------------------------------------------------------------------------------------------

def _clock_ticks() -> int:
    try:
        return int(os.sysconf("SC_CLK_TCK"))
    except (ValueError, OSError, AttributeError):
        return 100


def _proc_cpu_seconds(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _clock_ticks()
    except (OSError, IndexError, ValueError):
        return None


def _machine_busy_seconds() -> float | None:
    """CPU seconds spent not idle by the whole machine since boot (all cores)."""
    try:
        values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return None
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return (sum(values[:8]) - idle) / _clock_ticks()


def _backend_cpu(s: Scratch) -> dict[int, float]:
    """CPU seconds so far of each backend logged in as the scratch roles (a local server only)."""
    with psycopg.connect(s.admin_dsn, autocommit=True) as conn:
        pids = [r[0] for r in conn.execute(
            "SELECT pid FROM pg_catalog.pg_stat_activity WHERE datname = current_database() AND usename IN (%s, %s)",
            (s.user_role, s.worker_role)).fetchall()]
    out = {}
    for pid in pids:
        cpu = _proc_cpu_seconds(pid)
        if cpu is not None:
            out[pid] = cpu
    return out


def _peak_rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except (OSError, ValueError, IndexError):
        pass
    return None


def percentile(values: Sequence[float], p: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * p / 100
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def _median(values: Sequence[float]) -> float:
    return percentile(values, 50)


def _r(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


@dataclass
class WorkerGroup:
    procs: list[subprocess.Popen[bytes]]
    logs: list[Path]
    registered_at: datetime | None = None
    launched: float = 0.0
    busy_start: float | None = None
    rss_mb: list[float | None] = field(default_factory=list)
    cpu_s: list[float | None] = field(default_factory=list)

    def log_tail(self, lines: int = 20) -> str:
        out = []
        for path in self.logs:
            try:
                text = path.read_text(errors="replace").splitlines()[-lines:]
            except OSError:
                text = []
            out.append(f"--- {path.name}\n" + "\n".join(text))
        return "\n".join(out)


def start_workers(s: Scratch, count: int, concurrency: int, batch: int = 1) -> WorkerGroup:
    env = dict(os.environ, DURABLE_LOG_LEVEL=os.environ.get("DURABLE_BENCH_WORKER_LOG_LEVEL", "WARNING"))
    group = WorkerGroup(procs=[], logs=[], launched=time.monotonic(), busy_start=_machine_busy_seconds())
    for i in range(count):
        path = s.workdir / f"worker-{len(s.procs)}-{i}.log"
        with open(path, "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "durable.cli", "worker", "--dsn", s.worker_dsn,
                 "--concurrency", str(concurrency), "--batch", str(batch)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        s.procs.append(proc)
        group.procs.append(proc)
        group.logs.append(path)
    return group


def wait_registered(s: Scratch, group: WorkerGroup, timeout: float = 60.0) -> None:
    """Until every worker of the group has registered (its first claim follows at once)."""
    pids = [p.pid for p in group.procs]
    deadline = time.monotonic() + timeout
    with psycopg.connect(s.admin_dsn, autocommit=True) as conn:
        while True:
            row = conn.execute("SELECT count(*), min(started_at) FROM df.workers WHERE pid = ANY(%s)",
                               (pids,)).fetchone()
            assert row is not None
            if row[0] >= len(pids):
                group.registered_at = row[1]
                return
            _check_alive(group)
            if time.monotonic() > deadline:
                raise DurableError(f"workers did not register within {timeout:g}s\n{group.log_tail()}")
            time.sleep(0.02)


def _check_alive(group: WorkerGroup) -> None:
    for proc in group.procs:
        if proc.poll() is not None:
            raise DurableError(f"a worker exited with status {proc.returncode}\n{group.log_tail()}")


def stop_workers(s: Scratch, group: WorkerGroup) -> None:
    """Record peak RSS and CPU of each worker, then stop it (SIGTERM: graceful)."""
    group.rss_mb = [_peak_rss_mb(p.pid) for p in group.procs]
    group.cpu_s = [_proc_cpu_seconds(p.pid) for p in group.procs]
    for proc in group.procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in group.procs:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc in s.procs:
            s.procs.remove(proc)


def _reset_tables(s: Scratch) -> None:
    with psycopg.connect(s.admin_dsn, autocommit=True) as conn:
        conn.execute("TRUNCATE df.instances, df.nodes, df.instance_vars, df.instance_queue, df.signals, "
                     "df.attempts, df.caller_tickets CASCADE")


def _envelope(s: Scratch, steps: int) -> str:
    """A graph of `steps` sequential SELECT 1 steps, built by df.seq as its user would."""
    expr: sql.Composable = sql.Literal(STEP)
    for _ in range(steps - 1):
        expr = sql.SQL("df.seq({}, {})").format(expr, sql.Literal(STEP))
    with psycopg.connect(s.user_dsn, autocommit=True) as conn:
        row = conn.execute(sql.SQL("SELECT {}").format(expr)).fetchone()
    assert row is not None
    return str(row[0])


def _start_up_front(s: Scratch, envelope: str, count: int, progress: Progress, label: str) -> None:
    """Start `count` instances as the submitting role, 1,000 per statement (df.start in the caller's transaction)."""
    done = 0
    last = time.monotonic()
    with psycopg.connect(s.user_dsn, autocommit=True) as conn:
        while done < count:
            batch = min(1000, count - done)
            conn.execute("SELECT count(df.start(%s)) FROM pg_catalog.generate_series(1, %s)", (envelope, batch))
            done += batch
            if time.monotonic() - last > 2 or done == count:
                progress(f"{label}: started {done:,}/{count:,} instances")
                last = time.monotonic()
    with psycopg.connect(s.admin_dsn, autocommit=True) as conn:
        conn.execute("ANALYZE df.instances, df.nodes, df.instance_queue")


def _verify_completed(s: Scratch, instances: int, sql_steps: int) -> dict[str, Any]:
    """Every instance completed with SELECT 1's result, every SQL step completed with it, nothing left over."""
    expected = json.dumps(EXPECTED_SELECT_1)
    with psycopg.connect(s.admin_dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*), count(*) FILTER (WHERE i.status = 'completed' AND df.result(i.id)::jsonb = %s::jsonb) "
            "  FROM df.instances AS i", (expected,)).fetchone()
        steps = conn.execute(
            "SELECT count(*), count(*) FILTER (WHERE n.status = 'completed' AND n.result = %s::jsonb) "
            "  FROM df.nodes AS n WHERE n.node_type = 'SQL'", (expected,)).fetchone()
        left = conn.execute("SELECT (SELECT count(*) FROM df.instance_queue), (SELECT count(*) FROM df.attempts)"
                            ).fetchone()
    assert row is not None and steps is not None and left is not None
    ok = (row[0] == instances and row[1] == instances and steps[0] == instances * sql_steps
          and steps[1] == instances * sql_steps and left == (0, 0))
    return {"instances": row[0], "completed_correct": row[1], "steps": steps[0], "steps_correct": steps[1],
            "queued_left": left[0], "attempts_left": left[1], "ok": ok}


# ---------------------------------------------------------------------------------------------------
# Scenario 2 (and 5): throughput with K worker processes
# ---------------------------------------------------------------------------------------------------

def bench_throughput(s: Scratch, plan: Plan, workers: int, envelope: str, progress: Progress, *,
                     batch: int = 1) -> dict[str, Any]:
    label = f"throughput{' (batched)' if batch > 1 else ''}, {workers} worker{'s' if workers > 1 else ''}"
    instances = plan.batched_instances if batch > 1 else plan.instances
    _reset_tables(s)
    _start_up_front(s, envelope, instances, progress, label)
    concurrency = plan.batched_concurrency if batch > 1 else plan.concurrency
    group = start_workers(s, workers, concurrency, batch)
    try:
        wait_registered(s, group)
        workers_start = [_proc_cpu_seconds(p.pid) or 0.0 for p in group.procs]  # their start-up is not a step
        backends_start = _backend_cpu(s)
        progress(f"{label}: {workers} worker process(es) registered (concurrency {concurrency} each)")
        _wait_drained(s, group, instances, progress, label)
        busy_end = _machine_busy_seconds()
        wall = time.monotonic() - group.launched
        backends_end = _backend_cpu(s)
    finally:
        stop_workers(s, group)
    with psycopg.connect(s.admin_dsn, autocommit=True) as conn:
        row = conn.execute("SELECT max(completed_at), min(completed_at) FROM df.instances").fetchone()
    assert row is not None and group.registered_at is not None and row[0] is not None
    seconds = max((row[0] - group.registered_at).total_seconds(), 1e-6)
    verified = _verify_completed(s, instances, 3)
    steps = instances * 3
    cpu: dict[str, Any] = {}
    if group.busy_start is not None and busy_end is not None and all(c is not None for c in group.cpu_s):
        # Cores busy on average from launch to the last completion; "rest" is everything else on the
        # machine (PostgreSQL's background processes, this process, and anybody else's work).
        workers_cpu = sum(c for c in group.cpu_s if c is not None)
        steps_cpu = workers_cpu - sum(workers_start)
        machine = busy_end - group.busy_start
        backends = sum(v - backends_start.get(pid, 0.0) for pid, v in backends_end.items())
        cpu = {"wall_s": _r(wall, 2), "machine_cores": os.cpu_count(),
               "machine_busy_cores": _r(machine / wall, 2), "workers_cores": _r(workers_cpu / wall, 2),
               "backends_cores": _r(backends / wall, 2) if backends_end else None,
               "rest_cores": _r((machine - workers_cpu - backends) / wall, 2),
               "workers_cpu_ms_per_step": _r(steps_cpu * 1000 / steps, 2),
               "backends_cpu_ms_per_step": _r(backends * 1000 / steps, 2) if backends_end else None}
    result = {
        "workers": workers, "concurrency": concurrency, "batch": batch, "instances": instances,
        "steps": steps,
        "seconds": _r(seconds, 3), "steps_per_s": _r(steps / seconds), "instances_per_s": _r(instances / seconds),
        "wall_seconds_with_worker_start": _r(wall, 3), "worker_rss_mb": group.rss_mb,
        "worker_cpu_s": [_r(c, 2) for c in group.cpu_s], "cpu": cpu, "verified": verified,
    }
    progress(f"{label}: {result['steps_per_s']:,} steps/s, {result['instances_per_s']:,} instances/s "
             f"over {seconds:.1f}s; verified: {verified['ok']}")
    _reset_tables(s)
    return result


def _wait_drained(s: Scratch, group: WorkerGroup, total: int, progress: Progress, label: str,
                  stall_timeout: float = 120.0) -> None:
    last_report = time.monotonic()
    last_change = time.monotonic()
    last_left = total
    with psycopg.connect(s.admin_dsn, autocommit=True) as conn:
        while True:
            row = conn.execute("SELECT count(*) FROM df.instance_queue").fetchone()
            assert row is not None
            left = int(row[0])
            now = time.monotonic()
            if left == 0:
                return
            if left != last_left:
                last_left, last_change = left, now
            elif now - last_change > stall_timeout:
                raise DurableError(f"{label}: no instance finished for {stall_timeout:g}s ({left} left)\n"
                                   f"{group.log_tail()}")
            _check_alive(group)
            if now - last_report >= 5:
                progress(f"{label}: {total - left:,}/{total:,} instances finished")
                last_report = now
            time.sleep(0.1)


# ---------------------------------------------------------------------------------------------------
# Scenario 1: the commit ceiling
# ---------------------------------------------------------------------------------------------------

_TPS = re.compile(r"^tps = ([0-9.]+) \((?:without|excluding)", re.M)
_TX = re.compile(r"number of transactions actually processed: (\d+)")


def _pgbench_target(s: Scratch) -> tuple[str, dict[str, str]]:
    """pgbench's connection string (no password on its command line) and environment."""
    params = conninfo_to_dict(s.admin_dsn)
    env = dict(os.environ)
    password = params.pop("password", None)
    if password:
        env["PGPASSWORD"] = str(password)
    return make_conninfo("", **params), env


def bench_commit_ceiling(s: Scratch, plan: Plan, seconds: int, progress: Progress) -> dict[str, Any]:
    pgbench = shutil.which("pgbench")
    clients, threads = 4, 2
    if pgbench:
        target, env = _pgbench_target(s)
        progress(f"commit ceiling: pgbench -i -s {plan.pgbench_scale}")
        subprocess.run([pgbench, "-i", "-q", "-s", str(plan.pgbench_scale), target], env=env, check=True,
                       capture_output=True, timeout=1800)
        progress(f"commit ceiling: pgbench -N -c {clients} -j {threads} -T {seconds} (scale {plan.pgbench_scale})")
        run = subprocess.run([pgbench, "-N", "-c", str(clients), "-j", str(threads), "-T", str(seconds), target],
                             env=env, check=True, capture_output=True, text=True, timeout=seconds + 600)
        tps_match, tx_match = _TPS.search(run.stdout), _TX.search(run.stdout)
        if not tps_match:
            raise DurableError(f"could not read pgbench's tps from its output:\n{run.stdout}\n{run.stderr}")
        result: dict[str, Any] = {
            "tool": "pgbench", "tool_version": _pgbench_version(pgbench), "script": "built-in -N (simple update)",
            "scale": plan.pgbench_scale, "clients": clients, "threads": threads, "seconds": seconds,
            "transactions": int(tx_match[1]) if tx_match else None, "tps": _r(float(tps_match[1])),
        }
    else:
        progress("commit ceiling: pgbench is not on PATH; running the same -N script from Python")
        result = _python_ceiling(s, plan.pgbench_scale, clients, seconds, progress)
    with psycopg.connect(s.admin_dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS pgbench_accounts, pgbench_branches, pgbench_tellers, pgbench_history")
    progress(f"commit ceiling: {result['tps']:,} tps ({result['tool']})")
    return result


def _pgbench_version(pgbench: str) -> str | None:
    try:
        return subprocess.run([pgbench, "--version"], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def _python_ceiling(s: Scratch, scale: int, clients: int, seconds: int, progress: Progress) -> dict[str, Any]:
    """pgbench -i and -N's transaction, from Python: same tables, same statements, one connection per client."""
    import random

    with psycopg.connect(s.admin_dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS pgbench_accounts, pgbench_branches, pgbench_tellers, pgbench_history")
        conn.execute("CREATE TABLE pgbench_history (tid int, bid int, aid int, delta int, mtime timestamp, "
                     "filler char(22))")
        conn.execute("CREATE TABLE pgbench_tellers (tid int NOT NULL, bid int, tbalance int, filler char(84)) "
                     "WITH (fillfactor = 100)")
        conn.execute("CREATE TABLE pgbench_accounts (aid int NOT NULL, bid int, abalance int, filler char(84)) "
                     "WITH (fillfactor = 100)")
        conn.execute("CREATE TABLE pgbench_branches (bid int NOT NULL, bbalance int, filler char(88)) "
                     "WITH (fillfactor = 100)")
        conn.execute("INSERT INTO pgbench_branches (bid, bbalance) SELECT b, 0 FROM generate_series(1, %s) AS b",
                     (scale,))
        conn.execute("INSERT INTO pgbench_tellers (tid, bid, tbalance) "
                     "SELECT t, (t - 1) / 10 + 1, 0 FROM generate_series(1, %s) AS t", (10 * scale,))
        conn.execute("INSERT INTO pgbench_accounts (aid, bid, abalance, filler) "
                     "SELECT a, (a - 1) / 100000 + 1, 0, '' FROM generate_series(1, %s) AS a", (100_000 * scale,))
        conn.execute("ALTER TABLE pgbench_branches ADD PRIMARY KEY (bid)")
        conn.execute("ALTER TABLE pgbench_tellers ADD PRIMARY KEY (tid)")
        conn.execute("ALTER TABLE pgbench_accounts ADD PRIMARY KEY (aid)")
        conn.execute("VACUUM ANALYZE pgbench_branches, pgbench_tellers, pgbench_accounts, pgbench_history")
    counts = [0] * clients
    errors: list[BaseException] = []
    barrier = threading.Barrier(clients + 1)
    deadline = [0.0]

    def client(i: int) -> None:
        rng = random.Random(i)
        try:
            with psycopg.connect(s.admin_dsn, autocommit=True) as conn:
                barrier.wait()
                while time.monotonic() < deadline[0]:
                    aid, bid = rng.randint(1, 100_000 * scale), rng.randint(1, scale)
                    tid, delta = rng.randint(1, 10 * scale), rng.randint(-5000, 5000)
                    with conn.transaction():
                        conn.execute("UPDATE pgbench_accounts SET abalance = abalance + %s WHERE aid = %s",
                                     (delta, aid))
                        conn.execute("SELECT abalance FROM pgbench_accounts WHERE aid = %s", (aid,)).fetchone()
                        conn.execute("INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) "
                                     "VALUES (%s, %s, %s, %s, CURRENT_TIMESTAMP)", (tid, bid, aid, delta))
                    counts[i] += 1
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
            with contextlib.suppress(threading.BrokenBarrierError):
                barrier.abort()

    threads = [threading.Thread(target=client, args=(i,), name=f"durable-bench-ceiling-{i}") for i in range(clients)]
    for t in threads:
        t.start()
    with contextlib.suppress(threading.BrokenBarrierError):
        deadline[0] = time.monotonic() + seconds
        barrier.wait()
    began = time.monotonic()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - began
    if errors:
        raise DurableError(f"the Python commit-ceiling run failed: {errors[0]}")
    total = sum(counts)
    return {"tool": "python", "note": "pgbench was not found on PATH: the -N transaction was run from Python "
            "(psycopg, one connection per client), which adds client overhead", "script": "-N (simple update)",
            "scale": scale, "clients": clients, "threads": clients, "seconds": seconds, "transactions": total,
            "tps": _r(total / elapsed)}


# ---------------------------------------------------------------------------------------------------
# Scenario 3: latency
# ---------------------------------------------------------------------------------------------------

def bench_latency(s: Scratch, plan: Plan, progress: Progress) -> dict[str, Any]:
    _reset_tables(s)
    group = start_workers(s, 1, plan.concurrency)
    timings: list[float] = []
    ids: list[str] = []
    try:
        wait_registered(s, group)
        with Client(s.user_dsn) as client:
            for i in range(plan.latency_warmup + plan.latency_samples):
                began = time.perf_counter()
                iid = client.start(STEP)
                status = client.wait(iid, timeout=60)
                elapsed = (time.perf_counter() - began) * 1000
                if status.value != "completed":
                    raise DurableError(f"latency: instance {iid} ended {status.value}")
                if i >= plan.latency_warmup:
                    timings.append(elapsed)
                ids.append(iid)
                if (i + 1) % 50 == 0:
                    progress(f"latency: {i + 1 - plan.latency_warmup}/{plan.latency_samples}")
    finally:
        stop_workers(s, group)
    verified = _verify_completed(s, len(ids), 1)
    result = {
        "samples": len(timings), "warmup": plan.latency_warmup, "workers": 1, "concurrency": plan.concurrency,
        "p50": _r(percentile(timings, 50), 2), "p95": _r(percentile(timings, 95), 2),
        "p99": _r(percentile(timings, 99), 2), "min": _r(min(timings), 2), "max": _r(max(timings), 2),
        "mean": _r(sum(timings) / len(timings), 2), "verified": verified,
    }
    progress(f"latency: p50 {result['p50']} ms, p95 {result['p95']} ms, p99 {result['p99']} ms; "
             f"verified: {verified['ok']}")
    _reset_tables(s)
    return result


# ---------------------------------------------------------------------------------------------------
# Scenario 4: start rate
# ---------------------------------------------------------------------------------------------------

def bench_start_rate(s: Scratch, plan: Plan, progress: Progress, connections: int = 4) -> dict[str, Any]:
    _reset_tables(s)
    # A running engine has history, and statistics that say so.  Started on freshly emptied tables, the
    # connections' cached plans (foreign-key checks included) would depend on whether autovacuum happened
    # to analyze the tables while they were empty: then every check scans the whole, growing table.
    _seed_finished(s, plan.start_history, progress, "start rate")
    envelope = _envelope(s, 2)  # 'SELECT 1' ~> 'SELECT 1': a THEN node and two SQL nodes
    per = plan.starts_per_connection
    barrier = threading.Barrier(connections + 1)
    ends: list[float] = []
    errors: list[BaseException] = []

    def starter() -> None:
        try:
            with Client(s.user_dsn) as client:
                barrier.wait()
                for _ in range(per):
                    client.start(envelope)
                ends.append(time.perf_counter())
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
            with contextlib.suppress(threading.BrokenBarrierError):
                barrier.abort()

    progress(f"start rate: {connections} connections x {per:,} df.start of a 3-node graph, no worker running")
    threads = [threading.Thread(target=starter, name=f"durable-bench-start-{i}") for i in range(connections)]
    for t in threads:
        t.start()
    with contextlib.suppress(threading.BrokenBarrierError):
        barrier.wait()
    began = time.perf_counter()
    for t in threads:
        t.join()
    if errors:
        raise DurableError(f"start rate: a df.start failed: {errors[0]}")
    elapsed = max(ends) - began
    total = connections * per
    with psycopg.connect(s.admin_dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT (SELECT count(*) FROM df.instances WHERE status = 'pending' AND submitted_by = %s::regrole), "
            "       (SELECT count(*) FROM df.nodes WHERE status = 'pending'), "
            "       (SELECT count(*) FROM df.instance_queue)",
            (s.user_role,)).fetchone()
    assert row is not None
    verified = {"instances": row[0], "nodes": row[1], "queued": row[2],
                "ok": row[0] == total and row[1] == 3 * total and row[2] == total}
    result = {"connections": connections, "starts": total, "nodes_per_instance": 3, "history": plan.start_history,
              "seconds": _r(elapsed, 3),
              "starts_per_s": _r(total / elapsed), "verified": verified}
    progress(f"start rate: {result['starts_per_s']:,} starts/s; verified: {verified['ok']}")
    _reset_tables(s)
    return result


# ---------------------------------------------------------------------------------------------------
# Scenario 6: scale
# ---------------------------------------------------------------------------------------------------

_SEED = """
WITH ins AS (
    INSERT INTO df.instances (id, label, root_node, status, submitted_by, created_at, updated_at, completed_at,
                              resource_version, output)
    SELECT x.id, NULL, x.id, 'completed', %(role)s::regrole, x.created_at, x.created_at,
           x.created_at + interval '1 millisecond', 1, %(output)s
      FROM (SELECT pg_catalog.lpad(pg_catalog.to_hex((g * 2654435761) %% 4294967296), 8, '0') AS id,
                   %(now)s::timestamptz - g * interval '1 second' AS created_at
              FROM pg_catalog.generate_series(%(low)s::bigint, %(high)s::bigint) AS g) AS x
    ON CONFLICT (id) DO NOTHING
    RETURNING id, created_at
)
INSERT INTO df.nodes (id, instance_id, node_type, query, status, result, submitted_by, created_at, updated_at,
                      resource_version, result_text)
SELECT ins.id, ins.id, 'SQL', 'SELECT 1', 'completed', %(output)s::jsonb, %(role)s::regrole, ins.created_at,
       ins.created_at + interval '1 millisecond', 1, %(output)s
  FROM ins
"""


def _seed_finished(s: Scratch, count: int, progress: Progress, scenario: str = "scale") -> int:
    """Insert `count` finished one-step instances of the submitting role (directly, as superuser), then
    VACUUM ANALYZE, so that the tables' statistics describe them."""
    output = json.dumps(EXPECTED_SELECT_1, separators=(",", ":"))
    now = datetime.now(UTC)
    inserted, low, chunk = 0, 1, 100_000
    last = time.monotonic()
    with psycopg.connect(s.admin_dsn, autocommit=True) as conn:
        # Seeding only: no version triggers, no foreign-key triggers (the rows are consistent by construction).
        conn.execute("SET session_replication_role = replica")
        while inserted < count:
            high = low + min(chunk, count - inserted) - 1
            cur = conn.execute(_SEED, {"role": s.user_role, "output": output, "now": now, "low": low, "high": high})
            inserted += cur.rowcount
            low = high + 1
            if time.monotonic() - last > 5 or inserted >= count:
                progress(f"{scenario}: inserted {inserted:,}/{count:,} finished instances")
                last = time.monotonic()
        conn.execute("RESET session_replication_role")
        progress(f"{scenario}: VACUUM ANALYZE")
        conn.execute("VACUUM ANALYZE df.instances, df.nodes, df.instance_queue")
    return inserted


def _time_ms(conn: psycopg.Connection[Any], statement: Any, params: Any, samples: int, *,
             rollback: bool = False) -> list[float]:
    out: list[float] = []
    for _ in range(samples):
        if rollback:
            with conn.transaction(force_rollback=True):
                began = time.perf_counter()
                conn.execute(statement, params).fetchall()
                out.append((time.perf_counter() - began) * 1000)
        else:
            began = time.perf_counter()
            conn.execute(statement, params).fetchall()
            out.append((time.perf_counter() - began) * 1000)
    return out


INSTANCE_INFO = "SELECT * FROM df.instance_info(%s)"
LIST_PAGE = "SELECT * FROM df.list_instances(NULL, 100, NULL, %s)"


def _claim_ms(s: Scratch, plan: Plan, worker_id: str) -> float:
    with psycopg.connect(s.worker_dsn, autocommit=True) as conn:
        return _median(_time_ms(conn, query("claim_v2"), {"worker_id": worker_id, "limit": plan.concurrency},
                                plan.scale_samples, rollback=True))


def bench_scale(s: Scratch, plan: Plan, progress: Progress) -> dict[str, Any]:
    _reset_tables(s)
    worker_id = str(uuid.uuid4())
    progress(f"scale: {plan.scale_pending:,} pending instances (started by the role), claim before seeding")
    _start_up_front(s, _envelope(s, 1), plan.scale_pending, progress, "scale")
    claim_before = _claim_ms(s, plan, worker_id)
    progress(f"scale: seeding {plan.scale_instances:,} finished instances")
    seeded = _seed_finished(s, plan.scale_instances, progress)
    with psycopg.connect(s.admin_dsn, autocommit=True) as conn:
        ids = [r[0] for r in conn.execute(
            "SELECT id FROM df.instances WHERE status = 'completed' ORDER BY random() LIMIT %s",
            (plan.scale_samples,)).fetchall()]
        row = conn.execute("SELECT df._encode_cursor(created_at, id::text) FROM df.instances "
                           "WHERE status = 'completed' ORDER BY created_at DESC, id OFFSET %s LIMIT 1",
                           (seeded // 2,)).fetchone()
        deep_cursor = row[0] if row else None
    with psycopg.connect(s.user_dsn, autocommit=True) as conn:
        info_ms = []
        for iid in ids:
            info_ms += _time_ms(conn, INSTANCE_INFO, (iid,), 1)
        first_page = _time_ms(conn, LIST_PAGE, (None,), plan.scale_samples)
        deep_page = _time_ms(conn, LIST_PAGE, (deep_cursor,), plan.scale_samples)
        page_rows = len(conn.execute(LIST_PAGE, (deep_cursor,)).fetchall())
    claim_after = _claim_ms(s, plan, worker_id)
    progress("scale: plans (auto_explain)")
    plans = _plans(s, plan, ids[0], deep_cursor, worker_id)
    list_ms = max(_median(first_page), _median(deep_page))
    claim_ok = claim_after <= 2 * claim_before + 0.5
    result: dict[str, Any] = {
        "finished_instances": seeded, "pending_instances": plan.scale_pending, "samples": plan.scale_samples,
        "instance_info_ms": {"p50": _r(_median(info_ms), 3), "p95": _r(percentile(info_ms, 95), 3)},
        "list_page_ms": {"first_page_p50": _r(_median(first_page), 3), "deep_page_p50": _r(_median(deep_page), 3),
                         "page_size": 100, "deep_page_rows": page_rows},
        "claim_ms": {"before_seeding_p50": _r(claim_before, 3), "after_seeding_p50": _r(claim_after, 3),
                     "limit": plan.concurrency, "independent": claim_ok},
        "plans": plans,
    }
    result["scale_ms"] = {"instance_info": _r(_median(info_ms), 3), "list_page": _r(list_ms, 3),
                          "claim": _r(claim_after, 3)}
    progress(f"scale: instance_info {result['scale_ms']['instance_info']} ms, list page "
             f"{result['scale_ms']['list_page']} ms, claim {claim_before:.3f} -> {claim_after:.3f} ms; "
             f"plans ok: {plans.get('ok')} (rows of instances/nodes read: {_rows_read(plans)})")
    _reset_tables(s)
    return result


def _plan_scans(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    if "Relation Name" in plan and "Scan" in plan.get("Node Type", ""):
        yield plan
    for child in plan.get("Plans", []):
        yield from _plan_scans(child)


# A read of one instance or one page may touch this many rows of df.instances / df.nodes at most.
MAX_ROWS_READ = 1000
# The claim reads each instance it claims and its nodes (a 3-node graph in scenario 6), by key.
CLAIM_ROWS_PER_INSTANCE = 8


def _notice_collector(into: list[str]) -> Callable[[psycopg.errors.Diagnostic], None]:
    def collect(diag: psycopg.errors.Diagnostic) -> None:
        into.append(diag.message_primary or "")

    return collect


def _plans(s: Scratch, plan: Plan, instance_id: str, cursor: str | None, worker_id: str) -> dict[str, Any]:
    """The plans of the statements inside the functions, as EXPLAIN (FORMAT JSON) shows them (auto_explain
    with nested statements, sent back as notices), run as the role that would run them."""
    calls: dict[str, tuple[str, Any, Any, bool]] = {
        "instance_info": (s.user_role, INSTANCE_INFO, (instance_id,), False),
        "list_page": (s.user_role, LIST_PAGE, (cursor,), False),
        "claim": (s.worker_role, query("claim_v2"), {"worker_id": worker_id, "limit": plan.concurrency}, True),
    }
    out: dict[str, Any] = {}
    big = {"instances", "nodes"}
    try:
        for name, (role, statement, params, rollback) in calls.items():
            notices: list[str] = []
            with psycopg.connect(s.admin_dsn, autocommit=True) as conn:
                conn.add_notice_handler(_notice_collector(notices))
                conn.execute("LOAD 'auto_explain'")
                for setting, value in (("log_min_duration", "0"), ("log_nested_statements", "on"),
                                       ("log_format", "json"), ("log_level", "notice"), ("log_analyze", "on"),
                                       ("log_timing", "off")):
                    conn.execute(sql.SQL("SET {} = {}").format(sql.Identifier("auto_explain", setting),
                                                               sql.Literal(value)))
                conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role)))
                if rollback:
                    with conn.transaction(force_rollback=True):
                        conn.execute(statement, params).fetchall()
                else:
                    conn.execute(statement, params).fetchall()
            # One entry per (table, scan, index); rows = rows the scans returned plus rows they read and
            # dropped by a filter, over all loops: what the statement really touched.
            scans: dict[tuple[str, str, str | None], dict[str, Any]] = {}
            for text in notices:
                if "plan:" not in text or "{" not in text:
                    continue
                doc = json.loads(text[text.index("{"):])
                for node in _plan_scans(doc["Plan"]):
                    key = (node["Relation Name"], node["Node Type"], node.get("Index Name"))
                    entry = scans.setdefault(key, {"relation": key[0], "scan": key[1], "index": key[2],
                                                   "times": 0, "rows_read": 0})
                    loops = int(node.get("Actual Loops", 1) or 1)
                    entry["times"] += 1
                    entry["rows_read"] += loops * (int(node.get("Actual Rows", 0))
                                                   + int(node.get("Rows Removed by Filter", 0))
                                                   + int(node.get("Rows Removed by Index Recheck", 0)))
            listed = list(scans.values())
            on_big = [x for x in listed if x["relation"] in big]
            rows_read = sum(x["rows_read"] for x in on_big)
            if name == "claim":
                # The claim finds due rows in the queue of unfinished instances, then reads the rows of
                # the instances it claimed by key: never a scan of the finished ones.
                ok = all(x["scan"] != "Seq Scan" for x in on_big) and \
                    rows_read <= plan.concurrency * CLAIM_ROWS_PER_INSTANCE
            else:
                ok = bool(on_big) and all(x["scan"] != "Seq Scan" for x in on_big) and rows_read <= MAX_ROWS_READ
            out[name] = {"scans": listed, "rows_read_instances_nodes": rows_read, "ok": ok}
    except psycopg.Error as exc:
        return {"ok": None, "note": f"plans not available (auto_explain could not be used: "
                                    f"{' '.join(str(exc).split())})"}
    out["ok"] = all(v["ok"] for v in out.values())
    return out


# ---------------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------------

def _machine(s: Scratch) -> dict[str, Any]:
    cpu_model = None
    memory_mb = None
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_mb = int(line.split()[1]) // 1024
    with psycopg.connect(s.admin_dsn, autocommit=True) as conn:
        settings: dict[str, str] = dict(conn.execute(
            "SELECT name, pg_catalog.current_setting(name) FROM pg_catalog.pg_settings WHERE name IN "
            "('fsync', 'synchronous_commit', 'shared_buffers', 'max_connections', 'wal_level', 'full_page_writes', "
            " 'server_version')").fetchall())
        host = conn.info.host
    return {
        "hostname": socket.gethostname(), "platform": platform.platform(), "cpu_model": cpu_model,
        "cpus": os.cpu_count(), "memory_mb": memory_mb, "python": platform.python_version(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "load_avg_start": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "postgres": {"version": settings.pop("server_version", None), "host": host,
                     "local": host.startswith("/") or host in ("localhost", "127.0.0.1", "::1"), **settings},
    }


def _version(s: Scratch) -> dict[str, Any]:
    with psycopg.connect(s.admin_dsn, autocommit=True) as conn:
        installed = schema.installed_version(conn)
        row = conn.execute("SELECT df.version()").fetchone()
    return {"durable": __version__, "schema": installed, "df_version": row[0] if row else None,
            "psycopg": psycopg.__version__, "git": _git_describe()}


def _git_describe() -> str | None:
    """The commit of a checkout durable runs from (None when installed from a wheel)."""
    root = Path(__file__).resolve().parent.parent
    if not (root / ".git").exists() or not shutil.which("git"):
        return None
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no", "--",
                                "durable", "sql"], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{head}{' (modified)' if dirty else ''}" if head else None


def _ratio(value: float | None, ceiling: float | None) -> float | None:
    if value is None or not ceiling:
        return None
    return round(value / ceiling, 3)


def run_bench(dsn: str | None, *, quick: bool, workers: list[int] | None, progress: Progress,
              concurrency: int | None = None, instances: int | None = None,
              scale_instances: int | None = None) -> dict[str, Any]:
    """Run scenarios 1-6 of issue 10 in scratch objects and return one JSON-ready object."""
    plan = make_plan(quick, workers, concurrency=concurrency, instances=instances, scale_instances=scale_instances)
    with _terminate_cleanly():
        return _run(plan, dsn, quick, progress)


@contextlib.contextmanager
def _terminate_cleanly() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so the scratch objects and worker processes are removed."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run(plan: Plan, dsn: str | None, quick: bool, progress: Progress) -> dict[str, Any]:
    result: dict[str, Any] = {"quick": quick}
    began = time.monotonic()
    with scratch(dsn, progress) as s:
        result["machine"] = _machine(s)
        result["version"] = _version(s)
        envelope = _envelope(s, 3)
        runs = []
        for k in plan.workers:
            progress(f"[2/6] throughput: {plan.instances:,} instances of 3 SELECT 1 steps, {k} worker process(es)")
            runs.append(bench_throughput(s, plan, k, envelope, progress))
        batched = []
        for k in plan.workers:
            progress(f"[2/6] throughput, batched mode (--batch {plan.batch}): {plan.batched_instances:,} instances, "
                     f"{k} worker process(es)")
            batched.append(bench_throughput(s, plan, k, envelope, progress, batch=plan.batch))
        seconds = max(plan.min_ceiling_seconds, min(300, round(_median([r["seconds"] for r in runs]))))
        progress(f"[1/6] commit ceiling ({seconds}s, as long as a throughput run)")
        ceiling = bench_commit_ceiling(s, plan, seconds, progress)
        progress(f"[3/6] latency: {plan.latency_samples} sequential 1-step instances, 1 worker")
        latency = bench_latency(s, plan, progress)
        progress("[4/6] start rate")
        starts = bench_start_rate(s, plan, progress)
        progress(f"[6/6] scale: {plan.scale_instances:,} finished instances")
        scale = bench_scale(s, plan, progress)
        # Shared machines change speed, also within a run: the ceiling again, shorter, says by how much.
        progress(f"[1/6] commit ceiling again, at the end ({plan.min_ceiling_seconds}s)")
        ceiling_end = bench_commit_ceiling(s, plan, plan.min_ceiling_seconds, progress)
        result["machine"]["load_avg_end"] = [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") \
            else None
    result["scratch"] = s.removed
    tps = ceiling["tps"]
    for run in runs + batched:
        run["ratio_to_ceiling"] = _ratio(run["steps_per_s"], tps)
    best = max(runs, key=lambda r: r["steps_per_s"])
    best_batched = max(batched, key=lambda r: r["steps_per_s"])
    rss = [x for r in runs + batched for x in r["worker_rss_mb"] if x is not None]
    result.update({
        "commit_ceiling_tps": tps,
        "commit_ceiling": ceiling,
        "commit_ceiling_end": ceiling_end,
        "commit_ceiling_drift": _drift(tps, ceiling_end["tps"]),
        "steps_per_s": best["steps_per_s"],
        "steps_per_s_workers": best["workers"],
        "steps_per_s_ratio": _ratio(best["steps_per_s"], tps),
        "instances_per_s": best["instances_per_s"],
        "steps_per_s_batched": best_batched["steps_per_s"],
        "steps_per_s_batched_workers": best_batched["workers"],
        "steps_per_s_batched_ratio": _ratio(best_batched["steps_per_s"], tps),
        "throughput": {"mode": "default (one transaction per step)", "instances": plan.instances,
                       "steps_per_instance": 3, "concurrency": plan.concurrency, "runs": runs},
        "throughput_batched": {"mode": f"batched (durable worker --batch {plan.batch})",
                               "instances": plan.batched_instances,
                               "steps_per_instance": 3, "concurrency": plan.batched_concurrency,
                               "batch": plan.batch,
                               "runs": batched},
        "latency_ms": {"p50": latency["p50"], "p95": latency["p95"], "p99": latency["p99"]},
        "latency": latency,
        "starts_per_s": starts["starts_per_s"],
        "starts_per_s_ratio": _ratio(starts["starts_per_s"], tps),
        "start_rate": starts,
        "worker_rss_mb": max(rss) if rss else None,
        "scale_ms": scale.pop("scale_ms"),
        "scale": scale,
        "seconds": round(time.monotonic() - began, 1),
    })
    result["verified"] = (all(r["verified"]["ok"] for r in runs + batched) and latency["verified"]["ok"]
                          and starts["verified"]["ok"])
    result["targets"] = _targets(result)
    return result


def _drift(first: float | None, end: float | None) -> float | None:
    """How much the ceiling measured at the end differs from the one the ratios use (+0.10: 10 % higher)."""
    return None if not first or end is None else round(end / first - 1, 3)


# Beyond this change of the ceiling between the start and the end of a run, its ratios are hard to compare.
DRIFT_WARNING = 0.15


def _target(value: float | None, limit: float, *, at_most: bool, strict: bool = False) -> dict[str, Any]:
    if value is None:
        met = None
    elif at_most:
        met = value < limit if strict else value <= limit
    else:
        met = value >= limit
    sign = ("<" if strict else "<=") if at_most else ">="
    return {"value": value, "target": f"{sign} {limit:g}", "met": met}


def _rows_read(plans: dict[str, Any]) -> str:
    if plans.get("ok") is None:
        return "not available"
    return ", ".join(f"{name} {plans[name]['rows_read_instances_nodes']:,}"
                     for name in ("instance_info", "list_page", "claim") if name in plans)


def _targets(r: dict[str, Any]) -> dict[str, Any]:
    scale = r["scale"]
    return {
        "steps_per_s_vs_ceiling": _target(r["steps_per_s_ratio"], TARGETS["steps_per_s_vs_ceiling"], at_most=False),
        "steps_per_s_batched_vs_ceiling": _target(r["steps_per_s_batched_ratio"],
                                                  TARGETS["steps_per_s_batched_vs_ceiling"], at_most=False),
        "latency_p50_ms": _target(r["latency_ms"]["p50"], TARGETS["latency_p50_ms"], at_most=True),
        "latency_p99_ms": _target(r["latency_ms"]["p99"], TARGETS["latency_p99_ms"], at_most=True),
        "starts_per_s_vs_ceiling": _target(r["starts_per_s_ratio"], TARGETS["starts_per_s_vs_ceiling"],
                                           at_most=False),
        "worker_rss_mb": _target(r["worker_rss_mb"], TARGETS["worker_rss_mb"], at_most=True),
        "instance_info_ms": _target(r["scale_ms"]["instance_info"], TARGETS["instance_info_ms"], at_most=True,
                                    strict=True),
        "list_page_ms": _target(r["scale_ms"]["list_page"], TARGETS["list_page_ms"], at_most=True, strict=True),
        "claim_independent_of_finished": {
            "value": f"{scale['claim_ms']['before_seeding_p50']} -> {scale['claim_ms']['after_seeding_p50']} ms",
            "target": "independent of the number of finished instances",
            "met": bool(scale["claim_ms"]["independent"] and (scale["plans"].get("claim") or {}).get("ok")),
        },
        "plans_use_indexes": {"value": _rows_read(scale["plans"]),
                              "target": f"index scans reading <= {MAX_ROWS_READ} rows of df.instances/df.nodes "
                                        "(claim: none)",
                              "met": scale["plans"].get("ok")},
    }


# ---------------------------------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------------------------------

def _num(value: Any, unit: str = "", digits: int = 0) -> str:
    if value is None:
        return "-"
    if isinstance(value, (int, float)):
        text = f"{value:,.{digits}f}"
    else:
        text = str(value)
    return f"{text} {unit}".rstrip()


def _met(t: dict[str, Any] | None) -> str:
    if not t or t.get("met") is None:
        return "n/a"
    return "yes" if t["met"] else "NO"


def format_table(result: dict[str, Any]) -> str:
    """The result as a table for a terminal."""
    m, v = result["machine"], result["version"]
    pg = m["postgres"]
    t = result["targets"]
    ceiling = result["commit_ceiling"]
    tps = result["commit_ceiling_tps"]
    head = (f"durable bench{' --quick' if result['quick'] else ''}: durable {v['durable']} (schema {v['schema']}), "
            f"PostgreSQL {pg.get('version')} fsync={pg.get('fsync')} synchronous_commit={pg.get('synchronous_commit')}\n"
            f"machine: {m['hostname']}, {m['cpus']} CPUs ({m.get('cpu_model') or 'unknown'}), "
            f"{m.get('memory_mb') or '?'} MB, {m['date']}, load {m.get('load_avg_start')} -> {m.get('load_avg_end')}")
    rows: list[tuple[str, str, str, str, str]] = [("scenario", "result", "vs ceiling", "target", "met")]
    tool = "pgbench" if ceiling["tool"] == "pgbench" else "Python run, no pgbench"
    rows.append((f"1 commit ceiling (-N, scale {ceiling['scale']}, {ceiling['clients']} clients, {tool})",
                 _num(tps, "tps"), "1.00x", "", ""))
    for mode, key, goal in (("", "throughput", TARGETS["steps_per_s_vs_ceiling"]),
                            (", batched", "throughput_batched", TARGETS["steps_per_s_batched_vs_ceiling"])):
        for run in result[key]["runs"]:
            rows.append((f"2 throughput{mode}, {run['workers']} worker(s) x {run['concurrency']}",
                         _num(run["steps_per_s"], "steps/s") + f" ({_num(run['instances_per_s'], 'inst/s')})",
                         f"{run['ratio_to_ceiling']:.2f}x" if run["ratio_to_ceiling"] is not None else "-",
                         f">= {goal:.2f}x", _met({"met": run["ratio_to_ceiling"] >= goal}
                                                 if run["ratio_to_ceiling"] is not None else None)))
    lat = result["latency_ms"]
    rows.append(("3 latency p50 / p95 / p99", f"{lat['p50']} / {lat['p95']} / {lat['p99']} ms", "",
                 "p50 <= 3, p99 <= 15 ms",
                 "yes" if t["latency_p50_ms"]["met"] and t["latency_p99_ms"]["met"] else "NO"))
    rows.append(("4 start rate (4 connections, 3-node graph)", _num(result["starts_per_s"], "starts/s"),
                 f"{result['starts_per_s_ratio']:.2f}x" if result["starts_per_s_ratio"] is not None else "-",
                 ">= 0.50x", _met(t["starts_per_s_vs_ceiling"])))
    rows.append(("5 worker peak RSS (max over processes)", _num(result["worker_rss_mb"], "MB", 1), "", "<= 60 MB",
                 _met(t["worker_rss_mb"])))
    scale = result["scale"]
    sm = result["scale_ms"]
    n = f"{scale['finished_instances']:,}"
    rows.append((f"6 instance_info, {n} finished", _num(sm["instance_info"], "ms", 2), "", "< 5 ms",
                 _met(t["instance_info_ms"])))
    rows.append((f"6 list_instances page, {n} finished", _num(sm["list_page"], "ms", 2), "", "< 10 ms",
                 _met(t["list_page_ms"])))
    claim = scale["claim_ms"]
    rows.append(("6 claim, before -> after seeding", f"{claim['before_seeding_p50']} -> {claim['after_seeding_p50']} ms",
                 "", "independent", _met(t["claim_independent_of_finished"])))
    rows.append(("6 plans: rows of instances/nodes read", str(t["plans_use_indexes"]["value"]), "",
                 f"index, <= {MAX_ROWS_READ}", _met(t["plans_use_indexes"])))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = [head, ""]
    for i, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines.append("")
    drift = result.get("commit_ceiling_drift")
    if drift is not None:
        lines.append(f"commit ceiling at the end of the run: {_num(result['commit_ceiling_end']['tps'], 'tps')} "
                     f"({drift:+.0%} against the one above)"
                     + (": the machine's speed changed during the run, so compare its ratios with care"
                        if abs(drift) > DRIFT_WARNING else ""))
    lines.append(f"every counted instance verified: {'yes' if result['verified'] else 'NO'} "
                 f"(batched mode: --batch {result['throughput_batched']['batch']})")
    cpu = [(f"{r['workers']}w{'b' if r['batch'] > 1 else ''}", r["cpu"])
           for r in result["throughput"]["runs"] + result["throughput_batched"]["runs"] if r.get("cpu")]
    if cpu:
        lines.append("CPU during throughput, cores busy (machine / workers / their backends): " + "; ".join(
            f"{k} {c['machine_busy_cores']} / {c['workers_cores']} / {c['backends_cores']}" for k, c in cpu))
        lines.append("CPU per step, ms (workers / their backends): " + "; ".join(
            f"{k} {c['workers_cpu_ms_per_step']} / {c['backends_cpu_ms_per_step']}" for k, c in cpu))
    return "\n".join(lines)
