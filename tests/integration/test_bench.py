"""`durable bench --quick`: every scenario runs, every counted result was verified, nothing is left behind.

The numbers themselves are not checked here (the test server runs with fsync
off on a shared machine); docs/performance.md has a real run.
"""

from __future__ import annotations

import json

import psycopg
import pytest

from durable.bench import format_table, percentile, run_bench

KEYS = ("commit_ceiling_tps", "steps_per_s", "steps_per_s_batched", "instances_per_s", "latency_ms", "starts_per_s",
        "worker_rss_mb", "scale_ms", "machine", "version")


def test_percentile_interpolates_between_ranks() -> None:
    values = [float(v) for v in range(1, 101)]  # 1..100
    assert percentile(values, 50) == pytest.approx(50.5)
    assert percentile(values, 99) == pytest.approx(99.01)
    assert percentile([7.0], 95) == 7.0


def test_quick_bench_runs_every_scenario_verifies_and_cleans_up(dsn: str, db: psycopg.Connection) -> None:
    lines: list[str] = []
    result = run_bench(dsn, quick=True, workers=None, progress=lines.append)

    # The keys, and the whole object is JSON.
    for key in KEYS:
        assert key in result, key
    json.dumps(result)
    assert set(result["latency_ms"]) == {"p50", "p95", "p99"}
    assert set(result["scale_ms"]) == {"instance_info", "list_page", "claim"}
    assert result["steps_per_s_batched"] == max(r["steps_per_s"] for r in result["throughput_batched"]["runs"])
    assert result["commit_ceiling_tps"] > 0 and result["commit_ceiling"]["tool"] in ("pgbench", "python")
    assert result["version"]["durable"] and result["version"]["schema"]
    assert result["machine"]["postgres"]["version"]

    # Scenario 2 ran for 1, 2 and 4 worker processes; every instance and every step was checked.
    runs = result["throughput"]["runs"]
    batched = result["throughput_batched"]["runs"]
    assert [r["workers"] for r in runs] == [r["workers"] for r in batched] == [1, 2, 4]
    assert {r["batch"] for r in runs} == {1} and {r["batch"] for r in batched} == {64}
    for run in runs + batched:
        v = run["verified"]
        assert v["ok"] is True
        assert v["instances"] == v["completed_correct"] == run["instances"] == 150
        assert v["steps"] == v["steps_correct"] == 3 * 150
        assert v["queued_left"] == v["attempts_left"] == 0
        assert run["steps_per_s"] > 0 and run["ratio_to_ceiling"] is not None
        assert len(run["worker_rss_mb"]) == run["workers"]
        assert all(rss is not None and rss > 0 for rss in run["worker_rss_mb"])
    assert result["steps_per_s"] == max(r["steps_per_s"] for r in runs)
    assert result["worker_rss_mb"] == max(x for r in runs + batched for x in r["worker_rss_mb"])

    latency = result["latency"]
    assert latency["samples"] == 20 and latency["verified"]["ok"] is True
    assert latency["verified"]["instances"] == latency["verified"]["completed_correct"] == 20 + latency["warmup"]
    assert 0 < latency["p50"] <= latency["p95"] <= latency["p99"]

    starts = result["start_rate"]
    assert starts["verified"] == {"instances": 200, "nodes": 600, "queued": 200, "ok": True}
    assert result["starts_per_s"] > 0

    scale = result["scale"]
    assert scale["finished_instances"] == 2_000
    assert scale["list_page_ms"]["deep_page_rows"] == 100
    plans = scale["plans"]
    assert plans["ok"] in (True, False), plans
    # One instance by primary key; the claim reads only the queue of unfinished instances.
    assert plans["instance_info"]["ok"] is True and plans["instance_info"]["rows_read_instances_nodes"] == 1, plans
    assert plans["claim"]["ok"] is True, plans
    assert all(x["scan"] != "Seq Scan" for x in plans["claim"]["scans"] if x["relation"] in ("instances", "nodes"))
    assert any(x["relation"] == "instances" for x in plans["list_page"]["scans"]), plans
    assert all(v > 0 for v in result["scale_ms"].values())
    assert result["verified"] is True

    # Progress was shown for every scenario.
    for marker in ("[1/6]", "[2/6]", "[3/6]", "[4/6]", "[6/6]"):
        assert any(marker in line for line in lines), marker

    # The scratch database and roles are gone.
    scratch = result["scratch"]
    assert scratch["ok"] is True and scratch["database"].startswith("durable_bench_")
    assert db.execute("SELECT count(*) FROM pg_database WHERE datname = %s", (scratch["database"],)).fetchone() == (0,)
    assert db.execute("SELECT count(*) FROM pg_roles WHERE rolname = ANY(%s)", (scratch["roles"],)).fetchone() == (0,)

    table = format_table(result)
    assert "commit ceiling" in table and "throughput, 4 worker(s)" in table and "latency p50" in table

    # The ceiling again at the end, and how far it moved; a large move is pointed out in the table.
    end = result["commit_ceiling_end"]
    assert end["tps"] > 0 and end["tool"] == result["commit_ceiling"]["tool"]
    assert result["commit_ceiling_drift"] == pytest.approx(end["tps"] / result["commit_ceiling_tps"] - 1, abs=1e-3)
    assert "commit ceiling at the end of the run" in table
    steady = format_table({**result, "commit_ceiling_drift": 0.05})
    moved = format_table({**result, "commit_ceiling_drift": -0.3})
    assert "-30%" in moved and "compare its ratios with care" in moved
    assert "+5%" in steady and "compare its ratios with care" not in steady
