"""The floor under issue 10's targets: what durable's contract alone costs on this server.

`durable bench` measures durable.  This measures, in the same kind of scratch
database (durable installed, its tables, indexes, constraints and triggers),
only the statements the contract requires on each path, written as plainly
as SQL allows and driven with no engine at all: no graph check, no caller
identity, no decision, no secret, no Python on the per-step paths (pgbench
drives them, in C).  Every round measures the commit ceiling exactly as
`durable bench` does (pgbench -N, scale 10, 4 clients, 2 threads) before and
after its paths, so each floor comes out as a ratio to the same moments'
ceiling; each path also reports the machine's busy cores and CPU per unit,
and the df.nodes rows it updated per unit (which tells the row work ran).

- start: the rows `df.start` writes for 'SELECT 1' ~> 'SELECT 1' (the
  instance, its THEN node and two SQL nodes, its queue row), one prepared
  statement per start, 4 clients, after 20,000 finished instances (as
  `durable bench` scenario 4).
- step (default mode): one step per transaction on the submitter's
  connection, in the worker's round trips: [BEGIN, the step's settings and
  transaction id, the bind (the attempt row gets the backend's pid: the
  contract's df.in_workflow), the step's statement], then [SET CONSTRAINTS
  ALL IMMEDIATE, the guard, the checkpoint (the attempt taken, the step's
  node completed with its result and version, the next node running, its
  attempt inserted), COMMIT], then the reset to a fresh session (pg_durable
  runs every step on a fresh connection).  It leaves out the claim, the
  first decision, the instance row, the composite node above the step and
  the worker's own work, and checks nothing (no lease, no lock, no version
  compare, no secret).  Run with unnamed statements (`-M extended`: the
  worker's step connections prepare nothing, its reset deallocates) and,
  as a bound on what preparing could give, `-M prepared` (the reset then
  keeps them); 4 and 16 clients.
- batch (batched mode): the same rows for 64 steps in one transaction, the
  bind and checkpoint statements set-based, each step with the reset between
  steps (`df._step_reset_v1`) and SET CONSTRAINTS; 4 clients.
- latency: a minimal Python worker in its own process, woken by NOTIFY:
  claim (lease) and first decision in one transaction, then the step and its
  checkpoint in one transaction on a second connection, which notifies the
  client; the client starts with one statement (the rows and the NOTIFY)
  and waits on LISTEN.  Three commits, as the contract's path has.

    python e2e/floor.py --dsn SUPERUSER_DSN [--rounds 3] [--seconds 8] [--samples 200] [--json] [--quick]

Needs pgbench.  docs/performance.md quotes its output; CI runs it once on small tables
(tests/integration/test_floor.py).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from durable import bench  # noqa: E402
from durable.store.queries import query  # noqa: E402
from durable.store.steps import _RESET  # noqa: E402

RESULT = '{"rows":[{"?column?":1}],"row_count":1}'
# The step and batch floors' instance k (1..pairs): instance (and its THEN node) INSTANCE_BASE + k, its SQL
# nodes LEFT_BASE + k and RIGHT_BASE + k, each as 8 hex digits; a script computes them from k.
INSTANCE_BASE, LEFT_BASE, RIGHT_BASE = 0xC000_0000, 0xD000_0000, 0xE000_0000
LEASE = "00000000-0000-0000-0000-000000000001"
BATCH = 64


@dataclass(frozen=True)
class Sizes:
    pairs: int = 10_000     # two-step instances the step and batch floors work on
    history: int = 20_000   # finished instances in the tables first (as `durable bench` scenario 4)
    scale: int = 10         # pgbench's scale for the ceiling (as `durable bench`)


FULL, QUICK = Sizes(), Sizes(pairs=1_280, history=2_000, scale=1)

# The rows of df.start('SELECT 1' ~> 'SELECT 1'): pgbench draws the instance id and the root's id.
START = r"""
\set a random(0, 4294967295)
\set b random(0, 4294967293)
WITH i AS (INSERT INTO df.instances (id, root_node, status, submitted_by, resource_version)
           VALUES (lpad(to_hex(:a::bigint), 8, '0'), lpad(to_hex(:b::bigint), 8, '0'), 'pending', '{role}'::regrole, 1)
           ON CONFLICT (id) DO NOTHING RETURNING id),
     n AS (INSERT INTO df.nodes (id, instance_id, node_type, query, left_node, right_node, submitted_by, parent_id,
                                 slot, resource_version)
           SELECT x.id, i.id, x.node_type, x.query, x.left_node, x.right_node, '{role}'::regrole, x.parent_id, x.slot, 1
             FROM i, (VALUES (lpad(to_hex(:b::bigint), 8, '0'), 'THEN', NULL, lpad(to_hex(:b::bigint + 1), 8, '0'),
                              lpad(to_hex(:b::bigint + 2), 8, '0'), NULL, NULL),
                             (lpad(to_hex(:b::bigint + 1), 8, '0'), 'SQL', 'SELECT 1', NULL, NULL,
                              lpad(to_hex(:b::bigint), 8, '0'), 'left'),
                             (lpad(to_hex(:b::bigint + 2), 8, '0'), 'SQL', 'SELECT 1', NULL, NULL,
                              lpad(to_hex(:b::bigint), 8, '0'), 'right'))
                  AS x(id, node_type, query, left_node, right_node, parent_id, slot)),
     q AS (INSERT INTO df.instance_queue (instance_id, wake_at) SELECT i.id, clock_timestamp() FROM i)
