"""Orders: the most recent orders and lifetime totals per currency."""

from __future__ import annotations

from decimal import Decimal
from typing import Literal

import msgspec

from profilestore.events import (
    Event,
    OrderCancelled,
    OrderPlaced,
    OrderReturned,
    Timestamp,
)
from profilestore.projection import Projection, keep_last

CAP_RECENT = 50


class Line(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """An order line as kept here: the event's ``OrderLine`` (same JSON) without its intake
    checks, so a section folded from a line stored before today's bounds reads back."""

    sku: str
    name: str | None = None
    quantity: int = 1
    unit_price: Decimal
    category: str | None = None
    brand: str | None = None


class Order(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    order_id: str
    status: Literal["placed", "returned", "cancelled"] = "placed"
    placed_at: Timestamp
    items: tuple[Line, ...]
    total: Decimal
    currency: str
    refunded: Decimal = Decimal(0)
    channel: str | None = None


class Spend(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    currency: str
    total: Decimal


class Orders(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    recent: tuple[Order, ...] = ()
    order_count: int = 0
    returned_count: int = 0
    cancelled_count: int = 0
    lifetime_value: tuple[Spend, ...] = ()
    """Net of refunds and of cancelled orders still among ``recent``."""
    first_order_at: Timestamp | None = None
    last_order_at: Timestamp | None = None


def _add_spend(spend: tuple[Spend, ...], currency: str, amount: Decimal) -> tuple[Spend, ...]:
    if any(s.currency == currency for s in spend):
        return tuple(
            Spend(currency=s.currency, total=s.total + amount) if s.currency == currency else s
            for s in spend
        )
    return (*spend, Spend(currency=currency, total=amount))


def fold(section: Orders, event: Event) -> Orders:
    if isinstance(event, OrderPlaced):
        if any(o.order_id == event.order_id for o in section.recent):
            return section  # the same order sent twice under two event ids
        order = Order(
            order_id=event.order_id,
            placed_at=event.occurred_at,
            items=tuple(
                Line(
                    sku=i.sku,
                    name=i.name,
                    quantity=i.quantity,
                    unit_price=i.unit_price,
                    category=i.category,
                    brand=i.brand,
                )
                for i in event.items
            ),
            total=event.total,
            currency=event.currency,
            channel=event.channel,
        )
        first = section.first_order_at
        last = section.last_order_at
        return msgspec.structs.replace(
            section,
            recent=keep_last(section.recent, order, CAP_RECENT),
            order_count=section.order_count + 1,
            lifetime_value=_add_spend(section.lifetime_value, event.currency, event.total),
            first_order_at=event.occurred_at if first is None else min(first, event.occurred_at),
            last_order_at=event.occurred_at if last is None else max(last, event.occurred_at),
        )
    if isinstance(event, OrderReturned | OrderCancelled):
        placed = next((o for o in section.recent if o.order_id == event.order_id), None)
        if placed is None or placed.status == "cancelled":
            return section
        if isinstance(event, OrderReturned):
            refund = min(event.amount_refunded, placed.total - placed.refunded)
            changed = msgspec.structs.replace(
                placed, status="returned", refunded=placed.refunded + refund
            )
            counts = {"returned_count": section.returned_count + (placed.status != "returned")}
        else:
            refund = placed.total - placed.refunded
            changed = msgspec.structs.replace(placed, status="cancelled", refunded=placed.total)
            counts = {"cancelled_count": section.cancelled_count + 1}
        return msgspec.structs.replace(
            section,
            recent=tuple(changed if o is placed else o for o in section.recent),
            lifetime_value=_add_spend(section.lifetime_value, placed.currency, -refund),
            **counts,
        )
    return section


PROJECTION = Projection(
    dataset="orders",
    reads=(OrderPlaced, OrderReturned, OrderCancelled),
    section=Orders,
    fold=fold,
    default_refresh="every 1h",
    retention=f"last {CAP_RECENT} orders, lifetime counts and value",
)
