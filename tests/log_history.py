"""Reading the whole log back with stream versions: what tests check appends against.

Production code reads the log through :meth:`EventLog.changes` (what folding needs); the
tests also want each event's stream and version, which the library's notification query
gives, so that reader lives here rather than in the service.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from uuid import UUID

from eventsourcing.persistence import ApplicationRecorder

from profilestore.eventlog import EventLog
from profilestore.events import Event


@dataclass(frozen=True)
class LoggedEvent:
    """An event as read back from the log, with its positions."""

    notification_id: int
    stream_id: UUID
    version: int
    topic: str
    event: Event


def read_log(
    log: EventLog,
    after: int,
    limit: int,
    *,
    until: int | None = None,
    topics: Sequence[str] = (),
) -> list[LoggedEvent]:
    """Events with notification ids in ``(after, until]``, oldest first."""
    recorder = log.recorder
    assert isinstance(recorder, ApplicationRecorder)
    notifications = recorder.select_notifications(
        after, limit, stop=until, topics=topics, inclusive_of_start=False
    )
    rows = [
        (
            n.id,
            n.originator_id if isinstance(n.originator_id, UUID) else UUID(n.originator_id),
            n.originator_version,
            n.topic,
            n.state,
        )
        for n in notifications
    ]
    # Decoded as the log decodes (opening each customer's sealed events with their key).
    decoded = log._decoded(rows)
    return [
        LoggedEvent(row[0], row[1], row[2], row[3], d.event)
        for row, d in zip(rows, decoded, strict=True)
    ]
