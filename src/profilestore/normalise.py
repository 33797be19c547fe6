"""Identifiers: the lookup key of an email, phone, handle or device id, and whether it
identifies anyone at all.

One key is built for an identifier when its event is validated, when the identities fold
keeps it, and when a lookup asks for it, so the three cannot disagree:

- **email**: trimmed, lower-cased as a whole and put in Unicode NFC, then checked with
  ``email-validator`` (syntax only, no DNS; internationalised addresses pass). The local
  part is lower-cased too: RFC 5321 lets a server tell ``Ann@`` from ``ann@``, but the
  big mailbox providers do not, and a key that did would split one person in two.
- **phone**: parsed with ``phonenumbers`` and kept in E.164 (``+14155550003``); a number
  without its country code is read as dialled in the policy's ``default_region``. One
  that does not parse, or has no possible length for its country, is refused.
- **handle**: lower-cased, a leading ``@`` dropped, qualified by its network
  (:func:`escape_network`).
- **device**: trimmed, otherwise exactly as sent.

A refusal is a ``ValueError`` whose message starts with the field (``"`value` is not a
phone number ..."``), so an event's error names ``$.value``; it never quotes the value,
which is personal data.

**Blocked values** identify nobody (:func:`is_blocked`): the placeholders of
:data:`PLACEHOLDERS` (``null``, ``undefined``, ``0``, ``anonymous``, ...) in any case, an
all-zero device id (``00000000-0000-0000-0000-000000000000``), an empty value (which
:func:`normalise_identifier` refuses anyway, as no identifier), and the
configured ``[identity] blocked_values`` (the same, case-insensitive) and
``blocked_patterns`` (regular expressions matching the whole normalised value: the part
after ``KIND:``, after ``NETWORK:`` for handles). An event carrying one is still valid
(clients send ``identify(null)`` all the time); the identities fold keeps no blocked
value and a lookup of one answers "not found".

**The policy is process-wide.** Folds are pure ``(section, event)`` functions and cannot
see the settings, so :func:`~profilestore.store.open_store` calls
``configure(policy_from_settings(settings.identity))`` once, before it opens anything;
until then the policy is the defaults of :class:`~profilestore.config.IdentitySettings`
(two stores opened in one process with different ``[identity]`` settings share the policy
of the last one opened). Changing ``default_region`` or the blocked lists therefore
changes what folds produce: after changing them, run ``profilestore rebuild identities``
(documents folded before keep the keys and values of the old policy until they are
refolded).
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import phonenumbers
from email_validator import EmailNotValidError, validate_email

if TYPE_CHECKING:
    from profilestore.config import IdentitySettings

CONTROL_CHARACTER = re.compile(r"[\x00-\x1f\x7f-\x9f]")

PLACEHOLDERS = frozenset(
    {
        "null",
        "undefined",
        "none",
        "nil",
        "nan",
        "0",
        "-1",
        "anonymous",
        "unknown",
        "n/a",
        "test",
        "[object object]",
    }
)
"""Values a client sends when it has no identifier (compared case-insensitively)."""

_ALL_ZERO = re.compile(r"0+(?:[-:.]?0+)*")
"""An all-zero device id: a UUID, an advertising id or a MAC address left unset."""

# An email or phone is parsed once while it is among the last 16k seen (a phone per
# region), not at every read: a rebuild normalises each identifier event twice (its
# validation on decode, then the fold, within one page of events), and email-validator
# and phonenumbers cost 20-30 µs a call where a cache hit costs under 1 µs.
_CACHED = 1 << 14


def check_region(region: str) -> None:
    """ValueError unless phonenumbers knows ``region`` (``"US"``, ``"GB"``, ...)."""
    if region not in phonenumbers.SUPPORTED_REGIONS:
        raise ValueError(
            f"`default_region` {region!r} is not a region of phone numbers: give an ISO 3166 "
            'alpha-2 code in capitals, e.g. "US", "GB", "DE"'
        )


def compile_patterns(patterns: Iterable[str]) -> tuple[re.Pattern[str], ...]:
    """The ``blocked_patterns`` compiled; one that does not compile is a ValueError naming
    its index."""
    compiled = []
    for index, pattern in enumerate(patterns):
        try:
            compiled.append(re.compile(pattern))
        except re.error as e:
            raise ValueError(
                f"`blocked_patterns[{index}]` is not a regular expression: {e}"
            ) from None
    return tuple(compiled)


@dataclass(frozen=True)
class IdentifierPolicy:
    """How identifiers are normalised and which ones are blocked (see the module)."""

    default_region: str = "US"
    blocked_values: frozenset[str] = frozenset()
    """Compared case-insensitively with the normalised value (kept trimmed, case-folded)."""
    blocked_patterns: tuple[re.Pattern[str], ...] = ()

    def __post_init__(self) -> None:
        check_region(self.default_region)
        folded = frozenset(value.strip().casefold() for value in self.blocked_values)
        object.__setattr__(self, "blocked_values", folded)

    def normalise(self, kind: str, value: str, network: str | None = None) -> str:
        """The lookup key of an identifier, e.g. ``phone:+14155550003``; ValueError naming
        the field (never quoting the value) when it is not one."""
        if CONTROL_CHARACTER.search(value) or (
            network is not None and CONTROL_CHARACTER.search(network)
        ):
            raise ValueError("an identifier may not contain a control character")
        value = value.strip()
        if kind == "email":
            return _email_key(value)
        if kind == "phone":
            return _phone_key(value, self.default_region)
        if kind == "handle":
            if not network or not network.strip():
                raise ValueError("`network` is required when `kind` is 'handle'")
            handle = value.lstrip("@").lower()
            if not handle:
                raise ValueError("`value` is an empty handle")
            return f"handle:{escape_network(network.strip().lower())}:{handle}"
        if kind == "device":
            if not value:
                raise ValueError("`value` is an empty device id")
            return f"device:{value}"
        raise ValueError(f"`kind` {kind!r} is not one of email, phone, handle, device")

    def is_blocked(self, kind: str, lookup_key: str) -> bool:
        """Whether the identifier keyed ``lookup_key`` (as :meth:`normalise` returns it)
        identifies nobody: a placeholder, empty, or blocked by the settings."""
        value = identified_value(kind, lookup_key)
        folded = value.casefold()
        if not value or folded in PLACEHOLDERS or folded in self.blocked_values:
            return True
        if kind == "device" and _ALL_ZERO.fullmatch(value):
            return True
        return any(pattern.fullmatch(value) for pattern in self.blocked_patterns)


def identified_value(kind: str, lookup_key: str) -> str:
    """The normalised value inside a lookup key: after ``KIND:``, and after the network
    for a handle (whose network holds no ``:``, see :func:`escape_network`)."""
    prefix = f"{kind}:"
    if not lookup_key.startswith(prefix):
        raise ValueError(f"a lookup key of kind {kind!r} starts with {prefix!r}")
    value = lookup_key[len(prefix) :]
    if kind == "handle":
        value = value.partition(":")[2]
    return value


@functools.lru_cache(maxsize=_CACHED)
def _email_key(value: str) -> str:
    address = unicodedata.normalize("NFC", value.lower())
    try:
        validate_email(address, check_deliverability=False)
    except EmailNotValidError:
        # Its reason quotes the address (or its domain): say what is wrong without it.
        raise ValueError("`value` is not an email address (name@domain)") from None
    return f"email:{address}"


@functools.lru_cache(maxsize=_CACHED)
def _phone_key(value: str, region: str) -> str:
    try:
        number = phonenumbers.parse(value, region)
    except phonenumbers.NumberParseException:
        number = None
    if (
        number is None
        or phonenumbers.is_possible_number_with_reason(number)
        != phonenumbers.ValidationResult.IS_POSSIBLE
    ):
        raise ValueError(
            "`value` is not a phone number: give it with its country code (+14155550003) "
            f"or as dialled in the default region ({region})"
        )
    return f"phone:{phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)}"


_policy = IdentifierPolicy()


def configure(policy: IdentifierPolicy) -> None:
    """Make ``policy`` the one every normalisation and fold of this process uses."""
    global _policy  # noqa: PLW0603 - the process-wide policy (see the module docstring)
    _policy = policy


def current_policy() -> IdentifierPolicy:
    return _policy


def policy_from_settings(identity: IdentitySettings) -> IdentifierPolicy:
    return IdentifierPolicy(
        default_region=identity.default_region,
        blocked_values=frozenset(identity.blocked_values),
        blocked_patterns=compile_patterns(identity.blocked_patterns),
    )


def normalise_identifier(kind: str, value: str, network: str | None = None) -> str:
    """The lookup key of an identifier under the current policy (see the module)."""
    return _policy.normalise(kind, value, network)


def is_blocked(kind: str, lookup_key: str) -> bool:
    """Whether ``lookup_key`` (as :func:`normalise_identifier` returns it) identifies
    nobody under the current policy."""
    return _policy.is_blocked(kind, lookup_key)


_NETWORK_ESCAPE = re.compile(r"%(25|3a)", re.IGNORECASE)


def escape_network(network: str) -> str:
    """A network as it stands in a handle's lookup key: ``%`` and ``:`` percent-escaped.

    The first ``:`` after the network then always ends it, so network ``twit:ter`` with
    handle ``ann`` (``handle:twit%3ater:ann``) and network ``twit`` with handle ``ter:ann``
    (``handle:twit:ter:ann``) are two keys. Networks without either character, all the
    usual ones, are unchanged.
    """
    return network.replace("%", "%25").replace(":", "%3a")


def unescape_network(text: str) -> str:
    """The network named by the NETWORK part of a ``NETWORK:HANDLE`` lookup, where a
    ``:`` in a network is written ``%3A`` (and ``%`` as ``%25``); other ``%`` stay."""
    return _NETWORK_ESCAPE.sub(lambda m: "%" if m.group(1) == "25" else ":", text)
