"""The synthetic population: deterministic, valid, ordered and shaped like a shop's log."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from decimal import Decimal

import msgspec
import pytest

from profilestore.events import (
    EVENT_TYPES,
    CartItemAdded,
    CartItemRemoved,
    Event,
    IdentifierLinked,
    IdentifierSeen,
    IdentifierUnlinked,
    OrderPlaced,
    normalise_identifier,
)
from profilestore.population import DEFAULT_START, generate

CUSTOMERS = 300
IdentifierEvent = IdentifierSeen | IdentifierLinked | IdentifierUnlinked


@pytest.fixture(scope="module")
def events() -> list[Event]:
    return list(generate(CUSTOMERS))


def _encoded(events: list[Event]) -> bytes:
    return b"\n".join(msgspec.json.encode(e) for e in events)


def test_same_seed_same_events_byte_for_byte(events: list[Event]) -> None:
    assert _encoded(list(generate(CUSTOMERS))) == _encoded(events)


def test_different_seed_different_events(events: list[Event]) -> None:
    assert _encoded(list(generate(CUSTOMERS, seed=8))) != _encoded(events)


def test_every_event_round_trips(events: list[Event]) -> None:
    for event in events:
        assert msgspec.json.decode(msgspec.json.encode(event), type=type(event)) == event
        if isinstance(event, IdentifierEvent):
            assert normalise_identifier(event.kind, event.value, event.network)


def test_events_are_in_time_order_within_the_period(events: list[Event]) -> None:
    times = [e.occurred_at for e in events]
    assert times == sorted(times)
    assert times[0] >= DEFAULT_START
    assert times[-1] < DEFAULT_START + dt.timedelta(days=365)
    assert all(t.tzinfo is not None for t in times)


def test_start_and_days_bound_the_period() -> None:
    start = dt.datetime(2025, 6, 1, 12, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    events = list(generate(50, start=start, days=30))
    assert events
    assert all(start <= e.occurred_at < start + dt.timedelta(days=30) for e in events)


def test_event_ids_are_unique(events: list[Event]) -> None:
    assert len({e.event_id for e in events}) == len(events)


def test_average_events_per_customer_is_roughly_as_requested(events: list[Event]) -> None:
    assert len({e.customer_id for e in events}) == CUSTOMERS
    assert 0.75 * 40 <= len(events) / CUSTOMERS <= 1.25 * 40
    busier = sum(1 for _ in generate(100, events_per_customer=80))
    assert 0.75 * 80 <= busier / 100 <= 1.25 * 80


def test_every_event_type_occurs(events: list[Event]) -> None:
    seen = Counter(e.type_name for e in events)
    # Links between customer keys are the store's (its rules) or an operator's, not a
    # source system's: a population of sources sends none. Generic tracked events are what
    # an analytics SDK sends beyond the catalogue (see segment.py), which it does not model.
    # An erasure's receipt is the store's own record of a `forget`.
    made_elsewhere = {"identity.linked", "identity.unlinked", "activity.tracked"}
    made_elsewhere |= {"erasure.recorded"}
    assert set(EVENT_TYPES) - set(seen) == made_elsewhere


def test_orders_match_their_carts(events: list[Event]) -> None:
    carts: dict[str, dict[str, int]] = {}
    cart_currency: dict[str, str] = {}
    orders = 0
    for event in events:
        if isinstance(event, CartItemAdded):
            lines = carts.setdefault(event.cart_id, {})
            lines[event.sku] = lines.get(event.sku, 0) + event.quantity
            cart_currency[event.cart_id] = event.currency
        elif isinstance(event, CartItemRemoved):
            lines = carts[event.cart_id]
            if event.quantity is None:
                del lines[event.sku]
            else:
                lines[event.sku] -= event.quantity
        elif isinstance(event, OrderPlaced):
            orders += 1
            assert event.cart_id is not None
            assert event.cart_id in carts, "the cart precedes its order"
            assert {line.sku: line.quantity for line in event.items} == carts[event.cart_id]
            assert event.currency == cart_currency[event.cart_id]
            assert event.total == sum(
                (line.unit_price * line.quantity for line in event.items), Decimal(0)
            )
    assert orders > 0
    assert len(carts) > orders, "some carts are abandoned"


def test_identifiers_are_not_shared_between_customers(events: list[Event]) -> None:
    owner: dict[str, str] = {}
    for event in events:
        if isinstance(event, IdentifierEvent):
            key = event.lookup_key
            assert owner.setdefault(key, event.customer_id) == event.customer_id, key


def test_each_customer_uses_one_currency(events: list[Event]) -> None:
    currencies: dict[str, set[str]] = {}
    for event in events:
        if isinstance(event, CartItemAdded | OrderPlaced):
            currencies.setdefault(event.customer_id, set()).add(event.currency)
    assert currencies
    assert all(len(c) == 1 for c in currencies.values())


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        next(iter(generate(1, start=dt.datetime(2026, 1, 1))))
    with pytest.raises(ValueError, match="customers"):
        generate(-1)
    assert list(generate(0)) == []
