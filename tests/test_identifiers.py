"""Lookup keys: one per identifier, unambiguous, and the same at ingest and at lookup;
blocked values are valid events that no lookup finds."""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Iterator
from typing import Any

import hypothesis
import msgspec
import pytest
from hypothesis import strategies as st

from profilestore.config import IdentitySettings, Settings
from profilestore.errors import (
    IdentifierNotFound,
    InvalidEvent,
    InvalidIdentifier,
)
from profilestore.events import escape_network, normalise_identifier
from profilestore.identifiers import lookup_key
from profilestore.store import ProfileStore, open_store

_parts = st.text(alphabet=st.sampled_from("ab:%3A25@ "), min_size=1, max_size=8)


def test_a_network_holding_a_colon_does_not_collide_with_a_handle_holding_one() -> None:
    one = normalise_identifier("handle", "ann", "twit:ter")
    other = normalise_identifier("handle", "ter:ann", "twit")
    assert one != other
    assert (one, other) == ("handle:twit%3ater:ann", "handle:twit:ter:ann")


def test_usual_networks_keep_the_keys_they_had() -> None:
    assert normalise_identifier("handle", "@AnnLee", "Instagram") == "handle:instagram:annlee"


@hypothesis.given(_parts, _parts, _parts, _parts)
@hypothesis.settings(max_examples=400, deadline=None)
def test_two_handles_share_a_key_only_when_network_and_handle_normalise_alike(
    network_a: str, handle_a: str, network_b: str, handle_b: str
) -> None:
    try:
        key_a = normalise_identifier("handle", handle_a, network_a)
        key_b = normalise_identifier("handle", handle_b, network_b)
    except ValueError:
        return
    same_network = network_a.strip().lower() == network_b.strip().lower()
    same_handle = handle_a.strip().lstrip("@").lower() == handle_b.strip().lstrip("@").lower()
    assert (key_a == key_b) == (same_network and same_handle)


@hypothesis.given(_parts, _parts)
@hypothesis.settings(max_examples=200, deadline=None)
def test_a_lookup_with_the_network_escaped_finds_the_key_stored_at_ingest(
    network: str, handle: str
) -> None:
    try:
        stored = normalise_identifier("handle", handle, network)
    except ValueError:
        return
    written = f"{escape_network(network).replace('%3a', '%3A')}:{handle}"
    assert lookup_key("handle", written) == stored


def test_a_handle_lookup_needs_a_network() -> None:
    for written in ("ann", ":ann", " :ann"):
        with pytest.raises(InvalidIdentifier, match="NETWORK:HANDLE"):
            lookup_key("handle", written)


# --- through the store: what is ingested is found by any form of it --------------------

NOW = dt.datetime(2026, 11, 23, 9, 30, tzinfo=dt.UTC)
_ids = itertools.count()


def seen(customer_id: str, kind: str, value: str, **extra: Any) -> dict[str, Any]:
    return {
        "type": "identifier.seen",
        "event_id": f"e{next(_ids)}",
        "customer_id": customer_id,
        "occurred_at": "2026-01-01T10:00:00Z",
        "kind": kind,
        "value": value,
        **extra,
    }


def with_identity(settings: Settings, **identity: Any) -> Settings:
    return msgspec.structs.replace(settings, identity=IdentitySettings(**identity))


@pytest.fixture
def store(settings: Settings) -> Iterator[ProfileStore]:
    with open_store(settings, clock=lambda: NOW) as opened:
        yield opened


def identity_keys(store: ProfileStore, customer_id: str) -> list[str]:
    section = store.profile(customer_id, ["identities"]).sections["identities"]
    return [i.key for i in section.identifiers]


US_FORMS = ["+1 (415) 555-0003", "14155550003", "(415) 555-0003", "1-415-555-0003", "+14155550003"]


@pytest.mark.parametrize("ingested", US_FORMS)
def test_a_phone_ingested_in_one_form_is_found_by_every_other(
    store: ProfileStore, ingested: str
) -> None:
    store.append([seen("ann", "phone", ingested)])
    store.refresh()
    assert identity_keys(store, "ann") == ["phone:+14155550003"]
    for asked in US_FORMS:
        assert store.find("phone", asked).customer_id == "ann"


def test_two_forms_of_one_phone_are_one_identifier_seen_twice(store: ProfileStore) -> None:
    store.append([seen("ann", "phone", "1-415-555-0003"), seen("ann", "phone", "+14155550003")])
    store.refresh()
    (phone,) = store.profile("ann", ["identities"]).sections["identities"].identifiers
    assert (phone.key, phone.times_seen, phone.value) == ("phone:+14155550003", 2, "+14155550003")


