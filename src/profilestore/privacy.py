"""Erasure on an immutable log: what ``profilestore forget`` proves, and its receipt.

``ProfileStore.forget`` (the one door) runs the steps; this module holds what they share:

- :func:`probes_of`: the customer's personal values as the log knew them (customer keys,
  identifiers), gathered *before* the keys are destroyed, kept in memory only, and
  used once: to search every byte of the embedded stores for a readable copy afterwards.
- :func:`chain_intact`: the forgotten streams' hash chains recomputed from their stored
  (encrypted) bytes by the audit, up to the head the stream directory records: erasure
  rewrote nothing.
- :class:`ErasureReceipt`: what an auditor keeps, free of personal data: the request id,
  when it was received and completed, counts of what was destroyed and deleted, the
  plaintext search and the chain check. It is appended to the log (the ``~erasures``
  stream, see :data:`RECEIPTS`), so the next audit digest covers it and ``profilestore
  audit erasures`` lists it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from pathlib import Path

from profilestore.audit import Auditor
from profilestore.eventlog import EventLog
from profilestore.events import (
    ErasureReceipt,
    ErasureRecorded,
    IdentifierLinked,
    IdentifierSeen,
    IdentifierUnlinked,
    PlaintextCheck,
)

__all__ = ["RECEIPTS", "ErasureReceipt", "ErasureRecorded", "PlaintextCheck"]
from profilestore.sqlite_files import find_plaintext

RECEIPTS = "~erasures"
"""The stream of erasure receipts: a reserved key (clients' keys may not start with ``~``),
whose data key is never destroyed."""

MIN_PROBE_BYTES = 4
"""Values shorter than this are not searched for: two letters occur by chance in any file."""


def probes_of(keys: Iterable[str], events: Iterable[object]) -> list[bytes]:
    """The personal values to search for: the customer keys and identifier values (as
    sent and as normalised), UTF-8, at least :data:`MIN_PROBE_BYTES` long. Names are not
    among them: other customers share first and last names, so finding one proves
    nothing about this customer."""
    values = set(keys) | identifiers_of(events)
    encoded = {v.encode() for v in values}
    return sorted(v for v in encoded if len(v) >= MIN_PROBE_BYTES)


def identifiers_of(events: Iterable[object]) -> set[str]:
    """The identifier values the events carried, as sent and as normalised."""
    values: set[str] = set()
    for event in events:
        if isinstance(event, IdentifierSeen | IdentifierLinked | IdentifierUnlinked):
            values.add(event.value)
            values.add(event.lookup_key.partition(":")[2] or event.lookup_key)
            values.add(event.lookup_key)
    return values


def chain_intact(log: EventLog, customer_ids: Sequence[str]) -> bool:
    """The log's own audit (:meth:`~profilestore.audit.Auditor.verify_streams`) of these
    customers' streams: each chain recomputed from its stored bytes matches every recorded
    hash and the head its directory row records."""
    auditor = Auditor(log, clock=lambda: dt.datetime.now(dt.UTC))
    return auditor.verify_streams([log.stream_of(c) for c in customer_ids]).ok


def events_in(log: EventLog, customer_ids: Sequence[str]) -> int:
    """How many events the customers' streams hold (from the directory: no event read)."""
    heads = log.recorder.stream_heads([log.stream_of(c) for c in customer_ids])
    return sum(version for version, _ in heads.values())


def search_files(paths: Iterable[str], probes: Sequence[bytes]) -> PlaintextCheck:
    """Search every byte of ``paths`` (those that exist) for each probe: the database, its
    WAL and free pages alike. Only counts leave this function."""
    existing = [Path(p) for p in paths if Path(p).exists()]
    found = find_plaintext(existing, probes)
    return PlaintextCheck(
        applicable=True,
        files=len(existing),
        bytes_scanned=sum(p.stat().st_size for p in existing),
        values=len(probes),
        found=len(found),
    )
