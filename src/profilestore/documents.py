"""The document-store port: where folded profile documents live.

A profile document is keyed by customer id and holds one section per dataset, each with
the log position it covers and when it was refreshed. Adapters (embedded SQLite,
MongoDB) implement this handful of methods and pass one contract suite
(``tests/test_documents_contract.py``); the engine never sees which one it talks to.

Every section write carries its log position and is applied only if it is newer than the
stored one, so replaying a batch changes nothing. A dataset can be rebuilt into a staging
area while the live sections keep serving reads, then promoted in one step.
"""

from __future__ import annotations

import datetime as dt
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import msgspec


@dataclass(frozen=True)
class DatasetSchema:
    """What an adapter must know of a dataset: its section type and whether it is keyed."""

    section: type[msgspec.Struct]
    keyed: bool = False
    """Whether sections carry lookup keys (identifiers a profile can be found by)."""


class SectionWrite(NamedTuple):
    customer_id: str
    section: msgspec.Struct
    position: int
    lookup_keys: tuple[str, ...] = ()


class StoredSection(NamedTuple):
    section: Any
    position: int


class SectionMeta(msgspec.Struct, frozen=True, kw_only=True):
    """How fresh a section is: the last log position folded into it and when."""

    position: int
    refreshed_at: dt.datetime


class Profile(msgspec.Struct, frozen=True, kw_only=True):
    """A whole profile as read in one go: sections by dataset, with their freshness."""

    customer_id: str
    sections: dict[str, Any]
    freshness: dict[str, SectionMeta]


class RawProfile(msgspec.Struct, frozen=True, kw_only=True):
    """A profile with each section as its stored JSON: served without decoding."""

    customer_id: str
    sections: dict[str, msgspec.Raw]
    freshness: dict[str, SectionMeta]


_RAW_ENCODER = msgspec.json.Encoder(decimal_format="string")


class Tracking(msgspec.Struct, frozen=True, kw_only=True):
    """How far a dataset has been refreshed through the log, and when."""

    position: int
    refreshed_at: dt.datetime


class DocumentStore(ABC):
    """Port for profile documents; see the module docstring for the guarantees."""

    def __init__(self, schemas: Mapping[str, DatasetSchema]) -> None:
        self.schemas = dict(schemas)

    @abstractmethod
    def get(self, customer_id: str, datasets: Sequence[str] | None = None) -> Profile | None:
        """The live profile of a customer (only the named datasets, if given)."""

    @abstractmethod
    def find(self, lookup_key: str) -> list[str]:
        """Customer ids whose live sections carry ``lookup_key``, sorted."""

    def get_raw(self, customer_id: str, datasets: Sequence[str] | None = None) -> RawProfile | None:
        """Like :meth:`get`, with sections as JSON (adapters that store JSON skip decoding)."""
        return self.raw(self.get(customer_id, datasets))

    @staticmethod
    def raw(profile: Profile | None) -> RawProfile | None:
        """A decoded profile in the raw form (sections encoded once)."""
        if profile is None:
            return None
        return RawProfile(
            customer_id=profile.customer_id,
            sections={n: msgspec.Raw(_RAW_ENCODER.encode(s)) for n, s in profile.sections.items()},
            freshness=profile.freshness,
        )

    async def aget_raw(
        self, customer_id: str, datasets: Sequence[str] | None = None
    ) -> RawProfile | None:
        """:meth:`get_raw` for an event loop. The default runs inline: an adapter whose
        reads may block for long (a network round trip) overrides it."""
        return self.get_raw(customer_id, datasets)

    async def afind(self, lookup_key: str) -> list[str]:
        """:meth:`find` for an event loop; see :meth:`aget_raw`."""
        return self.find(lookup_key)

    async def aclose(self) -> None:  # noqa: B027 - optional hook, nothing to release by default
        """Release what the async methods opened (called from the event loop)."""

    @abstractmethod
    def load(
        self, dataset: str, customer_ids: Iterable[str], *, staging: bool = False
    ) -> dict[str, StoredSection]:
        """Stored sections of one dataset for the given customers (absent ones omitted)."""

    @abstractmethod
    def write(
        self,
        dataset: str,
        writes: Sequence[SectionWrite],
        *,
        refreshed_at: dt.datetime,
        staging: bool = False,
    ) -> int:
        """Store sections whose position is newer than the stored one; returns how many."""

    @abstractmethod
    def tracking(self, dataset: str, *, staging: bool = False) -> Tracking | None:
        """How far the dataset has been refreshed, or None if never."""

    @abstractmethod
    def advance(
        self, dataset: str, position: int, *, refreshed_at: dt.datetime, staging: bool = False
    ) -> None:
        """Record a refresh up to ``position``; tracking never moves backwards."""

    @abstractmethod
    def start_staging(self, dataset: str) -> None:
        """Empty the dataset's staging area, ready for a rebuild."""

    @abstractmethod
    def promote_staging(self, dataset: str) -> None:
        """Make the staging sections and tracking live, replacing the old ones at once."""

    @abstractmethod
    def acquire_lease(self, name: str, holder: str, ttl: dt.timedelta, now: dt.datetime) -> bool:
        """Take or renew the lease ``name``; False while another holder's lease is live."""

    @abstractmethod
    def release_lease(self, name: str, holder: str) -> None:
        """Give up the lease if ``holder`` has it."""

    @abstractmethod
    def lease_holder(self, name: str, now: dt.datetime) -> str | None:
        """Who holds a live lease ``name``, if anyone."""

    @abstractmethod
    def put_record(self, kind: str, key: str, value: Mapping[str, Any]) -> None:
        """Store a small JSON-shaped record (run history, dead letters) under (kind, key)."""

    @abstractmethod
    def get_records(self, kind: str, prefix: str = "") -> dict[str, dict[str, Any]]:
        """Records of ``kind`` whose key starts with ``prefix``, by key."""

    @abstractmethod
    def delete_record(self, kind: str, key: str) -> None:
        """Remove a record; removing an absent one does nothing."""

    @abstractmethod
    def customer_ids(self, dataset: str) -> Iterator[str]:
        """Every customer id with a live section of ``dataset``."""

    @abstractmethod
    def close(self) -> None: ...

    def check_dataset(self, dataset: str) -> DatasetSchema:
        try:
            return self.schemas[dataset]
        except KeyError:
            raise KeyError(f"dataset {dataset!r} is not registered with this store") from None


def newest_per_customer(writes: Sequence[SectionWrite]) -> list[SectionWrite]:
    """One write per customer, the one with the highest position (the others would lose)."""
    newest: dict[str, SectionWrite] = {}
    for w in writes:
        kept = newest.get(w.customer_id)
        if kept is None or w.position > kept.position:
            newest[w.customer_id] = w
    return list(newest.values())


def utc(value: dt.datetime) -> dt.datetime:
    """``value`` as an aware UTC datetime (stores may return naive UTC)."""
    if value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC)
