"""e2e/floor.py, the floor docs/performance.md quotes, still runs: every path once, on small tables.

The rates are not checked (the test server runs with fsync off on a shared
machine); that every pgbench script runs without error, does the row work it
stands for, and every latency instance completes, is.
"""

from __future__ import annotations

import psycopg
import pytest

from e2e import floor

PATHS = ("start", "step_extended_c4", "step_extended_c16", "step_prepared_c4", "step_prepared_c16", "batched")


def test_floor_runs_every_path_and_does_its_row_work(dsn: str, db: psycopg.Connection) -> None:
    (result,) = floor.run(dsn, rounds=1, seconds=1, samples=5, sizes=floor.QUICK)

    assert result["commit_ceiling_tps"] > 0 and len(result["ceiling_before_after"]) == 2
    for name in PATHS:
        path = result[name]
        assert path["per_s"] > 0 and path["ratio"] > 0, name
    # Each step completes its node and starts the next one: two node updates, never a missed row.
    for name in PATHS[1:]:
        assert result[name]["node_updates_per_unit"] == 2.0, (name, result[name])
    latency = result["latency_ms"]
    assert 0 < latency["p50"] <= latency["p95"] <= latency["p99"]


@pytest.mark.parametrize("clients", [4, 16])
def test_each_client_has_its_own_instances(clients: int) -> None:
    # Two clients on one instance would both take its attempt and insert it again (a duplicate key).
    share = floor._share(floor.QUICK.pairs, clients)
    ranges = [range(c * share + 1, (c + 1) * share + 1) for c in range(clients)]
    assert all(1 <= r.start and r.stop - 1 <= floor.QUICK.pairs for r in ranges)
    assert len({k for r in ranges for k in r}) == clients * share  # disjoint
    assert f"\\set k :client_id * {share} + random(1, {share})" in floor.step_script(clients, floor.QUICK.pairs,
                                                                                     prepared=False)
    with pytest.raises(ValueError):
        floor._share(10, 16)
    batch = floor.batch_script(4, floor.QUICK.pairs)
    assert batch.count("SELECT 1;") == floor.BATCH and "DEALLOCATE ALL;" in batch
