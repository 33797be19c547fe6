"""bench/scores.py runs end to end at a tiny scale and writes what it promises."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import scores as bench_scores

pytestmark = pytest.mark.slow


def test_the_scores_bench_fits_scores_writes_and_ranks_every_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(bench_scores.MODES, "quick", {"sizes": [2_000, 4_000]})
    output = tmp_path / "scores.json"
    assert bench_scores.main(["--quick", "--output", str(output)]) == 0

    written = json.loads(output.read_text(encoding="utf-8"))
    assert set(written["details"]["sizes"]) == {"2000", "4000"}
    assert written["customers"] == 4_000
    assert set(written["targets"]) == set(bench_scores.TARGETS)
    assert written["orders_busier_vs_base"] > 1.5
    largest = written["details"]["sizes"]["4000"]
    assert largest["ltv"]["purchases"]["diagnostics"]["converged"]
    assert sum(largest["summary"]["value_tier"].values()) == 4_000
    assert written["spearman_ours"] > written["spearman_naive_past_spend"]
    # The promotion is a swap (renames), timed against copying the rows at the smaller size.
    assert written["promote_copy_smaller_s"] is not None and written["promote_swap_s"] >= 0
    assert largest["promote_copy_s"] is None
    assert largest["rescore_cpu_s"] > 0
    # The daily re-score under the same fit moves nobody.
    assert largest["summary"]["transitions"] == {"lifecycle": {}, "journey": {}, "value_tier": {}}
