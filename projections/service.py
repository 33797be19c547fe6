"""Service: recent tickets, survey answers and the latest NPS."""

from __future__ import annotations

import msgspec

from profilestore.events import (
    Event,
    SurveyAnswered,
    TicketOpened,
    TicketResolved,
    Timestamp,
)
from profilestore.projection import Projection, keep_last

CAP_TICKETS = 20
CAP_SURVEYS = 10


class Ticket(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    ticket_id: str
    subject: str
    priority: str
    channel: str | None = None
    opened_at: Timestamp
    resolved_at: Timestamp | None = None
    resolution: str | None = None


class Survey(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    survey_id: str
    nps: int | None = None
    score: float | None = None
    comment: str | None = None
    at: Timestamp


class Service(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    tickets: tuple[Ticket, ...] = ()
    surveys: tuple[Survey, ...] = ()
    ticket_count: int = 0
    open_ticket_count: int = 0
    last_nps: int | None = None


def fold(section: Service, event: Event) -> Service:
    if isinstance(event, TicketOpened):
        if any(t.ticket_id == event.ticket_id for t in section.tickets):
            return section
        ticket = Ticket(
            ticket_id=event.ticket_id,
            subject=event.subject,
            priority=event.priority,
            channel=event.channel,
            opened_at=event.occurred_at,
        )
        return msgspec.structs.replace(
            section,
            tickets=keep_last(section.tickets, ticket, CAP_TICKETS),
            ticket_count=section.ticket_count + 1,
            open_ticket_count=section.open_ticket_count + 1,
        )
    if isinstance(event, TicketResolved):
        found = next((t for t in section.tickets if t.ticket_id == event.ticket_id), None)
        if found is None or found.resolved_at is not None:
            return section
        resolved = msgspec.structs.replace(
            found, resolved_at=event.occurred_at, resolution=event.resolution
        )
        return msgspec.structs.replace(
            section,
            tickets=tuple(resolved if t is found else t for t in section.tickets),
            open_ticket_count=max(0, section.open_ticket_count - 1),
        )
    if isinstance(event, SurveyAnswered):
        survey = Survey(
            survey_id=event.survey_id,
            nps=event.nps,
            score=event.score,
            comment=event.comment,
            at=event.occurred_at,
        )
        return msgspec.structs.replace(
            section,
            surveys=keep_last(section.surveys, survey, CAP_SURVEYS),
            last_nps=event.nps if event.nps is not None else section.last_nps,
        )
    return section


PROJECTION = Projection(
    dataset="service",
    reads=(TicketOpened, TicketResolved, SurveyAnswered),
    section=Service,
    fold=fold,
    default_refresh="every 1h",
    retention=f"last {CAP_TICKETS} tickets and {CAP_SURVEYS} surveys",
)
