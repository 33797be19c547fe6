"""Try something new (seed item 5, "Nudge me a smidgen"): a customer who keeps buying
the same brand, or the same product, is shown that there is more to choose from.

When an order makes ``repeat_orders`` orders holding the same brand (or, for lines
without a brand, the same product), the customer is nudged once about it: the payload
names the brand or product and its category, for the receiver to pick alternatives.
A brand is nudged once in the customer's life, and so is a product.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated

import msgspec

from profilestore.events import OrderPlaced
from profilestore.trigger import Decision, Fire, ProfileView, Trigger


class Settings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    repeat_orders: Annotated[int, msgspec.Meta(ge=2, le=100)] = 3


def decide(
    event: OrderPlaced, profile: ProfileView, now: dt.datetime, settings: Settings
) -> Decision:
    orders = profile.section("orders")
    placed = [o.order_id for o in orders.recent]
    if event.order_id not in placed:
        return None
    upto = orders.recent[: placed.index(event.order_id) + 1]
    for line in event.items:
        if line.brand:
            holding = [o for o in upto if any(i.brand == line.brand for i in o.items)]
            what, key = {"brand": line.brand}, f"brand:{line.brand.casefold()}"
        else:
            holding = [o for o in upto if any(i.sku == line.sku for i in o.items)]
            what, key = {"product": line.name or line.sku}, f"sku:{line.sku}"
        if len(holding) == settings.repeat_orders:
            return Fire(
                payload={
                    "first_name": profile.section("attributes").first_name,
                    **what,
                    "category": line.category,
                },
                dedupe_key=key,
            )
    return None


TRIGGER = Trigger(
    name="try_new",
    reads=(OrderPlaced,),
    channel="email",
    purpose="marketing",
    transactional=False,
    decide=decide,
    description="a nudge towards alternatives for a brand or product bought again and again",
    needs=("orders", "attributes"),
    settings=Settings,
)
