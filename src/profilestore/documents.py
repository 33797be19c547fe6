"""The document-store ports: where folded profile documents live.

A profile document is keyed by customer id and holds one section per dataset, each with
the log position it covers and when it was refreshed. A backend provides three small
ports, each method's contract in its docstring:

- :class:`SectionStore`: sections (read, find by lookup key, guarded write, regroup,
  load), per-dataset tracking, and the staging area of a rebuild;
- :class:`LeaseStore`: named leases that keep one process at a time on a dataset;
- :class:`RecordStore`: small records by (kind, key), with an atomic insert-if-absent.

:class:`DocumentStore` is the three over one database plus ``close``, and the right to
erasure: ``erase`` (every section, lookup key and record naming given customers; see
:mod:`profilestore.redaction`) and ``scrub`` (no old copy left on the disk where the
backend can promise it); the engine only sees it. Adapters (``sqlite_documents.py``,
``mongo_documents.py``) pass one contract suite (``tests/test_documents_contract.py``),
and :data:`DOCUMENT_BACKENDS` picks one by the URL's scheme. At the adapter boundary
(:func:`translate_errors`) a driver error becomes ``DocumentsUnavailable``, a call after
``close`` ``StoreClosed``, and a write to a store opened read-only ``ReadOnlyStore``.

Every section write carries its log position and is applied only if it is newer than the
stored one, so replaying a batch changes nothing. The one exception is
:meth:`SectionStore.regroup`: identity resolution refolds a cluster's sections from the
log when a link is made or retracted, so a section may move back to an older position;
it writes unguarded, under the dataset's lease, and is idempotent instead. A dataset can
be rebuilt into a staging area while the live sections keep serving reads, then promoted
in one step.
"""

from __future__ import annotations

import datetime as dt
import functools
import importlib
import inspect
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, TypeVar
from urllib.parse import unquote

import msgspec

from profilestore.errors import (
    DocumentsUnavailable,
    InvalidSetting,
    ProfileStoreError,
    ReadOnlyStore,
    StoreClosed,
)

if TYPE_CHECKING:
    from profilestore.config import DocumentSettings


@dataclass(frozen=True)
class DatasetSchema:
    """What an adapter must know of a dataset: its section type and whether it is keyed."""

    section: type[msgspec.Struct]
    keyed: bool = False
    """Whether sections carry lookup keys (identifiers a profile can be found by)."""
    derived: bool = False
    """Computed whole by a job (the scores), not folded: rewritten every run through the
    staging area, which an adapter may keep between runs (``start_staging(reuse=True)``)
    and swap in without copying."""


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
    canonical_id: str | None = None
    """The profile's id when ``customer_id`` is one of a merged profile's keys (the store
    sets it; equal to ``customer_id`` for a key alone)."""


class RawProfile(msgspec.Struct, frozen=True, kw_only=True):
    """A profile with each section as its stored JSON: served without decoding."""

    customer_id: str
    sections: dict[str, msgspec.Raw]
    freshness: dict[str, SectionMeta]
    canonical_id: str | None = None
    """See :attr:`Profile.canonical_id`."""


_RAW_ENCODER = msgspec.json.Encoder(decimal_format="string")


class Tracking(msgspec.Struct, frozen=True, kw_only=True):
    """How far a dataset has been refreshed through the log, and when."""

    position: int
    refreshed_at: dt.datetime


