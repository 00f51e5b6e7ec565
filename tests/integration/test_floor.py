"""e2e/floor.py, the floor docs/performance.md quotes, still runs: every path once, on small tables.

The numbers are not checked (the test server runs with fsync off on a shared
machine); that every pgbench script runs without error and every latency
instance completes is.
"""

from __future__ import annotations

import psycopg

from e2e import floor


def test_floor_runs_every_path(dsn: str, db: psycopg.Connection) -> None:
    (result,) = floor.run(dsn, rounds=1, seconds=1, samples=5, sizes=floor.QUICK)

    assert result["commit_ceiling_tps"] > 0
    paths = ("starts_per_s", "steps_per_s_extended_c4", "steps_per_s_extended_c16", "steps_per_s_prepared_c4",
             "steps_per_s_prepared_c16", "steps_per_s_batched")
    for key in paths:
        assert result[key] > 0, key
        assert result["ratios"][key] > 0, key
    latency = result["latency_ms"]
    assert 0 < latency["p50"] <= latency["p95"] <= latency["p99"]


def test_step_scripts_give_each_client_its_own_instances() -> None:
    # Two clients on one instance would both take its attempt and insert it again (a duplicate key).
    script = floor.step_script(4, 1_000)
    assert "\\set k :client_id * 250 + random(1, 250)" in script
    batch = floor.batch_script(4, 1_280)
    assert f"\\set lo :client_id * 320 + random(0, 4) * {floor.BATCH} + 1" in batch
    assert batch.count("SELECT 1;") == floor.BATCH
