"""The catalogue's bounds: every number and text is limited, the same way on every path,
and events stored before a bound still read back."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from typing import Any

import msgspec
import pytest

from profilestore.config import Settings
from profilestore.errors import InvalidEvent
from profilestore.events import (
    EVENT_TYPES,
    MONEY_MAX,
    SAFE_INTEGER,
    OrderLine,
    OrderPlaced,
    PreferenceSet,
)
from profilestore.mapper import lenient_type
from profilestore.store import ProfileStore, open_store

NOW = dt.datetime(2026, 11, 23, 9, 30, tzinfo=dt.UTC)
ENVELOPE = {"customer_id": "ann", "occurred_at": "2026-01-01T10:00:00Z"}


def cart_item(**changes: Any) -> dict[str, Any]:
    return {
        "type": "cart.item_added",
        "event_id": "e1",
        **ENVELOPE,
        "cart_id": "k1",
        "sku": "SKU-1",
        "unit_price": "9.99",
        "currency": "EUR",
        **changes,
    }


def order(event_id: str = "o1", customer_id: str = "ann", **changes: Any) -> dict[str, Any]:
    return {
        "type": "order.placed",
        "event_id": event_id,
        **ENVELOPE,
        "customer_id": customer_id,
        "order_id": event_id,
        "items": [{"sku": "S", "unit_price": "5"}],
        "total": "5",
        "currency": "EUR",
        **changes,
    }


def preference(value: Any) -> dict[str, Any]:
    return {"type": "profile.preference_set", "event_id": "p1", **ENVELOPE, "key": "k"} | {
        "value": value
    }


@pytest.fixture
def store(settings: Settings) -> Any:
    with open_store(settings, clock=lambda: NOW) as opened:
        yield opened


def rejected(store: ProfileStore, item: Any) -> InvalidEvent:
    with pytest.raises(InvalidEvent) as raised:
        store.append([item])
    assert store.head() == 0
    return raised.value


OUT_OF_BOUNDS = [
    pytest.param(cart_item(unit_price="1E+1000000"), "$.unit_price", "from 0 to", id="huge-amount"),
    pytest.param(cart_item(unit_price="1E+400"), "$.unit_price", "from 0 to", id="1E+400"),
    pytest.param(cart_item(unit_price="1000000000000.0001"), "$.unit_price", "from 0", id="max+"),
    pytest.param(cart_item(unit_price="0.00001"), "$.unit_price", "4 decimal places", id="scale"),
    pytest.param(cart_item(unit_price="NaN"), "$.unit_price", "from 0 to", id="nan"),
    pytest.param(order(total="9E+999999"), "$.total", "from 0 to", id="total"),
    pytest.param(
        order(items=[{"sku": "S", "unit_price": "1e13"}]), "$.items[0]", "unit_price", id="line"
    ),
    pytest.param(
        {"type": "order.returned", "event_id": "r", **ENVELOPE, "order_id": "o"}
        | {"amount_refunded": "1e13"},
        "$.amount_refunded",
        "from 0 to",
        id="refund",
    ),
    pytest.param(
        {"type": "browse.product_viewed", "event_id": "v", **ENVELOPE, "sku": "S"}
        | {"price": "0.123456"},
        "$.price",
        "decimal places",
        id="price",
    ),
    pytest.param(
        {"type": "browse.searched", "event_id": "s", **ENVELOPE, "query": "q"}
        | {"results": 10**10},
        "$.results",
        "<= 1000000000",
        id="results",
    ),
    pytest.param(preference("x" * 513), "$.value", "length <= 512", id="preference-text"),
    pytest.param(preference(SAFE_INTEGER + 1), "$.value", "<= 9007199254740991", id="int"),
    pytest.param(preference(10**30), "$.value", "<= 9007199254740991", id="bigint"),
    pytest.param(preference(1e300), "$.value", "<= 1000000000000000.0", id="float"),
]


@pytest.mark.parametrize(("item", "path", "reason"), OUT_OF_BOUNDS)
def test_out_of_bounds_numbers_and_texts_are_refused_naming_field_and_reason(
    store: ProfileStore, item: dict[str, Any], path: str, reason: str
) -> None:
    as_dict = rejected(store, item)
    assert (as_dict.path, as_dict.index) == (path, 0)
    assert reason in as_dict.reason
    # The CLI and the HTTP API hand JSON to the same validator: same answer.
    as_json = rejected(store, json.dumps(item).encode())
    assert (as_json.path, as_json.reason) == (as_dict.path, as_dict.reason)


def test_a_json_number_literal_out_of_float_range_is_refused_not_stored(
    store: ProfileStore,
) -> None:
    # `1e400` decodes exactly into a Decimal: it used to be stored as "1E+400".
    line = json.dumps(cart_item()).replace('"9.99"', "1e400").encode()
    error = rejected(store, line)
    assert error.path == "$.unit_price"


def test_structs_built_in_python_get_the_same_bounds(store: ProfileStore) -> None:
    event = PreferenceSet(
        event_id="p", customer_id="ann", occurred_at=NOW, key="k", value="x" * 10_000
    )
    assert rejected(store, event).path == "$.value"
    with pytest.raises(ValueError, match="from 0 to"):
        OrderLine(sku="S", unit_price=MONEY_MAX + 1)
    with pytest.raises(InvalidEvent):
        store.append([{**preference(float("inf"))}])


@pytest.mark.parametrize(
    "item",
    [
        pytest.param(cart_item(unit_price=str(MONEY_MAX)), id="max"),
        pytest.param(cart_item(unit_price="0.0001"), id="smallest"),
        pytest.param(cart_item(unit_price="9.990000"), id="trailing-zeros"),
        pytest.param(cart_item(unit_price=9.99), id="float"),
        pytest.param(preference("x" * 512), id="text-max"),
        pytest.param(preference(-SAFE_INTEGER), id="int-min"),
        pytest.param(preference(-1e15), id="float-min"),
    ],
)
def test_values_at_the_bounds_are_accepted(store: ProfileStore, item: dict[str, Any]) -> None:
    assert store.append([item]).appended == 1


def test_events_stored_before_a_bound_read_back_and_poison_only_their_customer(
    store: ProfileStore,
) -> None:
    # What an older profilestore accepted: two orders whose totals overflow when added.
    old = lenient_type(OrderPlaced)
    stored = [
        msgspec.convert(order(f"o{i}", "bob", total="9E+999999") | {"recorded_at": NOW}, old)
        for i in (1, 2)
    ]
    store._log.append(stored)
    store.append([order("a1", "ann")])
    history = store.history("bob")
    assert [type(e) for e in history] == [old, old]
    assert isinstance(history[0], OrderPlaced)
    assert history[0].total == Decimal("9E+999999")
    report = store.refresh(["orders"])
    assert report.dead_letters == {"orders": 1}
    assert store.profile("ann", ["orders"]).sections["orders"].order_count == 1
    (letter,) = store.dead_letters("orders")
    assert (letter.customer_id, letter.event_id) == ("bob", "o2")
    # A Python caller copying history into a store gets today's bounds.
    with pytest.raises(InvalidEvent):
        store.append([msgspec.structs.replace(history[0], event_id="copy")])


def test_every_event_type_is_bounded_everywhere() -> None:
    # A new field without a bound fails here: every str has a max_length or pattern, every
    # int/float a range; Decimals are the amounts _check_money bounds.
    unbounded: list[str] = []

    def walk(where: str, info: msgspec.inspect.Type) -> None:
        if isinstance(info, msgspec.inspect.StrType):
            if info.max_length is None and info.pattern is None:
                unbounded.append(where)
        elif isinstance(info, msgspec.inspect.IntType | msgspec.inspect.FloatType):
            if (info.ge, info.gt) == (None, None) or (info.le, info.lt) == (None, None):
                unbounded.append(where)
        elif isinstance(info, msgspec.inspect.UnionType):
            for member in info.types:
                walk(where, member)
        elif isinstance(info, msgspec.inspect.StructType):
            for field in info.fields:
                walk(f"{where}.{field.name}", field.type)
        elif isinstance(info, msgspec.inspect.DictType):
            if info.max_length is None:
                unbounded.append(where)
            walk(f"{where}{{key}}", info.key_type)
            walk(f"{where}{{}}", info.value_type)
        elif isinstance(info, msgspec.inspect.ListType | msgspec.inspect.VarTupleType):
            if info.max_length is None:
                unbounded.append(where)
            walk(f"{where}[]", info.item_type)

    for name, cls in EVENT_TYPES.items():
        walk(name, msgspec.inspect.type_info(cls))
    assert unbounded == []
