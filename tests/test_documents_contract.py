"""The document-store contract: every adapter behaves the same (see ``documents.py``).

Every test takes the ``document_store`` fixture, so it runs against the embedded SQLite
store, MongoDB through mongomock-ng, and MongoDB over a real wire socket. Data stays
small (a handful of customers) because the wire cases pay a round trip per operation.
Times are fixed; MongoDB keeps milliseconds only, so ``refreshed_at`` is compared with a
1 ms tolerance.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import msgspec
import pytest

from profilestore.documents import (
    PORT_METHODS,
    WRITE_METHODS,
    DocumentStore,
    Profile,
    SectionWrite,
    StoredSection,
    Tracking,
)
from profilestore.errors import InvalidArgument, ReadOnlyStore, StoreClosed
from profilestore.events import Location
from profilestore.mongo_documents import MongoDocumentStore
from profilestore.sqlite_documents import SQLiteDocumentStore
from projections.attributes import Attributes, Preference
from projections.carts import Cart, CartLine, Carts
from projections.identities import Identifier, Identities
from projections.orders import Line, Order, Orders, Spend
from projections.scores import Scores

T0 = dt.datetime(2024, 5, 1, 12, 0, 0, 123_456, tzinfo=dt.UTC)
T1 = dt.datetime(2024, 5, 1, 12, 5, 0, 654_321, tzinfo=dt.UTC)
T2 = dt.datetime(2024, 5, 2, 8, 30, 0, 999_999, tzinfo=dt.UTC)
CEST = dt.timezone(dt.timedelta(hours=2), "CEST")
MS = dt.timedelta(milliseconds=1)


# --- real section values ---------------------------------------------------------------------


def carts(cart_id: str = "cart-1", quantity: int = 2, price: str = "19.90") -> Carts:
    created = dt.datetime(2024, 4, 30, 18, 15, 7, 250_000, tzinfo=CEST)
    lines = (
        CartLine(sku="mug-blue", name="Blue mug", quantity=quantity, unit_price=Decimal(price)),
        CartLine(sku="tea-01", quantity=1, unit_price=Decimal("4.05")),
    )
    abandoned = Cart(
        cart_id="cart-0",
        status="abandoned",
        currency="EUR",
        lines=(CartLine(sku="spoon", quantity=3, unit_price=Decimal("0.10")),),
        value=Decimal("0.30"),
        created_at=created - dt.timedelta(days=3),
        updated_at=created - dt.timedelta(days=2),
    )
    return Carts(
        open=(
            Cart(
                cart_id=cart_id,
                status="checkout",
                currency="EUR",
                lines=lines,
                value=Decimal(price) * quantity + Decimal("4.05"),
                created_at=created,
                updated_at=created + dt.timedelta(minutes=4),
                checkout_started_at=created + dt.timedelta(minutes=4),
            ),
        ),
        abandoned=(abandoned,),
        converted=2,
        recovered=1,
        last_activity_at=created + dt.timedelta(minutes=4),
    )


def orders(order_id: str = "order-1") -> Orders:
    placed = dt.datetime(2024, 3, 9, 10, 0, 0, 500_000, tzinfo=dt.UTC)
    order = Order(
        order_id=order_id,
        status="returned",
        placed_at=placed,
        items=(
            Line(sku="mug-blue", name="Blue mug", quantity=2, unit_price=Decimal("19.90")),
            Line(sku="tea-01", unit_price=Decimal("4.05")),
        ),
        total=Decimal("43.85"),
        currency="EUR",
        refunded=Decimal("19.90"),
        channel="web",
    )
    return Orders(
        recent=(order,),
        order_count=1,
        returned_count=1,
        lifetime_value=(
            Spend(currency="EUR", total=Decimal("23.95")),
            Spend(currency="USD", total=Decimal("0")),
        ),
        first_order_at=placed,
        last_order_at=placed,
    )


def attributes() -> Attributes:
    return Attributes(
        first_name="Ann",
        last_name="Ångström",
        birthday=dt.date(1990, 4, 12),
        location=Location(city="Lyon", country="FR", latitude=45.764, longitude=4.8357),
        preferences=(
            Preference(key="theme", value="dark", set_at=T0),
            Preference(key="newsletter", value=True, set_at=T0),
            Preference(key="shoe_size", value=38, set_at=T0),
            Preference(key="budget", value=12.5, set_at=T0),
            Preference(key="nickname", value=None, set_at=T0),
        ),
        updated_at=T0.astimezone(CEST),
    )


def identities(*keys: str) -> Identities:
    seen = dt.datetime(2024, 2, 1, 9, 0, tzinfo=dt.UTC)
    return Identities(
        identifiers=tuple(
            Identifier(
                kind=key.split(":", 1)[0],
                key=key,
                value=key.split(":", 1)[1].upper(),
                linked=i == 0,
                first_seen=seen,
                last_seen=seen + dt.timedelta(days=i),
                times_seen=i + 1,
            )
            for i, key in enumerate(keys)
        )
    )


def identity_write(customer_id: str, position: int, *keys: str) -> SectionWrite:
    return SectionWrite(customer_id, identities(*keys), position, keys)


def assert_close(actual: dt.datetime, expected: dt.datetime) -> None:
    assert actual.tzinfo is not None, "refreshed_at must be timezone-aware"
    assert abs(actual - expected) <= MS, f"{actual} is not within 1 ms of {expected}"


def assert_tracking(actual: Tracking | None, position: int, refreshed_at: dt.datetime) -> None:
    assert actual is not None
    assert actual.position == position
    assert_close(actual.refreshed_at, refreshed_at)


# --- get -------------------------------------------------------------------------------------


def test_get_of_an_unknown_customer_is_none(document_store: DocumentStore) -> None:
    assert document_store.get("nobody") is None
    assert document_store.get("nobody", ["carts"]) is None


def test_written_sections_read_back_equal_with_their_freshness(
    document_store: DocumentStore,
) -> None:
    s = document_store
    assert s.write("carts", [SectionWrite("c1", carts(), 7)], refreshed_at=T0) == 1
    assert s.write("orders", [SectionWrite("c1", orders(), 9)], refreshed_at=T1) == 1
    assert s.write("attributes", [SectionWrite("c1", attributes(), 3)], refreshed_at=T1) == 1
    key = "email:ann@example.com"
    assert s.write("identities", [identity_write("c1", 4, key)], refreshed_at=T2) == 1

    profile = s.get("c1")

    assert profile is not None
    assert profile.customer_id == "c1"
    assert profile.sections == {
        "carts": carts(),
        "orders": orders(),
        "attributes": attributes(),
        "identities": identities(key),
    }
    assert {name: meta.position for name, meta in profile.freshness.items()} == {
        "carts": 7,
        "orders": 9,
        "attributes": 3,
        "identities": 4,
    }
    assert_close(profile.freshness["carts"].refreshed_at, T0)
    assert_close(profile.freshness["orders"].refreshed_at, T1)
    assert_close(profile.freshness["attributes"].refreshed_at, T1)
    assert_close(profile.freshness["identities"].refreshed_at, T2)


def test_sections_keep_their_types_through_the_store(document_store: DocumentStore) -> None:
    document_store.write("carts", [SectionWrite("c1", carts(), 1)], refreshed_at=T0)

    profile = document_store.get("c1")

    assert profile is not None
    section = profile.sections["carts"]
    assert isinstance(section, Carts)
    assert isinstance(section.open, tuple)
    assert isinstance(section.open[0].lines[0].unit_price, Decimal)
    assert section.open[0].lines[0].unit_price == Decimal("19.90")
    assert isinstance(section.open[0].created_at, dt.datetime)
    assert section.open[0].created_at == carts().open[0].created_at


def test_refreshed_at_in_another_timezone_reads_back_as_the_same_instant(
    document_store: DocumentStore,
) -> None:
    document_store.write(
        "carts", [SectionWrite("c1", carts(), 1)], refreshed_at=T1.astimezone(CEST)
    )
    document_store.advance("carts", 1, refreshed_at=T1.astimezone(CEST))

    profile = document_store.get("c1")

    assert profile is not None
    assert_close(profile.freshness["carts"].refreshed_at, T1)
    assert_tracking(document_store.tracking("carts"), 1, T1)


def test_get_with_datasets_returns_only_those_datasets(document_store: DocumentStore) -> None:
    s = document_store
    s.write("carts", [SectionWrite("c1", carts(), 7)], refreshed_at=T0)
    s.write("orders", [SectionWrite("c1", orders(), 9)], refreshed_at=T1)

    profile = s.get("c1", ["carts"])

    assert profile is not None
    assert profile.sections == {"carts": carts()}
    assert set(profile.freshness) == {"carts"}
    assert profile.freshness["carts"].position == 7


def test_get_with_datasets_omits_named_datasets_the_customer_lacks(
    document_store: DocumentStore,
) -> None:
    document_store.write("carts", [SectionWrite("c1", carts(), 7)], refreshed_at=T0)

    profile = document_store.get("c1", ["carts", "orders", "identities"])

    assert profile is not None
    assert profile.sections == {"carts": carts()}
    assert set(profile.freshness) == {"carts"}


def test_get_is_none_when_the_customer_has_none_of_the_named_datasets(
    document_store: DocumentStore,
) -> None:
    document_store.write("carts", [SectionWrite("c1", carts(), 7)], refreshed_at=T0)

    assert document_store.get("c1", ["orders", "identities"]) is None


def test_get_with_no_datasets_named_is_none(document_store: DocumentStore) -> None:
    document_store.write("carts", [SectionWrite("c1", carts(), 7)], refreshed_at=T0)

    assert document_store.get("c1", []) is None


def test_an_unregistered_dataset_is_a_key_error(document_store: DocumentStore) -> None:
    with pytest.raises(KeyError):
        document_store.get("c1", ["no_such_dataset"])
    with pytest.raises(KeyError):
        document_store.write("no_such_dataset", [SectionWrite("c1", carts(), 1)], refreshed_at=T0)
    with pytest.raises(KeyError):
        list(document_store.customer_ids("no_such_dataset"))
    with pytest.raises(KeyError):
        document_store.regroup("no_such_dataset", [], ["c1"], refreshed_at=T0)


# --- write and the position guard --------------------------------------------------------------


def test_write_returns_how_many_sections_were_stored(document_store: DocumentStore) -> None:
    writes = [SectionWrite(f"c{i}", carts(f"cart-{i}"), 10 + i) for i in range(3)]

    assert document_store.write("carts", writes, refreshed_at=T0) == 3
    assert document_store.write("carts", [], refreshed_at=T0) == 0


def test_replaying_a_batch_changes_nothing(document_store: DocumentStore) -> None:
    s = document_store
    writes = [
        SectionWrite("c1", carts("cart-a"), 5),
        SectionWrite("c2", carts("cart-b"), 6),
    ]
    s.write("carts", writes, refreshed_at=T0)
    changed = [
        SectionWrite("c1", carts("cart-x", quantity=9), 5),
        SectionWrite("c2", carts("cart-y", quantity=9), 6),
    ]

    assert s.write("carts", changed, refreshed_at=T1) == 0
    assert s.write("carts", writes, refreshed_at=T1) == 0

    assert s.load("carts", ["c1", "c2"]) == {
        "c1": StoredSection(carts("cart-a"), 5),
        "c2": StoredSection(carts("cart-b"), 6),
    }
    profile = s.get("c1")
    assert profile is not None
    assert_close(profile.freshness["carts"].refreshed_at, T0)


def test_an_older_position_never_overwrites_a_newer_section(
    document_store: DocumentStore,
) -> None:
    s = document_store
    s.write("carts", [SectionWrite("c1", carts("new"), 8)], refreshed_at=T1)

    assert s.write("carts", [SectionWrite("c1", carts("old"), 7)], refreshed_at=T2) == 0

    profile = s.get("c1")
    assert profile is not None
    assert profile.sections["carts"] == carts("new")
    assert profile.freshness["carts"].position == 8
    assert_close(profile.freshness["carts"].refreshed_at, T1)


def test_a_newer_position_replaces_the_section_and_its_freshness(
    document_store: DocumentStore,
) -> None:
    s = document_store
    s.write("carts", [SectionWrite("c1", carts("old"), 7)], refreshed_at=T0)

    assert (
        s.write("carts", [SectionWrite("c1", carts("new", price="1.00"), 8)], refreshed_at=T1) == 1
    )

    profile = s.get("c1")
    assert profile is not None
    assert profile.sections["carts"] == carts("new", price="1.00")
    assert profile.freshness["carts"].position == 8
    assert_close(profile.freshness["carts"].refreshed_at, T1)


def test_a_mixed_batch_stores_only_the_newer_sections(document_store: DocumentStore) -> None:
    s = document_store
    s.write(
        "carts",
        [
            SectionWrite("c1", carts("c1-v1"), 10),
            SectionWrite("c2", carts("c2-v1"), 10),
            SectionWrite("c3", carts("c3-v1"), 10),
        ],
        refreshed_at=T0,
    )

    written = s.write(
        "carts",
        [
            SectionWrite("c1", carts("c1-stale"), 9),  # older
            SectionWrite("c2", carts("c2-v2"), 11),  # newer
            SectionWrite("c3", carts("c3-replay"), 10),  # equal
            SectionWrite("c4", carts("c4-v1"), 1),  # new customer
        ],
        refreshed_at=T1,
    )

    assert written == 2
    assert s.load("carts", ["c1", "c2", "c3", "c4"]) == {
        "c1": StoredSection(carts("c1-v1"), 10),
        "c2": StoredSection(carts("c2-v2"), 11),
        "c3": StoredSection(carts("c3-v1"), 10),
        "c4": StoredSection(carts("c4-v1"), 1),
    }


def test_the_position_guard_is_per_dataset(document_store: DocumentStore) -> None:
    s = document_store
    s.write("carts", [SectionWrite("c1", carts(), 100)], refreshed_at=T0)

    assert s.write("orders", [SectionWrite("c1", orders(), 1)], refreshed_at=T0) == 1

    profile = s.get("c1")
    assert profile is not None
    assert {name: meta.position for name, meta in profile.freshness.items()} == {
        "carts": 100,
        "orders": 1,
    }


def test_writing_one_dataset_leaves_the_customers_other_sections_alone(
    document_store: DocumentStore,
) -> None:
    s = document_store
    s.write("orders", [SectionWrite("c1", orders(), 3)], refreshed_at=T0)
    s.write("carts", [SectionWrite("c1", carts("v1"), 1)], refreshed_at=T0)
    s.write("carts", [SectionWrite("c1", carts("v2"), 2)], refreshed_at=T1)

    profile = s.get("c1")
    assert profile is not None
    assert profile.sections == {"orders": orders(), "carts": carts("v2")}
    assert_close(profile.freshness["orders"].refreshed_at, T0)


# --- load ----------------------------------------------------------------------------------------


def test_load_returns_sections_and_positions_only_for_customers_that_have_them(
    document_store: DocumentStore,
) -> None:
    s = document_store
    s.write(
        "carts",
        [SectionWrite("c1", carts("a"), 4), SectionWrite("c2", carts("b"), 5)],
        refreshed_at=T0,
    )
    s.write("orders", [SectionWrite("c3", orders(), 6)], refreshed_at=T0)

    assert s.load("carts", ["c1", "c2", "c3", "nobody"]) == {
        "c1": StoredSection(carts("a"), 4),
        "c2": StoredSection(carts("b"), 5),
    }
    assert s.load("carts", []) == {}
    assert s.load("carts", ["c3"]) == {}
    assert s.load("orders", iter(["c1", "c3"])) == {"c3": StoredSection(orders(), 6)}


def test_load_reads_more_customers_than_one_chunk(document_store: DocumentStore) -> None:
    s = document_store
    s.write(
        "carts", [SectionWrite(f"c{i:04}", Carts(), i) for i in range(0, 1_200, 2)], refreshed_at=T0
    )

    found = s.load("carts", [f"c{i:04}" for i in range(1_200)])

    assert found == {f"c{i:04}": StoredSection(Carts(), i) for i in range(0, 1_200, 2)}


def test_load_of_staging_reads_staging_only(document_store: DocumentStore) -> None:
    s = document_store
    s.write("carts", [SectionWrite("c1", carts("live"), 4)], refreshed_at=T0)
    s.start_staging("carts")
    s.write(
        "carts",
        [SectionWrite("c2", carts("staged"), 2)],
        refreshed_at=T1,
        staging=True,
    )

    assert s.load("carts", ["c1", "c2"], staging=True) == {"c2": StoredSection(carts("staged"), 2)}
    assert s.load("carts", ["c1", "c2"]) == {"c1": StoredSection(carts("live"), 4)}


# --- find ------------------------------------------------------------------------------------


def test_find_returns_the_customer_carrying_a_lookup_key(document_store: DocumentStore) -> None:
    document_store.write(
        "identities",
        [identity_write("c1", 1, "email:ann@example.com", "phone:+33612345678")],
        refreshed_at=T0,
    )

    assert document_store.find("email:ann@example.com") == ["c1"]
    assert document_store.find("phone:+33612345678") == ["c1"]
    assert document_store.find("email:bob@example.com") == []


def test_find_returns_every_customer_sharing_a_key_sorted(document_store: DocumentStore) -> None:
    shared = "device:tablet-42"
    document_store.write(
        "identities",
        [
            identity_write("c9", 1, shared, "email:zed@example.com"),
            identity_write("c10", 1, "email:ann@example.com", shared),
            identity_write("c2", 1, "email:bob@example.com"),
        ],
        refreshed_at=T0,
    )

    assert document_store.find(shared) == ["c10", "c9"]


def test_a_newer_section_replaces_the_lookup_keys(document_store: DocumentStore) -> None:
    s = document_store
    s.write(
        "identities",
        [identity_write("c1", 1, "email:old@example.com", "phone:+331")],
        refreshed_at=T0,
    )

    s.write(
        "identities",
        [identity_write("c1", 2, "email:new@example.com", "phone:+331")],
        refreshed_at=T1,
    )

    assert s.find("email:old@example.com") == []
    assert s.find("email:new@example.com") == ["c1"]
    assert s.find("phone:+331") == ["c1"]


def test_a_stale_write_leaves_the_lookup_keys_unchanged(document_store: DocumentStore) -> None:
    s = document_store
    s.write("identities", [identity_write("c1", 5, "email:ann@example.com")], refreshed_at=T0)

    assert (
        s.write("identities", [identity_write("c1", 4, "email:stale@example.com")], refreshed_at=T1)
        == 0
    )
    assert (
        s.write(
            "identities", [identity_write("c1", 5, "email:replay@example.com")], refreshed_at=T1
        )
        == 0
    )

    assert s.find("email:ann@example.com") == ["c1"]
    assert s.find("email:stale@example.com") == []
    assert s.find("email:replay@example.com") == []


def test_a_section_written_without_keys_is_found_by_none(document_store: DocumentStore) -> None:
    s = document_store
    s.write("identities", [identity_write("c1", 1, "email:ann@example.com")], refreshed_at=T0)

    s.write("identities", [SectionWrite("c1", identities(), 2)], refreshed_at=T1)

    assert s.find("email:ann@example.com") == []
    profile = s.get("c1")
    assert profile is not None
    assert profile.sections == {"identities": Identities()}


# --- tracking ------------------------------------------------------------------------------


def test_tracking_is_none_before_any_advance(document_store: DocumentStore) -> None:
    document_store.write("carts", [SectionWrite("c1", carts(), 1)], refreshed_at=T0)

    assert document_store.tracking("carts") is None
    assert document_store.tracking("carts", staging=True) is None


def test_advance_records_the_position_and_when(document_store: DocumentStore) -> None:
    document_store.advance("carts", 42, refreshed_at=T0)

    assert_tracking(document_store.tracking("carts"), 42, T0)
    assert document_store.tracking("orders") is None


def test_advance_moves_tracking_forward(document_store: DocumentStore) -> None:
    document_store.advance("carts", 42, refreshed_at=T0)
    document_store.advance("carts", 50, refreshed_at=T1)

    assert_tracking(document_store.tracking("carts"), 50, T1)


def test_tracking_never_moves_backwards(document_store: DocumentStore) -> None:
    document_store.advance("carts", 50, refreshed_at=T0)

    document_store.advance("carts", 42, refreshed_at=T1)
    document_store.advance("carts", 50, refreshed_at=T1)

    tracking = document_store.tracking("carts")
    assert tracking is not None
    assert tracking.position == 50
    assert tracking.refreshed_at >= T0 - MS


def test_staging_tracking_is_separate_from_live(document_store: DocumentStore) -> None:
    s = document_store
    s.advance("carts", 10, refreshed_at=T0)

    s.advance("carts", 3, refreshed_at=T1, staging=True)

    assert_tracking(s.tracking("carts"), 10, T0)
    assert_tracking(s.tracking("carts", staging=True), 3, T1)

    s.advance("carts", 20, refreshed_at=T2)

    assert_tracking(s.tracking("carts"), 20, T2)
    assert_tracking(s.tracking("carts", staging=True), 3, T1)


# --- staging and rebuilds ----------------------------------------------------------------------


def test_start_staging_empties_the_staging_area(document_store: DocumentStore) -> None:
    s = document_store
    s.start_staging("identities")
    s.write(
        "identities",
        [identity_write("c1", 3, "email:ann@example.com")],
        refreshed_at=T0,
        staging=True,
    )
    s.advance("identities", 3, refreshed_at=T0, staging=True)

    s.start_staging("identities")

    assert s.load("identities", ["c1"], staging=True) == {}
    assert s.tracking("identities", staging=True) is None
    # The emptied staging area accepts any position again.
    assert (
        s.write(
            "identities",
            [identity_write("c1", 1, "email:ann@example.com")],
            refreshed_at=T1,
            staging=True,
        )
        == 1
    )


def test_start_staging_leaves_the_live_dataset_serving(document_store: DocumentStore) -> None:
    s = document_store
    s.write("identities", [identity_write("c1", 3, "email:ann@example.com")], refreshed_at=T0)
    s.advance("identities", 3, refreshed_at=T0)

    s.start_staging("identities")

    assert s.load("identities", ["c1"]) == {
        "c1": StoredSection(identities("email:ann@example.com"), 3)
    }
    assert s.find("email:ann@example.com") == ["c1"]
    assert_tracking(s.tracking("identities"), 3, T0)


def test_staged_writes_are_invisible_until_promoted(document_store: DocumentStore) -> None:
    s = document_store
    s.write("identities", [identity_write("c1", 5, "email:live@example.com")], refreshed_at=T0)
    s.start_staging("identities")

    assert (
        s.write(
            "identities",
            [
                identity_write("c1", 6, "email:staged@example.com"),
                identity_write("c2", 6, "email:other@example.com"),
            ],
            refreshed_at=T1,
            staging=True,
        )
        == 2
    )

    assert s.get("c2") is None
    profile = s.get("c1")
    assert profile is not None
    assert profile.sections == {"identities": identities("email:live@example.com")}
    assert profile.freshness["identities"].position == 5
    assert s.find("email:staged@example.com") == []
    assert s.find("email:other@example.com") == []
    assert s.find("email:live@example.com") == ["c1"]
    assert s.load("identities", ["c1", "c2"]) == {
        "c1": StoredSection(identities("email:live@example.com"), 5)
    }
    assert sorted(s.customer_ids("identities")) == ["c1"]


def test_staging_writes_are_guarded_against_staging_not_live(
    document_store: DocumentStore,
) -> None:
    s = document_store
    s.write("carts", [SectionWrite("c1", carts("live"), 100)], refreshed_at=T0)
    s.start_staging("carts")

    # A rebuild replays from the start: positions below the live ones must be stored.
    assert (
        s.write("carts", [SectionWrite("c1", carts("rebuilt"), 40)], refreshed_at=T1, staging=True)
        == 1
    )
    assert (
        s.write("carts", [SectionWrite("c1", carts("older"), 30)], refreshed_at=T1, staging=True)
        == 0
    )
    assert (
        s.write("carts", [SectionWrite("c1", carts("rebuilt"), 40)], refreshed_at=T1, staging=True)
        == 0
    )

    assert s.load("carts", ["c1"], staging=True) == {"c1": StoredSection(carts("rebuilt"), 40)}
    assert s.load("carts", ["c1"]) == {"c1": StoredSection(carts("live"), 100)}


def test_promote_makes_the_staged_dataset_live_exactly(document_store: DocumentStore) -> None:
    s = document_store
    s.write(
        "carts",
        [
            SectionWrite("kept", carts("kept-live"), 50),
            SectionWrite("gone", carts("gone-live"), 50),
        ],
        refreshed_at=T0,
    )
    s.advance("carts", 50, refreshed_at=T0)
    s.start_staging("carts")
    s.write(
        "carts",
        [
            SectionWrite("kept", carts("kept-rebuilt"), 20),  # lower than live: still wins
            SectionWrite("new", carts("new-rebuilt"), 30),
        ],
        refreshed_at=T1,
        staging=True,
    )
    s.advance("carts", 30, refreshed_at=T1, staging=True)

    s.promote_staging("carts")

    assert s.load("carts", ["kept", "gone", "new"]) == {
        "kept": StoredSection(carts("kept-rebuilt"), 20),
        "new": StoredSection(carts("new-rebuilt"), 30),
    }
    assert s.get("gone") is None
    assert sorted(s.customer_ids("carts")) == ["kept", "new"]
    profile = s.get("kept")
    assert profile is not None
    assert profile.sections == {"carts": carts("kept-rebuilt")}
    assert profile.freshness["carts"].position == 20
    assert_close(profile.freshness["carts"].refreshed_at, T1)


def test_promote_leaves_other_datasets_of_the_same_customers_untouched(
    document_store: DocumentStore,
) -> None:
    s = document_store
    s.write(
        "carts",
        [SectionWrite("c1", carts("live"), 5), SectionWrite("c2", carts("live"), 5)],
        refreshed_at=T0,
    )
    s.write(
        "orders",
        [SectionWrite("c1", orders("o1"), 7), SectionWrite("c2", orders("o2"), 8)],
        refreshed_at=T0,
    )
    s.write("identities", [identity_write("c1", 2, "email:ann@example.com")], refreshed_at=T0)
    s.start_staging("carts")
    s.write("carts", [SectionWrite("c2", carts("rebuilt"), 3)], refreshed_at=T1, staging=True)
    s.advance("carts", 3, refreshed_at=T1, staging=True)

    s.promote_staging("carts")

    c1 = s.get("c1")
    assert c1 is not None
    assert c1.sections == {
        "orders": orders("o1"),
        "identities": identities("email:ann@example.com"),
    }
    assert {name: meta.position for name, meta in c1.freshness.items()} == {
        "orders": 7,
        "identities": 2,
    }
    c2 = s.get("c2")
    assert c2 is not None
    assert c2.sections == {"carts": carts("rebuilt"), "orders": orders("o2")}
    assert s.find("email:ann@example.com") == ["c1"]
    assert sorted(s.customer_ids("orders")) == ["c1", "c2"]


def test_promote_moves_the_lookup_keys_with_the_sections(document_store: DocumentStore) -> None:
    s = document_store
    s.write(
        "identities",
        [
            identity_write("c1", 9, "email:ann@example.com"),
            identity_write("c2", 9, "email:bob@example.com", "device:shared"),
        ],
        refreshed_at=T0,
    )
    s.write("orders", [SectionWrite("c2", orders(), 1)], refreshed_at=T0)
    s.start_staging("identities")
    s.write(
        "identities",
        [
            identity_write("c1", 4, "email:ann.new@example.com", "device:shared"),
            identity_write("c3", 4, "email:cat@example.com", "device:shared"),
        ],
        refreshed_at=T1,
        staging=True,
    )
    s.advance("identities", 4, refreshed_at=T1, staging=True)

    s.promote_staging("identities")

    assert s.find("email:ann@example.com") == []
    assert s.find("email:ann.new@example.com") == ["c1"]
    assert s.find("email:bob@example.com") == []
    assert s.find("email:cat@example.com") == ["c3"]
    assert s.find("device:shared") == ["c1", "c3"]
    c2 = s.get("c2")
    assert c2 is not None
    assert c2.sections == {"orders": orders()}


def test_promote_makes_staging_tracking_live_and_removes_it(
    document_store: DocumentStore,
) -> None:
    s = document_store
    s.advance("carts", 90, refreshed_at=T0)
    s.start_staging("carts")
    s.advance("carts", 60, refreshed_at=T1, staging=True)

    s.promote_staging("carts")

    # Exactly what the rebuild covered, even below the old live tracking.
    assert_tracking(s.tracking("carts"), 60, T1)
    assert s.tracking("carts", staging=True) is None


def test_promote_of_an_empty_rebuild_empties_the_live_dataset(
    document_store: DocumentStore,
) -> None:
    s = document_store
    s.write("identities", [identity_write("c1", 3, "email:ann@example.com")], refreshed_at=T0)
    s.start_staging("identities")
    s.advance("identities", 0, refreshed_at=T1, staging=True)

    s.promote_staging("identities")

    assert s.get("c1") is None
    assert s.find("email:ann@example.com") == []
    assert list(s.customer_ids("identities")) == []
    assert_tracking(s.tracking("identities"), 0, T1)


def test_live_writes_after_promote_are_guarded_by_the_promoted_positions(
    document_store: DocumentStore,
) -> None:
    s = document_store
    s.write("carts", [SectionWrite("c1", carts("live"), 100)], refreshed_at=T0)
    s.start_staging("carts")
    s.write("carts", [SectionWrite("c1", carts("rebuilt"), 40)], refreshed_at=T1, staging=True)
    s.advance("carts", 40, refreshed_at=T1, staging=True)
    s.promote_staging("carts")

    assert s.write("carts", [SectionWrite("c1", carts("stale"), 40)], refreshed_at=T2) == 0
    assert s.write("carts", [SectionWrite("c1", carts("next"), 41)], refreshed_at=T2) == 1

    assert s.load("carts", ["c1"]) == {"c1": StoredSection(carts("next"), 41)}


def test_a_dataset_can_be_rebuilt_twice(document_store: DocumentStore) -> None:
    s = document_store
    for round_, key in enumerate(["email:one@example.com", "email:two@example.com"], 1):
        s.start_staging("identities")
        s.write("identities", [identity_write("c1", round_, key)], refreshed_at=T1, staging=True)
        s.advance("identities", round_, refreshed_at=T1, staging=True)
        s.promote_staging("identities")

    assert s.find("email:one@example.com") == []
    assert s.find("email:two@example.com") == ["c1"]
    assert s.load("identities", ["c1"]) == {
        "c1": StoredSection(identities("email:two@example.com"), 2)
    }
    assert_tracking(s.tracking("identities"), 2, T1)


def test_promote_without_staging_raises(document_store: DocumentStore) -> None:
    s = document_store
    s.write("carts", [SectionWrite("c1", carts(), 5)], refreshed_at=T0)
    s.advance("carts", 5, refreshed_at=T0)

    with pytest.raises(RuntimeError):
        s.promote_staging("carts")

    assert s.load("carts", ["c1"]) == {"c1": StoredSection(carts(), 5)}
    assert_tracking(s.tracking("carts"), 5, T0)


def test_promote_twice_raises_the_second_time(document_store: DocumentStore) -> None:
    s = document_store
    s.start_staging("carts")
    s.write("carts", [SectionWrite("c1", carts(), 5)], refreshed_at=T0, staging=True)
    s.advance("carts", 5, refreshed_at=T0, staging=True)
    s.promote_staging("carts")

    with pytest.raises(RuntimeError):
        s.promote_staging("carts")

    assert s.load("carts", ["c1"]) == {"c1": StoredSection(carts(), 5)}


def stage_rebuilt(s: DocumentStore, c1_email: str) -> None:
    """Staging areas of carts (c2 only), identities (keyed: c1 under a new address) and
    scores (derived: c1), each with its tracking: what a rebuild of the three leaves."""
    s.start_staging("carts")
    s.write("carts", [SectionWrite("c2", carts("rebuilt"), 6)], refreshed_at=T1, staging=True)
    s.advance("carts", 6, refreshed_at=T1, staging=True)
    s.start_staging("identities")
    s.write("identities", [identity_write("c1", 6, c1_email)], refreshed_at=T1, staging=True)
    s.advance("identities", 6, refreshed_at=T1, staging=True)
    s.start_staging("scores", reuse=True)
    s.regroup("scores", [SectionWrite("c1", scores("gold"), 1)], (), refreshed_at=T1, staging=True)
    s.advance("scores", 1, refreshed_at=T1, staging=True)


def test_promote_several_datasets_in_one_call(document_store: DocumentStore) -> None:
    s = document_store
    s.write("carts", [SectionWrite(c, carts("live"), 5) for c in ("c1", "c2")], refreshed_at=T0)
    s.write("orders", [SectionWrite(c, orders(c), 5) for c in ("c1", "c2")], refreshed_at=T0)
    s.write("identities", [identity_write("c1", 5, "email:ann@example.com")], refreshed_at=T0)
    stage_rebuilt(s, "email:ann.new@example.com")

    s.promote_staging("carts", "identities", "scores", "carts")  # a repeat counts once

    c1, c2 = s.get("c1"), s.get("c2")
    assert c1 is not None and c2 is not None
    assert c1.sections == {
        "orders": orders("c1"),
        "identities": identities("email:ann.new@example.com"),
        "scores": scores("gold"),
    }
    assert c2.sections == {"carts": carts("rebuilt"), "orders": orders("c2")}
    assert {name: meta.position for name, meta in c1.freshness.items()} == {
        "orders": 5,
        "identities": 6,
        "scores": 1,
    }
    assert s.find("email:ann@example.com") == []
    assert s.find("email:ann.new@example.com") == ["c1"]
    for name, position in (("carts", 6), ("identities", 6), ("scores", 1)):
        live, staged = s.tracking(name), s.tracking(name, staging=True)
        assert live is not None and live.position == position
        assert staged is None
    assert sorted(s.customer_ids("orders")) == ["c1", "c2"]


def test_promote_of_several_promotes_none_when_one_has_no_staging_area(
    document_store: DocumentStore,
) -> None:
    s = document_store
    s.write("carts", [SectionWrite("c1", carts("live"), 5)], refreshed_at=T0)
    s.write("identities", [identity_write("c1", 5, "email:ann@example.com")], refreshed_at=T0)
    stage_rebuilt(s, "email:ann.new@example.com")

    with pytest.raises(RuntimeError, match="'orders'"):
        s.promote_staging("carts", "identities", "orders", "scores")

    c1 = s.get("c1")
    assert c1 is not None
    assert c1.sections == {
        "carts": carts("live"),
        "identities": identities("email:ann@example.com"),
    }
    assert s.find("email:ann@example.com") == ["c1"]
    staged = s.tracking("identities", staging=True)
    assert staged is not None and staged.position == 6
    s.promote_staging("carts", "identities", "scores")  # the areas are still whole
    assert s.find("email:ann.new@example.com") == ["c1"]
    assert sorted(s.customer_ids("carts")) == ["c2"]


# --- a derived dataset (the scores): rewritten whole, swapped in at once -----------------------


def scores(tier: str) -> Scores:
    return Scores(computed_at=T0, fit_version=f"fit-{tier}", value_tier=tier)


def swap_scores(s: DocumentStore, sections: dict[str, Scores], at: dt.datetime) -> None:
    """What the scoring job does: every section into the reused staging area, unguarded,
    the staged ones of customers not scored removed, then one promotion."""
    s.start_staging("scores", reuse=True)
    s.regroup(
        "scores",
        [SectionWrite(c, v, 1) for c, v in sections.items()],
        (),
        refreshed_at=at,
        staging=True,
    )
    left = set(s.customer_ids("scores", staging=True)).difference(sections)
    s.regroup("scores", [], sorted(left), refreshed_at=at, staging=True)
    s.advance("scores", 1, refreshed_at=at, staging=True)
    s.promote_staging("scores")


def test_a_derived_dataset_is_swapped_whole_run_after_run(document_store: DocumentStore) -> None:
    s = document_store
    s.write("carts", [SectionWrite("c2", carts(), 4)], refreshed_at=T0)
    swap_scores(s, {"c1": scores("gold"), "c2": scores("gold")}, T0)
    assert sorted(s.customer_ids("scores")) == ["c1", "c2"]

    # The next run stages c1 and c3 (c2 was merged away): until the promotion, reads see
    # the first run's sections, all of them.
    s.start_staging("scores", reuse=True)
    s.regroup(
        "scores",
        [SectionWrite("c1", scores("silver"), 1), SectionWrite("c3", scores("silver"), 1)],
        (),
        refreshed_at=T1,
        staging=True,
    )
    left = set(s.customer_ids("scores", staging=True)).difference({"c1", "c3"})
    s.regroup("scores", [], sorted(left), refreshed_at=T1, staging=True)
    assert sorted(s.customer_ids("scores", staging=True)) == ["c1", "c3"]
    s.advance("scores", 1, refreshed_at=T1, staging=True)
    assert s.load("scores", ["c1", "c2", "c3"]) == {
        "c1": StoredSection(scores("gold"), 1),
        "c2": StoredSection(scores("gold"), 1),
    }
    assert s.get("c3") is None

    s.promote_staging("scores")

    assert s.load("scores", ["c1", "c2", "c3"]) == {
        "c1": StoredSection(scores("silver"), 1),
        "c3": StoredSection(scores("silver"), 1),
    }
    assert sorted(s.customer_ids("scores")) == ["c1", "c3"]
    profile = s.get("c2")  # its other sections stay
    assert profile is not None and set(profile.sections) == {"carts"}
    both = s.get("c1", ["scores", "carts"])
    assert both is not None and both.sections == {"scores": scores("silver")}
    assert_tracking(s.tracking("scores"), 1, T1)
    assert s.tracking("scores", staging=True) is None

    # A third run over a staging area that may hold an older generation: only what this
    # run staged goes live.
    swap_scores(s, {"c3": scores("bronze")}, T2)
    assert s.load("scores", ["c1", "c2", "c3"]) == {"c3": StoredSection(scores("bronze"), 1)}
    assert sorted(s.customer_ids("scores")) == ["c3"]
    raw = s.get_raw("c3", ["scores"])
    assert raw is not None and set(raw.sections) == {"scores"}


def test_a_derived_dataset_shares_reads_erasure_and_shapes_with_the_others(
    document_store: DocumentStore,
) -> None:
    s = document_store
    s.write("carts", [SectionWrite("c1", carts(), 4)], refreshed_at=T0)
    swap_scores(s, {"c1": scores("gold"), "c2": scores("silver")}, T0)
    s.start_staging("scores", reuse=True)  # a run under way holds staged sections too
    s.regroup("scores", [SectionWrite("c1", scores("new"), 1)], (), refreshed_at=T1, staging=True)

    profile = s.get("c1")
    assert profile is not None
    assert profile.sections == {"carts": carts(), "scores": scores("gold")}
    assert profile.freshness["scores"].position == 1
    assert s.get("c1", ["scores"]) == Profile(
        customer_id="c1",
        sections={"scores": scores("gold")},
        freshness={"scores": profile.freshness["scores"]},
    )

    class Tier(msgspec.Struct):
        value_tier: str | None = None

    assert s.load("scores", ["c1", "c2"], shape=Tier) == {
        "c1": StoredSection(Tier("gold"), 1),
        "c2": StoredSection(Tier("silver"), 1),
    }

    counts = s.erase(["c1"])
    assert counts["sections"] == 2 and counts["sections:staging"] == 1
    assert s.get("c1") is None
    assert s.load("scores", ["c1"], staging=True) == {}
    assert sorted(s.customer_ids("scores")) == ["c2"]


# --- regroup ------------------------------------------------------------------------------------


def test_regroup_replaces_a_section_whatever_its_stored_position(
    document_store: DocumentStore,
) -> None:
    s = document_store
    s.write("carts", [SectionWrite("c1", carts("new"), 8)], refreshed_at=T0)

    s.regroup("carts", [SectionWrite("c1", carts("regrouped"), 5)], [], refreshed_at=T1)

    assert s.load("carts", ["c1"]) == {"c1": StoredSection(carts("regrouped"), 5)}
    profile = s.get("c1")
    assert profile is not None
    assert profile.freshness["carts"].position == 5
    assert_close(profile.freshness["carts"].refreshed_at, T1)
    # Later guarded writes compare with the regrouped position.
    assert s.write("carts", [SectionWrite("c1", carts("next"), 6)], refreshed_at=T2) == 1


def test_regroup_replaces_the_lookup_keys_of_written_customers(
    document_store: DocumentStore,
) -> None:
    s = document_store
    s.write(
        "identities",
        [identity_write("c1", 9, "email:ann@example.com", "phone:+331")],
        refreshed_at=T0,
    )

    s.regroup(
        "identities",
        [identity_write("c1", 3, "phone:+331", "device:tablet-42")],
        [],
        refreshed_at=T1,
    )

    assert s.find("email:ann@example.com") == []
    assert s.find("phone:+331") == ["c1"]
    assert s.find("device:tablet-42") == ["c1"]


def test_regroup_removes_sections_and_their_lookup_keys_leaving_other_datasets(
    document_store: DocumentStore,
) -> None:
    s = document_store
    s.write(
        "identities",
        [
            identity_write("c1", 4, "email:ann@example.com"),
            identity_write("c2", 5, "email:ann.work@example.com", "device:shared"),
        ],
        refreshed_at=T0,
    )
    s.write("carts", [SectionWrite("c2", carts(), 6)], refreshed_at=T0)

    # c2 merged into c1: c1 is refolded with both keys' identifiers, c2's section goes.
    merged = identity_write("c1", 5, "email:ann@example.com", "email:ann.work@example.com")
    s.regroup("identities", [merged], ["c2"], refreshed_at=T1)

    assert s.find("email:ann.work@example.com") == ["c1"]
    assert s.find("device:shared") == []
    assert s.load("identities", ["c1", "c2"]) == {"c1": StoredSection(merged.section, 5)}
    assert sorted(s.customer_ids("identities")) == ["c1"]
    c2 = s.get("c2")
    assert c2 is not None
    assert c2.sections == {"carts": carts()}
    assert c2.freshness["carts"].position == 6


def test_get_of_a_customer_whose_only_section_was_removed_is_none(
    document_store: DocumentStore,
) -> None:
    s = document_store
    s.write("identities", [identity_write("c2", 5, "email:bob@example.com")], refreshed_at=T0)

    s.regroup("identities", [], ["c2"], refreshed_at=T1)

    assert s.get("c2") is None
    assert s.get("c2", ["identities"]) is None
    assert s.get_raw("c2") is None
    assert s.find("email:bob@example.com") == []
    assert list(s.customer_ids("identities")) == []
    # The customer can come back; no position of the removed section guards it.
    comeback = identity_write("c2", 1, "email:bob@example.com")
    assert s.write("identities", [comeback], refreshed_at=T1) == 1
    assert s.find("email:bob@example.com") == ["c2"]


def test_a_customer_both_written_and_removed_by_a_regroup_is_written(
    document_store: DocumentStore,
) -> None:
    s = document_store
    s.write("identities", [identity_write("c1", 7, "email:ann@example.com")], refreshed_at=T0)
    kept = identity_write("c1", 2, "email:ann@example.com", "phone:+331")

    s.regroup("identities", [kept], ["c1", "c1"], refreshed_at=T1)

    assert s.load("identities", ["c1"]) == {"c1": StoredSection(kept.section, 2)}
    assert s.find("phone:+331") == ["c1"]


def test_regroup_ignores_removed_customers_without_the_section(
    document_store: DocumentStore,
) -> None:
    s = document_store
    s.write("orders", [SectionWrite("c3", orders(), 4)], refreshed_at=T0)

    s.regroup("identities", [], ["c3", "nobody"], refreshed_at=T1)
    s.regroup("identities", [], [], refreshed_at=T1)

    profile = s.get("c3")
    assert profile is not None
    assert profile.sections == {"orders": orders()}
    assert s.get("nobody") is None


def test_regrouping_again_changes_nothing(document_store: DocumentStore) -> None:
    s = document_store
    s.write(
        "identities",
        [
            identity_write("c1", 4, "email:ann@example.com"),
            identity_write("c2", 5, "email:bob@example.com"),
        ],
        refreshed_at=T0,
    )
    merged = identity_write("c1", 5, "email:ann@example.com", "email:bob@example.com")
    s.regroup("identities", [merged], ["c2"], refreshed_at=T1)
    before = (s.get("c1"), s.get("c2"), s.find("email:bob@example.com"))

    s.regroup("identities", [merged], ["c2"], refreshed_at=T1)

    assert (s.get("c1"), s.get("c2"), s.find("email:bob@example.com")) == before
    assert before[1:] == (None, ["c1"])


def test_a_staging_regroup_leaves_live_untouched_and_promote_carries_it(
    document_store: DocumentStore,
) -> None:
    s = document_store
    live = [
        identity_write("c1", 9, "email:ann@example.com"),
        identity_write("c2", 9, "email:bob@example.com"),
    ]
    s.write("identities", live, refreshed_at=T0)
    s.start_staging("identities")
    s.write(
        "identities",
        [
            identity_write("c1", 4, "email:ann@example.com"),
            identity_write("c2", 4, "email:bob@example.com"),
        ],
        refreshed_at=T1,
        staging=True,
    )
    merged = identity_write("c1", 3, "email:ann@example.com", "email:bob@example.com")

    s.regroup("identities", [merged], ["c2"], refreshed_at=T1, staging=True)

    assert s.load("identities", ["c1", "c2"], staging=True) == {
        "c1": StoredSection(merged.section, 3)
    }
    assert s.load("identities", ["c1", "c2"]) == {
        "c1": StoredSection(live[0].section, 9),
        "c2": StoredSection(live[1].section, 9),
    }
    assert s.find("email:bob@example.com") == ["c2"]

    s.advance("identities", 9, refreshed_at=T1, staging=True)
    s.promote_staging("identities")

    assert s.find("email:bob@example.com") == ["c1"]
    assert s.get("c2") is None
    assert list(s.customer_ids("identities")) == ["c1"]
    assert s.load("identities", ["c1"]) == {"c1": StoredSection(merged.section, 3)}


# --- erase --------------------------------------------------------------------------------------

NOW = "2024-05-01T12:00:00+00:00"


def customer_records(key: str, email: str, cluster: str, other: str) -> list[Record]:
    """One of every kind of record a customer key gets, as the modules that write them
    key and shape them (identity.py, firing.py, outbox.py, experiment.py, runs.py)."""
    claim = f"receipt\x1f{key}\x1forder:A-1"
    return [
        ("identity.key", key, {"profile": cluster, "history": [[5, cluster]], "links": ["L"]}),
        ("identity.key", other, {"profile": cluster, "history": [[5, cluster]], "links": ["L"]}),
        (
            "identity.link",
            f"evt-link-{key}",
            {
                "id": f"evt-link-{key}",
                "a": key,
                "b": other,
                "position": 5,
                "at": NOW,
                "rule": "shared-email",
                "rule_version": 1,
                "evidence": f"email:{email}",
            },
        ),
        ("identity.cluster", cluster, {"members": [key, other]}),
        ("identity.identifier", f"email:{email}", {"kind": "email", "keys": [key, other]}),
        ("identity.kinds", key, {"kinds": ["email", "device"], "devices": [f"dev-{key}"]}),
        ("identity.veto", f"{key}\x1fcrm-{key}", {"position": 7, "actor": "ops"}),
        (
            "trigger.fired",
            claim,
            {
                "message_id": f"msg_{key}",
                "trigger": "receipt",
                "customer_id": key,
                "profile_id": cluster,
                "payload": {"first_name": "Ann", "order_id": "A-1"},
            },
        ),
        (
            "trigger.outcome",
            f"{key}\x1f{12:020d}\x1freceipt\x1fe",
            {"trigger": "receipt", "customer_id": key, "profile_id": cluster, "status": "fired"},
        ),
        (
            "trigger.timer",
            f"abandoned_cart\x1f{key}\x1fcart:K1",
            {"trigger": "abandoned_cart", "customer_id": key, "due": NOW},
        ),
        ("trigger.contacts", key, {"recent": [{"message_id": f"msg_{key}", "at": NOW}]}),
        ("experiment.assignment", f"welcome_copy\x1f{key}", {"arm": "warm", "at": NOW}),
        (
            "outbox.pending",
            f"msg_{key}\x1fwebhook:crm",
            {"message_id": f"msg_{key}", "claim": claim, "customer_id": key},
        ),
        (
            "outbox.dead",
            f"msg_{key}\x1ffile",
            {"message_id": f"msg_{key}", "claim": claim, "customer_id": key, "last_error": "503"},
        ),
        ("dead_letter", f"carts/{key}", {"dataset": "carts", "customer_id": key, "error": "x"}),
        ("staged_dead_letter", f"carts/{key}", {"dataset": "carts", "customer_id": key}),
    ]


Record = tuple[str, str, dict[str, Any]]
SHARED_RECORDS: list[Record] = [
    ("trigger.enabled", "receipt", {"since": NOW}),
    ("projection_version", "carts", {"version": 3, "built_at": NOW}),
    ("identity.applied", "carts", {"position": 12}),
    ("run", "carts/last", {"dataset": "carts", "status": "succeeded", "error": None}),
]
C1_RECORDS = customer_records("c1", "ann@example.com", "~abc", "web-1")
KINDS = sorted({kind for kind, _, _ in customer_records("x", "x", "x", "x") + SHARED_RECORDS})


def every_record(s: DocumentStore) -> dict[tuple[str, str], dict[str, Any]]:
    return {(kind, key): value for kind in KINDS for key, value in s.get_records(kind).items()}


def two_customers(s: DocumentStore) -> None:
    """c1 (merged with web-1 into ~abc) and c10, whose key has c1 as a prefix and who
    shares nothing with c1: sections, staging, lookup keys and records of each."""
    for key, email in (("~abc", "ann@example.com"), ("c10", "ann10@example.com")):
        s.write("carts", [SectionWrite(key, carts(), 7)], refreshed_at=T0)
        s.write("orders", [SectionWrite(key, orders(), 8)], refreshed_at=T0)
        s.write("attributes", [SectionWrite(key, attributes(), 9)], refreshed_at=T0)
        keys = (f"email:{email}", f"device:dev-{key}")
        s.write("identities", [identity_write(key, 9, *keys)], refreshed_at=T0)
    s.start_staging("identities")
    s.write(
        "identities",
        [
            identity_write("~abc", 9, "email:ann@example.com", "phone:+14155550003"),
            identity_write("c10", 9, "email:ann10@example.com"),
        ],
        refreshed_at=T0,
        staging=True,
    )
    s.put_records(
        C1_RECORDS + customer_records("c10", "ann10@example.com", "c10", "crm-10") + SHARED_RECORDS
    )


def test_erase_removes_a_customer_everywhere_and_leaves_the_neighbour_intact(
    document_store: DocumentStore,
) -> None:
    s = document_store
    two_customers(s)
    s.advance("carts", 12, refreshed_at=T0)
    assert s.acquire_lease("refresh:carts", "A", TTL, at(0))
    before = every_record(s)
    neighbour = s.get("c10")

    counts = s.erase(
        ["~abc", "c1", "web-1"], ["ann@example.com", "+14155550003", "dev-~abc", "Ann Lee"]
    )

    assert counts == {
        "sections": 4,
        "sections:staging": 1,
        "lookup_keys": 2,
        "lookup_keys:staging": 2,
        "records:identity.key": 2,
        "records:identity.link": 1,
        "records:identity.cluster": 1,
        "records:identity.identifier": 1,
        "records:identity.kinds": 1,
        "records:identity.veto": 1,
        "records:trigger.fired": 1,
        "records:trigger.outcome": 1,
        "records:trigger.timer": 1,
        "records:trigger.contacts": 1,
        "records:experiment.assignment": 1,
        "records:outbox.pending": 1,
        "records:outbox.dead": 1,
        "records:dead_letter": 1,
        "records:staged_dead_letter": 1,
    }
    assert s.get("~abc") is None and s.get("c1") is None
    assert s.find("email:ann@example.com") == []
    assert s.find("device:dev-~abc") == []
    assert s.load("identities", ["~abc"], staging=True) == {}
    # The neighbour is as it was, in every dataset, every record, staging included.
    assert s.get("c10") == neighbour
    assert s.find("email:ann10@example.com") == ["c10"]
    assert set(s.load("identities", ["c10"], staging=True)) == {"c10"}
    after = every_record(s)
    gone = {(kind, key) for kind, key, _ in C1_RECORDS}
    assert after == {k: v for k, v in before.items() if k not in gone}
    assert ("identity.key", "c10") in after and ("trigger.contacts", "c10") in after
    # Leases and tracking say nothing of a customer.
    assert s.lease_holder("refresh:carts", at(1)) == "A"
    assert_tracking(s.tracking("carts"), 12, T0)


def test_erasing_again_finds_nothing(document_store: DocumentStore) -> None:
    s = document_store
    two_customers(s)
    first = s.erase(["~abc", "c1", "web-1"], ["ann@example.com"])
    assert first["sections"] == 4
    left = every_record(s)

    again = s.erase(["~abc", "c1", "web-1"], ["ann@example.com"])

    assert again == {
        "sections": 0,
        "sections:staging": 0,
        "lookup_keys": 0,
        "lookup_keys:staging": 0,
    }
    assert every_record(s) == left


def test_erase_redacts_records_that_also_speak_of_other_customers(
    document_store: DocumentStore,
) -> None:
    s = document_store
    unmerged = {"profiles": {"c1": ["c1"], "c9": ["c9"]}, "dropped": ["~abc"]}
    s.put_records(
        [
            # An unmerge that regrouped c9 too: what it says of c9 must stand.
            ("identity.change", f"{40:020d}", unmerged),
            (
                "identity.identifier",
                "device:family-tablet",
                {"kind": "device", "keys": ["c1", "c9"]},
            ),
            ("identity.kinds", "c9", {"kinds": ["device"], "devices": ["dev-1", "family"]}),
            (
                "identity.key",
                "c9",
                {"profile": "c9", "history": [[30, "~abc"], [40, "c9"]], "links": ["L1"]},
            ),
            ("run", "carts/failure", {"status": "failed", "error": "KeyError('c1') in c10"}),
            ("run", "orders/failure", {"status": "failed", "error": "c10 and ac1 and c1x"}),
        ]
    )

    counts = s.erase(["c1", "~abc"], ["dev-1"])

    assert {k: v for k, v in counts.items() if v} == {
        "redacted:identity.change": 1,
        "redacted:identity.identifier": 1,
        "redacted:identity.kinds": 1,
        "redacted:identity.key": 1,
        "redacted:run": 1,
    }
    assert s.get_record("identity.change", f"{40:020d}") == {
        "profiles": {"c9": ["c9"]},
        "dropped": [],
    }
    assert s.get_record("identity.identifier", "device:family-tablet") == {
        "kind": "device",
        "keys": ["c9"],
    }
    assert s.get_record("identity.kinds", "c9") == {"kinds": ["device"], "devices": ["family"]}
    assert s.get_record("identity.key", "c9") == {
        "profile": "c9",
        "history": [[40, "c9"]],
        "links": ["L1"],
    }
    assert s.get_records("run") == {
        "carts/failure": {"status": "failed", "error": "KeyError('[erased]') in c10"},
        "orders/failure": {"status": "failed", "error": "c10 and ac1 and c1x"},
    }


@pytest.mark.parametrize(
    ("customer_ids", "terms", "field"),
    [
        (["c1", ""], [], "customer_ids[1]"),
        (["c1"], ["ann@example.com", " "], "terms[1]"),
        ("c1", [], "customer_ids"),
    ],
)
def test_erase_refuses_an_empty_id_or_term_and_erases_nothing(
    document_store: DocumentStore, customer_ids: Any, terms: Any, field: str
) -> None:
    s = document_store
    s.write("carts", [SectionWrite("c1", carts(), 7)], refreshed_at=T0)
    s.put_record("trigger.contacts", "c1", {"recent": []})

    with pytest.raises(InvalidArgument) as raised:
        s.erase(customer_ids, terms)

    assert raised.value.field == field
    assert s.get("c1") is not None
    assert s.get_record("trigger.contacts", "c1") == {"recent": []}


def test_scrub_answers_whether_no_old_copy_remains_and_can_be_repeated(
    document_store: DocumentStore,
) -> None:
    s = document_store
    s.write("carts", [SectionWrite("c1", carts(), 7)], refreshed_at=T0)
    s.erase(["c1"])

    # SQLite checkpoints and truncates its WAL; MongoDB cannot promise it (see scrub).
    expected = isinstance(s, SQLiteDocumentStore)
    assert s.scrub() is expected
    assert s.scrub() is expected
    assert s.get("c1") is None


# --- leases -------------------------------------------------------------------------------------

TTL = dt.timedelta(seconds=30)
L0 = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.UTC)


def at(seconds: float) -> dt.datetime:
    return L0 + dt.timedelta(seconds=seconds)


def test_a_free_lease_is_acquired(document_store: DocumentStore) -> None:
    assert document_store.lease_holder("refresh:carts", at(0)) is None

    assert document_store.acquire_lease("refresh:carts", "A", TTL, at(0)) is True

    assert document_store.lease_holder("refresh:carts", at(0)) == "A"
    assert document_store.lease_holder("refresh:carts", at(29)) == "A"


def test_a_live_lease_is_refused_to_another_holder(document_store: DocumentStore) -> None:
    s = document_store
    s.acquire_lease("refresh:carts", "A", TTL, at(0))

    assert s.acquire_lease("refresh:carts", "B", TTL, at(10)) is False

    assert s.lease_holder("refresh:carts", at(10)) == "A"
    assert s.lease_holder("refresh:carts", at(31)) is None  # B's attempt did not extend it


def test_the_holder_renews_its_lease(document_store: DocumentStore) -> None:
    s = document_store
    s.acquire_lease("refresh:carts", "A", TTL, at(0))

    assert s.acquire_lease("refresh:carts", "A", TTL, at(20)) is True

    assert s.lease_holder("refresh:carts", at(40)) == "A"
    assert s.acquire_lease("refresh:carts", "B", TTL, at(40)) is False
    assert s.lease_holder("refresh:carts", at(50)) is None


def test_an_expired_lease_goes_to_another_holder(document_store: DocumentStore) -> None:
    s = document_store
    s.acquire_lease("refresh:carts", "A", TTL, at(0))

    assert s.lease_holder("refresh:carts", at(30)) is None  # expires at now + ttl
    assert s.acquire_lease("refresh:carts", "B", TTL, at(30)) is True

    assert s.lease_holder("refresh:carts", at(30)) == "B"
    assert s.acquire_lease("refresh:carts", "A", TTL, at(45)) is False
    assert s.lease_holder("refresh:carts", at(59)) == "B"


def test_release_by_another_holder_does_nothing(document_store: DocumentStore) -> None:
    s = document_store
    s.acquire_lease("refresh:carts", "A", TTL, at(0))

    s.release_lease("refresh:carts", "B")

    assert s.lease_holder("refresh:carts", at(1)) == "A"
    assert s.acquire_lease("refresh:carts", "B", TTL, at(1)) is False


def test_release_by_the_holder_frees_the_lease(document_store: DocumentStore) -> None:
    s = document_store
    s.acquire_lease("refresh:carts", "A", TTL, at(0))

    s.release_lease("refresh:carts", "A")

    assert s.lease_holder("refresh:carts", at(1)) is None
    assert s.acquire_lease("refresh:carts", "B", TTL, at(1)) is True
    assert s.lease_holder("refresh:carts", at(1)) == "B"


def test_releasing_a_lease_nobody_holds_does_nothing(document_store: DocumentStore) -> None:
    document_store.release_lease("refresh:carts", "A")

    assert document_store.lease_holder("refresh:carts", at(0)) is None


def test_leases_are_independent_by_name(document_store: DocumentStore) -> None:
    s = document_store
    assert s.acquire_lease("refresh:carts", "A", TTL, at(0)) is True

    assert s.acquire_lease("refresh:orders", "B", TTL, at(0)) is True

    assert s.lease_holder("refresh:carts", at(1)) == "A"
    assert s.lease_holder("refresh:orders", at(1)) == "B"


# --- customer_ids --------------------------------------------------------------------------------


def test_customer_ids_lists_customers_with_a_live_section_of_the_dataset(
    document_store: DocumentStore,
) -> None:
    s = document_store
    s.write(
        "carts",
        [SectionWrite("c2", carts(), 1), SectionWrite("c1", carts(), 1)],
        refreshed_at=T0,
    )
    s.write("orders", [SectionWrite("c3", orders(), 1)], refreshed_at=T0)
    s.start_staging("carts")
    s.write("carts", [SectionWrite("c4", carts(), 1)], refreshed_at=T0, staging=True)

    assert sorted(s.customer_ids("carts")) == ["c1", "c2"]
    assert list(s.customer_ids("orders")) == ["c3"]
    assert list(s.customer_ids("identities")) == []


def test_a_customer_written_twice_in_one_batch_keeps_the_newest(
    document_store: DocumentStore,
) -> None:
    newer = identity_write("c1", 9, "email:new@example.com")
    older = identity_write("c1", 4, "email:old@example.com")
    assert document_store.write("identities", [newer, older], refreshed_at=T0) == 1
    assert document_store.load("identities", ["c1"])["c1"] == (newer.section, 9)
    assert document_store.find("email:old@example.com") == []
    assert document_store.find("email:new@example.com") == ["c1"]


def test_records_are_stored_listed_by_prefix_replaced_and_deleted(
    document_store: DocumentStore,
) -> None:
    assert document_store.get_records("run") == {}
    document_store.put_record("run", "carts/last", {"status": "running", "n": 1})
    document_store.put_record("run", "carts/success", {"at": "2026-01-01T00:00:00Z"})
    document_store.put_record("run", "orders/last", {"status": "failed", "error": "x.y [z]"})
    document_store.put_record("dead", "carts/c1", {"attempts": 1})
    assert list(document_store.get_records("run", "carts/")) == ["carts/last", "carts/success"]
    assert document_store.get_records("run", "orders/") == {
        "orders/last": {"status": "failed", "error": "x.y [z]"}
    }
    document_store.put_record("run", "carts/last", {"status": "succeeded", "n": 2})
    assert document_store.get_records("run", "carts/l")["carts/last"]["n"] == 2
    document_store.delete_record("run", "carts/last")
    document_store.delete_record("run", "never/there")
    assert list(document_store.get_records("run")) == ["carts/success", "orders/last"]
    assert list(document_store.get_records("dead")) == ["carts/c1"]
    assert document_store.get_records("run", "car.") == {}


def test_raw_and_async_reads_return_what_get_and_find_return(
    document_store: DocumentStore,
) -> None:
    import asyncio

    import msgspec

    carts_write = SectionWrite("c1", carts(), 5)
    document_store.write("carts", [carts_write], refreshed_at=T0)
    document_store.write(
        "identities", [identity_write("c1", 6, "email:a@example.com")], refreshed_at=T0
    )
    profile = document_store.get("c1")
    assert profile is not None

    def decoded(raw: Any) -> dict[str, Any]:
        return {
            n: msgspec.json.decode(r, type=document_store.schemas[n].section)
            for n, r in raw.sections.items()
        }

    raw = document_store.get_raw("c1")
    assert raw is not None and decoded(raw) == profile.sections
    assert raw.freshness == profile.freshness

    async def reads() -> tuple[Any, Any, list[str], list[str]]:
        try:
            return (
                await document_store.aget_raw("c1", ["carts"]),
                await document_store.aget_raw("nobody"),
                await document_store.afind("email:a@example.com"),
                await document_store.afind("email:b@example.com"),
            )
        finally:
            await document_store.aclose()

    only_carts, nobody, found, missing = asyncio.run(reads())
    assert only_carts is not None and decoded(only_carts) == {"carts": carts_write.section}
    assert [m.position for m in only_carts.freshness.values()] == [5]
    assert nobody is None
    assert (found, missing) == (["c1"], [])


# --- put_records and get_records_for ------------------------------------------------------------


def test_put_records_stores_every_record_and_replaces_those_there(
    document_store: DocumentStore,
) -> None:
    s = document_store
    s.put_record("link", "c1", {"to": "old"})

    s.put_records(
        [
            ("link", "c1", {"to": "c9", "rule": {"name": "email", "version": 2}}),
            ("link", "c2", {"to": "c9", "at": "2026-01-01T00:00:00Z"}),
            ("seen", "c1", {"n": 1}),
        ]
    )
    s.put_records([])

    assert s.get_records("link") == {
        "c1": {"to": "c9", "rule": {"name": "email", "version": 2}},
        "c2": {"to": "c9", "at": "2026-01-01T00:00:00Z"},
    }
    assert s.get_records("seen") == {"c1": {"n": 1}}


def test_put_records_applies_them_in_order_so_the_later_of_one_key_stays(
    document_store: DocumentStore,
) -> None:
    s = document_store

    s.put_records([("link", "c1", {"n": 1}), ("link", "c2", {"n": 2}), ("link", "c1", {"n": 3})])

    assert s.get_records("link") == {"c1": {"n": 3}, "c2": {"n": 2}}
    # Storing the same records again changes nothing.
    s.put_records([("link", "c1", {"n": 3}), ("link", "c2", {"n": 2})])
    assert s.get_records("link") == {"c1": {"n": 3}, "c2": {"n": 2}}


def test_delete_records_removes_those_keys_of_one_kind_only(
    document_store: DocumentStore,
) -> None:
    s = document_store
    s.put_records(
        [
            ("queue", "m1", {"n": 1}),
            ("queue", "m2", {"n": 2}),
            ("queue", "m3", {"n": 3}),
            ("done", "m1", {"n": 1}),
        ]
    )

    s.delete_records("queue", ["m1", "m3", "never-there", "m1"])
    s.delete_records("queue", [])

    assert s.get_records("queue") == {"m2": {"n": 2}}
    assert s.get_records("done") == {"m1": {"n": 1}}  # another kind's m1 stays
    s.delete_records("queue", iter(["m1", "m2"]))  # again, and a generator
    assert s.get_records("queue") == {}


def test_get_records_for_answers_exact_keys_of_one_kind_omitting_absent_ones(
    document_store: DocumentStore,
) -> None:
    s = document_store
    s.put_records(
        [
            ("link", "c1", {"to": "c9"}),
            ("link", "c10", {"to": "c8"}),
            ("link", "c2", {"to": "c9"}),
            ("seen", "c3", {"n": 1}),
        ]
    )

    assert s.get_records_for("link", ["c1", "c3", "nobody", "c1"]) == {"c1": {"to": "c9"}}
    assert s.get_records_for("link", iter(["c2", "c10"])) == {
        "c2": {"to": "c9"},
        "c10": {"to": "c8"},
    }
    assert s.get_records_for("seen", ["c1", "c3"]) == {"c3": {"n": 1}}
    assert s.get_records_for("link", []) == {}
    assert s.get_records_for("link", ["c"]) == {}  # not a prefix


def test_get_records_for_reads_more_keys_than_one_chunk(document_store: DocumentStore) -> None:
    s = document_store
    s.put_records([("link", f"c{i:04}", {"n": i}) for i in range(0, 1_200, 2)])

    found = s.get_records_for("link", [f"c{i:04}" for i in range(1_200)])

    assert found == {f"c{i:04}": {"n": i} for i in range(0, 1_200, 2)}


# --- insert_record_if_absent ----------------------------------------------------------------------


def test_insert_record_if_absent_stores_once_and_never_overwrites(
    document_store: DocumentStore,
) -> None:
    s = document_store

    assert s.insert_record_if_absent("fired", "welcome/c1", {"at": "2026-01-01", "n": 1}) is True
    assert s.insert_record_if_absent("fired", "welcome/c1", {"at": "2026-02-02", "n": 2}) is False

    assert s.get_records("fired") == {"welcome/c1": {"at": "2026-01-01", "n": 1}}
    # Another key or another kind is another record.
    assert s.insert_record_if_absent("fired", "welcome/c2", {"n": 3}) is True
    assert s.insert_record_if_absent("sent", "welcome/c1", {"n": 4}) is True
    assert s.get_records("fired", "welcome/c1") == {"welcome/c1": {"at": "2026-01-01", "n": 1}}


def test_insert_record_if_absent_sees_records_put_and_not_deleted_ones(
    document_store: DocumentStore,
) -> None:
    s = document_store
    s.put_record("fired", "k", {"by": "put"})

    assert s.insert_record_if_absent("fired", "k", {"by": "insert"}) is False
    s.delete_record("fired", "k")
    assert s.insert_record_if_absent("fired", "k", {"by": "insert"}) is True

    assert s.get_records("fired") == {"k": {"by": "insert"}}


def test_of_concurrent_inserts_of_one_record_exactly_one_wins(
    document_store: DocumentStore,
) -> None:
    threads = 8
    start = threading.Barrier(threads)
    results: dict[int, bool] = {}
    errors: list[BaseException] = []

    def insert(n: int) -> None:
        try:
            start.wait()
            results[n] = document_store.insert_record_if_absent("fired", "once", {"by": n})
        except BaseException as e:  # reported below: a thread's error must fail the test
            errors.append(e)

    workers = [threading.Thread(target=insert, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()

    assert errors == []
    winners = [n for n, inserted in results.items() if inserted]
    assert len(results) == threads and len(winners) == 1
    assert document_store.get_records("fired") == {"once": {"by": winners[0]}}


# --- closing ------------------------------------------------------------------------------------

CALLS: dict[str, Callable[[DocumentStore], object]] = {
    "get": lambda s: s.get("c1"),
    "find": lambda s: s.find("email:a@example.com"),
    "get_raw": lambda s: s.get_raw("c1"),
    "aget_raw": lambda s: asyncio.run(s.aget_raw("c1")),
    "afind": lambda s: asyncio.run(s.afind("email:a@example.com")),
    "aget_record": lambda s: asyncio.run(s.aget_record("link", "c1")),
    "get_record": lambda s: s.get_record("link", "c1"),
    "get_records_after": lambda s: s.get_records_after("link", ""),
    "load": lambda s: s.load("carts", ["c1"]),
    "write": lambda s: s.write("carts", [SectionWrite("c1", carts(), 1)], refreshed_at=T0),
    "regroup": lambda s: s.regroup("carts", [], ["c1"], refreshed_at=T0),
    "tracking": lambda s: s.tracking("carts"),
    "advance": lambda s: s.advance("carts", 1, refreshed_at=T0),
    "start_staging": lambda s: s.start_staging("carts"),
    "promote_staging": lambda s: s.promote_staging("carts"),
    "customer_ids": lambda s: list(s.customer_ids("carts")),
    "acquire_lease": lambda s: s.acquire_lease("l", "A", TTL, at(0)),
    "release_lease": lambda s: s.release_lease("l", "A"),
    "lease_holder": lambda s: s.lease_holder("l", at(0)),
    "put_record": lambda s: s.put_record("run", "k", {}),
    "put_records": lambda s: s.put_records([("run", "k", {})]),
    "get_records_for": lambda s: s.get_records_for("run", ["k"]),
    "insert_record_if_absent": lambda s: s.insert_record_if_absent("run", "k", {}),
    "get_records": lambda s: s.get_records("run"),
    "delete_record": lambda s: s.delete_record("run", "k"),
    "delete_records": lambda s: s.delete_records("run", ["k", "j"]),
    "erase": lambda s: s.erase(["c1"], ["ann@example.com"]),
    "scrub": lambda s: s.scrub(),
}


def test_the_closing_tests_call_every_port_method() -> None:
    assert sorted(CALLS) == sorted(PORT_METHODS)


@pytest.mark.parametrize("method", sorted(CALLS))
def test_every_call_after_close_raises_store_closed(
    document_store: DocumentStore, method: str
) -> None:
    document_store.write("carts", [SectionWrite("c1", carts(), 1)], refreshed_at=T0)
    document_store.close()

    with pytest.raises(StoreClosed, match="document store is closed"):
        CALLS[method](document_store)


def read_only_twin(store: DocumentStore) -> DocumentStore:
    """The same store opened again read-only, as an auditor's copy is."""
    if isinstance(store, SQLiteDocumentStore):
        return SQLiteDocumentStore(store.path, store.schemas, read_only=True)
    assert isinstance(store, MongoDocumentStore)
    database, name = store.profiles.database, store.profiles.name
    return MongoDocumentStore(database, store.schemas, collection=name, read_only=True)


