"""bench/privacy.py runs end to end at a tiny scale and reports every figure."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from conftest import run_bench_quick

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import privacy

pytestmark = pytest.mark.slow

TINY = {
    "ingest_customers": 60,
    "ingest_per_customer": 14,
    "ingest_rounds": 1,
    "postgres_customers": 30,
    "store_customers": 40,
    "store_per_customer": 14,
    "whales": 1,
    "rebuild_customers": 40,
    "rebuild_per_customer": 14,
    "rebuild_rounds": 1,
}


def test_the_bench_compares_privacy_with_its_alternatives(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(privacy.MODES, "quick", TINY)
    monkeypatch.setattr(privacy, "WHALE_EVENTS", 60)
    written = run_bench_quick(privacy.main, tmp_path, "privacy")
    assert set(written["targets"]) == set(privacy.TARGETS)
    assert all(t["pass"] in (True, False, None) for t in written["targets"].values())
    ingest = written["ingest_sqlite"]
    assert ingest["encrypted_events_per_s"] > 0 and ingest["plain_events_per_s"] > 0
    assert ingest["encrypted_vs_plain"] > 0
    assert written["ingest_sqlite_uuid_ids"]["encrypted_vs_plain"] > 0
    forget = written["forget"]
    assert forget["receipt"]["events_forgotten"] == 60
    # Nothing readable is left (a stale copy of a row moved by a page split once was:
    # forget now compacts the document file when its first search finds one).
    assert forget["receipt"]["found"] == 0 and forget["receipt"]["chain_intact"]
    assert forget["receipt"]["bytes_searched"] > 0
    assert forget["split_s"]["plaintext_search"] > 0 and forget["split_s"]["sum"] > 0
    rebuild = written["rebuild"]
    assert rebuild["forgotten_customers"] == 4
    assert rebuild["verify_checked"]["intact"] == 40
    assert rebuild["verify_checked"]["forgotten"] == 36 + 1  # and the receipts' stream
    assert rebuild["rebuild_forgotten_vs_intact"] > 0 and rebuild["verify_forgotten_vs_intact"] > 0
