"""bench/trigger_engine.py runs end to end at a tiny scale: the real-time path is measured,
deliveries are counted, and a chaos trial finds nothing lost, doubled or sent out of turn."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from conftest import run_bench_quick

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import trigger_engine as triggers

pytestmark = pytest.mark.slow

TINY = {
    "warmup_s": 0.5,
    "window_s": 1.5,
    "trials": 2,
    "chaos_rate": 40,
    "kill_within_s": 0.5,
    "deliveries": 200,
}


def test_the_bench_measures_the_real_time_path_deliveries_and_chaos(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(triggers.MODES, "quick", TINY)
    written = run_bench_quick(triggers.main, tmp_path, "trigger_engine")
    assert set(written["targets"]) == set(triggers.TARGETS)
    realtime = written["realtime"]
    # Every probe order's receipt was queued, and timed against the documents' latency.
    assert realtime["probes"] > 0
    assert realtime["probe_receipts_queued"] == realtime["probes_fired"] == realtime["probes"]
    assert written["realtime_fired_p99_ms"] > 0 and written["realtime_documents_p99_ms"] > 0
    delivery = written["delivery"]
    assert delivery["webhooks"]["delivered"] == delivery["file"]["delivered"] == 200
    assert delivery["bare_httpx_sequential"]["posted"] == 200
    chaos = written["chaos"]
    assert chaos["trials"] == 2 and chaos["expected_messages"] > 0
    assert chaos["received_distinct"] == chaos["expected_messages"]
    for figure in (
        "lost",
        "unexpected",
        "duplicated_after_dedupe",
        "sent_in_quiet_hours",
        "sent_without_consent",
        "rejected_signatures",
        "dead_letters",
    ):
        assert chaos[figure] == 0, figure