class SectionStore(ABC):
    """Where profile sections live: reads, guarded writes, tracking and staging.

    A backend provides this, :class:`LeaseStore` and :class:`RecordStore`; see the module
    docstring for the guarantees. ``KeyError`` for a dataset not in ``schemas``.
    """

    def __init__(self, schemas: Mapping[str, DatasetSchema]) -> None:
        self.schemas = dict(schemas)

    @abstractmethod
    def get(self, customer_id: str, datasets: Sequence[str] | None = None) -> Profile | None:
        """The live profile of a customer (only the named datasets, if given, in the order
        configured); None if the customer has none of them. Never reads staging."""

    @abstractmethod
    def find(self, lookup_key: str) -> list[str]:
        """Customer ids whose live sections carry ``lookup_key``, sorted; [] if none."""

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

    @abstractmethod
    def load(
        self,
        dataset: str,
        customer_ids: Iterable[str],
        *,
        staging: bool = False,
        shape: type[msgspec.Struct] | None = None,
    ) -> dict[str, StoredSection]:
        """Stored sections of one dataset (live, or staging) with their positions, for the
        given customers; customers without one are omitted. ``shape``: decode each into
        this type instead of the dataset's section type (a few of its fields: a caller
        that needs only those decodes far less)."""

    @abstractmethod
    def write(
        self,
        dataset: str,
        writes: Sequence[SectionWrite],
        *,
        refreshed_at: dt.datetime,
        staging: bool = False,
    ) -> int:
        """Store each section whose position is newer than the stored one (and replace its
        lookup keys), all or none; of several writes for one customer the newest counts.
        Returns how many were stored: replaying a batch stores 0 and changes nothing."""

    @abstractmethod
    def regroup(
        self,
        dataset: str,
        writes: Sequence[SectionWrite],
        removed: Iterable[str],
        *,
        refreshed_at: dt.datetime,
        staging: bool = False,
    ) -> None:
        """Store ``writes`` whatever the stored positions, and delete the sections of the
        ``removed`` customers: how identity resolution regroups a dataset's sections when
        a link is made or retracted (it refolds the affected customers from the log).

        - Each write replaces the customer's section of ``dataset`` unconditionally (no
          position guard: the new position may be older), with its position,
          ``refreshed_at`` and lookup keys; of several writes for one customer the newest
          counts, as in :meth:`write`.
        - Each customer id in ``removed`` loses its section of ``dataset`` and the lookup
          keys that came with it; an id without one is ignored. A customer both written
          and removed is written.
        - Other datasets' sections are untouched; a customer left with no section reads as
          absent (:meth:`get` is None). ``staging``: the same on the staging area (started
          by :meth:`start_staging`), the live sections untouched.

        Nothing guards these writes against a concurrent refresh: the caller holds the
        dataset's lease. Regrouping again with the same arguments changes nothing, so a
        caller repeats a regroup a failure interrupted. All or none where the database
        allows it (SQLite: one transaction); on MongoDB each customer's document changes
        atomically, the writes first and then the removals, so a failure in between leaves
        sections that were to be removed until the caller repeats the regroup."""

    @abstractmethod
    def tracking(self, dataset: str, *, staging: bool = False) -> Tracking | None:
        """How far the dataset has been refreshed, or None if never."""

    @abstractmethod
    def advance(
        self, dataset: str, position: int, *, refreshed_at: dt.datetime, staging: bool = False
    ) -> None:
        """Record a refresh up to ``position``; tracking never moves backwards."""

    @abstractmethod
    def start_staging(self, dataset: str, *, reuse: bool = False) -> None:
        """Empty the dataset's staging area (sections, keys, tracking), ready for a rebuild;
        live sections keep serving reads.

        ``reuse`` (a derived dataset, rewritten whole every run): the adapter may keep
        the staging sections left from before (the SQLite adapter keeps the generation
        its last swap replaced, to overwrite it) instead of emptying them; the caller
        then writes every section with :meth:`regroup` and removes the others
        (:meth:`customer_ids` with ``staging``). Keys and tracking are emptied."""

    @abstractmethod
    def promote_staging(self, *datasets: str) -> None:
        """Make each dataset's staging sections, keys and tracking live, replacing the old
        ones (live sections the rebuild did not produce are dropped) and emptying staging
        (for a derived dataset the replaced sections may stay there, for ``reuse``).
        ``RuntimeError`` if one has no staging tracking recorded since
        :meth:`start_staging` (then none is promoted where the database allows it).

        All together where the database allows it: on SQLite one transaction for every
        dataset given (for a derived dataset, table renames: no row is copied; the others
        share one table, rewritten once for all of them); see each adapter."""

    @abstractmethod
    def customer_ids(self, dataset: str, *, staging: bool = False) -> Iterator[str]:
        """Every customer id with a live (or staging) section of ``dataset``, in no set
        order."""

    def check_dataset(self, dataset: str) -> DatasetSchema:
        try:
            return self.schemas[dataset]
        except KeyError:
            raise KeyError(f"dataset {dataset!r} is not registered with this store") from None


