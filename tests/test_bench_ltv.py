"""bench/ltv.py runs end to end at a tiny scale and writes what it promises."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import ltv as bench_ltv

pytestmark = pytest.mark.slow


def test_the_ltv_bench_fits_scores_and_ranks_every_size_and_judges_its_targets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(bench_ltv.MODES, "quick", {"sizes": [3_000, 6_000]})
    output = tmp_path / "ltv.json"
    assert bench_ltv.main(["--quick", "--output", str(output)]) == 0

    written = json.loads(output.read_text(encoding="utf-8"))
    assert set(written["details"]["sizes"]) == {"3000", "6000"}
    assert written["customers"] == 6_000
    assert set(written["targets"]) == set(bench_ltv.TARGETS)
    assert written["purchases_busier_vs_base"] > 1.5
    largest = written["details"]["sizes"]["6000"]
    assert largest["fit"]["purchases"]["diagnostics"]["converged"]
    assert largest["ranking"]["totals"]["actual_spend"] > 0
    assert written["spearman_ours"] > written["spearman_naive_past_spend"]
