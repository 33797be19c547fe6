"""The garbage collector relaxed during passes over the log, and put back after."""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from profilestore import pipeline
from profilestore import store as store_module
from profilestore.collection import BULK_THRESHOLD, bulk_collection
from profilestore.config import Settings
from profilestore.population import generate
from profilestore.store import open_store


@pytest.fixture(autouse=True)
def collector() -> Iterator[None]:
    """Every test starts from CPython's defaults and leaves the collector as it found it."""
    saved, enabled = gc.get_threshold(), gc.isenabled()
    gc.set_threshold(700, 10, 10)
    gc.enable()
    yield
    gc.set_threshold(*saved)
    if not enabled:
        gc.disable()


def test_a_pass_raises_the_first_threshold_and_puts_all_three_back() -> None:
    gc.set_threshold(700, 11, 12)
    with bulk_collection():
        assert gc.get_threshold() == (BULK_THRESHOLD, 11, 12)
        assert gc.isenabled()
    assert gc.get_threshold() == (700, 11, 12)


def test_nested_passes_restore_when_the_outermost_ends() -> None:
    with bulk_collection():
        with bulk_collection():
            assert gc.get_threshold()[0] == BULK_THRESHOLD
        assert gc.get_threshold()[0] == BULK_THRESHOLD
    assert gc.get_threshold() == (700, 10, 10)


def test_the_thresholds_are_put_back_when_a_pass_raises() -> None:
    with pytest.raises(RuntimeError), bulk_collection():
        raise RuntimeError("the pass failed")
    assert gc.get_threshold() == (700, 10, 10)


def test_overlapping_passes_of_two_threads_restore_after_the_last() -> None:
    first_in, second_in, first_out = threading.Event(), threading.Event(), threading.Event()
    seen: dict[str, Any] = {}

    def first() -> None:
        with bulk_collection():
            first_in.set()
            second_in.wait(10)
        first_out.set()

    def second() -> None:
        first_in.wait(10)
        with bulk_collection():
            second_in.set()
            first_out.wait(10)
            seen["after the first left"] = gc.get_threshold()[0]

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert seen == {"after the first left": BULK_THRESHOLD}
    assert gc.get_threshold() == (700, 10, 10)


@pytest.mark.parametrize(
    ("thresholds", "enabled"),
    [((700, 10, 10), False), ((0, 10, 10), True), ((BULK_THRESHOLD * 2, 5, 5), True)],
    ids=["disabled", "threshold-0", "tuned-higher"],
)
def test_a_collector_the_process_tuned_itself_is_left_alone(
    thresholds: tuple[int, int, int], enabled: bool
) -> None:
    gc.set_threshold(*thresholds)
    if not enabled:
        gc.disable()
    with bulk_collection():
        assert gc.get_threshold() == thresholds
        assert gc.isenabled() is enabled
    assert gc.get_threshold() == thresholds
    assert gc.isenabled() is enabled


def test_thresholds_set_during_a_pass_stand_after_it() -> None:
    with bulk_collection():
        gc.set_threshold(5_000, 10, 10)
    assert gc.get_threshold() == (5_000, 10, 10)


def test_every_run_of_the_consumer_loop_is_a_relaxed_pass(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[str, int]] = []
    run = pipeline.Consumer._run

    def recording(self: pipeline.Consumer, handler: Any, *args: Any) -> Any:
        seen.append((type(handler).__name__, gc.get_threshold()[0]))
        return run(self, handler, *args)

    monkeypatch.setattr(pipeline.Consumer, "_run", recording)
    with open_store(settings) as store:
        store.append(list(generate(5, seed=4, events_per_customer=5)))
        store.refresh()
        store.rebuild()

    assert seen
    assert {threshold for _, threshold in seen} == {BULK_THRESHOLD}
    assert {"ProjectionHandler", "RebuildHandler"} <= {name for name, _ in seen}
    assert gc.get_threshold() == (700, 10, 10)


def test_verify_refolds_in_a_relaxed_pass(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[int] = []
    verify_profiles = store_module.verify_profiles

    def recording(*args: Any, **kwargs: Any) -> Any:
        seen.append(gc.get_threshold()[0])
        return verify_profiles(*args, **kwargs)

    monkeypatch.setattr(store_module, "verify_profiles", recording)
    with open_store(settings) as store:
        store.append(list(generate(5, seed=4, events_per_customer=5)))
        store.refresh()
        report = store.verify(workers=1)

    assert report.ok
    assert report.customers_checked == 5
    assert seen == [BULK_THRESHOLD]
    assert gc.get_threshold() == (700, 10, 10)
