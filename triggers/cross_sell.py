"""Cross-sell (seed item 4, "Spark my interest"): from what the customer bought, by
category affinity, suggest the categories that go with it.

An order waits ``delay_days`` (nobody wants an upsell with their receipt). Then, if the
order still stands (not cancelled or returned), the category the customer has bought
most across their recent orders, among those the ``related`` map knows, names the
categories to suggest, less those already bought. A line without a category takes the
one the customer saw the product under (their product views). Once per order.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from typing import Annotated

import msgspec

from profilestore.events import OrderPlaced
from profilestore.trigger import Decision, Fire, ProfileView, Trigger, Wait


def _related() -> dict[str, list[str]]:
    return {
        "bedding": ["window treatments", "rugs", "bath accessories"],
        "bath accessories": ["towels", "bedding"],
        "furniture": ["rugs", "lighting", "window treatments"],
        "kitchen": ["tableware", "kitchen accessories"],
    }


class Settings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    delay_days: Annotated[int, msgspec.Meta(ge=0, le=90)] = 3
    related: dict[str, list[str]] = msgspec.field(default_factory=_related)
    """Category (lower case) -> the categories suggested to its buyers."""


def decide(
    event: OrderPlaced, profile: ProfileView, now: dt.datetime, settings: Settings
) -> Decision:
    key = f"order:{event.order_id}"
    due = event.occurred_at + dt.timedelta(days=settings.delay_days)
    if now < due:
        return Wait(until=due, dedupe_key=key)
    orders = profile.section("orders")
    order = next((o for o in orders.recent if o.order_id == event.order_id), None)
    if order is None or order.status != "placed":
        return None
    seen = {v.sku: v.category for v in profile.section("browsing").product_views if v.category}
    bought: Counter[str] = Counter()
    for past in orders.recent:
        for line in past.items:
            category = line.category or seen.get(line.sku)
            if category:
                bought[category.casefold()] += line.quantity
    mine = {(line.category or seen.get(line.sku) or "").casefold() for line in order.items}
    ranked = [c for c, _ in bought.most_common() if c in settings.related and c in mine]
    if not ranked:
        return None
    suggested = [c for c in settings.related[ranked[0]] if c.casefold() not in bought]
    if not suggested:
        return None
    return Fire(
        payload={
            "first_name": profile.section("attributes").first_name,
            "category": ranked[0],
            "categories": suggested,
        },
        dedupe_key=key,
    )


TRIGGER = Trigger(
    name="cross_sell",
    reads=(OrderPlaced,),
    channel="email",
    purpose="marketing",
    transactional=False,
    decide=decide,
    description="after an order, the categories that go with what the customer buys most",
    needs=("orders", "browsing", "attributes"),
    settings=Settings,
)
