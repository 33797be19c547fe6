"""Identity resolution: one person, many customer keys.

A *link* says two customer keys are one person. Links are events in the log like every
other fact (:class:`~profilestore.events.IdentityLinked`, retracted by
:class:`~profilestore.events.IdentityUnlinked`), made by a rule or by an operator, never
edits. The keys joined by active links form a *cluster*, and a cluster is one profile:
one document holding the fold of all its keys' events in log order, under a canonical id.

**The graph** is derived from the log by one more consumer of the pipeline
(:class:`IdentityHandler`, target ``identity``): it reads identifier and link events in
log order, keeps the graph in the record store (who holds which identifier, each link
with its rule or operator, its evidence and its fate, each key's profile), and writes a
*change* at the position of every link that regroups profiles: which profiles exist now
and with which keys, which ones are gone. It also runs the rules: when a key presents an
identifier another key holds, and the identifier's kind is strong enough, it appends a
link naming the rule, its version and the evidence (or records why it refused). Rule
links are checked again when they are applied (the graph then is a function of the log
prefix, so a rebuild decides the same).

**Canonical ids** depend only on the cluster as it is, not on how it came to be: a
cluster of one key is that key; a larger one is ``~`` and a hash of its *oldest active
link*. A cluster merging into an older one keeps the older id; retracting a link gives
every part the id it would have had without that link, so ``unmerge(merge(A, B))``
restores A's and B's profiles exactly, ids included, and a rebuild agrees.

**Datasets apply changes** (see :class:`Regrouping`, used by the projector): before
folding, a dataset's pass reads the changes it has not applied, refolds the affected
profiles from their keys' streams (the cost is the events of the profiles involved,
never the log), writes them and removes the profiles that are gone, in one step
(:meth:`~profilestore.documents.SectionStore.regroup`), then records the last change it
applied. Its events are then routed to the profile of their key as of that change. A
replay applies a change again to the same effect (it refolds from the log), so a crash
anywhere is safe.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import msgspec

from profilestore.config import IdentitySettings
from profilestore.documents import DocumentStore
from profilestore.eventlog import EventLog, Notified
from profilestore.events import (
    IdentifierLinked,
    IdentifierSeen,
    IdentifierUnlinked,
    IdentityLinked,
    IdentityUnlinked,
)
from profilestore.mapper import topics_for
from profilestore.normalise import is_blocked
from profilestore.pipeline import Clock, Handler, Pass, PassReport

TARGET = "identity-graph"
"""The graph consumer's target: its lease, its tracked position and its runs (not a valid
dataset name, so no dataset can share them)."""

RULES_VERSION = 1
"""The version of the linking rules below; links made by rules name it."""

KEY = "identity.key"
LINK = "identity.link"
CLUSTER = "identity.cluster"
IDENTIFIER = "identity.identifier"
KINDS = "identity.kinds"
VETO = "identity.veto"
CHANGE = "identity.change"
APPLIED = "identity.applied"

CANONICAL_PREFIX = "~"
DEVICES_KEPT = 20
"""Devices remembered per key, for the device rule to look at again."""
KNOWN_KINDS = frozenset({"email", "phone"})
"""A key (a cluster) that presented one of these is *known*; otherwise anonymous."""

LINK_TOPICS = (*topics_for(IdentityLinked), *topics_for(IdentityUnlinked))
IDENTIFIER_TOPICS = (
    *topics_for(IdentifierSeen),
    *topics_for(IdentifierLinked),
    *topics_for(IdentifierUnlinked),
)

Status = Literal["active", "retracted", "refused"]


class Link(msgspec.Struct, frozen=True, kw_only=True):
    """A link as the graph knows it: who made it, on what evidence, and what became of it."""

    id: str
    """The id of the link event (for a refusal: of the refusal)."""
    a: str
    b: str
    position: int
    at: dt.datetime
    rule: str | None = None
    rule_version: int | None = None
    actor: str | None = None
    reason: str | None = None
    evidence: str | None = None
    """The identifier that showed it (a lookup key such as ``email:ann@example.com``)."""
    evidence_event_id: str | None = None
    status: Status = "active"
    refused: str | None = None
    """Why a rule did not link the keys (status ``refused``)."""
    retracted_position: int | None = None
    retracted_at: dt.datetime | None = None
    retracted_by: str | None = None
    retracted_reason: str | None = None

    def joins(self, key: str) -> str:
        """The key at the other end from ``key``."""
        return self.b if key == self.a else self.a

    def active_at(self, position: int | None = None, at: dt.datetime | None = None) -> bool:
        """Whether the link joined its keys at a log position, or at a time (None: now)."""
        if self.status == "refused":
            return False
        if position is not None:
            return self.position <= position and (
                self.retracted_position is None or self.retracted_position > position
            )
        if at is not None:
            return self.at <= at and (self.retracted_at is None or self.retracted_at > at)
        return self.status == "active"


class KeyState(msgspec.Struct, frozen=True, kw_only=True):
    """A customer key the graph has seen linked (or refused): its profile now and before."""

    profile: str
    """The id of the profile the key belongs to now (itself when alone)."""
    history: tuple[tuple[int, str], ...] = ()
    """(change position, profile id) for every change of the key's profile, oldest first."""
    links: tuple[str, ...] = ()
    """Ids of every link (and refusal) naming the key."""

    def profile_at(self, position: int) -> str | None:
        """The key's profile after the changes up to ``position`` (None: before any)."""
        found = None
        for since, profile in self.history:
            if since > position:
                break
            found = profile
        return found


