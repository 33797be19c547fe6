"""The application service: batch semantics, validation errors, lookups."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import msgspec
import pytest

from profilestore.config import Settings
from profilestore.errors import (
    AmbiguousIdentifier,
    CustomerNotFound,
    IdentifierNotFound,
    InvalidArgument,
    InvalidEvent,
    InvalidIdentifier,
    NoDatasetSelected,
    UnknownDataset,
)
from profilestore.events import CartItemAdded, IdentifierSeen
from profilestore.store import ProfileStore, open_store

NOW = dt.datetime(2026, 11, 23, 9, 30, tzinfo=dt.UTC)


def seen(event_id: str, customer_id: str, kind: str, value: str, **extra: Any) -> dict[str, Any]:
    return {
        "type": "identifier.seen",
        "event_id": event_id,
        "customer_id": customer_id,
        "occurred_at": "2026-01-01T10:00:00Z",
        "kind": kind,
        "value": value,
        **extra,
    }


def cart_item(event_id: str, customer_id: str = "ann", **changes: Any) -> dict[str, Any]:
    return {
        "type": "cart.item_added",
        "event_id": event_id,
        "customer_id": customer_id,
        "occurred_at": "2026-01-01T10:01:00+02:00",
        "cart_id": "k1",
        "sku": "SKU-1",
        "quantity": 2,
        "unit_price": "9.99",
        "currency": "USD",
        **changes,
    }


@pytest.fixture
def store(settings: Settings) -> Any:
    with open_store(settings, clock=lambda: NOW) as opened:
        yield opened


@pytest.mark.parametrize(
    ("bad", "path", "reason"),
    [
        ({"quantity": 0}, "$.quantity", "Expected `int` >= 1"),
        ({"unit_price": "-1"}, "$.unit_price", "must be an amount from 0 to"),
        ({"currency": "usd"}, "$.currency", "Expected `str` matching regex"),
        ({"occurred_at": "2026-01-01T10:00:00"}, "$.occurred_at", "timezone"),
        ({"type": "cart.exploded"}, "$.type", "Invalid value 'cart.exploded'"),
        ({"sku": None}, "$.sku", "Expected `str`, got `null`"),
        ({"surprise": 1}, "$", "unknown field `surprise`"),
    ],
)
def test_an_invalid_event_rejects_its_whole_batch_naming_index_field_and_reason(
    store: ProfileStore, bad: dict[str, Any], path: str, reason: str
) -> None:
    batch = [cart_item("ok-1"), cart_item("ok-2"), cart_item("bad", **bad)]
    with pytest.raises(InvalidEvent) as raised:
        store.append(batch)
    error = raised.value
    assert (error.index, error.path) == (2, path)
    assert reason in error.reason
    assert error.event_id == "bad"
    assert error.field == f"events[2]{path[1:]}"
    assert "nothing of it was appended" in str(error)
    assert store.head() == 0


def test_cross_field_rules_name_the_field(store: ProfileStore) -> None:
    with pytest.raises(InvalidEvent) as raised:
        store.append([seen("h", "ann", "handle", "@ann")])
    assert raised.value.path == "$.network"
    with pytest.raises(InvalidEvent) as raised:
        store.append([seen("e", "ann", "email", "not-an-email")])
    assert raised.value.path == "$.value"


def test_structs_built_in_python_get_the_same_validation_as_json(store: ProfileStore) -> None:
    # Struct constructors don't check constraints; append must.
    event = CartItemAdded(
        event_id="e",
        customer_id="ann",
        occurred_at=NOW,
        cart_id="k",
        sku="s",
        quantity=0,
        unit_price=Decimal(1),
        currency="USD",
    )
    with pytest.raises(InvalidEvent, match="quantity"):
        store.append([event])


def test_json_lines_and_dicts_and_structs_are_accepted_alike(store: ProfileStore) -> None:
    struct = IdentifierSeen(
        event_id="s", customer_id="ann", occurred_at=NOW, kind="device", value="dev-1"
    )
    line = (
        b'{"type":"consent.given","event_id":"j","customer_id":"ann",'
        b'"occurred_at":"2026-01-01T00:00:00Z","channel":"email"}'
    )
    result = store.append([struct, line, cart_item("d")])
    assert result.appended == 3
    assert {e.recorded_at for e in store.history("ann")} == {NOW}


def test_recorded_at_is_set_by_the_store_not_the_client(store: ProfileStore) -> None:
    store.append([cart_item("e", recorded_at="1999-01-01T00:00:00Z")])
    (event,) = store.history("ann")
    assert event.recorded_at == NOW
    assert event.occurred_at == dt.datetime(2026, 1, 1, 8, 1, tzinfo=dt.UTC)


def test_find_normalises_identifiers_like_ingest_does(store: ProfileStore) -> None:
    store.append(
        [
            seen("1", "ann", "email", " Ann.Lee@Example.COM "),
            seen("2", "ann", "phone", "+1 (555) 010-2030"),
            seen("3", "ann", "handle", "@AnnLee", network="Twitter"),
            seen("4", "ann", "device", "dev-42"),
        ]
    )
    store.refresh()
    assert store.find("email", "ann.lee@example.com").customer_id == "ann"
    assert store.find("phone", "+15550102030").customer_id == "ann"
    assert store.find("handle", "twitter:annlee").customer_id == "ann"
    assert store.find("device", "dev-42").customer_id == "ann"
    only = store.find("email", "ANN.LEE@example.com", ["identities"])
    assert set(only.sections) == {"identities"}


def test_unknown_identifiers_and_customers_are_not_found(store: ProfileStore) -> None:
    store.append([seen("1", "ann", "email", "ann@example.com")])
    store.refresh()
    with pytest.raises(IdentifierNotFound, match="no profile has this email") as missing:
        store.find("email", "bob@example.com")
    assert "bob" not in str(missing.value)  # personal data stays out of messages
    with pytest.raises(CustomerNotFound, match="'bob'"):
        store.profile("bob")


@pytest.mark.parametrize(
    ("kind", "value", "reason"),
    [
        ("email", "ann-at-example.com", "not an email address"),
        ("phone", "call-me-12", "not a phone number"),
        ("handle", "no-network-given", "NETWORK:HANDLE"),
        ("handle", "twitter:", "empty"),
        ("device", " ", "empty"),
        ("fax", "123", "not a kind of identifier"),
    ],
)
def test_a_malformed_identifier_is_invalid_not_missing(
    store: ProfileStore, kind: str, value: str, reason: str
) -> None:
    with pytest.raises(InvalidIdentifier, match=reason) as raised:
        store.find(kind, value)
    if kind in ("email", "phone"):
        assert value not in str(raised.value)  # personal data stays out of messages


def test_an_identifier_two_customers_share_links_them_into_one_profile(
    store: ProfileStore,
) -> None:
    store.append(
        [
            seen("1", "ann", "email", "ann@example.com"),
            seen("2", "bob", "email", "ANN@example.com"),
        ]
    )
    store.refresh()
    found = store.find("email", "ann@example.com")
    assert found.canonical_id == store.resolve("ann") == store.resolve("bob") != "ann"


def test_an_identifier_too_many_customers_share_is_ambiguous(store: ProfileStore) -> None:
    # More keys than `shared_after.email` (5): a shared address links nobody.
    holders = [f"member-{i}" for i in range(6)]
    store.append(
        [seen(str(i), who, "email", "family@example.com") for i, who in enumerate(holders)]
    )
    store.refresh()
    with pytest.raises(AmbiguousIdentifier) as raised:
        store.find("email", "family@example.com")
    assert len(raised.value.customer_ids) >= 2


def test_a_dataset_selection_naming_none_is_refused_not_read_as_all_or_nothing(
    store: ProfileStore,
) -> None:
    store.append([seen("1", "ann", "email", "ann@example.com")])
    store.refresh()
    with pytest.raises(NoDatasetSelected, match="`datasets` names no dataset"):
        store.profile("ann", [])
    with pytest.raises(NoDatasetSelected):
        store.find("email", "ann@example.com", [])
    with pytest.raises(NoDatasetSelected):
        store.profile_raw("ann", [])


def test_profile_can_be_limited_to_datasets_and_rejects_unknown_ones(
    store: ProfileStore,
) -> None:
    store.append([seen("1", "ann", "email", "ann@example.com"), cart_item("2")])
    store.refresh()
    profile = store.profile("ann", ["carts"])
    assert set(profile.sections) == {"carts"}
    assert profile.freshness["carts"].position == 2
    assert profile.freshness["carts"].refreshed_at == NOW
    assert profile.sections["carts"].open[0].value == Decimal("19.98")
    with pytest.raises(UnknownDataset, match="'cart'"):
        store.profile("ann", ["cart"])
    with pytest.raises(CustomerNotFound):
        store.profile("ann", ["social"])


# --- identifiers mean the same on every backend -------------------------------------------

CONTROL_CHARACTERS = ["\x00", "\t", "\n", "\r", "\x1b", "\x7f", "\x85"]


def store_on(settings: Settings, log_backend: dict[str, Any]) -> ProfileStore:
    if log_backend["name"] == "sqlite":
        return open_store(settings, clock=lambda: NOW)
    log = msgspec.structs.replace(
        settings.event_log, url=log_backend["url"], postgres_schema=log_backend["schema"]
    )
    return open_store(msgspec.structs.replace(settings, event_log=log), clock=lambda: NOW)


@pytest.mark.parametrize("control", CONTROL_CHARACTERS, ids=repr)
@pytest.mark.parametrize(
    ("field", "path"),
    [
        ({"event_id": "e{c}1"}, "$.event_id"),
        ({"customer_id": "ann{c}"}, "$.customer_id"),
        ({"cart_id": "{c}k1"}, "$.cart_id"),
    ],
)
def test_a_control_character_in_a_key_is_refused_on_every_backend(
    settings: Settings,
    log_backend: dict[str, Any],
    control: str,
    field: dict[str, str],
    path: str,
) -> None:
    bad = {name: value.format(c=control) for name, value in field.items()}
    with store_on(settings, log_backend) as store:
        with pytest.raises(InvalidEvent) as raised:
            store.append([cart_item("ok"), cart_item("e2") | bad])
        assert (raised.value.index, raised.value.path) == (1, path)
        assert store.head() == 0
        assert store.append([cart_item("ok")]).appended == 1


@pytest.mark.parametrize("control", CONTROL_CHARACTERS, ids=repr)
def test_a_control_character_in_an_identifier_or_network_is_refused_on_every_backend(
    settings: Settings, log_backend: dict[str, Any], control: str
) -> None:
    with store_on(settings, log_backend) as store:
        for event, path in (
            (seen("1", "ann", "device", f"dev{control}9"), "$.value"),
            (seen("2", "ann", "handle", "ann") | {"network": f"x{control}"}, "$.network"),
        ):
            with pytest.raises(InvalidEvent) as raised:
                store.append([event])
            assert raised.value.path == path
        with pytest.raises(InvalidIdentifier, match="control character"):
            store.find("device", f"dev{control}9")
        assert store.head() == 0


def test_may_contact_answers_from_consents_with_the_deciding_event(store: ProfileStore) -> None:
    given = {
        "type": "consent.given",
        "event_id": "c-1",
        "customer_id": "ann",
        "occurred_at": "2026-01-01T10:00:00Z",
        "channel": "email",
    }
    store.append([given, seen("s-1", "ann", "email", "ann@example.com")])
    store.refresh()
    decision = store.may_contact("ann", "email")
    assert (decision.allowed, decision.reason, decision.decided_by) == (True, "granted", "c-1")
    # Unknown means no: another purpose, another channel, another customer.
    assert store.may_contact("ann", "email", "research").reason == "no decision recorded"
    assert not store.may_contact("ann", "sms").allowed
    assert not store.may_contact("nobody", "email").allowed
    unsubscribe = {
        "type": "email.unsubscribed",
        "event_id": "u-1",
        "customer_id": "ann",
        "occurred_at": "2026-02-01T10:00:00Z",
    }
    store.append([unsubscribe])
    store.refresh()
    withdrawn = store.may_contact("ann", "email")
    assert (withdrawn.allowed, withdrawn.reason, withdrawn.decided_by) == (
        False,
        "withdrawn",
        "u-1",
    )
    with pytest.raises(InvalidArgument, match="`channel` is not a channel"):
        store.may_contact("ann", "pigeon")
    exported = store.export("ann")
    assert [(c.channel, c.granted) for c in exported.consents] == [("email", False)]
