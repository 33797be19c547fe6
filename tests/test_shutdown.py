"""Closing a store while requests and background refreshes are in flight never crashes.

A sqlite3 connection (read through a memory map) closed by one thread while another is
inside it takes the process down with SIGSEGV, so these tests fail by crashing pytest
rather than by an assertion: run under ``python -X faulthandler`` to see where.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest
from litestar.testing import TestClient

from profilestore.api import create_app
from profilestore.config import ApiSettings, Settings, load_settings
from profilestore.errors import CustomerNotFound, IdentifierNotFound, StoreClosed
from profilestore.follower import Follower
from profilestore.population import generate
from profilestore.store import ProfileStore, open_store

CYCLES = 50
EVENTS = list(generate(20, seed=3, events_per_customer=8))


def fast_settings(home: Path) -> Settings:
    settings = load_settings(environ={}, home=str(home))
    api = msgspec.structs.replace(ApiSettings(), freshness_interval_ms=1, anonymous_scopes=["read"])
    return msgspec.structs.replace(settings, api=api)


def read_until_closed(store: ProfileStore, stop: threading.Event, outcomes: list[str]) -> None:
    """Read every way there is until the store refuses; record how each call ended."""
    calls: list[Any] = [
        lambda: store.profile_raw("cust-0000001"),
        lambda: store.find("device", "nobody"),
        store.freshness,
        store.status,
        lambda: store.history("cust-0000002"),
        lambda: asyncio.run(store.aprofile_raw("cust-0000003")),
    ]
    turn = 0
    while not stop.is_set():
        try:
            calls[turn % len(calls)]()
        except StoreClosed:
            outcomes.append("closed")
            return
        except (CustomerNotFound, IdentifierNotFound):
            pass
        turn += 1
    outcomes.append("stopped")


def test_start_load_and_shut_down_many_times_with_readers_and_refreshes_running(
    tmp_path: Path,
) -> None:
    for cycle in range(CYCLES):
        store = open_store(fast_settings(tmp_path / "home"))
        store.append(EVENTS)  # duplicates after the first cycle: a read-and-skip
        store.refresh()  # every dataset has its documents before the readers start
        stop = threading.Event()
        outcomes: list[str] = []
        readers = [
            threading.Thread(target=read_until_closed, args=(store, stop, outcomes))
            for _ in range(3)
        ]
        follower = Follower(store, ["carts", "identities"], poll_s=0.001)
        with TestClient(create_app(store)) as client:
            follower.start()
            for reader in readers:
                reader.start()
            store.refresh(["orders"])
            assert client.get("/v1/profiles/cust-0000001").status_code == 200
            time.sleep(0.005 * (cycle % 4))  # close at different points of the readers' work
        follower.stop()
        store.close()  # the readers are still reading: they must get StoreClosed
        for reader in readers:
            reader.join(10)
        stop.set()
        assert outcomes == ["closed"] * 3
        assert store.closed


def test_calls_after_close_get_a_clear_error(settings: Settings) -> None:
    store = open_store(settings)
    store.append(EVENTS[:5])
    store.refresh()
    store.close()
    store.close()  # twice is harmless
    for call in (
        lambda: store.profile("cust-0000000"),
        lambda: store.profile_raw("cust-0000000"),
        lambda: store.find("email", "a@example.com"),
        lambda: store.append(EVENTS[5:6]),
        store.refresh,
        store.status,
        store.ready,
    ):
        with pytest.raises(StoreClosed, match="closed"):
            call()
    with pytest.raises(StoreClosed):
        asyncio.run(store.aprofile_raw("cust-0000000"))


def test_close_waits_for_a_call_in_flight(settings: Settings) -> None:
    store = open_store(settings)
    store.append(EVENTS)
    entered, release = threading.Event(), threading.Event()
    projection = store._projections["identities"]

    def slow_fold(section: Any, event: Any) -> Any:
        entered.set()
        release.wait(10)
        return projection.fold(section, event)

    store._projections["identities"] = dataclasses.replace(projection, fold=slow_fold)
    refreshing = threading.Thread(target=store.refresh, args=(["identities"],))
    refreshing.start()
    assert entered.wait(10)
    closing = threading.Thread(target=store.close)
    closing.start()
    time.sleep(0.1)
    assert closing.is_alive(), "close must wait for the refresh in flight"
    with pytest.raises(StoreClosed):
        store.profile("cust-0000000")  # new calls are refused meanwhile
    release.set()
    refreshing.join(10)
    closing.join(10)
    assert not closing.is_alive()
