"""The shipped triggers' decisions, as pure functions of (event, profile, now, settings)."""

from __future__ import annotations

import datetime as dt
import itertools
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import msgspec

from profilestore.config import load_settings
from profilestore.events import AnyEvent, Event
from profilestore.store import load_projections
from profilestore.trigger import Fire, ProfileView, Wait

PROJECTIONS = load_projections(load_settings(environ={}))
NOW = dt.datetime(2026, 3, 2, 12, 0, tzinfo=dt.UTC)
_IDS = itertools.count(1)


def event(**fields: Any) -> Event:
    base = {"event_id": f"e{next(_IDS)}", "customer_id": "ann", "occurred_at": NOW.isoformat()}
    decoded: Event = msgspec.convert(base | fields, AnyEvent)
    return decoded


def placed(order_id: str, total: str = "100", currency: str = "EUR", **line: Any) -> Event:
    return event(
        type="order.placed",
        order_id=order_id,
        items=[{"sku": line.pop("sku", "S1"), "unit_price": total, **line}],
        total=total,
        currency=currency,
    )


def profile(*events: Event) -> ProfileView:
    """The profile those events fold into, every dataset."""
    sections = {name: p.empty() for name, p in PROJECTIONS.items()}
    for folded in events:
        for name, projection in PROJECTIONS.items():
            if type(folded) in projection.reads:
                sections[name] = projection.fold(sections[name], folded)
    return ProfileView("ann", ("ann",), sections, ZoneInfo("UTC"))


# --- loyalty (8) ------------------------------------------------------------------------------


def test_loyalty_thanks_the_order_that_reaches_a_count_threshold() -> None:
    from triggers.loyalty import Settings, decide

    orders = [placed(f"O{i}", "10") for i in range(1, 7)]
    seen = profile(*orders)  # a section already past the orders decided
    decisions = [decide(o, seen, NOW, Settings()) for o in orders]  # type: ignore[arg-type]
    assert [d.dedupe_key if d else None for d in decisions] == [
        None,
        None,
        None,
        None,
        "orders:5",
        None,
    ]
    fifth = decisions[4]
    assert isinstance(fifth, Fire) and fifth.payload["orders"] == 5


def test_loyalty_thanks_spend_crossing_a_threshold_in_the_orders_currency() -> None:
    from triggers.loyalty import Settings, decide

    first, second = placed("O1", "400"), placed("O2", "250")
    seen = profile(first, second)
    assert decide(first, seen, NOW, Settings()) is None  # type: ignore[arg-type]
    thanks = decide(second, seen, NOW, Settings())  # type: ignore[arg-type]
    assert isinstance(thanks, Fire)
    assert thanks.dedupe_key == "spend:EUR:500"
    assert thanks.payload["tier"] == "500 EUR"
    assert (
        decide(placed("O3", "900", "GBP"), profile(placed("O3", "900", "GBP")), NOW, Settings())
        is None
    )  # type: ignore[arg-type]


# --- introductory offer (2) --------------------------------------------------------------------


def test_an_intro_offer_waits_then_goes_to_a_customer_without_orders_only() -> None:
    from triggers.intro_offer import Settings, decide

    signed = event(type="identifier.linked", kind="email", value="ann@example.com")
    waiting = decide(signed, profile(signed), NOW, Settings())
    assert waiting == Wait(until=NOW + dt.timedelta(days=7), dedupe_key="intro")
    later = NOW + dt.timedelta(days=7)
    offer = decide(signed, profile(signed), later, Settings())
    assert isinstance(offer, Fire) and offer.dedupe_key == "intro"
    assert offer.payload["discount_percent"] == 10
    assert decide(signed, profile(signed, placed("O1")), later, Settings()) is None
    device = event(type="identifier.linked", kind="device", value="d-1")
    assert decide(device, profile(device), NOW, Settings()) is None


def test_an_intro_offer_cannot_be_configured_immodest() -> None:
    import pytest

    from triggers.intro_offer import Settings

    with pytest.raises(msgspec.ValidationError, match="<= 20"):
        msgspec.convert({"discount_percent": 50}, Settings)


def test_amounts_in_payloads_are_decimals_rendered_exactly() -> None:
    from triggers.receipt import decide

    order = placed("O1", "19.90")
    receipt = decide(order, profile(order), NOW, None)  # type: ignore[arg-type]
    assert isinstance(receipt, Fire)
    assert receipt.payload["total"] == Decimal("19.90")
    assert msgspec.to_builtins(receipt.payload)["total"] == "19.90"


