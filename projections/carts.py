"""Carts: the open cart and the most recent abandoned ones.

A customer has at most one open cart (``open`` holds zero or one). A cart is abandoned, by
events alone, when the customer starts another cart while it still holds items; adding
to an abandoned cart again reopens it. An order placed from a cart converts it; an order
placed from an abandoned cart recovers it. Time-based abandonment
("open and idle for an hour") is a reading of ``updated_at``, left to the trigger that
needs it, so the fold stays a pure function of the events.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Literal

import msgspec

from profilestore.events import (
    CartCleared,
    CartItemAdded,
    CartItemRemoved,
    CheckoutStarted,
    Event,
    OrderPlaced,
    Timestamp,
)
from profilestore.projection import Projection, keep_last

CAP_ABANDONED = 10


class CartLine(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    sku: str
    name: str | None = None
    quantity: int
    unit_price: Decimal


class Cart(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    cart_id: str
    status: Literal["open", "checkout", "abandoned"] = "open"
    currency: str
    lines: tuple[CartLine, ...] = ()
    value: Decimal = Decimal(0)
    created_at: Timestamp
    updated_at: Timestamp
    checkout_started_at: Timestamp | None = None


class Carts(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    open: tuple[Cart, ...] = ()
    abandoned: tuple[Cart, ...] = ()
    converted: int = 0
    recovered: int = 0
    last_activity_at: Timestamp | None = None


def _with_lines(cart: Cart, lines: tuple[CartLine, ...], at: Timestamp) -> Cart:
    value = sum((line.unit_price * line.quantity for line in lines), Decimal(0))
    return msgspec.structs.replace(cart, lines=lines, value=value, updated_at=at)


def _abandon(section: Carts, carts: tuple[Cart, ...]) -> tuple[Cart, ...]:
    abandoned = section.abandoned
    for cart in carts:
        if cart.lines:
            abandoned = keep_last(
                abandoned, msgspec.structs.replace(cart, status="abandoned"), CAP_ABANDONED
            )
    return abandoned


def fold(section: Carts, event: Event) -> Carts:
    if isinstance(event, OrderPlaced):
        return _converted(section, event)
    if not isinstance(event, CartItemAdded | CartItemRemoved | CartCleared | CheckoutStarted):
        return section
    at = event.occurred_at
    cart = next((c for c in section.open if c.cart_id == event.cart_id), None)
    others = tuple(c for c in section.open if c.cart_id != event.cart_id)
    abandoned = section.abandoned
    if isinstance(event, CartItemAdded):
        if cart is None:
            # Another cart: the open one, if it still holds items, is now abandoned.
            revived = next((c for c in abandoned if c.cart_id == event.cart_id), None)
            abandoned = _abandon(
                msgspec.structs.replace(
                    section, abandoned=tuple(c for c in abandoned if c is not revived)
                ),
                others,
            )
            others = ()
            if revived is not None:
                cart = msgspec.structs.replace(revived, status="open")
            else:
                cart = Cart(
                    cart_id=event.cart_id, currency=event.currency, created_at=at, updated_at=at
                )
        line = next((x for x in cart.lines if x.sku == event.sku), None)
        quantity = event.quantity + (line.quantity if line else 0)
        new_line = CartLine(
            sku=event.sku,
            name=event.name or (line.name if line else None),
            quantity=quantity,
            unit_price=event.unit_price,
        )
        lines = (*(x for x in cart.lines if x.sku != event.sku), new_line)
        cart = _with_lines(cart, lines, at)
    elif cart is None:
        return msgspec.structs.replace(section, last_activity_at=at)
    elif isinstance(event, CartItemRemoved):
        lines = tuple(
            msgspec.structs.replace(x, quantity=x.quantity - event.quantity)
            if x.sku == event.sku and event.quantity is not None
            else x
            for x in cart.lines
            if not (x.sku == event.sku and (event.quantity is None or x.quantity <= event.quantity))
        )
        cart = _with_lines(cart, lines, at)
    elif isinstance(event, CheckoutStarted):
        cart = msgspec.structs.replace(
            cart, status="checkout", checkout_started_at=at, updated_at=at
        )
    else:  # CartCleared
        cart = None
    open_carts = others if cart is None else (*others, cart)
    return Carts(
        open=open_carts,
        abandoned=abandoned,
        converted=section.converted,
        recovered=section.recovered,
        last_activity_at=at,
    )


def _converted(section: Carts, event: OrderPlaced) -> Carts:
    if event.cart_id is None:
        return section
    if any(c.cart_id == event.cart_id for c in section.open):
        return msgspec.structs.replace(
            section,
            open=tuple(c for c in section.open if c.cart_id != event.cart_id),
            converted=section.converted + 1,
            last_activity_at=event.occurred_at,
        )
    if any(c.cart_id == event.cart_id for c in section.abandoned):
        return msgspec.structs.replace(
            section,
            abandoned=tuple(c for c in section.abandoned if c.cart_id != event.cart_id),
            converted=section.converted + 1,
            recovered=section.recovered + 1,
            last_activity_at=event.occurred_at,
        )
    return section


PROJECTION = Projection(
    dataset="carts",
    reads=(CartItemAdded, CartItemRemoved, CartCleared, CheckoutStarted, OrderPlaced),
    section=Carts,
    fold=fold,
    default_refresh="realtime",
    retention=f"the open cart and the last {CAP_ABANDONED} abandoned",
)
