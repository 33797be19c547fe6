"""bench/report.py runs end to end at a tiny scale and writes what it promises."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import report

pytestmark = pytest.mark.slow


def test_the_report_measures_every_method_at_every_size_and_writes_json_markdown_and_plots(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(report, "SAMPLES", 60)
    monkeypatch.setattr(report, "BLOCK", 20)
    output = tmp_path / "results" / "report.json"
    markdown = tmp_path / "BENCHMARKS.md"
    args = ["--sizes", "120,240", "--events-per-customer", "20", "--output", str(output)]
    args += ["--markdown", str(markdown), "--workdir", str(tmp_path / "work")]
    with_postgres = bool(os.environ.get("PROFILESTORE_TEST_POSTGRES_URL"))
    if not with_postgres:
        args.append("--no-postgres")
    cwd = Path.cwd()
    try:
        assert report.main(args) == 0
    finally:
        os.chdir(cwd)  # main() works from the repository root

    written = json.loads(output.read_text(encoding="utf-8"))
    methods = {"documents", "python_api", "normalised_sqlite", "fold_on_read"}
    if with_postgres:
        methods.add("normalised_postgres")
    assert [s["customers"] for s in written["sizes"]] == [120, 240]
    for size in written["sizes"]:
        assert set(size["lookups"]) == methods
        for name in methods:
            for kind in ("by_id", "by_identifier"):
                figures = size["lookups"][name][kind]
                assert figures["n"] > 0 and 0 < figures["p50_us"] <= figures["p99_us"]
        assert size["ingest"]["events_per_s"] > 0 and size["rebuild"]["events_per_s"] > 0
        assert size["rebuild"]["peak_rss_mb"] > 0
        assert size["ratios"]["normalised_sqlite_by_id_p50"] > 0
    assert set(written["goals"]) == set(report.GOALS)
    assert all(isinstance(goal["pass"], bool) for goal in written["goals"].values())
    text = markdown.read_text(encoding="utf-8")
    assert "## 240 customers" in text and "normalised tables, SQLite" in text
    for plot in written["plots"]:
        assert Path(plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(written["plots"]) == 2
    assert not (tmp_path / "work" / "size-120").exists()  # each size's stores are removed
