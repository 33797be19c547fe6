"""Segment Spec messages to events: every row of the README's mapping table, the keys,
the derived ids, the clock-skew correction and the bounds of generic properties."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import pytest

from profilestore.errors import InvalidEvent
from profilestore.events import (
    PROPERTIES_MAX,
    ActivityTracked,
    BirthdaySet,
    CartItemAdded,
    CartItemRemoved,
    CheckoutStarted,
    Event,
    IdentifierSeen,
    IdentityLinked,
    LocationSet,
    NameSet,
    OrderCancelled,
    OrderPlaced,
    OrderReturned,
    PageViewed,
    PreferenceSet,
    ProductViewed,
    Searched,
)
from profilestore.segment import (
    ANONYMOUS_PREFIX,
    DEFAULT_CART,
    TEXT_MAX,
    TRAITS_MAX,
    MappedBatch,
    Received,
    event_id,
    fit_properties,
    map_batch,
)
from profilestore.store import EventValidator

NOW = dt.datetime(2026, 5, 1, 12, 0, 0, tzinfo=dt.UTC)
RECEIVED = Received(at=NOW, actor="segment:web")


def batch(*messages: Any, received: Received = RECEIVED) -> MappedBatch:
    return map_batch(list(messages), received)


def events(*messages: Any, received: Received = RECEIVED) -> list[Event]:
    """The messages' events, every one valid (the store's own validation)."""
    mapped = batch(*messages, received=received)
    assert mapped.rejected == []
    return EventValidator().validate(mapped.events, NOW)


def one(message: dict[str, Any], cls: type[Event]) -> Any:
    """The only event of ``cls`` a message makes (besides its device identifier)."""
    found = [e for e in events(message) if isinstance(e, cls)]
    assert len(found) == 1, found
    return found[0]


def track(name: str, properties: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {
        "type": "track",
        "userId": "u-1",
        "event": name,
        "properties": properties,
        "messageId": "m-1",
    } | fields


def rejected(mapped: MappedBatch, invalid: list[InvalidEvent]) -> list[tuple[int, str, str]]:
    return [(r.index, r.type, r.field) for r in mapped.result(0, 0, invalid).rejected]


def validated(mapped: MappedBatch) -> list[InvalidEvent]:
    _, invalid = EventValidator().validate_each(mapped.events, NOW)
    return invalid


# --- keys ---------------------------------------------------------------------------------


def test_the_user_id_is_the_key_and_an_anonymous_id_alone_is_prefixed() -> None:
    known = events({"type": "track", "userId": "u-1", "event": "E"})
    anonymous = events({"type": "track", "anonymousId": "a-1", "event": "E"})
    assert {e.customer_id for e in known} == {"u-1"}
    assert {e.customer_id for e in anonymous} == {ANONYMOUS_PREFIX + "a-1"}


def test_numeric_ids_are_their_text() -> None:
    (tracked,) = events({"type": "track", "userId": 42, "event": "E"})
    assert tracked.customer_id == "42"


def test_a_user_id_with_the_anonymous_prefix_is_refused_so_keys_cannot_collide() -> None:
    mapped = batch(
        {"type": "track", "userId": "anon:a-1", "event": "E"},
        {"type": "track", "userId": "ok", "event": "E"},
    )
    assert rejected(mapped, []) == [(0, "track", "userId")]
    assert [e["customer_id"] for e in mapped.events] == ["ok"]


@pytest.mark.parametrize(
    ("message", "field"),
    [
        ({"type": "track", "event": "E"}, "userId"),
        ({"type": "track", "userId": "", "anonymousId": None, "event": "E"}, "userId"),
        ({"type": "track", "userId": {"id": 1}, "event": "E"}, "userId"),
        ({"type": "alias", "anonymousId": "a-1", "previousId": "p"}, "userId"),
        ({"type": "alias", "userId": "u-1"}, "previousId"),
        ({"type": "group", "userId": "u-1"}, "groupId"),
        ({"type": "track", "userId": "u-1"}, "event"),
        ({"type": "track", "userId": "u-1", "event": "E", "properties": [1]}, "properties"),
        ({"type": "fly", "userId": "u-1"}, "type"),
        ({"userId": "u-1"}, "type"),
        ("not an object", "$"),
        ({"type": "track", "userId": "u", "event": "E", "timestamp": "yesterday"}, "timestamp"),
        ({"type": "track", "userId": "u", "event": "E", "timestamp": 17}, "timestamp"),
    ],
)
def test_a_message_that_cannot_be_mapped_is_refused_naming_the_field(
    message: Any, field: str
) -> None:
    mapped = batch(message)
    assert [(r.index, r.field) for r in mapped.rejected] == [(0, field)]
    assert mapped.events == []


def test_refusals_never_quote_the_value() -> None:
    mapped = batch(
        {"type": "track", "userId": "anon:secret-person", "event": "E"},
        {"type": "identify", "userId": "u", "traits": {"phone": "secret-phone"}},
    )
    reasons = [r.reason for r in mapped.result(0, 0, validated(mapped)).rejected]
    assert len(reasons) == 2
    assert not any("secret" in reason for reason in reasons)


# --- ids and idempotency ----------------------------------------------------------------------


def test_event_ids_derive_from_the_message_id_and_the_events_part() -> None:
    message = {
        "type": "identify",
        "userId": "u-1",
        "messageId": "m-7",
        "traits": {"email": "ann@example.com", "plan": "pro", "seats": 3},
    }
    first, again = batch(message).events, batch(dict(message)).events
    assert [e["event_id"] for e in first] == [e["event_id"] for e in again]
    assert len({e["event_id"] for e in first}) == len(first) == 3
    assert first[0]["event_id"] == event_id("m-7", "identify:email")
    assert all(e["metadata"]["correlation_id"] == "m-7" for e in first)
    other = batch(message | {"messageId": "m-8"}).events
    assert not {e["event_id"] for e in first} & {e["event_id"] for e in other}


def test_without_a_message_id_an_identical_retry_is_still_a_duplicate() -> None:
    message = {"type": "track", "userId": "u-1", "event": "E", "timestamp": "2026-05-01T11:00Z"}
    first = batch(message | {"sentAt": "2026-05-01T11:00:05Z"}).events
    retry = batch(message | {"sentAt": "2026-05-01T11:09:00Z"}).events  # a later attempt
    changed = batch(message | {"event": "F"}).events
    assert first[0]["event_id"] == retry[0]["event_id"] != changed[0]["event_id"]
    assert first[0]["metadata"]["correlation_id"] is None


def test_a_key_records_its_device_once_whatever_the_message() -> None:
    made = batch(
        {"type": "page", "anonymousId": "a-1", "messageId": "m-1"},
        {"type": "track", "anonymousId": "a-1", "event": "E", "messageId": "m-2"},
        {"type": "track", "userId": "u-1", "anonymousId": "a-1", "event": "E", "messageId": "m-3"},
    ).events
    devices = [e for e in made if e["type"] == "identifier.seen"]
    assert [(d["customer_id"], d["kind"], d["value"]) for d in devices] == [
        ("anon:a-1", "device", "a-1"),
        ("anon:a-1", "device", "a-1"),
        ("u-1", "device", "a-1"),
    ]
    assert devices[0]["event_id"] == devices[1]["event_id"] != devices[2]["event_id"]


def test_the_actor_and_the_library_are_in_every_envelope() -> None:
    made = events(
        {
            "type": "track",
            "userId": "u-1",
            "event": "E",
            "context": {"library": {"name": "analytics-python", "version": "2.4.0"}},
        }
    )
    assert made[0].source == "segment:analytics-python"
    assert made[0].metadata is not None and made[0].metadata.actor == "segment:web"


# --- time ---------------------------------------------------------------------------------------


def test_timestamp_is_corrected_for_the_clock_skew_as_segment_documents_it() -> None:
    # The device clock is 1 hour fast: it says it sent at 13:00:10 what happened at 13:00.
    (tracked,) = events(
        {
            "type": "track",
            "userId": "u",
            "event": "E",
            "timestamp": "2026-05-01T13:00:00Z",
            "sentAt": "2026-05-01T13:00:10Z",
        }
    )
    # receivedAt - (sentAt - originalTimestamp) = 12:00:00 - 10 s
    assert tracked.occurred_at == NOW - dt.timedelta(seconds=10)


def test_the_batch_sent_at_applies_and_a_message_own_wins() -> None:
    received = Received(at=NOW, actor="segment:web", sent_at="2026-05-01T09:00:30Z")
    base = {"type": "track", "userId": "u", "event": "E", "timestamp": "2026-05-01T09:00:00Z"}
    by_batch, by_message = events(
        base | {"messageId": "a"},
        base | {"messageId": "b", "sentAt": "2026-05-01T09:00:05+00:00"},
        received=received,
    )
    assert by_batch.occurred_at == NOW - dt.timedelta(seconds=30)
    assert by_message.occurred_at == NOW - dt.timedelta(seconds=5)


def test_without_sent_at_the_timestamp_is_taken_as_given_and_without_one_received_at() -> None:
    given, original, none = events(
        {"type": "track", "userId": "u", "event": "E", "timestamp": "2020-01-02T03:04:05+02:00"},
        {"type": "track", "userId": "u", "event": "F", "originalTimestamp": "2020-01-02T03:04"},
        {"type": "track", "userId": "u", "event": "G"},
    )
    assert given.occurred_at == dt.datetime(2020, 1, 2, 1, 4, 5, tzinfo=dt.UTC)
    assert original.occurred_at == dt.datetime(2020, 1, 2, 3, 4, tzinfo=dt.UTC)  # no zone: UTC
    assert none.occurred_at == NOW


# --- identify -----------------------------------------------------------------------------------


def identify(traits: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"type": "identify", "userId": "u-1", "traits": traits} | fields


def test_identify_email_and_phone_are_identifiers() -> None:
    made = events(identify({"email": "Ann@Example.com", "phone": "+1 415 555 0003"}))
    assert [(e.kind, e.value) for e in made if isinstance(e, IdentifierSeen)] == [
        ("email", "Ann@Example.com"),
        ("phone", "+1 415 555 0003"),
    ]


def test_identify_with_an_anonymous_id_says_the_user_key_presented_the_device() -> None:
    made = events(identify({"email": "ann@example.com"}, anonymousId="a-1"))
    # The email first: the device rule links an anonymous key into a *known* one.
    assert [(e.customer_id, e.kind) for e in made if isinstance(e, IdentifierSeen)] == [
        ("u-1", "email"),
        ("u-1", "device"),
    ]


@pytest.mark.parametrize(
    ("traits", "first", "last"),
    [
        ({"firstName": "Ann", "lastName": "Lee"}, "Ann", "Lee"),
        ({"first_name": "Ann", "last_name": "Lee"}, "Ann", "Lee"),
        ({"name": "Ann Mary Lee"}, "Ann", "Mary Lee"),
        ({"name": "Ann"}, "Ann", None),
        ({"lastName": "Lee"}, None, "Lee"),
    ],
)
def test_identify_names(traits: dict[str, Any], first: str | None, last: str | None) -> None:
    named = one(identify(traits), NameSet)
    assert (named.first_name, named.last_name) == (first, last)


def test_a_name_beside_first_and_last_names_is_kept_as_a_preference() -> None:
    made = events(identify({"firstName": "Ann", "name": "Ann L."}))
    assert [(e.key, e.value) for e in made if isinstance(e, PreferenceSet)] == [("name", "Ann L.")]


@pytest.mark.parametrize("birthday", ["1990-05-01", "1990-05-01T00:00:00.000Z"])
def test_identify_birthday_is_a_date(birthday: str) -> None:
    assert one(identify({"birthday": birthday}), BirthdaySet).birthday == dt.date(1990, 5, 1)


def test_identify_address_is_a_location_and_its_other_fields_preferences() -> None:
    address = {
        "street": "1 Main St",
        "city": "Leeds",
        "state": "West Yorkshire",
        "postalCode": "LS1 1AA",
        "country": "gb",
    }
    made = events(identify({"address": address}))
    (located,) = [e for e in made if isinstance(e, LocationSet)]
    assert (located.location.city, located.location.region) == ("Leeds", "West Yorkshire")
    assert (located.location.postal_code, located.location.country) == ("LS1 1AA", "GB")
    assert [(e.key, e.value) for e in made if isinstance(e, PreferenceSet)] == [
        ("address.street", "1 Main St")
    ]


def test_a_country_that_is_no_iso_code_is_kept_as_a_preference() -> None:
    made = events(identify({"address": {"city": "Paris", "country": "France"}}))
    assert [(e.key, e.value) for e in made if isinstance(e, PreferenceSet)] == [
        ("address.country", "France")
    ]
    assert one(identify({"address": {"country": "France"}}), PreferenceSet).key == (
        "address.country"
    )


def test_identify_other_traits_are_flattened_preferences() -> None:
    made = events(identify({"plan": "pro", "company": {"name": "Acme", "seats": 5}, "vip": True}))
    assert [(e.key, e.value) for e in made if isinstance(e, PreferenceSet)] == [
        ("plan", "pro"),
        ("company.name", "Acme"),
        ("company.seats", 5),
        ("vip", True),
    ]


def test_identify_keeps_the_first_traits_and_says_how_many_it_did_not() -> None:
    mapped = batch(identify({f"t{i}": i for i in range(TRAITS_MAX + 7)}))
    assert len([e for e in mapped.events if e["type"] == "profile.preference_set"]) == TRAITS_MAX
    (refusal,) = mapped.rejected
    assert (refusal.field, refusal.reason) == (
        "traits",
        "7 traits past the first 100 were not kept",
    )


def test_identify_traits_in_context_as_rudderstack_sends_them() -> None:
    message = {"type": "identify", "userId": "u-1", "context": {"traits": {"email": "no-at"}}}
    mapped = batch(message)
    assert rejected(mapped, validated(mapped)) == [(0, "identify", "context.traits.email")]


def test_a_bad_trait_is_refused_alone_naming_its_field() -> None:
    mapped = batch(identify({"email": "ann@example.com", "phone": "555", "plan": "x" * 600}))
    invalid = validated(mapped)
    assert rejected(mapped, invalid) == [
        (0, "identify", "traits.phone"),
        (0, "identify", "traits.plan"),
    ]
    assert len(mapped.events) - len(invalid) == 1  # the email is kept


# --- track: E-commerce v2 ---------------------------------------------------------------------


def test_products_searched_is_a_search() -> None:
    searched = one(track("Products Searched", {"query": "blue roses", "results": 3}), Searched)
    assert (searched.query, searched.results) == ("blue roses", 3)


def test_product_viewed_is_a_product_view_keyed_by_sku_else_product_id() -> None:
    by_sku = one(track("Product Viewed", {"sku": "S-1", "product_id": "P-1"}), ProductViewed)
    viewed = one(
        track(
            "Product Viewed", {"product_id": 7, "name": "Mug", "category": "Home", "price": 19.99}
        ),
        ProductViewed,
    )
    assert by_sku.sku == "S-1"
    assert (viewed.sku, viewed.name, viewed.category, viewed.price) == (
        "7",
        "Mug",
        "Home",
        Decimal("19.99"),
    )


def test_product_added_is_a_cart_line_in_the_default_cart_and_currency() -> None:
    added = one(
        track("Product Added", {"product_id": "P", "price": 4.5, "quantity": 2.0}), CartItemAdded
    )
    assert (added.cart_id, added.sku, added.quantity) == (DEFAULT_CART, "P", 2)
    assert (added.unit_price, added.currency) == (Decimal("4.5"), "USD")
    named = one(
        track("Product Added", {"sku": "S", "price": "1", "cart_id": "k", "currency": "eur"}),
        CartItemAdded,
    )
    assert (named.cart_id, named.currency) == ("k", "EUR")


def test_product_removed_takes_units_or_the_whole_line() -> None:
    removed = one(track("Product Removed", {"product_id": "P", "quantity": 1}), CartItemRemoved)
    whole = one(track("Product Removed", {"product_id": "P"}), CartItemRemoved)
    assert (removed.cart_id, removed.sku, removed.quantity) == (DEFAULT_CART, "P", 1)
    assert whole.quantity is None


def test_checkout_started_starts_the_carts_checkout() -> None:
    assert one(track("Checkout Started", {"order_id": "o"}), CheckoutStarted).cart_id == "default"
    assert one(track("Checkout Started", {"cart_id": "k"}), CheckoutStarted).cart_id == "k"


def test_order_completed_is_an_order_placed() -> None:
    properties = {
        "order_id": 5001,
        "affiliation": "Web shop",
        "total": 27.5,
        "currency": "GBP",
        "products": [
            {"product_id": "P1", "name": "Mug", "price": 19, "quantity": 1},
            {"sku": "S2", "price": 4.25, "quantity": 2},
        ],
    }
    order = one(track("Order Completed", properties), OrderPlaced)
    assert (order.order_id, order.cart_id, order.channel) == ("5001", DEFAULT_CART, "Web shop")
    assert (order.total, order.currency) == (Decimal("27.5"), "GBP")
    assert [(i.sku, i.quantity, i.unit_price) for i in order.items] == [
        ("P1", 1, Decimal("19")),
        ("S2", 2, Decimal("4.25")),
    ]


def test_an_order_without_a_total_totals_its_products_and_revenue_counts() -> None:
    products = [{"product_id": "P", "price": 2.5, "quantity": 3}]
    summed = one(track("Order Completed", {"order_id": "o", "products": products}), OrderPlaced)
    revenue = one(
        track("Order Completed", {"order_id": "o", "revenue": 9, "products": products}),
        OrderPlaced,
    )
    assert (summed.total, revenue.total) == (Decimal("7.5"), Decimal("9"))


def test_order_refunded_is_a_return_of_its_total_or_products() -> None:
    refunded = one(track("Order Refunded", {"order_id": "o", "total": 30}), OrderReturned)
    partial = one(
        track("Order Refunded", {"order_id": "o", "products": [{"sku": "S", "price": 5}]}),
        OrderReturned,
    )
    unknown = one(track("Order Refunded", {"order_id": "o"}), OrderReturned)
    assert [refunded.amount_refunded, partial.amount_refunded, unknown.amount_refunded] == [
        Decimal(30),
        Decimal(5),
        Decimal(0),
    ]


def test_order_cancelled_is_a_cancellation() -> None:
    cancelled = one(track("Order Cancelled", {"order_id": "o", "reason": "late"}), OrderCancelled)
    assert (cancelled.order_id, cancelled.reason) == ("o", "late")


def test_event_names_match_without_case() -> None:
    assert one(track("order cancelled", {"order_id": "o"}), OrderCancelled).order_id == "o"


@pytest.mark.parametrize(
    ("name", "properties"),
    [
        ("Cart Viewed", {"cart_id": "k", "products": [{"sku": "S", "price": 1}]}),
        ("Products Searched", {"query": {"colour": "blue"}}),
        ("Product Viewed", {"name": "no id"}),
        ("Product Added", {"product_id": "P"}),  # no price
        ("Product Removed", {}),
        ("Order Completed", {"products": [{"sku": "S", "price": 1}]}),  # no order_id
        ("Order Completed", {"order_id": "o", "products": [{"sku": "S"}]}),  # a product's price
        ("Order Completed", {"order_id": "o"}),  # no products
        ("Order Refunded", {}),
        ("Order Cancelled", {}),
    ],
)
def test_an_ecommerce_event_lacking_what_its_type_needs_is_kept_generic(
    name: str, properties: dict[str, Any]
) -> None:
    kept = one(track(name, properties), ActivityTracked)
    assert (kept.name, kept.call) == (name, "track")


def test_a_wrong_value_in_a_typed_event_is_refused_naming_the_segment_field() -> None:
    mapped = batch(
        track("Product Added", {"sku": "S", "price": -1}),
        track("Order Completed", {"order_id": "o", "products": [{"sku": "S", "price": 1e-9}]}),
        track("Product Added", {"sku": "S", "price": 1, "currency": "dollars"}),
    )
    assert rejected(mapped, validated(mapped)) == [
        (0, "track", "properties.price"),
        (1, "track", "properties.products[0].price"),
        (2, "track", "properties.currency"),
    ]


# --- track: anything else ---------------------------------------------------------------------


def test_any_other_track_is_kept_with_its_properties_flattened() -> None:
    kept = one(
        track("Video Played", {"video": {"id": "v", "tags": ["a", "b"]}, "seconds": 4.5}),
        ActivityTracked,
    )
    assert kept.name == "Video Played"
    assert kept.properties == {
        "video.id": "v",
        "video.tags.0": "a",
        "video.tags.1": "b",
        "seconds": 4.5,
    }
    assert kept.properties_cut == 0


def test_generic_properties_are_fitted_to_their_bounds_and_the_cuts_counted() -> None:
    properties = {f"p{i}": i for i in range(PROPERTIES_MAX + 3)}
    kept, cut = fit_properties(properties)
    assert (len(kept), cut) == (PROPERTIES_MAX, 3)
    kept, cut = fit_properties(
        {
            "long": "x" * (TEXT_MAX + 1),
            "n" * 300: 1,
            "bad\x00name": 1,
            "big": 2**60,
            "huge": 1e300,
            "none": None,
        }
    )
    assert kept == {"long": "x" * TEXT_MAX, "big": str(2**60), "huge": "1e+300", "none": None}
    assert cut == 3


# --- page and screen ---------------------------------------------------------------------------


def test_page_is_a_page_view_from_its_properties() -> None:
    page = {
        "type": "page",
        "userId": "u",
        "name": "Home",
        "properties": {"url": "https://shop.example/", "title": "Shop", "referrer": "https://r/"},
    }
    viewed = one(page, PageViewed)
    assert (viewed.url, viewed.title, viewed.referrer) == (
        "https://shop.example/",
        "Shop",
        "https://r/",
    )


def test_page_falls_back_to_the_context_page_and_then_its_name() -> None:
    context = {"page": {"url": "https://c/", "title": "T", "referrer": "https://r/"}}
    from_context = one({"type": "page", "userId": "u", "context": context}, PageViewed)
    named = one({"type": "page", "userId": "u", "name": "Pricing"}, PageViewed)
    path = one({"type": "page", "userId": "u", "properties": {"path": "/p"}}, PageViewed)
    assert (from_context.url, from_context.title, from_context.referrer) == (
        "https://c/",
        "T",
        "https://r/",
    )
    assert (named.url, named.title) == ("page:Pricing", "Pricing")
    assert path.url == "/p"


def test_screen_is_a_page_view_named_by_the_screen() -> None:
    viewed = one({"type": "screen", "userId": "u", "name": "Basket"}, PageViewed)
    assert (viewed.url, viewed.title) == ("screen:Basket", "Basket")


# --- alias and group --------------------------------------------------------------------------


def test_alias_links_both_readings_of_the_previous_id() -> None:
    made = events({"type": "alias", "userId": "u-1", "previousId": "old-7", "messageId": "m"})
    links = [
        (e.customer_id, e.other, e.actor, e.rule) for e in made if isinstance(e, IdentityLinked)
    ]
    assert links == [
        ("u-1", "old-7", "segment:web", None),
        ("u-1", "anon:old-7", "segment:web", None),
    ]


def test_alias_of_the_messages_own_anonymous_id_links_the_anonymous_key_only() -> None:
    made = events({"type": "alias", "userId": "u-1", "previousId": "a-1", "anonymousId": "a-1"})
    assert [e.other for e in made if isinstance(e, IdentityLinked)] == ["anon:a-1"]


def test_alias_to_itself_links_nothing() -> None:
    made = events({"type": "alias", "userId": "u-1", "previousId": "u-1"})
    assert [e.other for e in made if isinstance(e, IdentityLinked)] == ["anon:u-1"]


def test_group_is_kept_as_a_generic_event_with_its_traits() -> None:
    grouped = one(
        {"type": "group", "userId": "u", "groupId": 12, "traits": {"name": "Acme", "plan": "gold"}},
        ActivityTracked,
    )
    assert (grouped.call, grouped.name, grouped.group_id) == ("group", "Group", "12")
    assert grouped.properties == {"name": "Acme", "plan": "gold"}


def test_a_batch_context_is_under_each_messages_own() -> None:
    received = Received(
        at=NOW,
        actor="segment:web",
        context={"library": {"name": "batch-lib"}, "page": {"url": "u"}},
    )
    own, inherited = events(
        {"type": "page", "userId": "u", "context": {"library": {"name": "own-lib"}}},
        {"type": "page", "userId": "u", "messageId": "x"},
        received=received,
    )
    assert (own.source, inherited.source) == ("segment:own-lib", "segment:batch-lib")