def test_an_unparseable_phone_is_refused_naming_the_field_not_the_value(
    store: ProfileStore,
) -> None:
    with pytest.raises(InvalidEvent) as raised:
        store.append([seen("ann", "email", "ann@example.com"), seen("ann", "phone", "777-01")])
    assert (raised.value.index, raised.value.path) == (1, "$.value")
    assert "not a phone number" in str(raised.value)
    assert "777" not in str(raised.value)  # personal data stays out of messages
    assert store.head() == 0


def test_a_uk_number_is_found_in_region_gb_by_its_national_and_international_forms(
    settings: Settings,
) -> None:
    with open_store(with_identity(settings, default_region="GB")) as store:
        store.append([seen("ann", "phone", "020 7946 0018")])
        store.refresh()
        assert identity_keys(store, "ann") == ["phone:+442079460018"]
        assert store.find("phone", "+44 20 7946 0018").customer_id == "ann"
        assert store.find("phone", "02079460018").customer_id == "ann"


def test_an_international_number_is_found_in_any_region(store: ProfileStore) -> None:
    store.append([seen("ann", "phone", "+44 20 7946 0018")])
    store.refresh()
    assert store.find("phone", "+442079460018").customer_id == "ann"
    with pytest.raises(InvalidIdentifier, match="not a phone number"):
        store.find("phone", "020 7946 0018")  # national UK form, read in region US


# --- blocked values: valid events, never lookup keys -------------------------------------


def test_placeholders_are_ingested_but_neither_kept_nor_found(store: ProfileStore) -> None:
    placeholders = ["null", "undefined", "NULL", "0", "-1", "00000000-0000-0000-0000-000000000000"]
    result = store.append(
        [seen("ann", "email", "ann@example.com")]
        + [seen(customer, "device", value) for customer in ("ann", "bob") for value in placeholders]
        + [seen("bob", "handle", "@anonymous", network="twitter")]
    )
    assert result.appended == 2 + 2 * len(placeholders)  # refusing identify(null) helps nobody
    store.refresh()
    assert identity_keys(store, "ann") == ["email:ann@example.com"]
    assert identity_keys(store, "bob") == []  # held nothing but placeholders
    for value in placeholders:
        # Held by two customers, yet neither ambiguous nor found: it identifies nobody.
        with pytest.raises(IdentifierNotFound, match="no profile has this device") as raised:
            store.find("device", value)
        assert value not in str(raised.value)
    with pytest.raises(IdentifierNotFound):
        store.find("handle", "twitter:anonymous")


def test_an_unlinked_placeholder_changes_nothing(store: ProfileStore) -> None:
    unlinked = seen("ann", "device", "null") | {"type": "identifier.unlinked"}
    store.append([seen("ann", "device", "dev-1"), unlinked])
    store.refresh()
    assert identity_keys(store, "ann") == ["device:dev-1"]


def test_configured_values_and_patterns_are_blocked(settings: Settings) -> None:
    configured = with_identity(
        settings, blocked_values=["Guest"], blocked_patterns=[r"test-\d+", r"\+1555\d{7}"]
    )
    with open_store(configured) as store:
        store.append(
            [
                seen("ann", "device", "GUEST"),
                seen("ann", "device", "test-42"),
                seen("ann", "device", "my-test-42"),
                seen("ann", "phone", "(555) 010-2030"),
            ]
        )
        store.refresh()
        assert identity_keys(store, "ann") == ["device:my-test-42"]
        for kind, value in [("device", "guest"), ("device", "test-42"), ("phone", "5550102030")]:
            with pytest.raises(IdentifierNotFound):
                store.find(kind, value)


def test_a_value_blocked_later_is_not_found_at_once_and_dropped_by_a_rebuild(
    settings: Settings,
) -> None:
    with open_store(settings) as store:
        store.append([seen("ann", "device", "guest"), seen("ann", "device", "dev-1")])
        store.refresh()
        assert store.find("device", "guest").customer_id == "ann"
    with open_store(with_identity(settings, blocked_values=["guest"])) as store:
        # The documents still list it until they are refolded; the lookup already refuses.
        assert "device:guest" in identity_keys(store, "ann")
        with pytest.raises(IdentifierNotFound):
            store.find("device", "guest")
        report = store.rebuild(["identities"])
        assert report.dead_letters == {"identities": 0}
        assert identity_keys(store, "ann") == ["device:dev-1"]


def test_an_identifier_todays_policy_cannot_read_is_dropped_not_dead_lettered(
    settings: Settings,
) -> None:
    with open_store(with_identity(settings, default_region="GB")) as store:
        store.append([seen("ann", "phone", "020 7946 0018"), seen("ann", "device", "dev-1")])
        store.refresh()
    # Read in region US, the stored national UK number is no phone number any more.
    with open_store(settings) as store:
        report = store.rebuild(["identities"])
        assert report.dead_letters == {"identities": 0}
        assert identity_keys(store, "ann") == ["device:dev-1"]
        assert store.verify().ok