class Cluster(msgspec.Struct, frozen=True, kw_only=True):
    members: tuple[str, ...] = ()
    """Sorted customer keys; empty once the profile was split or merged away."""


class Holders(msgspec.Struct, frozen=True, kw_only=True):
    """The customer keys that presented an identifier, up to one more than its kind's
    limit (then it is shared, and links nobody)."""

    kind: str
    keys: tuple[str, ...] = ()


class KeyKinds(msgspec.Struct, frozen=True, kw_only=True):
    """The identifier kinds a customer key presented (a device rule asks: is it known?),
    and its latest devices (to look at again once the key becomes known)."""

    kinds: tuple[str, ...] = ()
    devices: tuple[str, ...] = ()


class Veto(msgspec.Struct, frozen=True, kw_only=True):
    """An operator unlinked two keys: rules do not link them again (an operator may)."""

    position: int
    actor: str | None = None
    cleared: bool = False


class Change(msgspec.Struct, frozen=True, kw_only=True):
    """The profiles a link regrouped: every profile now holding the keys involved (with
    its keys), and the ids of profiles that no longer exist."""

    profiles: dict[str, tuple[str, ...]]
    dropped: tuple[str, ...] = ()


def canonical_id(link_id: str) -> str:
    """The id of a cluster whose oldest active link is ``link_id`` (never a customer key:
    those may not start with ``~``)."""
    return CANONICAL_PREFIX + hashlib.sha256(link_id.encode()).hexdigest()[:24]


def profile_of(documents: DocumentStore, key: str) -> str:
    """The profile ``key`` belongs to now: one point read, nothing decoded beyond it (the
    redirect every lookup pays)."""
    if is_canonical(key):
        return key
    found = documents.get_record(KEY, key)
    return key if found is None else str(found["profile"])


async def aprofile_of(documents: DocumentStore, key: str) -> str:
    """:meth:`IdentityGraph.profile_of` for an event loop (one record read)."""
    if is_canonical(key):
        return key
    found = await documents.aget_record(KEY, key)
    return key if found is None else str(found["profile"])


def is_canonical(profile_id: str) -> bool:
    return profile_id.startswith(CANONICAL_PREFIX)


def change_key(position: int) -> str:
    return f"{position:020d}"


def _pair(a: str, b: str) -> str:
    first, second = sorted((a, b))
    return f"{first}\x1f{second}"


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:40]


@dataclass(frozen=True)
class LinkRules:
    """Which shared identifiers link customer keys (from ``[identity]`` in the config)."""

    auto_link: frozenset[str]
    device_links: str
    shared_after: Mapping[str, int]
    max_cluster_keys: int

    @classmethod
    def from_settings(cls, settings: IdentitySettings) -> LinkRules:
        return cls(
            auto_link=frozenset(settings.auto_link),
            device_links=settings.device_links,
            shared_after={str(kind): limit for kind, limit in settings.shared_after.items()},
            max_cluster_keys=settings.max_cluster_keys,
        )