class LeaseStore(ABC):
    """Named leases that keep one process at a time on a dataset, across processes.

    A lease is live until ``now + ttl`` of its last acquisition; times are the caller's.
    """

    @abstractmethod
    def acquire_lease(self, name: str, holder: str, ttl: dt.timedelta, now: dt.datetime) -> bool:
        """Take or renew the lease ``name`` until ``now + ttl``, atomically; False (and the
        lease unchanged) while another holder's lease is live."""

    @abstractmethod
    def release_lease(self, name: str, holder: str) -> None:
        """Give up the lease if ``holder`` has it; otherwise do nothing."""

    @abstractmethod
    def lease_holder(self, name: str, now: dt.datetime) -> str | None:
        """Who holds a live lease ``name`` at ``now``, if anyone."""


class RecordStore(ABC):
    """Small JSON-shaped records (run history, dead letters, fired triggers) by (kind, key)."""

    @abstractmethod
    def put_record(self, kind: str, key: str, value: Mapping[str, Any]) -> None:
        """Store ``value`` under (kind, key), replacing any record there."""

    @abstractmethod
    def insert_record_if_absent(self, kind: str, key: str, value: Mapping[str, Any]) -> bool:
        """Store ``value`` under (kind, key) only if no record is there: True if stored,
        False if one existed (it is left unchanged). Atomic across threads and processes,
        so of concurrent callers exactly one gets True ("fire once")."""

    @abstractmethod
    def get_records(self, kind: str, prefix: str = "") -> dict[str, dict[str, Any]]:
        """Records of ``kind`` whose key starts with ``prefix``, by key, sorted by key."""

    @abstractmethod
    def get_records_for(self, kind: str, keys: Iterable[str]) -> dict[str, dict[str, Any]]:
        """The records of ``kind`` under exactly these keys (no prefix matching), by key;
        keys with no record are omitted. Any number of keys: adapters read them in chunks."""

    def get_record(self, kind: str, key: str) -> dict[str, Any] | None:
        """One record, or None: the hot path of a lookup's identity redirect (adapters
        answer it with one point read)."""
        return self.get_records_for(kind, [key]).get(key)

    async def aget_record(self, kind: str, key: str) -> dict[str, Any] | None:
        """One record, for an event loop (a lookup's identity redirect). The default runs
        inline: an adapter whose reads may block for long overrides it."""
        return self.get_records_for(kind, [key]).get(key)

    @abstractmethod
    def get_records_after(
        self, kind: str, after: str, *, until: str | None = None, limit: int | None = None
    ) -> dict[str, dict[str, Any]]:
        """The records of ``kind`` whose key sorts after ``after`` (by code point), by
        key, sorted by key: a log of records keyed by zero-padded positions is read from
        where a reader stopped, without reading what it has read. ``until``: only keys
        at or before it; ``limit``: only the first so many (a range read of an index kept
        as records, such as the trigger engine's timers by due time)."""

    @abstractmethod
    def put_records(self, records: Sequence[tuple[str, str, Mapping[str, Any]]]) -> None:
        """Store each ``(kind, key, value)`` as :meth:`put_record` does, in order (of two
        for one (kind, key), the later stays). All or none where the database allows it
        (SQLite: one transaction); elsewhere each record is stored atomically, in order,
        so a failure part-way leaves a prefix stored (MongoDB). Storing the same records
        again changes nothing, so a caller repeats the call after a failure."""

    @abstractmethod
    def delete_record(self, kind: str, key: str) -> None:
        """Remove a record; removing an absent one does nothing."""

    @abstractmethod
    def delete_records(self, kind: str, keys: Iterable[str]) -> None:
        """Remove the records of ``kind`` under ``keys`` (absent ones: nothing), in one
        write: all or none where the database allows it (SQLite: one transaction), else
        each atomically (MongoDB: one bulk write). Repeating the call changes nothing."""


