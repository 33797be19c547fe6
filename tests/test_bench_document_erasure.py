"""bench/document_erasure.py runs end to end at a tiny scale and reports every figure."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from conftest import run_bench_quick

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import document_erasure

pytestmark = pytest.mark.slow

TINY = {"customers": 150, "events_per_customer": 12, "rounds": 1, "erasures": 5}


def test_the_bench_compares_secure_delete_settings_and_times_erasures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(document_erasure.MODES, "quick", TINY)
    written = run_bench_quick(document_erasure.main, tmp_path, "document_erasure")
    assert set(written["targets"]) == set(document_erasure.TARGETS)
    assert all(isinstance(t["pass"], bool) for t in written["targets"].values())
    writes = written["writes"]
    for setting in ("off", "fast", "on"):
        assert writes[f"insert_{setting}_s"] > 0 and writes[f"update_{setting}_s"] > 0
    assert writes["update_on_vs_off"] > 0 and writes["insert_fast_vs_off"] > 0
    erasure = written["erasure"]
    assert erasure["customers"] == TINY["erasures"]
    assert erasure["erased_per_customer"]["sections"] >= 1
    assert erasure["erase_ms"]["p50"] > 0 and erasure["find_plaintext"]["mb_per_s"] > 0