# --- cross-sell (4) ----------------------------------------------------------------------------


def test_cross_sell_waits_then_suggests_what_goes_with_the_category_bought_most() -> None:
    from triggers.cross_sell import Settings, decide

    bedding = placed("O1", "80", category="Bedding", sku="B1", quantity=2)
    viewed = event(type="browse.product_viewed", sku="R1", category="rugs")
    rug = placed("O0", "40", sku="R1")  # no category on the line: the view names it
    seen = profile(viewed, rug, bedding)
    assert decide(bedding, seen, NOW, Settings()) == Wait(  # type: ignore[arg-type]
        until=NOW + dt.timedelta(days=3), dedupe_key="order:O1"
    )
    later = NOW + dt.timedelta(days=3)
    suggestion = decide(bedding, seen, later, Settings())  # type: ignore[arg-type]
    assert isinstance(suggestion, Fire)
    assert suggestion.payload["category"] == "bedding"
    assert suggestion.payload["categories"] == ["window treatments", "bath accessories"]
    cancelled = event(type="order.cancelled", order_id="O1")
    assert decide(bedding, profile(viewed, rug, bedding, cancelled), later, Settings()) is None  # type: ignore[arg-type]


# --- try something new (5) ---------------------------------------------------------------------


def test_the_third_order_of_the_same_brand_is_nudged_once() -> None:
    from triggers.try_new import Settings, decide

    orders = [placed(f"O{i}", "20", brand="Crocs", category="shoes", sku=f"C{i}") for i in range(4)]
    seen = profile(*orders)
    decisions = [decide(o, seen, NOW, Settings()) for o in orders]  # type: ignore[arg-type]
    assert [d.dedupe_key if d else None for d in decisions] == [None, None, "brand:crocs", None]
    third = decisions[2]
    assert isinstance(third, Fire)
    assert third.payload == {"first_name": None, "brand": "Crocs", "category": "shoes"}


def test_the_same_product_without_a_brand_is_nudged_too() -> None:
    from triggers.try_new import Settings, decide

    orders = [placed(f"O{i}", "5", sku="TEA", name="green tea") for i in range(3)]
    nudge = decide(orders[2], profile(*orders), NOW, Settings())  # type: ignore[arg-type]
    assert isinstance(nudge, Fire) and nudge.payload["product"] == "green tea"
    assert nudge.dedupe_key == "sku:TEA"


# --- reminders (7) -----------------------------------------------------------------------------


def test_reminders_come_at_each_offset_and_follow_the_occasion() -> None:
    from triggers.reminders import Settings, decide

    starts = NOW + dt.timedelta(days=10)
    shown = event(
        type="interest.shown",
        occasion_id="sale-1",
        title="Spring sale",
        starts_at=starts.isoformat(),
    )
    seen = profile(shown)
    week = starts - dt.timedelta(days=7)
    assert decide(shown, seen, NOW, Settings()) == Wait(until=week, dedupe_key="sale-1:7d")
    first = decide(shown, seen, week, Settings())
    assert isinstance(first, Fire) and first.dedupe_key == "sale-1:7d"
    assert first.payload["days_before"] == 7 and first.payload["title"] == "Spring sale"
    assert first.then == Wait(until=starts - dt.timedelta(days=1), dedupe_key="sale-1:1d")
    last = decide(shown, seen, starts - dt.timedelta(days=1), Settings())
    assert isinstance(last, Fire) and last.then is None
    assert decide(shown, seen, starts, Settings()) is None
    moved = event(
        type="interest.shown",
        occasion_id="sale-1",
        title="Spring sale",
        starts_at=(starts + dt.timedelta(days=2)).isoformat(),
    )
    assert decide(shown, profile(shown, moved), week, Settings()) == Wait(
        until=week + dt.timedelta(days=2), dedupe_key="sale-1:7d"
    )
    withdrawn = event(type="interest.withdrawn", occasion_id="sale-1")
    assert decide(shown, profile(shown, withdrawn), week, Settings()) is None


def test_a_reminder_long_past_is_skipped_for_the_next() -> None:
    from triggers.reminders import Settings, decide

    starts = NOW + dt.timedelta(days=3)
    shown = event(
        type="interest.shown", occasion_id="gig", title="Gig", starts_at=starts.isoformat()
    )
    assert decide(shown, profile(shown), NOW, Settings()) == Wait(
        until=starts - dt.timedelta(days=1), dedupe_key="gig:1d"
    )
