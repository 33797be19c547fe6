"""`ProfileStore.history_page` with filters: the timeline's read (type, when it occurred)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import msgspec
import pytest

from profilestore import open_store
from profilestore.config import Settings
from profilestore.errors import CustomerNotFound, InvalidArgument

DAY = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)


def _events() -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    for i in range(30):  # a page view a day, and an order every tenth day
        at = (DAY + dt.timedelta(days=i, hours=12)).isoformat()
        events.append(
            {
                "type": "browse.page_viewed",
                "event_id": f"v{i}",
                "customer_id": "c",
                "occurred_at": at,
                "url": f"/p/{i}",
            }
        )
        if i % 10 == 0:
            events.append(
                {
                    "type": "order.placed",
                    "event_id": f"o{i}",
                    "customer_id": "c",
                    "occurred_at": at,
                    "order_id": f"A{i}",
                    "total": "1",
                    "currency": "EUR",
                    "items": [{"sku": "s", "unit_price": "1"}],
                }
            )
    return events


def _ids(page: list[msgspec.Raw]) -> list[str]:
    return [msgspec.json.decode(raw)["event_id"] for raw in page]


def test_types_and_days_filter_and_pages_continue_after_the_last_match(
    settings: Settings,
) -> None:
    with open_store(settings) as store:
        store.append(_events())
        orders, after = store.history_page("c", types=["order.placed"])
        assert _ids(orders) == ["o0", "o10", "o20"] and after is None
        since, until = DAY + dt.timedelta(days=5), DAY + dt.timedelta(days=14, hours=23)
        first, after = store.history_page(
            "c",
            limit=4,
            types=["browse.page_viewed"],
            occurred_since=since,
            occurred_until=until,
        )
        assert _ids(first) == ["v5", "v6", "v7", "v8"] and after is not None
        rest, last = store.history_page(
            "c",
            after=after,
            limit=10,
            types=["browse.page_viewed"],
            occurred_since=since,
            occurred_until=until,
        )
        assert _ids(rest) == ["v9", "v10", "v11", "v12", "v13", "v14"] and last is None
        # Dates alone, across both types; a filter far from every event: an empty page.
        both, _ = store.history_page("c", occurred_since=DAY + dt.timedelta(days=20), limit=3)
        assert _ids(both) == ["v20", "o20", "v21"]
        none, after = store.history_page("c", occurred_since=DAY + dt.timedelta(days=400))
        assert none == [] and after is None


def test_unfiltered_pages_are_unchanged(settings: Settings) -> None:
    with open_store(settings) as store:
        store.append(_events())
        seen: list[str] = []
        after: int | None = 0
        while after is not None:
            page, after = store.history_page("c", after=after, limit=7)
            seen += _ids(page)
        assert seen == [e["event_id"] for e in _events()]


def test_an_unknown_type_is_refused_naming_the_field_and_nobody_is_not_found(
    settings: Settings,
) -> None:
    with open_store(settings) as store:
        store.append(_events())
        with pytest.raises(InvalidArgument) as refused:
            store.history_page("c", types=["order.shipped"])
        assert refused.value.field == "types"
        with pytest.raises(CustomerNotFound):
            store.history_page("nobody", types=["order.placed"])
