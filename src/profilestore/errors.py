"""The errors profilestore raises: one root, a few specific kinds.

Each message says what failed, which id or field, and what to do. HTTP status codes and
process exit codes are mapped from these at the edges only (the API and the CLI).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from profilestore.audit import AuditReport
    from profilestore.replay import FoldFailure


class ProfileStoreError(Exception):
    """Root of every error profilestore raises on purpose."""


class ConfigError(ProfileStoreError):
    """A configuration file or environment override is invalid."""

    def __init__(self, source: str, path: str, reason: str) -> None:
        self.source = source
        self.path = path
        self.reason = reason
        where = f" at `{path}`" if path else ""
        super().__init__(f"{source}: {reason}{where}")


class InvalidSetting(ConfigError):
    """A setting's value is unusable, wherever it was set (a file or the environment).

    The reason must never quote the value when it may hold a secret (a URL's password).
    """

    def __init__(self, setting: str, reason: str) -> None:
        super().__init__(setting, "", reason)
        self.setting = setting


class PartitionCountChanged(InvalidSetting):
    """The config asks for another partition count than the one the store was split by."""

    def __init__(self, stored: int, configured: int) -> None:
        super().__init__(
            "schedule.partitions",
            f"is {configured} but this store is split into {stored} partitions; stop every "
            f"worker, then run `profilestore partitions set {configured}` (or set it back "
            f"to {stored})",
        )


class CadenceError(ProfileStoreError, ValueError):
    """A cadence (``every``, ``cron``, a time zone) that cannot be scheduled.

    The message is the reason only (``'15x' is not an interval like '15m'``): settings raise
    it again as a :class:`ConfigError` naming the file and the field.
    """


class LogUrlError(ProfileStoreError):
    """A log URL its backend cannot use: the reason only, never quoting the URL (it may hold
    a password). The registry (:func:`profilestore.eventlog.check_log_url`, ``open_log``)
    raises it again as an :class:`InvalidSetting` naming the setting and the accepted forms.
    """

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class OutdatedLog(ProfileStoreError):
    """An event log written by a profilestore without the tamper-evident chain."""

    def __init__(self, where: str) -> None:
        self.where = where
        super().__init__(
            f"the event log in {where} predates profilestore's tamper-evident chain "
            "(no hash column); it was made by a development build: start a new log"
        )


class InvalidProjection(ProfileStoreError, ValueError):
    """A ``Projection(...)`` with an unusable field, refused when it is built (so when its
    module is imported); loading it from the settings raises a :class:`ConfigError` naming
    the module too."""

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"Projection field `{field}` {reason}")


class InvalidEvent(ProfileStoreError):
    """An event of a batch is invalid; the whole batch was rejected and nothing appended."""

    def __init__(self, index: int, path: str, reason: str, event_id: str | None = None) -> None:
        self.index = index
        self.path = path
        self.reason = reason
        self.event_id = event_id
        ident = f" (event_id {event_id!r})" if event_id else ""
        super().__init__(
            f"event {index}{ident} is invalid at `{path}`: {reason}; "
            "the batch was rejected and nothing of it was appended"
        )

    @property
    def field(self) -> str:
        """The path as the caller addresses it, e.g. ``events[3].quantity``."""
        suffix = self.path[1:] if self.path.startswith("$") else f".{self.path}"
        return f"events[{self.index}]{suffix}"


class RefusedMessage(ProfileStoreError):
    """A Segment message, or a part of one, that cannot become an event. It is reported in
    the answer's ``rejected`` (field and reason, never the value), not raised to a caller:
    the message's valid siblings are stored (see :mod:`profilestore.segment`)."""

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"the message is refused at `{field}`: {reason}")


class AppendConflict(ProfileStoreError):
    """Concurrent writers kept conflicting; the batch was not appended (safe to retry)."""

    def __init__(self, attempts: int) -> None:
        super().__init__(
            f"the batch conflicted with concurrent appends {attempts} times and was not "
            "appended; retry it (appends are idempotent by event_id)"
        )


class BatchTooLarge(ProfileStoreError):
    """A batch has more events than one request may append; nothing of it was appended."""

    def __init__(self, size: int, limit: int) -> None:
        self.size, self.limit = size, limit
        super().__init__(
            f"the batch has {size} events; at most {limit} are accepted: nothing was appended, "
            f"send it again in batches of at most {limit}"
        )


class NotFound(ProfileStoreError):
    """No profile (or history) answers the request."""


class CustomerNotFound(NotFound):
    def __init__(self, customer_id: str) -> None:
        self.customer_id = customer_id
        super().__init__(f"no profile for customer {customer_id!r}")


