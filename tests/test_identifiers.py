"""Lookup keys: one per identifier, unambiguous, and the same at ingest and at lookup."""

from __future__ import annotations

import hypothesis
import pytest
from hypothesis import strategies as st

from profilestore.errors import InvalidIdentifier
from profilestore.events import escape_network, normalise_identifier
from profilestore.identifiers import lookup_key

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
