"""Partitions: customers split by a stable hash, so several workers share the log.

A profile belongs to partition ``hash(canonical customer key) mod count``: the key its
events fold into (itself, or the canonical id of the profile a link merged it into), so a
merged customer is one customer in one partition. The hash is BLAKE2b of the key's stream
id (what the log files its events under: a UUIDv5 of the key, or on an encrypted log a
keyed hash with the store's naming key): the same on every machine, Python version and
process (Python's ``hash`` is not), and known from a stored row before its event is
decoded, so a partition decodes only its own customers' events (:class:`Membership`).

Every reader of the log that runs per partition (a dataset's refresh and real-time
consumer, the trigger engine) reads the same pages as an unpartitioned one and handles
only the events of its partition's profiles. It tracks its own position in the documents'
tracking table under :func:`tracked_name` (``carts#2/8``); the target's plain row
(``carts``) stays the least of its partitions' positions, so freshness, ``status`` and an
unpartitioned run read what they always did. A partition with no position yet starts from
that plain row: upgrading a store from one position to partitions re-reads nothing and
skips nothing, and so does changing the count (every new partition starts from the least
position of the old ones; what a partition had already written is skipped by the guards
every write carries: a section's position, a trigger's outcome record and claim).

The count is stored with the documents the first time a partitioned reader runs
(:func:`fix_count`): another count in the config is refused until ``profilestore
partitions set N`` changes it with every worker stopped (see ``docs/partitions.md``).

Workers share the partitions (:mod:`profilestore.worker`): each writes a heartbeat
record, counts the workers alive and holds the lease of at most ``ceil(count / alive)``
partitions, releasing the excess when a worker appears and taking over a dead worker's
partitions once their leases lapse.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from uuid import UUID

from profilestore.documents import DocumentStore
from profilestore.errors import PartitionCountChanged
from profilestore.eventlog import stream_id

COUNT = "partitions"
"""Record kind of the stored partition count (key :data:`COUNT_KEY`)."""
COUNT_KEY = "count"
WORKER = "worker.heartbeat"
"""Record kind of the workers' heartbeats: holder -> when it last beat, its partitions."""
LEASE_KIND = "partition"
"""The lease a worker holds on each partition it works on (target: the index)."""


def partition_of(key: str, count: int, stream_of: StreamOf = stream_id) -> int:
    """The partition of a canonical customer key among ``count`` (``stream_of``: the log's
    naming of streams, :meth:`EventLog.stream_of <profilestore.eventlog.EventLog.stream_of>`)."""
    return stream_partition(stream_of(key), count)


def stream_partition(stream: UUID, count: int) -> int:
    """The partition of the customer key whose stream is ``stream``."""
    if count == 1:
        return 0
    digest = hashlib.blake2b(stream.bytes, digest_size=8).digest()
    return int.from_bytes(digest, "big") % count


StreamOf = Callable[[str], UUID]


@dataclass(frozen=True)
class Partition:
    """One partition of ``count``: what a partitioned reader handles."""

    index: int
    count: int
    stream_of: StreamOf = field(default=stream_id, compare=False, repr=False)
    """The log's naming of streams (keyed on an encrypted log)."""

    def __post_init__(self) -> None:
        if not 0 <= self.index < self.count:
            raise ValueError(f"partition {self.index} is not one of 0..{self.count - 1}")

    def owns(self, profile: str) -> bool:
        return partition_of(profile, self.count, self.stream_of) == self.index

    def owns_stream(self, stream: UUID) -> bool:
        """Whether the key filed under ``stream`` is in this partition, if it is alone."""
        return stream_partition(stream, self.count) == self.index

    @property
    def label(self) -> str:
        return f"{self.index}/{self.count}"

    def tracked(self, target: str) -> str:
        return tracked_name(target, self)


