"""Loyalty thanks (seed item 8, "Offer a token of appreciation"): thanks at order-count
and spend thresholds, once per threshold.

The order that reaches a threshold fires: its place among the customer's orders (the
orders section, caught up to at least this order) says how many orders, and how much in
its currency, the customer had with it. Count thresholds come first; a spend threshold
in the order's currency is thanked when no count threshold was reached by that order.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Annotated

import msgspec

from profilestore.events import OrderPlaced
from profilestore.trigger import Decision, Fire, ProfileView, Trigger


class Settings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    orders: list[Annotated[int, msgspec.Meta(ge=1)]] = msgspec.field(
        default_factory=lambda: [5, 10, 25, 50]
    )
    """Order counts that are thanked."""
    spend: dict[str, list[Annotated[int, msgspec.Meta(ge=1)]]] = msgspec.field(
        default_factory=lambda: {"EUR": [500, 1000, 5000], "USD": [500, 1000, 5000]}
    )
    """Lifetime spend thresholds per currency."""


def decide(
    event: OrderPlaced, profile: ProfileView, now: dt.datetime, settings: Settings
) -> Decision:
    orders = profile.section("orders")
    placed = [o.order_id for o in orders.recent]
    if event.order_id not in placed:
        return None  # older than the orders kept, or folded as a duplicate
    later = orders.recent[placed.index(event.order_id) + 1 :]
    count = orders.order_count - len(later)
    first_name = profile.section("attributes").first_name
    if count in settings.orders:
        return Fire(
            payload={"first_name": first_name, "tier": f"{count} orders", "orders": count},
            dedupe_key=f"orders:{count}",
        )
    spent = next(
        (s.total for s in orders.lifetime_value if s.currency == event.currency), Decimal(0)
    )
    spent -= sum((o.total for o in later if o.currency == event.currency), Decimal(0))
    before = spent - event.total
    crossed = [t for t in settings.spend.get(event.currency, []) if before < t <= spent]
    if crossed:
        threshold = max(crossed)
        return Fire(
            payload={
                "first_name": first_name,
                "tier": f"{threshold} {event.currency}",
                "spend": threshold,
                "currency": event.currency,
            },
            dedupe_key=f"spend:{event.currency}:{threshold}",
        )
    return None


TRIGGER = Trigger(
    name="loyalty",
    reads=(OrderPlaced,),
    channel="email",
    purpose="marketing",
    transactional=False,
    decide=decide,
    description="thanks when a customer reaches an order-count or lifetime-spend threshold",
    needs=("orders", "attributes"),
    settings=Settings,
)
