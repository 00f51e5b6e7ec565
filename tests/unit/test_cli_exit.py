"""Exit statuses of commands whose outcome does not come from the database."""

from __future__ import annotations

import json
from typing import Any

import pytest

from durable import bench, cli


def _fake_bench(verified: bool) -> Any:
    def run_bench(dsn: str | None, *, quick: bool, workers: Any, progress: Any) -> dict[str, Any]:
        return {"quick": quick, "verified": verified, "steps_per_s": 1.0}
    return run_bench


@pytest.mark.parametrize(("verified", "status"), [(True, cli.EXIT_OK), (False, cli.EXIT_ERROR)])
def test_bench_exits_1_when_a_counted_result_was_wrong(monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str],
                                                       verified: bool, status: int) -> None:
    monkeypatch.setattr(bench, "run_bench", _fake_bench(verified))
    assert cli.main(["bench", "--quick", "--json", "--dsn", "host=nowhere"]) == status
    out, err = capsys.readouterr()
    assert json.loads(out)["verified"] is verified
    assert ("the numbers do not count" in err) is not verified


@pytest.mark.parametrize("value", ["0", "-3"])
def test_worker_refuses_a_batch_below_one(capsys: pytest.CaptureFixture[str], value: str) -> None:
    assert cli.main(["worker", "--dsn", "host=nowhere", "--batch", value]) == cli.EXIT_ERROR
    assert "--batch must be at least 1" in capsys.readouterr().err
