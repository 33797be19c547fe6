"""bench/scale.py runs end to end at a tiny scale on the real PostgreSQL log: every worker
count rebuilds and follows every event, and the failover trial reports its figures."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from conftest import ENABLE_POSTGRES, POSTGRES_URL, run_bench_quick, unavailable

from bench import scale

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

TINY = {"customers": 60, "events_per_customer": 10, "failover_s": 7.0, "rounds": 2}


def test_the_bench_measures_rebuild_real_time_and_failover_per_worker_count(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not POSTGRES_URL:
        unavailable(ENABLE_POSTGRES)
    monkeypatch.setitem(scale.MODES, "quick", TINY)
    written = run_bench_quick(scale.main, tmp_path, "scale")
    rebuilt, backlog = written["events_rebuilt"], written["events_backlog"]
    assert rebuilt > 0 and backlog > 0
    assert [r["processes"] for r in written["rebuild"]] == list(scale.PROCESSES)
    single = written["rebuild"][0]["events_applied"]
    assert single > 0
    for row in written["rebuild"]:
        # The partitions together applied what one process did: nothing skipped, nothing
        # twice (a partition applies only its own customers' events).
        assert row["events_applied"] == single
        assert row["events_per_s"] > 0
        assert len(row["rounds_seconds"]) == TINY["rounds"]
    for row in written["realtime"]:
        assert row["events_per_s"] > 0
        assert len(row["rounds_seconds"]) == TINY["rounds"]
        # Every partition was held by some worker from the start.
        assert sum(row["partitions_per_worker_at_start"]) == row["partitions"]
    failover = written["failover"]
    assert failover["workers"] == 4 and failover["appended_events"] > 0
    assert failover["events_behind_at_start"] == 0  # started from caught-up documents
    assert failover["lag_max_s_after_kill"] >= 0
    assert set(written["targets"]) == {"rebuild_speedup_2", "realtime_speedup_2"}
    assert all(t["pass"] in (True, False) for t in written["targets"].values())