SELECT 1;
"""

PREPARE = ("SELECT pg_catalog.set_config('statement_timeout', '0', true), pg_catalog.pg_current_xact_id(), "
           "pg_catalog.set_config('standard_conforming_strings', 'on', true);")
# The worker's own statements, each as one pgbench command.
CONSTRAINTS, GUARD = query("step_constraints") + ";", query("step_guard") + ";"
RESET = [f"{statement};" for statement in _RESET.split("; ")]  # the reset to a fresh session


def reset(prepared: bool) -> list[str]:
    """The worker's reset; with prepared statements less DEALLOCATE ALL, which would drop pgbench's."""
    return [r for r in RESET if r != "DEALLOCATE ALL;"] if prepared else RESET


def _hex(base: int, k: str) -> str:
    return f"lpad(to_hex({base} + {k}), 8, '0')"


def _pipeline(statements: list[str]) -> list[str]:
    return ["\\startpipeline", *statements, "\\endpipeline"]


def _share(pairs: int, clients: int, unit: int = 1) -> int:
    """The instances each pgbench client works on (client c: k in c * share + 1 .. (c + 1) * share)."""
    share = pairs // clients
    if share < unit:
        raise ValueError(f"{pairs} instances are too few for {clients} clients")
    return share


def step_script(clients: int, pairs: int, *, prepared: bool) -> str:
    """One step of a two-step instance per transaction.  The step's attempt is taken and one for the same
    node inserted again, so every transaction finds the rows it needs (the same row work as taking one
    node's attempt and inserting the next one's); each client has its own instances."""
    i, a, b = _hex(INSTANCE_BASE, ":k"), _hex(LEFT_BASE, ":k"), _hex(RIGHT_BASE, ":k")
    pick = f"WHERE instance_id = {i} AND node_id = {a}"
    share = _share(pairs, clients)
    lines = [f"\\set k :client_id * {share} + random(1, {share})"]
    lines += _pipeline([
        "BEGIN;", PREPARE,
        f"UPDATE df.attempts SET backend_pid = pg_catalog.pg_backend_pid(), bind_hash = NULL {pick};",
        "SELECT 1;"])
    lines += _pipeline([
        CONSTRAINTS, GUARD,
        f"DELETE FROM df.attempts {pick} AND backend_pid = pg_catalog.pg_backend_pid();",
        f"UPDATE df.nodes SET status = 'completed', result_text = '{RESULT}', result = '{RESULT}'::jsonb, "
        f"resource_version = resource_version + 1, updated_at = now() WHERE instance_id = {i} AND id = {a};",
        "UPDATE df.nodes SET status = 'running', resource_version = resource_version + 1, updated_at = now() "
        f"WHERE instance_id = {i} AND id = {b};",
        "INSERT INTO df.attempts (instance_id, node_id, lease_token, secret_hash, bind_hash) "
        f"VALUES ({i}, {a}, '{LEASE}', '\\x00', '\\x00');",
        "COMMIT;"])
    lines += _pipeline(reset(prepared))
    return "\n".join(lines) + "\n"


def batch_script(clients: int, pairs: int) -> str:
    """BATCH steps of BATCH instances per transaction, the bind and the checkpoint set-based; each client
    has its own instances."""
    attempts = ("FROM public.floor_pairs AS m WHERE m.k BETWEEN :lo AND :hi AND t.instance_id = m.instance_id "
                "AND t.node_id = m.a")
    nodes = "FROM public.floor_pairs AS m WHERE m.k BETWEEN :lo AND :hi AND n.instance_id = m.instance_id"
    share = _share(pairs, clients, BATCH)
    lines = [f"\\set lo :client_id * {share} + random(0, {share // BATCH - 1}) * {BATCH} + 1",
             f"\\set hi :lo + {BATCH - 1}"]
    steps: list[str] = []
    for i in range(BATCH):
        steps += (["SELECT df._step_reset_v1('0');"] if i else []) + ["SELECT 1;", CONSTRAINTS]
    lines += _pipeline([
        "BEGIN;", PREPARE,
        f"UPDATE df.attempts AS t SET backend_pid = pg_catalog.pg_backend_pid(), bind_hash = NULL {attempts};",
        *steps])
    lines += _pipeline([
        GUARD,
        "DELETE FROM df.attempts AS t USING public.floor_pairs AS m WHERE m.k BETWEEN :lo AND :hi "
        "AND t.instance_id = m.instance_id AND t.node_id = m.a AND t.backend_pid = pg_catalog.pg_backend_pid();",
        f"UPDATE df.nodes AS n SET status = 'completed', result_text = '{RESULT}', result = '{RESULT}'::jsonb, "
        f"resource_version = n.resource_version + 1, updated_at = now() {nodes} AND n.id = m.a;",
        "UPDATE df.nodes AS n SET status = 'running', resource_version = n.resource_version + 1, "
        f"updated_at = now() {nodes} AND n.id = m.b;",
        "INSERT INTO df.attempts (instance_id, node_id, lease_token, secret_hash, bind_hash) "
        f"SELECT m.instance_id, m.a, '{LEASE}', '\\x00', '\\x00' FROM public.floor_pairs AS m "
        "WHERE m.k BETWEEN :lo AND :hi;",
        "COMMIT;"])
    lines += _pipeline(reset(prepared=False))
    return "\n".join(lines) + "\n"


def _pgbench() -> str:
    found = shutil.which("pgbench") or next(
        (str(p) for p in sorted(Path("/usr/lib/postgresql").glob("*/bin/pgbench"), reverse=True)), None)
    if not found:
        raise RuntimeError("pgbench not found (it comes with the PostgreSQL server package)")
    return found


@dataclass(frozen=True)
class Run:
    tps: float
    transactions: int
    busy_cores: float | None        # the whole machine's, pgbench included
    node_updates: int               # df.nodes rows updated during the run


class Pgbench:
    def __init__(self, s: bench.Scratch, seconds: int) -> None:
        self.exe, self.seconds, self.dir = _pgbench(), seconds, s.workdir
        self.target, self.env = bench._pgbench_target(s)
        self.admin_dsn = s.admin_dsn

    def _node_updates(self) -> int:
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            row = conn.execute("SELECT n_tup_upd FROM pg_catalog.pg_stat_user_tables "
                               "WHERE relid = 'df.nodes'::regclass").fetchone()
        return int(row[0]) if row else 0

    def run(self, *args: str, script: str | None = None, expect_node_updates: int = 0) -> Run:
        """One pgbench run.  The node updates it made are counted once its backends have reported them
        (expect_node_updates per transaction: wait until at least that many arrived, for a while)."""
        extra = list(args)
        if script is not None:
            path = self.dir / f"floor-{uuid.uuid4().hex}.sql"
            path.write_text(script)
            extra += ["-n", "-f", str(path)]
        updates, busy = self._node_updates(), bench._machine_busy_seconds()
        began = time.monotonic()
        done = subprocess.run([self.exe, "-j2", "-T", str(self.seconds), *extra, self.target], env=self.env,
                              capture_output=True, text=True, timeout=self.seconds + 600)
        wall = time.monotonic() - began
        busy_after = bench._machine_busy_seconds()
        tps, count = bench._TPS.search(done.stdout), bench._TX.search(done.stdout)
        if done.returncode != 0 or not tps or not count:
            raise RuntimeError(f"pgbench failed:\n{done.stdout}\n{done.stderr}")
        transactions = int(count.group(1))
        deadline = time.monotonic() + 5
        while (moved := self._node_updates() - updates) < expect_node_updates * transactions \
                and time.monotonic() < deadline:
            time.sleep(0.1)
        cores = None if busy is None or busy_after is None else (busy_after - busy) / wall
        return Run(float(tps.group(1)), transactions, cores, moved)


def _prepare(s: bench.Scratch, sizes: Sizes) -> None:
    """pgbench's tables; the finished instances; the two-step instances of the step and batch floors
    (ids from k, each running its first step, with its attempt)."""
    pg = Pgbench(s, 0)
    subprocess.run([pg.exe, "-i", "-q", "-s", str(sizes.scale), pg.target], env=pg.env, check=True,
                   capture_output=True, timeout=600)
    bench._seed_finished(s, sizes.history, lambda m: None, "floor")
    k = "g.k"
    with psycopg.connect(s.admin_dsn, autocommit=True) as conn:
        conn.execute(f"""
            CREATE TABLE public.floor_pairs AS
            SELECT g.k, {_hex(INSTANCE_BASE, k)} AS instance_id, {_hex(LEFT_BASE, k)} AS a,
                   {_hex(RIGHT_BASE, k)} AS b
              FROM pg_catalog.generate_series(1, %(pairs)s::bigint) AS g(k)""", {"pairs": sizes.pairs})
        conn.execute("ALTER TABLE public.floor_pairs ADD PRIMARY KEY (k)")
        with conn.transaction():
            conn.execute("""
                INSERT INTO df.instances (id, root_node, status, submitted_by, resource_version)
                SELECT p.instance_id, p.instance_id, 'running', %(role)s::regrole, 1 FROM public.floor_pairs AS p""",
                         {"role": s.user_role})
            conn.execute("""
                INSERT INTO df.nodes (id, instance_id, node_type, query, status, left_node, right_node, submitted_by,
                                      parent_id, slot, resource_version)
                SELECT x.id, p.instance_id, x.node_type, x.query, x.status, x.left_node, x.right_node,
                       %(role)s::regrole, x.parent_id, x.slot, 1
                  FROM public.floor_pairs AS p,
                       LATERAL (VALUES (p.instance_id, 'THEN', NULL, 'running', p.a, p.b, NULL, NULL),
                                       (p.a, 'SQL', 'SELECT 1', 'running', NULL, NULL, p.instance_id, 'left'),
                                       (p.b, 'SQL', 'SELECT 1', 'pending', NULL, NULL, p.instance_id, 'right'))
                       AS x(id, node_type, query, status, left_node, right_node, parent_id, slot)""",
                         {"role": s.user_role})
            conn.execute("INSERT INTO df.attempts (instance_id, node_id, lease_token, secret_hash) "
                         "SELECT instance_id, a, %s, '\\x00' FROM public.floor_pairs", (LEASE,))
        conn.execute("VACUUM ANALYZE")


# -- latency ----------------------------------------------------------------------------------------

def _serve(dsn: str, stop: Any) -> None:
    """The minimal worker: woken by NOTIFY, claim and first decision in one transaction (two round trips:
    the claim, then the decision's writes with COMMIT), then the step and its checkpoint."""
    listener = psycopg.connect(dsn, autocommit=True)
    engine = psycopg.connect(dsn)
    step = psycopg.connect(dsn, prepare_threshold=None)  # as the worker's: its reset deallocates
    listener.execute("LISTEN floor_work")
    token = str(uuid.uuid4())
    while not stop.is_set():
        for _ in listener.notifies(timeout=0.2, stop_after=1):
            pass
        while True:
            with engine.pipeline() as p:
                claimed = engine.execute("""
                    UPDATE df.instance_queue AS q SET lease_token = %(t)s, lease_expires_at = now() + interval '30 s'
                     WHERE q.instance_id = (SELECT instance_id FROM df.instance_queue
                                             WHERE lease_token IS NULL AND wake_at IS NOT NULL
                                             ORDER BY wake_at LIMIT 1 FOR UPDATE SKIP LOCKED)
                    RETURNING q.instance_id, (SELECT n.id FROM df.nodes AS n
                                               WHERE n.instance_id = q.instance_id AND n.parent_id IS NULL)""",
                                         {"t": token})
                p.sync()
                row = claimed.fetchone()
                if row is None:
                    engine.rollback()
                    break
                iid, node = str(row[0]), str(row[1])
                engine.execute("UPDATE df.nodes SET status = 'running', resource_version = resource_version + 1, "
                               "updated_at = now() WHERE instance_id = %s AND id = %s", (iid, node))
                engine.execute("UPDATE df.instances SET status = 'running', resource_version = resource_version + 1, "
                               "updated_at = now() WHERE id = %s", (iid,))
                engine.execute("INSERT INTO df.attempts (instance_id, node_id, lease_token, secret_hash) "
                               "VALUES (%s, %s, %s, '\\x00')", (iid, node, token))
                engine.commit()
            with step.pipeline() as p:
                step.execute("UPDATE df.attempts SET backend_pid = pg_catalog.pg_backend_pid() "
                             "WHERE instance_id = %s AND node_id = %s", (iid, node))
                result = step.execute("SELECT 1")
                p.sync()
            result.fetchall()
            with step.pipeline():
                step.execute(GUARD)
                step.execute("DELETE FROM df.attempts WHERE instance_id = %s AND node_id = %s", (iid, node))
                step.execute("UPDATE df.nodes SET status = 'completed', result_text = %s, result = %s::jsonb, "
                             "resource_version = resource_version + 1, updated_at = now() "
                             "WHERE instance_id = %s AND id = %s", (RESULT, RESULT, iid, node))
                step.execute("UPDATE df.instances SET status = 'completed', output = %s, completed_at = now(), "
                             "resource_version = resource_version + 1, updated_at = now() WHERE id = %s", (RESULT, iid))
                step.execute("DELETE FROM df.instance_queue WHERE instance_id = %s", (iid,))
                step.execute("SELECT pg_catalog.pg_notify('floor_done', '')")
                step.commit()
            step.autocommit = True  # the reset to a fresh session, after the commit as the worker does
            step.execute(" ".join(reset(prepared=False)))
            step.autocommit = False
    for conn in (listener, engine, step):
        conn.close()


_START_ONE = """
    WITH i AS (INSERT INTO df.instances (id, root_node, status, submitted_by, resource_version)
               VALUES (%(id)s, %(id)s, 'pending', %(role)s::regrole, 1) ON CONFLICT (id) DO NOTHING RETURNING id),
         n AS (INSERT INTO df.nodes (id, instance_id, node_type, query, submitted_by, resource_version)
               SELECT i.id, i.id, 'SQL', 'SELECT 1', %(role)s::regrole, 1 FROM i),
         q AS (INSERT INTO df.instance_queue (instance_id, wake_at) SELECT i.id, clock_timestamp() FROM i)
    SELECT pg_catalog.pg_notify('floor_work', '') FROM i"""


def latency(s: bench.Scratch, samples: int) -> dict[str, float]:
    with psycopg.connect(s.admin_dsn, autocommit=True) as conn:
        conn.execute("DELETE FROM df.instance_queue")  # the other floors' instances are not for this worker
    stop = multiprocessing.Event()
    worker = multiprocessing.Process(target=_serve, args=(s.admin_dsn, stop), daemon=True)
    worker.start()
    timings: list[float] = []
    try:
        time.sleep(1)
        with psycopg.connect(s.admin_dsn, autocommit=True) as client:
            client.execute("LISTEN floor_done")
            for i in range(samples + 20):
                began = time.perf_counter()
                while True:  # a fresh id, as df.start draws again on a collision
                    iid = uuid.uuid4().hex[:8]
                    if client.execute(_START_ONE, {"id": iid, "role": s.user_role}).fetchone():
                        break
                deadline = began + 30
                while True:
                    for _ in client.notifies(timeout=1, stop_after=1):
                        pass
                    row = client.execute("SELECT status FROM df.instances WHERE id = %s", (iid,)).fetchone()
                    if row and row[0] == "completed":
                        break
                    if time.perf_counter() > deadline or not worker.is_alive():
                        raise RuntimeError(f"latency: instance {iid} did not complete (worker alive: {worker.is_alive()})")
                if i >= 20:
                    timings.append((time.perf_counter() - began) * 1000)
    finally:
        stop.set()
        worker.join(10)
    return {"p50": round(bench.percentile(timings, 50), 2), "p95": round(bench.percentile(timings, 95), 2),
            "p99": round(bench.percentile(timings, 99), 2)}


def _path(r: dict[str, Any], name: str, run: Run, steps_per_transaction: int, ceiling: float) -> None:
    rate = run.tps * steps_per_transaction
    r[name] = {"per_s": round(rate), "ratio": round(rate / ceiling, 3),
               "busy_cores": None if run.busy_cores is None else round(run.busy_cores, 2),
               "machine_cpu_ms": None if run.busy_cores is None else round(run.busy_cores * 1000 / rate, 3),
               "node_updates_per_unit": round(run.node_updates / (run.transactions * steps_per_transaction), 3)}


def run(dsn: str | None, rounds: int, seconds: int, samples: int, sizes: Sizes = FULL) -> list[dict[str, Any]]:
    """Each round: the ceiling, every path (the step's two statement modes in alternating order), the
    latency, the ceiling again; ratios are to the mean of the two ceilings."""
    out = []
    with bench.scratch(dsn, lambda m: print(m, file=sys.stderr)) as s:
        _prepare(s, sizes)
        pg = Pgbench(s, seconds)
        start = START.replace("{role}", s.user_role)
        for n in range(rounds):
            before = pg.run("-N", "-c4").tps
            runs: list[tuple[str, Run, int]] = [("start", pg.run("-c4", "-M", "prepared", script=start), 1)]
            modes = ("extended", "prepared") if n % 2 == 0 else ("prepared", "extended")
            for mode in modes:
                for clients in (4, 16):
                    script = step_script(clients, sizes.pairs, prepared=mode == "prepared")
                    runs.append((f"step_{mode}_c{clients}",
                                 pg.run(f"-c{clients}", "-M", mode, script=script, expect_node_updates=2), 1))
            runs.append(("batched", pg.run("-c4", "-M", "extended", script=batch_script(4, sizes.pairs),
                                           expect_node_updates=2 * BATCH), BATCH))
            lat = latency(s, samples)
            after = pg.run("-N", "-c4").tps
            ceiling = (before + after) / 2
            r: dict[str, Any] = {"round": n + 1, "commit_ceiling_tps": round(ceiling),
                                 "ceiling_before_after": [round(before), round(after)]}
            for name, done, per_transaction in runs:
                _path(r, name, done, per_transaction, ceiling)
            r["latency_ms"] = lat
            print(json.dumps(r), file=sys.stderr)
            out.append(r)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dsn", help="a superuser DSN (default: the usual PG* environment)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=8, help="per pgbench run")
    ap.add_argument("--samples", type=int, default=200, help="latency samples per round")
    ap.add_argument("--quick", action="store_true", help="small tables (a smoke run, not a measurement)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    result = run(args.dsn, args.rounds, args.seconds, args.samples, QUICK if args.quick else FULL)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    for r in result:
        print(f"round {r['round']}: ceiling {r['commit_ceiling_tps']} tps (before / after: "
              f"{' / '.join(str(x) for x in r['ceiling_before_after'])})")
        for key, v in r.items():
            if isinstance(v, dict) and "per_s" in v:
                print(f"  {key:20s} {v['per_s']:>8} /s  {v['ratio']:.2f}x  {v['busy_cores']} cores busy, "
                      f"{v['machine_cpu_ms']} ms of machine CPU each")
        lat = r["latency_ms"]
        print(f"  latency p50 / p95 / p99          {lat['p50']} / {lat['p95']} / {lat['p99']} ms")


if __name__ == "__main__":
    main()