class DocumentStore(SectionStore, LeaseStore, RecordStore):
    """A whole backend: the three ports over one database, and its lifetime.

    After :meth:`close`, every method raises :class:`~profilestore.errors.StoreClosed`;
    a driver error escaping a method is raised as
    :class:`~profilestore.errors.DocumentsUnavailable` (see :func:`translate_errors`).
    """

    backend = "document"
    """A short name of the backend, for errors (``sqlite``, ``mongodb``)."""

    location = ""
    """Where the store is (a file, a host and database; never a password), for errors."""

    def __init__(self, schemas: Mapping[str, DatasetSchema], *, read_only: bool = False) -> None:
        super().__init__(schemas)
        self.closed = False
        self.read_only = read_only
        """Opened read-only: nothing was created, and every write raises ReadOnlyStore."""

    def local_files(self) -> list[str]:
        """The files this store keeps on this machine (embedded); [] for a server."""
        return []

    @abstractmethod
    def close(self) -> None:
        """Release connections; idempotent. Every later call raises ``StoreClosed``."""

    # --- erasure --------------------------------------------------------------------------

    @abstractmethod
    def erase(self, customer_ids: Sequence[str], terms: Sequence[str] = ()) -> dict[str, int]:
        """Delete everything derived about the customers: what the right to erasure asks
        of the document store. Returns counts per kind of thing erased, never a value:
        ``sections``, ``sections:staging``, ``lookup_keys``, ``lookup_keys:staging``
        (always present), ``records:<kind>`` for records deleted and ``redacted:<kind>``
        for records that stay with the customers taken out (present when not 0).

        - Every section of ``customer_ids``, live and staging, in every dataset (also one
          no longer configured), and their lookup keys. Pass every key of a merged
          profile and its canonical id: sections are stored under the profile's id.
        - Every record that names them, judged by
          :class:`~profilestore.redaction.Erasure` from its key and body against
          ``customer_ids`` and ``terms`` (the customers' normalised identifiers, names):
          deleted when its key or one of its fields is one of them, redacted when they
          are only members of a list or free text in it (an identity change that also
          regrouped another customer, a run's error message). ``c1`` never matches
          ``c10``.
        - Leases and tracking hold nothing personal and are untouched; so are sections
          of other customers, even where they hold a value given in ``terms``.

        Erasing again finds nothing and returns zeros, so a caller repeats an erasure a
        failure interrupted. All or none where the database allows it (SQLite: one
        transaction); on MongoDB each document and record changes atomically, sections
        first, then records, so a failure part-way leaves the rest for the repeat.
        ``InvalidArgument`` names an empty id or term (it would match everything).

        Deleted is not yet gone from the disk: see :meth:`scrub`."""

    @abstractmethod
    def scrub(self, *, compact: bool = False) -> bool:
        """Leave no old copy of what was deleted where the store can reach it: True when
        done. SQLite deletes with ``secure_delete`` (freed space is zeroed), and this
        checkpoints the write-ahead log into the database and truncates it, so no old
        page image stays in the ``-wal`` file; False if a reader kept the checkpoint from
        completing (call again). MongoDB: False, always: WiredTiger frees space inside
        its files and compacts them on its own schedule, and its journal, oplog and
        backups are the operator's (``compact``, backup expiry).

        ``compact`` also rebuilds the database file first (SQLite: ``VACUUM``), which
        costs time in proportion to its size. ``secure_delete`` zeroes what is deleted,
        not what was moved: when a page splits, SQLite writes the rows it keeps afresh
        and leaves the old bytes of those it moved to another page in the unused gap of
        the page, readable until something overwrites them. Deleting the moved row later
        zeroes it where it lives now, not that stale copy; only a rebuild does. The
        caller compacts when a search still finds a copy after a plain scrub."""

    async def aclose(self) -> None:
        """Release what the async methods opened (called from the event loop); idempotent."""

    def closed_error(self) -> StoreClosed:
        return StoreClosed(f"the {self.backend} document store")

    def read_only_error(self, operation: str) -> ReadOnlyStore:
        return ReadOnlyStore(f"the {self.backend} document store", self.location, operation)

    def unavailable(self, operation: str, error: BaseException) -> ProfileStoreError:
        """What a driver error raised by ``operation`` becomes: ``StoreClosed`` if the
        store was closed meanwhile, else ``DocumentsUnavailable`` (the driver's class name
        only: its message may quote personal data)."""
        if self.closed:
            return self.closed_error()
        return DocumentsUnavailable(
            self.backend, operation, type(error).__name__, where=self.location
        )