@pytest.mark.parametrize("method", sorted(WRITE_METHODS))
def test_a_read_only_store_refuses_every_write_and_changes_nothing(
    document_store: DocumentStore, method: str
) -> None:
    document_store.write("carts", [SectionWrite("c1", carts(), 1)], refreshed_at=T0)
    document_store.put_record("run", "k", {"n": 1})
    reader = read_only_twin(document_store)
    try:
        with pytest.raises(ReadOnlyStore, match=f"is open read-only and cannot {method}"):
            CALLS[method](reader)

        assert reader.load("carts", ["c1"]) == {"c1": StoredSection(carts(), 1)}
        assert reader.get_records("run") == {"k": {"n": 1}}
    finally:
        reader.close()


def test_close_is_idempotent_and_nothing_reopens(document_store: DocumentStore) -> None:
    document_store.close()
    document_store.close()

    # Not even from a thread that never had a connection.
    failures: list[BaseException] = []
    reader = threading.Thread(target=lambda: _capture(failures, document_store.get, "c1"))
    reader.start()
    reader.join()

    assert len(failures) == 1 and isinstance(failures[0], StoreClosed)
    asyncio.run(document_store.aclose())  # releasing after close is harmless too


def _capture(failures: list[BaseException], call: Callable[..., object], *args: Any) -> None:
    try:
        call(*args)
    except BaseException as e:  # the test inspects it
        failures.append(e)


