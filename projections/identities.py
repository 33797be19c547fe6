"""Identities: every email, phone, social handle and device id seen or linked.

The lookup keys of this section are what ``find --email/--phone/--handle/--device`` match,
built by :mod:`profilestore.normalise` under the process's identifier policy.

Kept only if it identifies someone: a blocked value (a placeholder such as ``null`` or
``0``, or one the ``[identity]`` settings block) is neither kept nor a lookup key, and
neither is an identifier stored under older rules that today's cannot normalise (a phone
that no longer parses, in another default region say). Either is dropped rather than
dead-lettered: the event stays valid in the log, and parking the customer's identities on
it would hold back every later identifier of theirs.
"""

from __future__ import annotations

from collections.abc import Iterator

import msgspec

from profilestore.events import (
    Event,
    IdentifierLinked,
    IdentifierSeen,
    IdentifierUnlinked,
    Timestamp,
)
from profilestore.normalise import is_blocked
from profilestore.projection import Projection

CAP_PER_KIND = 20
"""Most identifiers of one kind kept; the least recently seen goes first."""


class Identifier(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    kind: str
    key: str
    """Normalised lookup key, e.g. ``email:ann@example.com``."""
    value: str
    """As last received."""
    network: str | None = None
    linked: bool = False
    first_seen: Timestamp
    last_seen: Timestamp
    times_seen: int = 1


class Identities(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    identifiers: tuple[Identifier, ...] = ()


def fold(section: Identities, event: Event) -> Identities:
    if not isinstance(event, IdentifierSeen | IdentifierLinked | IdentifierUnlinked):
        return section
    try:
        key = event.lookup_key
    except ValueError:
        return section  # stored under rules that accepted it: it identifies nobody now
    if is_blocked(event.kind, key):
        return section
    others = tuple(i for i in section.identifiers if i.key != key)
    if isinstance(event, IdentifierUnlinked):
        return Identities(identifiers=others)
    current = next((i for i in section.identifiers if i.key == key), None)
    linked = isinstance(event, IdentifierLinked)
    if current is None:
        entry = Identifier(
            kind=event.kind,
            key=key,
            value=event.value,
            network=event.network,
            linked=linked,
            first_seen=event.occurred_at,
            last_seen=event.occurred_at,
        )
    else:
        entry = msgspec.structs.replace(
            current,
            value=event.value,
            linked=current.linked or linked,
            first_seen=min(current.first_seen, event.occurred_at),
            last_seen=max(current.last_seen, event.occurred_at),
            times_seen=current.times_seen + 1,
        )
    same_kind = [i for i in others if i.kind == entry.kind]
    if len(same_kind) >= CAP_PER_KIND:
        # Evict the least recently seen unlinked identifier of this kind (linked ones stay).
        evictable = [i for i in same_kind if not i.linked] or same_kind
        victim = min(evictable, key=lambda i: i.last_seen)
        others = tuple(i for i in others if i is not victim)
    return Identities(identifiers=(*others, entry))


def lookup_keys(section: Identities) -> Iterator[str]:
    return (i.key for i in section.identifiers)


PROJECTION = Projection(
    dataset="identities",
    reads=(IdentifierSeen, IdentifierLinked, IdentifierUnlinked),
    section=Identities,
    fold=fold,
    default_refresh="realtime",
    retention=f"up to {CAP_PER_KIND} identifiers per kind",
    lookup_keys=lookup_keys,
    # 2: a network's ':' and '%' are escaped in handle keys, so they cannot collide.
    # 3: phones keyed in E.164, emails checked by email-validator, blocked values dropped.
    version=3,
)
