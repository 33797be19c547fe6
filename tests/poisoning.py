"""Poison events for tests: a dataset's fold made to fail on chosen events."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from profilestore.store import ProfileStore


def poison(store: ProfileStore, dataset: str, event_ids: set[str]) -> Callable[[], None]:
    """Make ``dataset``'s fold fail on ``event_ids``; returns a function that cures it."""
    projection = store._projections[dataset]
    original = projection.fold

    def failing(section: Any, event: Any) -> Any:
        if event.event_id in event_ids:
            raise ValueError(f"cannot fold {event.event_id}")
        return original(section, event)

    store._projections[dataset] = dataclasses.replace(projection, fold=failing)

    def cure() -> None:
        store._projections[dataset] = projection

    return cure