def _convert(kind: str, value: Mapping[str, Any]) -> Any:
    return msgspec.convert(value, _RECORD_TYPES[kind])


_RECORD_TYPES: dict[str, type[msgspec.Struct]] = {
    KEY: KeyState,
    LINK: Link,
    CLUSTER: Cluster,
    IDENTIFIER: Holders,
    KINDS: KeyKinds,
    VETO: Veto,
    CHANGE: Change,
}


class IdentityGraph:
    """The link graph in the record store, read through a cache.

    Readers (``resolve``, ``explain``, an as-of profile) use it read-only; the graph
    consumer's pass writes through it and :meth:`flush` stores what changed, changes
    first: a crash in between leaves changes that a replay writes again, never a
    regrouped key without its change.
    """

    def __init__(self, documents: DocumentStore) -> None:
        self.documents = documents
        self._cache: dict[tuple[str, str], Any] = {}
        self._dirty: dict[tuple[str, str], Any] = {}

    # --- records ------------------------------------------------------------------------

    def _get(self, kind: str, key: str) -> Any:
        cached = self._cache.get((kind, key), _MISSING)
        if cached is not _MISSING:
            return cached
        found = self.documents.get_record(kind, key)
        value = None if found is None else _convert(kind, found)
        self._cache[(kind, key)] = value
        return value

    def prefetch(self, kind: str, keys: Iterable[str]) -> None:
        """Read the records of ``keys`` in one query (a page's customers)."""
        wanted = [k for k in set(keys) if (kind, k) not in self._cache]
        if not wanted:
            return
        found = self.documents.get_records_for(kind, wanted)
        for key in wanted:
            value = found.get(key)
            self._cache[(kind, key)] = None if value is None else _convert(kind, value)

    def _put(self, kind: str, key: str, value: msgspec.Struct) -> None:
        self._cache[(kind, key)] = value
        self._dirty[(kind, key)] = value

    def pending(self) -> int:
        return len(self._dirty)

    def flush(self) -> None:
        if not self._dirty:
            return
        # Changes first: a regrouped key is never stored without the change saying so.
        ordered = sorted(self._dirty.items(), key=lambda item: item[0][0] != CHANGE)
        self.documents.put_records(
            [(kind, key, msgspec.to_builtins(value)) for (kind, key), value in ordered]
        )
        self._dirty.clear()

    def forget_cache(self) -> None:
        self._cache.clear()

    # --- reading ------------------------------------------------------------------------

    def key(self, key: str) -> KeyState | None:
        found: KeyState | None = self._get(KEY, key)
        return found

    def profile_of(self, key: str) -> str:
        """The profile ``key`` belongs to now (itself when it is alone)."""
        state = self.key(key)
        return state.profile if state else key

    def members(self, profile: str) -> tuple[str, ...]:
        """The keys of a profile: a canonical id's cluster, or the key alone (() for a
        key that belongs to another profile, or a canonical id no longer in use)."""
        if is_canonical(profile):
            cluster: Cluster | None = self._get(CLUSTER, profile)
            return cluster.members if cluster else ()
        return (profile,) if self.profile_of(profile) == profile else ()

    def profile_ids_of(self, key: str) -> set[str]:
        """Every profile id the key has belonged to (now and before), itself included."""
        state = self.key(key)
        return {key} | ({state.profile} | {p for _, p in state.history} if state else set())

    def link(self, link_id: str) -> Link | None:
        found: Link | None = self._get(LINK, link_id)
        return found

    def links_of(self, key: str) -> list[Link]:
        state = self.key(key)
        if state is None:
            return []
        return [link for i in state.links if (link := self.link(i)) is not None]

    def component(
        self, start: str, *, position: int | None = None, at: dt.datetime | None = None
    ) -> set[str]:
        """The keys joined to ``start`` by links active now (or at a position or time)."""
        seen = {start}
        frontier = [start]
        while frontier:
            key = frontier.pop()
            for link in self.links_of(key):
                if link.active_at(position, at):
                    other = link.joins(key)
                    if other not in seen:
                        seen.add(other)
                        frontier.append(other)
        return seen

    def canonical(
        self, members: Iterable[str], *, position: int | None = None, at: dt.datetime | None = None
    ) -> str:
        """The id of the cluster ``members``: its one key, or the hash of its oldest link."""
        keys = set(members)
        if len(keys) == 1:
            return next(iter(keys))
        oldest: tuple[int, str] | None = None
        for key in keys:
            for link in self.links_of(key):
                if link.active_at(position, at) and link.joins(key) in keys:
                    candidate = (link.position, link.id)
                    if oldest is None or candidate < oldest:
                        oldest = candidate
        assert oldest is not None, "a cluster of several keys has an active link"
        return canonical_id(oldest[1])

    def kinds(self, keys: Iterable[str]) -> set[str]:
        """The identifier kinds the keys presented."""
        keys = list(keys)
        self.prefetch(KINDS, keys)
        found: set[str] = set()
        for key in keys:
            record: KeyKinds | None = self._get(KINDS, key)
            if record is not None:
                found.update(record.kinds)
        return found

    def vetoed(self, a: str, b: str) -> bool:
        veto: Veto | None = self._get(VETO, _pair(a, b))
        return veto is not None and not veto.cleared

    # --- writing (the graph consumer only) ----------------------------------------------

    def add_kind(self, key: str, kind: str, *, device: str | None = None) -> None:
        record: KeyKinds = self._get(KINDS, key) or KeyKinds()
        kinds = tuple(sorted({kind, *record.kinds}))
        devices = record.devices
        if device is not None and device not in devices:
            devices = (*devices, device)[-DEVICES_KEPT:]
        if kinds != record.kinds or devices != record.devices:
            self._put(KINDS, key, KeyKinds(kinds=kinds, devices=devices))

    def devices(self, key: str) -> tuple[str, ...]:
        record: KeyKinds | None = self._get(KINDS, key)
        return record.devices if record else ()

    def set_veto(self, a: str, b: str, position: int, actor: str | None) -> None:
        self._put(VETO, _pair(a, b), Veto(position=position, actor=actor))

    def clear_veto(self, a: str, b: str, position: int) -> None:
        if self.vetoed(a, b):
            # Kept, marked cleared: a record is not deleted inside the atomic batch.
            self._put(VETO, _pair(a, b), Veto(position=position, cleared=True))

    def holders(self, identifier: str) -> Holders | None:
        found: Holders | None = self._get(IDENTIFIER, identifier)
        return found

    def hold(self, identifier: str, kind: str, key: str, limit: int) -> Holders:
        """Record that ``key`` presented ``identifier`` (kept up to ``limit + 1`` keys)."""
        current = self.holders(identifier) or Holders(kind=kind)
        if key in current.keys or len(current.keys) > limit:
            return current
        updated = Holders(kind=kind, keys=(*current.keys, key))
        self._put(IDENTIFIER, identifier, updated)
        return updated

    def release(self, identifier: str, key: str) -> None:
        current = self.holders(identifier)
        if current is not None and key in current.keys:
            self._put(
                IDENTIFIER,
                identifier,
                Holders(kind=current.kind, keys=tuple(k for k in current.keys if k != key)),
            )

    def record_link(self, link: Link, *, index_other: bool = True) -> None:
        """Store a new link (or refusal) and index it under both keys (or under its own
        key only: a shared identifier's refusals would pile up on its first holder)."""
        self._put(LINK, link.id, link)
        for key in (link.a, link.b) if index_other else (link.a,):
            state = self.key(key) or KeyState(profile=key)
            if link.id not in state.links:
                self._put(KEY, key, msgspec.structs.replace(state, links=(*state.links, link.id)))

    def update_link(self, link: Link) -> None:
        self._put(LINK, link.id, link)

    def regroup(self, keys: Iterable[str], position: int) -> Change | None:
        """Recompute the clusters of ``keys`` (after a link changed) and record the change
        at ``position``: None when every key keeps its profile and every profile its keys."""
        involved: set[str] = set()
        for key in keys:
            involved.update(self.members(self.profile_of(key)) or (key,))
        old_profiles = {self.profile_of(k) for k in involved}
        groups: list[set[str]] = []
        placed: set[str] = set()
        for key in sorted(involved):
            if key not in placed:
                group = self.component(key)
                groups.append(group)
                placed |= group
        profiles = {self.canonical(group): tuple(sorted(group)) for group in groups}
        unchanged = (
            all(self.members(profile) == members for profile, members in profiles.items())
            and set(profiles) == old_profiles
        )
        if unchanged:
            return None
        change = Change(profiles=profiles, dropped=tuple(sorted(old_profiles - set(profiles))))
        self._put(CHANGE, change_key(position), change)
        for profile in change.dropped:
            if is_canonical(profile):
                self._put(CLUSTER, profile, Cluster())
        for profile, members in profiles.items():
            if is_canonical(profile):
                self._put(CLUSTER, profile, Cluster(members=members))
            for key in members:
                state = self.key(key) or KeyState(profile=key)
                if state.profile != profile:
                    self._put(
                        KEY,
                        key,
                        msgspec.structs.replace(
                            state, profile=profile, history=(*state.history, (position, profile))
                        ),
                    )
        return change