class ScoringUnavailable(NotFound):
    """No scores to show or compute yet (nothing scored, no customer to fit on): HTTP 404,
    exit code 1."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"scores cannot be computed: {reason}")


class NotFoundHistory(NotFound):
    """The log holds no event for a customer."""

    def __init__(self, customer_id: str) -> None:
        self.customer_id = customer_id
        super().__init__(f"no events for customer {customer_id!r}; check the customer id")


class IdentifierNotFound(NotFound):
    def __init__(self, kind: str, value: str) -> None:
        self.kind = kind
        self.value = value
        # The value is personal data: it is kept on the error, never put in the message.
        super().__init__(f"no profile has this {kind}")


class FoldFailed(ProfileStoreError):
    """A projection's fold raised on one of the customer's events (a poison event), so a
    replay of that dataset (a profile as of a time) cannot be built."""

    def __init__(self, failure: FoldFailure) -> None:
        self.failure = failure
        super().__init__(
            f"customer {failure.customer_id!r}: dataset {failure.dataset!r} cannot fold event "
            f"{failure.event_id!r} ({failure.event_type}, log position "
            f"{failure.notification_id}): {failure.error}; leave the dataset out (--datasets, "
            "?datasets=) or fix its fold"
        )


class AmbiguousIdentifier(ProfileStoreError):
    """Several customers hold the same identifier; the caller must choose.

    The holders are kept on the error (``customer_ids``, for a Python caller) but never
    put in the message: a reader who knows one identifier must not learn which other
    customers hold it, nor how many do.
    """

    def __init__(self, kind: str, value: str, customer_ids: Sequence[str]) -> None:
        self.kind = kind
        self.value = value
        self.customer_ids = list(customer_ids)
        super().__init__(
            f"more than one customer holds this {kind}; look the profile up by its "
            "customer id or by an identifier only that customer holds"
        )


class UnknownDataset(ProfileStoreError):
    def __init__(self, name: str, known: Sequence[str]) -> None:
        self.name = name
        super().__init__(f"unknown dataset {name!r}; known datasets: {', '.join(known)}")


class NoDatasetSelected(UnknownDataset):
    """A selection of datasets that names none (``--datasets ,,,``, ``?datasets=``).

    Refused rather than read as "all" or as "nothing": either would answer something the
    caller did not ask for (a whole profile, or a 404 for a customer who exists).
    """

    def __init__(self, known: Sequence[str]) -> None:
        self.name = ""
        ProfileStoreError.__init__(
            self,
            f"`datasets` names no dataset; name some of {', '.join(known)} "
            "(comma-separated), or leave it out for all",
        )


class LeaseHeld(ProfileStoreError):
    """Another process is refreshing or rebuilding this dataset."""

    def __init__(self, name: str, holder: str) -> None:
        super().__init__(f"{name} is locked by {holder}; try again when it finishes")


class StoreClosed(ProfileStoreError):
    """The store was closed; the request arrived during or after shutdown."""

    def __init__(self, what: str = "the profile store") -> None:
        super().__init__(f"{what} is closed (shutting down); retry against a running instance")


class AuditFailed(ProfileStoreError):
    """The log fails verification: a stream was altered, truncated, or the digest differs."""

    def __init__(self, report: AuditReport) -> None:
        self.report = report
        first = report.findings[0].detail if report.findings else "unknown"
        super().__init__(
            f"the log fails verification ({len(report.findings)} finding(s); first: {first}) "
            "and no digest was made; run `profilestore audit verify` for every finding"
        )


class InvalidArgument(ProfileStoreError):
    """A request's argument is malformed (named; its value is not echoed): HTTP 400, exit 2."""

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"`{field}` {reason}")


class InvalidLink(InvalidArgument):
    """A link or unlink request names a key that cannot be linked (the key is not echoed)."""


class LinkNotFound(NotFound):
    """No link joins the keys an unlink names."""

    def __init__(self) -> None:
        super().__init__(
            "no link joins these customer keys; `profilestore identity explain KEY` lists "
            "the links of a key"
        )


class InvalidIdentifier(ProfileStoreError):
    """An identifier to look a profile up by is malformed (the value is not echoed)."""

    def __init__(self, kind: str, reason: str) -> None:
        self.kind = kind
        self.reason = reason
        super().__init__(f"{kind}: {reason}")


class LogUnavailable(ProfileStoreError):
    """The event log's database failed an operation (unreachable, locked, corrupt, ...).

    The message names the backend, the operation and the driver's error class, never the
    driver's message: that may quote a connection string or stored event data. The driver
    error stays chained (``__cause__``) for the logs.
    """

    def __init__(
        self, backend: str, operation: str, error: BaseException, *, where: str = ""
    ) -> None:
        self.backend = backend
        self.operation = operation
        self.where = where
        self.driver_error = _innermost(error)
        cause = type(self.driver_error)
        at = f" at {where}" if where else ""
        super().__init__(
            f"the {backend} event log{at} could not {operation} "
            f"({cause.__module__}.{cause.__name__}); {_advice(self.driver_error)}"
        )