def test_get_records_after_reads_one_kind_from_a_key_on(document_store: DocumentStore) -> None:
    s = document_store
    s.put_records([("change", f"{n:05d}", {"n": n}) for n in (3, 1, 12, 7)])
    s.put_records([("changed", "00002", {"other": True}), ("chang", "00009", {"other": True})])
    assert s.get_records_after("change", "") == {
        "00001": {"n": 1},
        "00003": {"n": 3},
        "00007": {"n": 7},
        "00012": {"n": 12},
    }
    assert list(s.get_records_after("change", "00003")) == ["00007", "00012"]
    assert s.get_records_after("change", "00012") == {}


def test_get_records_after_reads_a_bounded_range_in_code_point_order(
    document_store: DocumentStore,
) -> None:
    # A range read of an index kept as records: "<group>\x1f<sortable value>\x1f<key>".
    s = document_store
    keys = ["a\x1f2026-01-02\x1fz", "a\x1f2026-01-01\x1fy", "a\x1f2026-01-03\x1fx"]
    keys += ["a\x1f2026-01-02\x1fé", "b\x1f2026-01-01\x1fw", "a\x1f2026-01-02\x1f\u4e2d"]
    s.put_records([("due", key, {"i": i}) for i, key in enumerate(keys)])
    s.put_records([("duex", "a\x1f2026-01-01\x1fv", {"other": True})])
    until = "a\x1f2026-01-02\x1f\U0010ffff"  # every key of the group up to that day

    found = s.get_records_after("due", "a\x1f", until=until)

    assert list(found) == [
        "a\x1f2026-01-01\x1fy",
        "a\x1f2026-01-02\x1fz",
        "a\x1f2026-01-02\x1fé",
        "a\x1f2026-01-02\x1f\u4e2d",
    ]
    assert found["a\x1f2026-01-01\x1fy"] == {"i": 1}
    assert list(s.get_records_after("due", "a\x1f", until=until, limit=2)) == list(found)[:2]
    assert list(s.get_records_after("due", "a\x1f2026-01-02\x1fz", until=until)) == list(found)[2:]
    assert s.get_records_after("due", "a\x1f", until="a\x1f2025") == {}
    assert list(s.get_records_after("due", "b\x1f", limit=5)) == ["b\x1f2026-01-01\x1fw"]


def test_aget_record_reads_one_record_from_an_event_loop(document_store: DocumentStore) -> None:
    document_store.put_records([("link", "c1", {"to": "c9"}), ("seen", "c1", {"n": 1})])

    async def reads() -> tuple[Any, Any]:
        try:
            return (
                await document_store.aget_record("link", "c1"),
                await document_store.aget_record("link", "nobody"),
            )
        finally:
            await document_store.aclose()

    assert asyncio.run(reads()) == ({"to": "c9"}, None)
    assert document_store.get_record("link", "c1") == {"to": "c9"}
    assert document_store.get_record("seen", "c9") is None
