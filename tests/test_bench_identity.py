"""bench/identity.py runs end to end at a tiny scale, and its population links as designed."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import pytest
from conftest import run_bench_quick

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import identity
from profilestore.events import IdentifierLinked, IdentifierSeen

pytestmark = pytest.mark.slow

TINY = {
    "customers": 300,
    "events_per_customer": 10,
    "merges": 2,
    "lookup_samples": 40,
    "lookup_rounds": 1,
    "resolve_rounds": 2,
}


def test_pair_customers_share_no_identifier_with_each_other() -> None:
    sources = identity.pair_sources()
    pairs, events = identity.pairs_of("link", 3, sources)
    holders: dict[str, set[str]] = {}
    for event in events:
        if isinstance(event, IdentifierSeen | IdentifierLinked):
            holders.setdefault(event.lookup_key, set()).add(event.customer_id)
    assert all(len(keys) == 1 for keys in holders.values())
    per_key = Counter(e.customer_id for e in events)
    assert per_key == {k: identity.PAIR_EVENTS for p in pairs for k in (p.a, p.b)}
    assert all(mark in holders for p in pairs for mark in p.marks)


def test_the_bench_measures_merges_lookups_and_a_resolved_population(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(identity.MODES, "quick", TINY)
    written = run_bench_quick(identity.main, tmp_path, "identity")
    assert set(written["targets"]) == set(identity.TARGETS)
    assert all(isinstance(t["pass"], bool) for t in written["targets"].values())
    for figure in ("merge_link_p99_ms", "merge_follower_p99_ms", "merge_refold_floor_p50_ms"):
        assert written[figure] > 0
    assert written["lookup_merged_vs_unmerged"] > 0 and written["resolve_events_per_s"] > 0

    graph = written["details"]["graph"]
    patterns = graph["patterns"]
    # Every anonymous visit later identified, and every second key, ends in one profile...
    for name in ("anonymous_then_login", "second_key", "anonymous_and_second_key"):
        assert set(patterns[name]["groups_by_profiles_they_form"]) == {"1"}, name
    # ...placeholders link nobody and never enter the graph; the cap holds.
    assert patterns["anonymous_placeholder_key"]["groups_by_profiles_they_form"] == {
        str(1): patterns["anonymous_placeholder_key"]["groups"]
    }
    assert graph["placeholder_identifiers_in_graph"] == 0
    assert graph["links_on_placeholder_evidence"] == 0
    assert max(int(size) for size in graph["clusters_by_size"]) <= 20
    assert {"shared-device", "shared-email"} <= set(graph["links_made_by_rule"])
    assert any("shared by more than" in reason for reason in graph["links_refused_by_reason"])

    merges = written["details"]["merges"]
    for case in ("link_population", "link_pairs_only", "follower_population"):
        assert merges[case]["merges"] == TINY["merges"]
        assert merges[case]["per_merge"]["apply_identity (regroup passes)"]["calls"] >= 1
    lookups = written["details"]["lookups"]
    for name in ("id", "get_raw", "resolve", "find", "afind_raw"):
        assert lookups[f"{name}_merged"]["n"] == lookups[f"{name}_unmerged"]["n"] > 0
    assert not (tmp_path / "work" / "no_rules-0").exists()  # the rules-off copies are removed