_MISSING = object()


# --- the graph consumer ----------------------------------------------------------------


@dataclass
class Proposal:
    """A link a rule wants, or its refusal, decided when an identifier was presented."""

    key: str
    other: str
    identifier: str
    kind: str
    evidence: Notified


class IdentityHandler(Handler):
    """The graph consumer: identifier and link events in, the graph and rule links out."""

    lease_kind = "graph"

    def __init__(
        self, log: EventLog, documents: DocumentStore, rules: LinkRules, *, clock: Clock
    ) -> None:
        self.log = log
        self.documents = documents
        self.rules = rules
        self.clock = clock

    def begin(self, targets: Sequence[str]) -> _IdentityPass:
        assert list(targets) == [TARGET], targets
        tracked = self.documents.tracking(TARGET)
        return _IdentityPass(self, tracked.position if tracked else 0)


class _IdentityPass(Pass):
    def __init__(self, handler: IdentityHandler, position: int) -> None:
        self.handler = handler
        self.rules = handler.rules
        self.graph = IdentityGraph(handler.documents)
        self.position = position
        self.start = position
        self.topics = (*IDENTIFIER_TOPICS, *LINK_TOPICS)
        self.applied = 0
        self.appended = 0
        self.changes = 0

    def resume(self) -> None:
        self.applied = self.appended = self.changes = 0
        # Another process may have written the graph while we held no lease.
        self.graph.forget_cache()

    def handle(self, page: Sequence[Notified]) -> None:
        graph = self.graph
        # A page's records in a few queries, not one per event.
        keys = {n.event.customer_id for n in page}
        graph.prefetch(KEY, keys)
        graph.prefetch(KINDS, keys)
        graph.prefetch(
            IDENTIFIER,
            {
                n.event.lookup_key
                for n in page
                if isinstance(n.event, IdentifierSeen | IdentifierLinked | IdentifierUnlinked)
            },
        )
        proposals: list[IdentityLinked | IdentityUnlinked] = []
        for logged in page:
            if logged.notification_id <= self.position:
                continue
            event = logged.event
            if isinstance(event, IdentityLinked):
                self._link(logged, event)
            elif isinstance(event, IdentityUnlinked):
                self._unlink(logged, event)
            elif isinstance(event, IdentifierSeen | IdentifierLinked):
                proposals.extend(self._presented(logged, event))
            elif isinstance(event, IdentifierUnlinked):
                key = _identifier_key(event)
                if key is not None:
                    graph.release(key, event.customer_id)
            self.applied += 1
        if proposals:
            # Idempotent by event id: a replay proposes the same links, appended once.
            result = self.handler.log.append(proposals)
            self.appended += result.appended

    # --- rules ----------------------------------------------------------------------------

    def _presented(
        self, logged: Notified, event: IdentifierSeen | IdentifierLinked
    ) -> list[IdentityLinked | IdentityUnlinked]:
        identifier = _identifier_key(event)
        if identifier is None:
            return []  # a placeholder (null, anonymous, ...) identifies nobody
        graph = self.graph
        key = event.customer_id
        cluster = graph.members(graph.profile_of(key)) or (key,)
        was_known = bool(graph.kinds(cluster) & KNOWN_KINDS)
        graph.add_kind(key, event.kind, device=identifier if event.kind == "device" else None)
        proposals = self._shared(logged, event, key, identifier)
        if event.kind in KNOWN_KINDS and not was_known:
            # The profile just became known: a device it shares with an anonymous key,
            # refused while both were anonymous, may link that key into it now.
            proposals += self._devices_now_known(logged, event, cluster)
        return proposals

    def _shared(
        self,
        logged: Notified,
        event: IdentifierSeen | IdentifierLinked,
        key: str,
        identifier: str,
    ) -> list[IdentityLinked | IdentityUnlinked]:
        """What presenting ``identifier`` links (or, once it shows as shared, unlinks)."""
        graph = self.graph
        limit = self.rules.shared_after.get(event.kind, 5)
        before = graph.holders(identifier)
        holders = graph.hold(identifier, event.kind, key, limit)
        if event.kind not in self.rules.auto_link or (before and key in before.keys):
            return []
        others = [k for k in holders.keys if k != key]
        if not others:
            return []
        rule = f"shared-{event.kind}"
        if len(holders.keys) > limit:
            shared = f"the {event.kind} is shared by more than {limit} customer keys"
            self._refuse(logged, key, others[0], rule, identifier, shared, index_other=False)
            # It links nobody: the links it made before it showed as shared are retracted
            # (a rule's correction, not an operator's word: no veto).
            return [
                IdentityUnlinked(
                    event_id="unlink-" + _digest(link.id),
                    customer_id=link.a,
                    other=link.b,
                    link_id=link.id,
                    occurred_at=event.occurred_at,
                    recorded_at=self.handler.clock(),
                    source="profilestore.identity",
                    rule=rule,
                    rule_version=RULES_VERSION,
                    reason=shared,
                )
                for link in iter_links(graph, holders.keys)
                if link.status == "active" and link.evidence == identifier and link.rule
            ]
        return self._propose(logged, event, key, others, identifier)

    def _devices_now_known(
        self, logged: Notified, event: IdentifierSeen | IdentifierLinked, cluster: Iterable[str]
    ) -> list[IdentityLinked | IdentityUnlinked]:
        graph = self.graph
        if "device" not in self.rules.auto_link:
            return []
        limit = self.rules.shared_after.get("device", 3)
        proposals: list[IdentityLinked | IdentityUnlinked] = []
        for member in cluster:
            for device in graph.devices(member):
                holders = graph.holders(device)
                if holders is None or len(holders.keys) > limit:
                    continue
                others = [k for k in holders.keys if k != member]
                proposals += self._propose(logged, event, member, others, device)
        return proposals

    def _propose(
        self,
        logged: Notified,
        event: IdentifierSeen | IdentifierLinked,
        key: str,
        others: Iterable[str],
        identifier: str,
    ) -> list[IdentityLinked | IdentityUnlinked]:
        """Links from ``key`` to each of ``others`` on ``identifier`` that the rules allow;
        the refused ones are recorded with their reason."""
        graph = self.graph
        rule = f"shared-{_kind_of(identifier)}"
        proposals: list[IdentityLinked | IdentityUnlinked] = []
        mine = graph.profile_of(key)
        for other in others:
            if graph.profile_of(other) == mine:
                continue
            refused = self._refusal(key, other, identifier)
            if refused:
                self._refuse(logged, key, other, rule, identifier, refused)
                continue
            proposals.append(
                IdentityLinked(
                    event_id="link-" + _digest(rule, str(RULES_VERSION), key, other, identifier),
                    customer_id=key,
                    other=other,
                    occurred_at=event.occurred_at,
                    recorded_at=self.handler.clock(),
                    source="profilestore.identity",
                    rule=rule,
                    rule_version=RULES_VERSION,
                    evidence=identifier,
                    evidence_event_id=event.event_id,
                )
            )
        return proposals

    def _refusal(self, key: str, other: str, identifier: str | None) -> str | None:
        """Why a rule may not link ``key`` and ``other`` on ``identifier`` now, or None."""
        graph = self.graph
        kind = _kind_of(identifier)
        if graph.vetoed(key, other):
            return "an operator unlinked these keys"
        holders = graph.holders(identifier) if identifier else None
        limit = self.rules.shared_after.get(kind, 5)
        if holders is not None and len(holders.keys) > limit:
            return f"the {kind} is shared by more than {limit} customer keys"
        mine = graph.members(graph.profile_of(key)) or (key,)
        theirs = graph.members(graph.profile_of(other)) or (other,)
        if kind == "device" and self.rules.device_links == "anonymous":
            known = (bool(graph.kinds(mine) & KNOWN_KINDS), bool(graph.kinds(theirs) & KNOWN_KINDS))
            if known == (True, True):
                return "a device links an anonymous key into a known one only; both are known"
            if known == (False, False):
                return "a device links an anonymous key into a known one only; neither is known"
        size = len(set(mine) | set(theirs))
        if size > self.rules.max_cluster_keys:
            return f"the profile would hold {size} keys, more than {self.rules.max_cluster_keys}"
        return None

    def _refuse(
        self,
        logged: Notified,
        key: str,
        other: str,
        rule: str,
        identifier: str,
        reason: str,
        *,
        index_other: bool = True,
    ) -> None:
        refusal_id = "refused-" + _digest(rule, key, identifier)
        if self.graph.link(refusal_id) is not None:
            return
        self.graph.record_link(
            Link(
                id=refusal_id,
                a=key,
                b=other,
                position=logged.notification_id,
                at=logged.event.recorded_at or self.handler.clock(),
                rule=rule,
                rule_version=RULES_VERSION,
                evidence=identifier,
                evidence_event_id=logged.event.event_id,
                status="refused",
                refused=reason,
            ),
            index_other=index_other,
        )

    # --- links --------------------------------------------------------------------------

    def _link(self, logged: Notified, event: IdentityLinked) -> None:
        graph = self.graph
        if graph.link(event.event_id) is not None:
            return  # applied before a crash: the change was stored with it
        a, b = event.customer_id, event.other
        link = Link(
            id=event.event_id,
            a=a,
            b=b,
            position=logged.notification_id,
            at=event.recorded_at or self.handler.clock(),
            rule=event.rule,
            rule_version=event.rule_version,
            actor=event.actor,
            reason=event.reason,
            evidence=event.evidence,
            evidence_event_id=event.evidence_event_id,
        )
        if event.rule is not None:
            # Checked again at the link's place in the log: the graph here is a function
            # of the log before it, so a rebuild refuses exactly what we refuse.
            refused = self._refusal(a, b, event.evidence)
            if refused and graph.profile_of(a) != graph.profile_of(b):
                graph.record_link(msgspec.structs.replace(link, status="refused", refused=refused))
                return
        else:
            graph.clear_veto(a, b, logged.notification_id)
        graph.record_link(link)
        if graph.regroup((a, b), logged.notification_id):
            self.changes += 1

    def _unlink(self, logged: Notified, event: IdentityUnlinked) -> None:
        graph = self.graph
        a, b = event.customer_id, event.other
        retracted = [
            link
            for link in graph.links_of(a)
            if link.status == "active"
            and link.joins(a) == b
            and (event.link_id is None or link.id == event.link_id)
        ]
        if event.rule is None:
            graph.set_veto(a, b, logged.notification_id, event.actor)
        if not retracted:
            return
        for link in retracted:
            graph.update_link(
                msgspec.structs.replace(
                    link,
                    status="retracted",
                    retracted_position=logged.notification_id,
                    retracted_at=event.recorded_at or self.handler.clock(),
                    retracted_by=event.actor or event.rule,
                    retracted_reason=event.reason,
                )
            )
        if graph.regroup((a, b), logged.notification_id):
            self.changes += 1

    # --- committing ---------------------------------------------------------------------

    def should_commit(self) -> bool:
        return self.graph.pending() >= 5000

    def commit(self, through: int) -> None:
        self.graph.flush()
        if through > self.position or self.position == 0:
            self.handler.documents.advance(TARGET, through, refreshed_at=self.handler.clock())
            self.position = max(self.position, through)

    def report(self, report: PassReport) -> PassReport:
        report.events_applied = {TARGET: self.applied}
        report.sections_written = {TARGET: self.changes}
        report.released = {TARGET: self.appended}
        return report


