"""The floor under issue 10's targets: what durable's contract alone costs on this server.

`durable bench` measures durable.  This measures, in the same kind of scratch
database (durable installed, its tables, indexes, constraints and triggers),
only the statements the contract requires on each path, written as plainly
as SQL allows and driven with no engine at all: no graph check, no caller
identity, no decision, no secret, no Python on the per-step paths (pgbench
drives them, in C).  Every round also measures the commit ceiling exactly as
`durable bench` does (pgbench -N, scale 10, 4 clients, 2 threads), so each
floor comes out as a ratio to the same moment's ceiling.

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
  the worker's own work.  Run with unnamed statements (`-M extended`: the
  worker's step connections prepare nothing, the reset deallocates) and,
  as a bound on what preparing could give, `-M prepared`; 4 and 16 clients.
- batch (batched mode): the same rows for 64 steps in one transaction, the
  bind and checkpoint statements set-based, each step with the reset between
  steps (`df._step_reset_v1`) and SET CONSTRAINTS; 4 clients.
- latency: a minimal Python worker in its own process, woken by NOTIFY:
  claim (lease) and first decision in one transaction, then the step and its
  checkpoint in one transaction on a second connection, which notifies the
  client; the client starts with one statement (the rows and the NOTIFY)
  and waits on LISTEN.  Three commits, as the contract's path has.

    python e2e/floor.py --dsn SUPERUSER_DSN [--rounds 3] [--seconds 8] [--samples 200] [--json] [--quick]

Needs pgbench on PATH.  Not part of CI: docs/performance.md quotes its output.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import re
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

RESULT = '{"rows":[{"?column?":1}],"row_count":1}'
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
GUARD = ("SELECT pg_catalog.set_config('role', 'none', true), pg_catalog.set_config('search_path', "
         "'pg_catalog, pg_temp', true), pg_catalog.set_config('statement_timeout', '0', true), "
         "pg_catalog.pg_current_xact_id();")
RESET = ["CLOSE ALL;", "SET SESSION AUTHORIZATION DEFAULT;", "RESET ALL;", "UNLISTEN *;",
         "SELECT pg_catalog.pg_advisory_unlock_all();", "DISCARD TEMP;", "DISCARD SEQUENCES;"]


def _pipeline(statements: list[str]) -> list[str]:
    return ["\\startpipeline", *statements, "\\endpipeline"]


def step_script(clients: int, pairs: int) -> str:
    """One step of a two-step instance per transaction.  The step's attempt is taken and one for the same
    node inserted again, so every transaction finds the rows it needs (the same row work as taking one
    node's attempt and inserting the next one's); each client has its own instances."""
    pick = "WHERE instance_id = :i AND node_id = :a"
    share = pairs // clients
    lines = [f"\\set k :client_id * {share} + random(1, {share})",
             "SELECT instance_id AS i, a, b FROM public.floor_pairs WHERE k = :k \\gset"]
    lines += _pipeline([
        "BEGIN;", PREPARE,
        f"UPDATE df.attempts SET backend_pid = pg_catalog.pg_backend_pid(), bind_hash = NULL {pick};",
        "SELECT 1;"])
    lines += _pipeline([
        "SET CONSTRAINTS ALL IMMEDIATE;", GUARD,
        f"DELETE FROM df.attempts {pick} AND backend_pid = pg_catalog.pg_backend_pid();",
        f"UPDATE df.nodes SET status = 'completed', result_text = '{RESULT}', result = '{RESULT}'::jsonb, "
        "resource_version = resource_version + 1, updated_at = now() WHERE instance_id = :i AND id = :a;",
        "UPDATE df.nodes SET status = 'running', resource_version = resource_version + 1, updated_at = now() "
        "WHERE instance_id = :i AND id = :b;",
        "INSERT INTO df.attempts (instance_id, node_id, lease_token, secret_hash, bind_hash) "
        f"VALUES (:i, :a, '{LEASE}', '\\x00', '\\x00');",
        "COMMIT;"])
    lines += _pipeline(RESET)
    return "\n".join(lines) + "\n"


def batch_script(clients: int, pairs: int) -> str:
    """BATCH steps of BATCH instances per transaction, the bind and the checkpoint set-based; each client
    has its own instances."""
    attempts = ("FROM public.floor_pairs AS m WHERE m.k BETWEEN :lo AND :hi AND t.instance_id = m.instance_id "
                "AND t.node_id = m.a")
    nodes = "FROM public.floor_pairs AS m WHERE m.k BETWEEN :lo AND :hi AND n.instance_id = m.instance_id"
    share = pairs // clients
    lines = [f"\\set lo :client_id * {share} + random(0, {share // BATCH - 1}) * {BATCH} + 1",
             f"\\set hi :lo + {BATCH - 1}"]
    steps: list[str] = []
    for i in range(BATCH):
        steps += (["SELECT df._step_reset_v1('0');"] if i else []) + ["SELECT 1;", "SET CONSTRAINTS ALL IMMEDIATE;"]
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
    lines += _pipeline(RESET)
    return "\n".join(lines) + "\n"


def _pgbench() -> str:
    found = shutil.which("pgbench") or next(
        (str(p) for p in sorted(Path("/usr/lib/postgresql").glob("*/bin/pgbench"), reverse=True)), None)
    if not found:
        raise RuntimeError("pgbench not found (it comes with the PostgreSQL server package)")
    return found


class Pgbench:
    def __init__(self, s: bench.Scratch, seconds: int) -> None:
        found = _pgbench()
        self.exe, self.seconds = found, seconds
        self.target, self.env = bench._pgbench_target(s)
        self.dir = s.workdir

    def tps(self, *args: str, script: str | None = None) -> float:
        extra = list(args)
        if script is not None:
            path = self.dir / f"floor-{uuid.uuid4().hex}.sql"
            path.write_text(script)
            extra += ["-n", "-f", str(path)]
        run = subprocess.run([self.exe, "-j2", "-T", str(self.seconds), *extra, self.target], env=self.env,
                             capture_output=True, text=True)
        found = re.search(r"tps = ([\d.]+)", run.stdout)
        if run.returncode != 0 or not found:
            raise RuntimeError(f"pgbench failed:\n{run.stdout}\n{run.stderr}")
        return float(found.group(1))


def _prepare(s: bench.Scratch, sizes: Sizes) -> None:
    """pgbench's tables, the finished instances, and the two-step instances with their first attempt."""
    pg = Pgbench(s, 0)
    subprocess.run([pg.exe, "-i", "-q", "-s", str(sizes.scale), pg.target], env=pg.env, check=True,
                   capture_output=True)
    bench._seed_finished(s, sizes.history, lambda m: None, "floor")
    bench._start_up_front(s, bench._envelope(s, 2), sizes.pairs, lambda m: None, "floor")
    with psycopg.connect(s.admin_dsn, autocommit=True) as conn:
        conn.execute("""
            CREATE TABLE public.floor_pairs AS
            SELECT row_number() OVER (ORDER BY t.instance_id) AS k, t.instance_id, l.id AS a, r.id AS b
              FROM df.nodes AS t
              JOIN df.nodes AS l ON l.instance_id = t.instance_id AND l.id = t.left_node
              JOIN df.nodes AS r ON r.instance_id = t.instance_id AND r.id = t.right_node
             WHERE t.node_type = 'THEN' AND t.parent_id IS NULL""")
        conn.execute("ALTER TABLE public.floor_pairs ADD PRIMARY KEY (k)")
        conn.execute("INSERT INTO df.attempts (instance_id, node_id, lease_token, secret_hash) "
                     "SELECT instance_id, a, %s, '\\x00' FROM public.floor_pairs", (LEASE,))
        conn.execute("VACUUM ANALYZE")


