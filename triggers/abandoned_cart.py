"""Abandoned cart (seed item 10, "Touch base with me"): a cart left idle is recalled once.

Every change to a cart starts (or moves) a timer to ``idle_minutes`` after the cart's
last change. When it is due, the cart is looked at again as it is then: still open,
still holding items, not in checkout, and idle for the whole time, it is recalled once
(per cart id); ordered, emptied or changed since, the timer is cancelled or moved. A
cart idle for longer than ``give_up_after_hours`` is not recalled at all (an old cart
found late, after downtime or an import, is not news to anyone).
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated

import msgspec

from profilestore.events import (
    CartCleared,
    CartItemAdded,
    CartItemRemoved,
    CheckoutStarted,
    Event,
    OrderPlaced,
)
from profilestore.trigger import Decision, Fire, ProfileView, Trigger, Wait


class Settings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    idle_minutes: Annotated[int, msgspec.Meta(ge=1, le=10_080)] = 60
    """How long a cart must be left alone before it is recalled."""
    give_up_after_hours: Annotated[int, msgspec.Meta(ge=1, le=8_760)] = 72
    """A cart idle for longer than this is not recalled."""


def decide(event: Event, profile: ProfileView, now: dt.datetime, settings: Settings) -> Decision:
    cart_id = getattr(event, "cart_id", None)
    if cart_id is None:
        return None
    carts = profile.section("carts")
    cart = next((c for c in carts.open if c.cart_id == cart_id), None)
    if cart is None or not cart.lines or cart.status != "open":
        return None  # ordered, emptied, or in checkout: nothing to recall
    due = cart.updated_at + dt.timedelta(minutes=settings.idle_minutes)
    key = f"cart:{cart_id}"
    if now < due:
        return Wait(until=due, dedupe_key=key)
    if now - cart.updated_at > dt.timedelta(hours=settings.give_up_after_hours):
        return None
    return Fire(
        payload={
            "cart_id": cart.cart_id,
            "items": [
                {"sku": line.sku, "name": line.name, "quantity": line.quantity}
                for line in cart.lines
            ],
            "value": cart.value,
            "currency": cart.currency,
        },
        dedupe_key=key,
    )


TRIGGER = Trigger(
    name="abandoned_cart",
    reads=(CartItemAdded, CartItemRemoved, CartCleared, CheckoutStarted, OrderPlaced),
    channel="email",
    purpose="marketing",
    transactional=False,
    decide=decide,
    description="recall a cart left idle without checkout, unless it was ordered or emptied",
    needs=("carts",),
    settings=Settings,
)