def _identifier_key(event: IdentifierSeen | IdentifierLinked | IdentifierUnlinked) -> str | None:
    """The identifier's lookup key, or None for a value that identifies nobody."""
    key = event.lookup_key
    return None if is_blocked(event.kind, key) else key


def _kind_of(evidence: str | None) -> str:
    return evidence.partition(":")[0] if evidence else ""


# --- datasets: applying changes --------------------------------------------------------


def applied_key(dataset: str, staging: bool) -> str:
    return f"{dataset}@staging" if staging else dataset


def graph_position(documents: DocumentStore) -> int:
    tracked = documents.tracking(TARGET)
    return tracked.position if tracked else 0


def changes_between(documents: DocumentStore, after: int, until: int) -> list[tuple[int, Change]]:
    """The changes recorded at positions in ``(after, until]``, oldest first."""
    found = []
    for key, value in documents.get_records_after(CHANGE, change_key(after)).items():
        position = int(key)
        if position > until:
            break
        found.append((position, msgspec.convert(value, Change)))
    return found


def profiles_at(documents: DocumentStore, position: int) -> dict[str, str]:
    """key -> profile id, for every key whose profile (after the changes up to
    ``position``) is not itself."""
    mapping = {}
    for key, value in documents.get_records(KEY).items():
        state = msgspec.convert(value, KeyState)
        profile = state.profile_at(position)
        if profile is not None and profile != key:
            mapping[key] = profile
    return mapping