# -- latency ----------------------------------------------------------------------------------------

def _serve(dsn: str, stop: Any) -> None:
    """The minimal worker: woken by NOTIFY, claim and first decision in one transaction (two round trips:
    the claim, then the decision's writes with COMMIT), then the step and its checkpoint."""
    listener = psycopg.connect(dsn, autocommit=True)
    engine = psycopg.connect(dsn)
    step = psycopg.connect(dsn)
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
            step.execute(" ".join(RESET))
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


def run(dsn: str | None, rounds: int, seconds: int, samples: int, sizes: Sizes = FULL) -> list[dict[str, Any]]:
    out = []
    with bench.scratch(dsn, lambda m: print(m, file=sys.stderr)) as s:
        _prepare(s, sizes)
        pg = Pgbench(s, seconds)
        start = START.replace("{role}", s.user_role)
        for n in range(rounds):
            ceiling = pg.tps("-N", "-c4")
            r: dict[str, Any] = {"round": n + 1, "commit_ceiling_tps": round(ceiling)}
            r["starts_per_s"] = round(pg.tps("-c4", "-M", "prepared", script=start))
            for mode in ("extended", "prepared"):
                for clients in (4, 16):
                    r[f"steps_per_s_{mode}_c{clients}"] = round(pg.tps(f"-c{clients}", "-M", mode, script=step_script(clients, sizes.pairs)))
            r["steps_per_s_batched"] = round(pg.tps("-c4", "-M", "extended", script=batch_script(4, sizes.pairs)) * BATCH)
            r["latency_ms"] = latency(s, samples)
            r["ratios"] = {k: round(v / ceiling, 3) for k, v in r.items() if k.endswith("_per_s") or "_per_s_" in k}
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
        ratios = r["ratios"]
        print(f"round {r['round']}: ceiling {r['commit_ceiling_tps']} tps")
        for key, ratio in ratios.items():
            print(f"  {key:32s} {r[key]:>8} /s  {ratio:.2f}x")
        lat = r["latency_ms"]
        print(f"  latency p50 / p95 / p99          {lat['p50']} / {lat['p95']} / {lat['p99']} ms")


if __name__ == "__main__":
    main()