# --- the adapter boundary --------------------------------------------------------------

PORT_METHODS = (
    *("get", "find", "get_raw", "aget_raw", "afind", "load", "write", "regroup"),
    *("tracking", "advance"),
    *("start_staging", "promote_staging", "customer_ids"),
    *("acquire_lease", "release_lease", "lease_holder"),
    *("erase", "scrub"),
    *("put_record", "put_records", "insert_record_if_absent"),
    *(
        "get_records",
        "get_records_for",
        "get_records_after",
        "get_record",
        "aget_record",
        "delete_record",
        "delete_records",
    ),
)
"""The methods :func:`translate_errors` guards: every method of the three ports that
reaches the database."""

WRITE_METHODS = frozenset(
    {
        *("write", "regroup", "advance", "start_staging", "promote_staging"),
        *("acquire_lease", "release_lease", "erase", "scrub"),
        *("put_record", "put_records", "insert_record_if_absent"),
        *("delete_record", "delete_records"),
    }
)
"""The port methods that write: a store opened read-only refuses them (ReadOnlyStore)
before its database is asked, whatever the backend."""

D = TypeVar("D", bound=DocumentStore)
F = TypeVar("F", bound=Callable[..., Any])


def guards_itself(method: F) -> F:
    """Mark a hot-path method that checks ``closed`` and translates driver errors inline
    (``if self.closed: ...`` then ``try``/``except``), so :func:`translate_errors` leaves it
    unwrapped: a wrapper would cost a frame and an argument tuple on every lookup."""
    method.__guards_itself__ = True  # type: ignore[attr-defined]
    return method


def translate_errors(*driver_errors: type[Exception]) -> Callable[[type[D]], type[D]]:
    """Class decorator for an adapter: each port method it defines first refuses a closed
    store (``StoreClosed``), and a driver error escaping it becomes ``DocumentsUnavailable``
    (see :meth:`DocumentStore.unavailable`). Methods marked :func:`guards_itself` are left
    as written."""

    def decorate(cls: type[D]) -> type[D]:
        for name in PORT_METHODS:
            method = cls.__dict__.get(name)
            if method is not None and not getattr(method, "__guards_itself__", False):
                setattr(cls, name, _guarded(method, driver_errors))
        return cls

    return decorate


def _guarded(method: Callable[..., Any], errors: tuple[type[Exception], ...]) -> Any:
    name = method.__name__
    writes = name in WRITE_METHODS
    if inspect.isgeneratorfunction(method):

        @functools.wraps(method)
        def generator(self: DocumentStore, *args: Any, **kwargs: Any) -> Iterator[Any]:
            if self.closed:
                raise self.closed_error()
            if writes and self.read_only:
                raise self.read_only_error(name)
            try:
                yield from method(self, *args, **kwargs)
            except errors as e:
                raise self.unavailable(name, e) from e

        return generator
    if inspect.iscoroutinefunction(method):

        @functools.wraps(method)
        async def coroutine(self: DocumentStore, *args: Any, **kwargs: Any) -> Any:
            if self.closed:
                raise self.closed_error()
            if writes and self.read_only:
                raise self.read_only_error(name)
            try:
                return await method(self, *args, **kwargs)
            except errors as e:
                raise self.unavailable(name, e) from e

        return coroutine

    @functools.wraps(method)
    def function(self: DocumentStore, *args: Any, **kwargs: Any) -> Any:
        if self.closed:
            raise self.closed_error()
        if writes and self.read_only:
            raise self.read_only_error(name)
        try:
            return method(self, *args, **kwargs)
        except errors as e:
            raise self.unavailable(name, e) from e

    return function


# --- choosing a backend ------------------------------------------------------------------

