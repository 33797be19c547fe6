"""The identifiers a profile can be looked up by, declared once.

The kinds are the event catalogue's (:data:`~profilestore.events.IdentifierKind`); the CLI's
``find`` options, the HTTP API's query parameters and the validation of a lookup are all
built from :data:`LOOKUP_KINDS`, so they cannot disagree. A malformed value is the
caller's mistake (:class:`~profilestore.errors.InvalidIdentifier`: HTTP 400, exit code 2);
a well-formed one nobody holds, or a blocked placeholder (``null``, ``0``, ...: see
:mod:`profilestore.normalise`), is "not found".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import get_args

from profilestore.errors import InvalidIdentifier
from profilestore.events import IdentifierKind
from profilestore.normalise import CONTROL_CHARACTER, normalise_identifier, unescape_network


@dataclass(frozen=True)
class LookupKind:
    name: str
    help: str


_HELP = {
    "email": "An email address, e.g. ann@example.com (case and spaces ignored).",
    "phone": "A phone number, e.g. +14155550003, or (415) 555-0003 as dialled in the default "
    "region (punctuation ignored).",
    "handle": "A social handle as NETWORK:HANDLE, e.g. twitter:@ann (a ':' in the network "
    "as %3A, a '%' as %25).",
    "device": "A device or anonymous id, exactly as sent.",
}

_MALFORMED = {
    "email": "not an email address",
    "phone": "not a phone number: give it with its country code (+14155550003) or as dialled "
    "in the default region (`[identity] default_region`)",
    "handle": "the handle is empty",
    "device": "the device id is empty",
}

LOOKUP_KINDS: tuple[LookupKind, ...] = tuple(
    LookupKind(kind, _HELP[kind]) for kind in get_args(IdentifierKind)
)
KIND_NAMES: tuple[str, ...] = tuple(k.name for k in LOOKUP_KINDS)


def lookup_key(kind: str, value: str) -> str:
    """The stored lookup key of ``value`` (normalised as on ingest)."""
    if kind not in KIND_NAMES:
        raise InvalidIdentifier(kind, f"not a kind of identifier; one of {', '.join(KIND_NAMES)}")
    network = None
    if kind == "handle":
        # The network ends at the first ':'; a network holding one writes it '%3A'.
        network, sep, value = value.partition(":")
        if not sep or not network.strip():
            raise InvalidIdentifier(kind, "give it as NETWORK:HANDLE, e.g. twitter:@ann")
        network = unescape_network(network)
    if CONTROL_CHARACTER.search(value) or (network and CONTROL_CHARACTER.search(network)):
        raise InvalidIdentifier(kind, "contains a control character; no identifier holds one")
    try:
        return normalise_identifier(kind, value, network)
    except ValueError:
        # The normaliser's message names the event's field (`value`): say it in a lookup's terms.
        raise InvalidIdentifier(kind, _MALFORMED[kind]) from None


def one_identifier(given: dict[str, str | None]) -> tuple[str, str]:
    """The single (kind, value) among optional inputs named by kind."""
    chosen = [(k, v) for k, v in given.items() if v is not None]
    if len(chosen) != 1:
        raise InvalidIdentifier("identifier", f"give exactly one of {', '.join(KIND_NAMES)}")
    return chosen[0]