@dataclass
class Membership:
    """Which streams and profiles are a partition's, as of a routing (key -> profile, for
    keys not alone), remembered: asked once per event read."""

    partition: Partition
    routing: Mapping[str, str]
    _merged: dict[int, str] = field(default_factory=dict)
    _streams: dict[int, bool] = field(default_factory=dict)
    """By the stream's integer: a UUID's own hash is a Python call, this one is not."""
    _profiles: dict[str, bool] = field(default_factory=dict)

    def __post_init__(self) -> None:
        stream_of = self.partition.stream_of
        self._merged = {stream_of(k).int: p for k, p in self.routing.items()}

    def keeps(self, stream: UUID) -> bool:
        """Whether the events of ``stream`` fold into a profile of the partition."""
        number = stream.int
        found = self._streams.get(number)
        if found is None:
            profile = self._merged.get(number)
            found = self.partition.owns_stream(stream) if profile is None else self.owns(profile)
            self._streams[number] = found
        return found

    def owns(self, profile: str) -> bool:
        found = self._profiles.get(profile)
        if found is None:
            found = self._profiles[profile] = self.partition.owns(profile)
        return found


def tracked_name(target: str, partition: Partition) -> str:
    """The tracking row of ``target`` (a dataset, the trigger engine) in ``partition``."""
    return f"{target}#{partition.label}"


def all_partitions(count: int, stream_of: StreamOf = stream_id) -> list[Partition]:
    return [Partition(i, count, stream_of) for i in range(count)]


def position(documents: DocumentStore, target: str, partition: Partition) -> int | None:
    """Where ``target`` stands in ``partition``: its own row, else the target's plain row
    (an upgrade, or a new count: every partition starts where all had got to)."""
    tracked = documents.tracking(tracked_name(target, partition))
    if tracked is None:
        tracked = documents.tracking(target)
    return tracked.position if tracked else None


def advance(
    documents: DocumentStore, target: str, partition: Partition, through: int, now: dt.datetime
) -> None:
    """Advance ``target`` in ``partition``, then its plain row to the least partition's
    position (never back: the rows only move forward)."""
    documents.advance(tracked_name(target, partition), through, refreshed_at=now)
    least = min(
        (p for p in positions(documents, target, partition.count).values()),
        default=through,
    )
    documents.advance(target, least, refreshed_at=now)


def positions(documents: DocumentStore, target: str, count: int) -> dict[int, int]:
    """Every partition's position of ``target`` (those with none: the plain row's)."""
    plain = documents.tracking(target)
    start = plain.position if plain else 0
    found = {}
    for partition in all_partitions(count):
        tracked = documents.tracking(tracked_name(target, partition))
        found[partition.index] = tracked.position if tracked else start
    return found


def stored_count(documents: DocumentStore) -> int | None:
    found = documents.get_record(COUNT, COUNT_KEY)
    return int(found["count"]) if found else None


def fix_count(documents: DocumentStore, configured: int) -> int:
    """Store ``configured`` as the store's partition count the first time; refuse another
    one later (:class:`PartitionCountChanged`)."""
    stored = stored_count(documents)
    if stored is None:
        if configured == 1:
            return 1  # the default writes nothing: a store never partitioned stays as it was
        documents.insert_record_if_absent(COUNT, COUNT_KEY, {"count": configured})
        stored = stored_count(documents)
    if stored != configured:
        raise PartitionCountChanged(stored or 1, configured)
    return configured


def share(count: int, alive: int) -> int:
    """How many partitions one of ``alive`` workers holds at most: ceil(count / alive)."""
    return math.ceil(count / max(1, alive))


def excess(held: Sequence[int], count: int, alive: int) -> list[int]:
    """The partitions a worker holding ``held`` gives back: those beyond its share, the
    highest indexes first (so two workers agree on nothing to trade: no flapping)."""
    keep = share(count, alive)
    return sorted(held)[keep:]


def wanted(held: Iterable[int], count: int, alive: int) -> int:
    """How many more partitions a worker holding ``held`` may take."""
    return max(0, share(count, alive) - len(set(held)))