DOCUMENT_BACKENDS: Mapping[str, str] = {
    "sqlite": "profilestore.sqlite_documents",
    "mongodb": "profilestore.mongo_documents",
    "mongodb+srv": "profilestore.mongo_documents",
}
"""URL scheme -> the adapter module, imported only when chosen (so pymongo is not loaded
for an embedded store). Each adapter module ends with an :class:`OpenDocuments` function
``open_documents``; a new backend is one module and one line here."""

ACCEPTED_URLS = (
    "sqlite:///RELATIVE/PATH, sqlite:////ABSOLUTE/PATH, mongodb://[USER:PASSWORD@]HOST[:PORT]"
    "/DATABASE or mongodb+srv://[USER:PASSWORD@]HOST/DATABASE"
)


_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")


class OpenDocuments(Protocol):
    """An adapter's factory: check ``url`` (raising :func:`url_error` before creating
    anything), then open the store."""

    def __call__(
        self,
        url: str,
        schemas: Mapping[str, DatasetSchema],
        settings: DocumentSettings,
        *,
        read_only: bool = False,
    ) -> DocumentStore: ...


def open_document_store(
    url: str,
    schemas: Mapping[str, DatasetSchema],
    settings: DocumentSettings,
    *,
    read_only: bool = False,
) -> DocumentStore:
    """The document store ``url`` names (``{home}`` already substituted), through the
    adapter registered for its scheme in :data:`DOCUMENT_BACKENDS`; ``read_only``: an
    existing store, opened without creating anything, refusing writes."""
    scheme = url.partition(":")[0].lower() if _SCHEME.match(url) else ""
    module = DOCUMENT_BACKENDS.get(scheme)
    if module is None:
        # Only the scheme is quoted: the rest of the URL may hold a password.
        named = f"the scheme {scheme!r}" if scheme else "a URL without a scheme"
        raise url_error(f"{named} names no document store")
    factory: OpenDocuments = importlib.import_module(module).open_documents
    return factory(url, schemas, settings, read_only=read_only)


def url_error(reason: str, url: str = "") -> InvalidSetting:
    """The error for an unusable ``documents.url``, worded as the event log's:
    ``documents.url: <reason>; use <accepted forms>``, any password of ``url`` masked."""
    return InvalidSetting("documents.url", f"{mask_password(reason, url)}; use {ACCEPTED_URLS}")


def mask_password(text: str, url: str) -> str:
    """``text`` with the password of ``url`` (as written, and percent-decoded) masked.

    Errs on the side of masking: without a parser's help (the URL may be malformed),
    everything between the first ``:`` of the user part and the last ``@`` is taken for
    the password."""
    _, sep, rest = url.partition("://")
    userinfo, at, _ = rest.rpartition("@")
    _, colon, password = userinfo.partition(":")
    if not (sep and at and colon and password):
        return text
    for secret in sorted({password, unquote(password)}, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


ERASED_ALWAYS = ("sections", "sections:staging", "lookup_keys", "lookup_keys:staging")
"""The counts :meth:`DocumentStore.erase` always returns (0 when nothing was there)."""


def newest_per_customer(writes: Sequence[SectionWrite]) -> list[SectionWrite]:
    """One write per customer, the one with the highest position (the others would lose)."""
    newest: dict[str, SectionWrite] = {}
    for w in writes:
        kept = newest.get(w.customer_id)
        if kept is None or w.position > kept.position:
            newest[w.customer_id] = w
    return list(newest.values())


def regroup_plan(
    writes: Sequence[SectionWrite], removed: Iterable[str]
) -> tuple[list[SectionWrite], list[str]]:
    """What a :meth:`SectionStore.regroup` does: one write per customer (the newest), and
    each removed customer id once, but those written (the write wins)."""
    kept = newest_per_customer(writes)
    written = {w.customer_id for w in kept}
    return kept, [
        customer_id for customer_id in dict.fromkeys(removed) if customer_id not in written
    ]


def utc(value: dt.datetime) -> dt.datetime:
    """``value`` as an aware UTC datetime (stores may return naive UTC)."""
    if value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC)
