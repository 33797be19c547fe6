"""What the trigger engine and the courier did in this process, counted for ``/metrics``.

The counts live in memory (a Prometheus counter is per process by nature): the API
exports those of the process it runs in, so ``profilestore serve`` (API and worker in one
process, the default) shows the engine's and the courier's work; the durable record of
every outcome is in the store (``profilestore triggers log``, ``outbox list``).
"""

from __future__ import annotations

import threading
from collections import Counter


class Tally:
    """Thread-safe counts by labels."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[tuple[str, ...]] = Counter()

    def outcome(self, trigger: str, status: str, reason: str | None) -> None:
        self._add(("outcome", trigger, status, reason or ""))

    def delivery(self, trigger: str, result: str) -> None:
        self._add(("delivery", trigger, result))

    def _add(self, labels: tuple[str, ...]) -> None:
        with self._lock:
            self._counts[labels] += 1

    def outcomes(self) -> dict[tuple[str, str, str], int]:
        """(trigger, status, reason code) -> count."""
        with self._lock:
            return {(k[1], k[2], k[3]): n for k, n in self._counts.items() if k[0] == "outcome"}

    def deliveries(self) -> dict[tuple[str, str], int]:
        """(trigger, delivered | retried | dead) -> count."""
        with self._lock:
            return {(k[1], k[2]): n for k, n in self._counts.items() if k[0] == "delivery"}