def route(profiles: dict[str, str], changes: Iterable[Change]) -> None:
    """Update a routing (key -> profile id, for keys not alone) with ``changes``, in order."""
    regrouped, _ = combine(changes)
    for profile, members in regrouped.items():
        for member in members:
            if member == profile:
                profiles.pop(member, None)
            else:
                profiles[member] = profile


class Routing:
    """Where each customer key's events go (key -> profile id, for keys not alone), as of
    a graph position, kept between passes: a pass opening at a later position applies the
    changes since instead of reading every key (the records of a position never change)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._position = -1
        self._profiles: dict[str, str] = {}

    def at(self, documents: DocumentStore, position: int) -> dict[str, str]:
        """A copy of the routing as of ``position``."""
        with self._lock:
            if 0 <= self._position <= position:
                changes = changes_between(documents, self._position, position)
                route(self._profiles, (change for _, change in changes))
                self._position = position
                return dict(self._profiles)
        profiles = profiles_at(documents, position)
        with self._lock:
            if position > self._position:
                self._position, self._profiles = position, dict(profiles)
        return profiles


def combine(changes: Iterable[Change]) -> tuple[dict[str, tuple[str, ...]], set[str]]:
    """Several changes as one: the profiles they leave (with their keys), and the ids
    they drop for good."""
    profiles: dict[str, tuple[str, ...]] = {}
    dropped: set[str] = set()
    for change in changes:
        for profile in change.dropped:
            profiles.pop(profile, None)
            dropped.add(profile)
        for profile, members in change.profiles.items():
            profiles[profile] = members
            dropped.discard(profile)
    return profiles, dropped


def merged_changes(
    log: EventLog,
    members: Sequence[str],
    *,
    after: int = 0,
    until: int | None = None,
    topics: Sequence[str] = (),
    limit: int | None = None,
) -> list[Notified]:
    """The events of every key of a profile, in log order, as of one moment: up to
    ``until``, else up to the head as it is when called (the first ``limit``, if given:
    each key's first ``limit`` hold them)."""
    if len(members) == 1:
        return log.customer_changes(
            members[0], after=after, until=until, topics=topics, limit=limit
        )
    if until is None:
        # One cut for every key: each stream is read by its own query, and a batch
        # committed between two of them would be seen for one key and not the other. A
        # refolded section records its last event's position, so the event missed would
        # then be skipped by every later fold as if it were in the section.
        until = log.head()
    merged: list[Notified] = []
    for key in members:
        merged.extend(
            log.customer_changes(key, after=after, until=until, topics=topics, limit=limit)
        )
    merged.sort(key=lambda n: n.notification_id)
    return merged if limit is None else merged[:limit]


def iter_links(graph: IdentityGraph, keys: Iterable[str]) -> Iterator[Link]:
    seen: set[str] = set()
    for key in keys:
        for link in graph.links_of(key):
            if link.id not in seen:
                seen.add(link.id)
                yield link