def _advice(error: BaseException) -> str:
    """What to do about a database error, by what kind of failure it is."""
    text = str(error).lower()
    if isinstance(error, OverflowError) or any(
        kind.__name__ == "DataError" for kind in type(error).__mro__
    ):
        return "the database refused a value (out of range or not storable): nothing was written"
    if "readonly" in text or "read-only" in text or "read only" in text:
        return "its files or database are read-only: make them writable, or use a reading command"
    if "full" in text or "no space" in text:
        return "the disk is full: free space, then retry (nothing half-written is kept)"
    return "check that the database is reachable and intact, then retry"


def _innermost(error: BaseException) -> BaseException:
    """The driver's own error under the library's translation of it (``raise X(e) from e``)."""
    while error.__cause__ is not None:
        error = error.__cause__
    return error


class DocumentsUnavailable(ProfileStoreError):
    """The document database failed an operation (unreachable, corrupt, out of space).

    Only the driver error's class name is kept in the message: a driver's message may quote
    the values it was given (customer data) or the connection URL. The driver error itself
    is chained (``__cause__``) for the operator's log.
    """

    def __init__(self, backend: str, operation: str, error: str, *, where: str = "") -> None:
        self.backend = backend
        self.operation = operation
        self.error = error
        self.where = where
        at = f" at {where}" if where else ""
        super().__init__(
            f"the {backend} document store{at} failed in {operation} ({error}); check that "
            "the database is reachable, writable for commands that write, and its files "
            "intact, then retry"
        )


class StoreMissing(ProfileStoreError):
    """A store opened read-only does not exist yet (a read-only open creates nothing)."""

    def __init__(self, what: str, where: str) -> None:
        self.what = what
        self.where = where
        at = f" at {where}" if where else ""
        super().__init__(
            f"there is no {what}{at}, and a read-only open creates none; check the home "
            "directory or URL (nothing was ingested there yet?)"
        )


class ReadOnlyStore(ProfileStoreError):
    """A store opened read-only (an auditor's copy, a reading command) was asked to write."""

    def __init__(self, what: str, where: str, operation: str) -> None:
        self.what = what
        self.where = where
        self.operation = operation
        at = f" at {where}" if where else ""
        super().__init__(
            f"{what}{at} is open read-only and cannot {operation}; open it read-write "
            "(a writing command, or open_store(read_only=False)) where its files are writable"
        )


class StagingMissing(ProfileStoreError):
    """A promotion was asked for a dataset whose staging area was never built."""

    def __init__(self, dataset: str) -> None:
        self.dataset = dataset
        super().__init__(
            f"dataset {dataset!r} has no built staging area to promote; rebuild it first"
        )


class InvalidCustomerSummary(ProfileStoreError, ValueError):
    """A per-customer input of the lifetime-value model is unusable (:mod:`profilestore.ltv`).

    Says which input, why, how many customers and the index of the first, never a value.
    """

    def __init__(self, field: str, reason: str, count: int, first_index: int) -> None:
        self.field = field
        self.reason = reason
        self.count = count
        self.first_index = first_index
        where = f" for {count} customer(s), the first at index {first_index}" if count else ""
        super().__init__(
            f"lifetime-value input `{field}` {reason}{where}; fix the per-customer summary "
            "(frequency = repeat purchases, recency and age in days) before fitting or scoring"
        )


class UnusableLtvModel(ProfileStoreError):
    """A stored lifetime-value model that cannot score customers."""

    def __init__(self, reason: str, remedy: str) -> None:
        self.reason = reason
        super().__init__(f"the lifetime-value model {reason}: {remedy}")


class InvalidTrigger(ProfileStoreError, ValueError):
    """A ``Trigger(...)`` with an unusable field, refused when it is built (so when its
    module is imported); loading it from the settings raises a :class:`ConfigError` naming
    the module too."""

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"Trigger field `{field}` {reason}")


class CustomerErased(ProfileStoreError):
    """The customer was forgotten (an erasure request): their data is gone, and events for
    them are refused so that it does not come back (see README "Privacy")."""

    def __init__(self, index: int | None = None) -> None:
        self.index = index
        where = f"event {index} of the batch is for" if index is not None else "this is"
        super().__init__(
            f"{where} a customer who was forgotten (erased on request); their events are "
            "refused so that their data does not come back, and nothing of the batch was appended"
            if index is not None
            else "the customer was forgotten (erased on request)"
        )


class NotEncrypted(ProfileStoreError):
    """Erasure needs per-customer encryption, and this log was written without it."""

    def __init__(self) -> None:
        super().__init__(
            "this event log was created before per-customer encryption: its events cannot be "
            "forgotten; move it to an encrypted log first (README, Privacy: `profilestore "
            "log encrypt`)"
        )


class KeyStoreError(ProfileStoreError):
    """The key store or the key-encryption key is unusable (missing, altered, unknown)."""


class Undecryptable(ProfileStoreError):
    """A sealed event that does not open with its stream's key: the stored bytes were
    altered or moved (``profilestore audit verify`` says which)."""
