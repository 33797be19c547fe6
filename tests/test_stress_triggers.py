"""The trigger engine and the courier killed with SIGKILL at random moments while events
and deliveries flow to a real receiver: every message arrives, once after the receiver's
dedupe by webhook-id, and none in quiet hours or without consent.

Marked ``stress`` (outside the default run; ``scripts/test`` runs it). It is
``bench/trigger_engine.py``'s chaos part with fewer trials (``PROFILESTORE_TEST_STRESS_TRIALS``
sets how many; 10 by default).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import trigger_engine as triggers

pytestmark = pytest.mark.stress

TRIALS = int(os.environ.get("PROFILESTORE_TEST_TRIGGER_TRIALS", "10"))


def test_workers_killed_at_random_moments_lose_nothing_and_send_nothing_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(triggers.REPO)  # the default settings and projections
    mode = {**triggers.MODES["quick"], "trials": TRIALS, "kill_within_s": 1.0}
    receiver = triggers.spawn("receiver", {})
    try:
        url = triggers.read_json_line(receiver, "receiver child")["url"]
        outcome = triggers.chaos(tmp_path, mode, receiver, url)
    finally:
        triggers.finish(receiver)
    assert outcome["trials"] == TRIALS
    assert outcome["expected_messages"] > 0
    assert outcome["received_distinct"] == outcome["expected_messages"]
    assert outcome["lost"] == 0
    assert outcome["unexpected"] == 0
    assert outcome["duplicated_after_dedupe"] == 0
    assert outcome["sent_in_quiet_hours"] == 0
    assert outcome["sent_without_consent"] == 0
    assert outcome["rejected_signatures"] == 0  # a request cut short by a kill is not one
    assert outcome["dead_letters"] == 0
