"""Attributes: name, birthday, location and preferences, last write wins."""

from __future__ import annotations

import datetime as dt

import msgspec

from profilestore.events import (
    BirthdaySet,
    Event,
    Location,
    LocationSet,
    NameSet,
    PreferenceSet,
    PreferenceValue,
    Timestamp,
)
from profilestore.projection import Projection

CAP_PREFERENCES = 100


class Preference(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    key: str
    value: PreferenceValue
    set_at: Timestamp


class Attributes(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    first_name: str | None = None
    last_name: str | None = None
    birthday: dt.date | None = None
    location: Location | None = None
    preferences: tuple[Preference, ...] = ()
    updated_at: Timestamp | None = None


def fold(section: Attributes, event: Event) -> Attributes:
    if isinstance(event, NameSet):
        section = msgspec.structs.replace(
            section,
            first_name=event.first_name if event.first_name is not None else section.first_name,
            last_name=event.last_name if event.last_name is not None else section.last_name,
        )
    elif isinstance(event, BirthdaySet):
        section = msgspec.structs.replace(section, birthday=event.birthday)
    elif isinstance(event, LocationSet):
        section = msgspec.structs.replace(section, location=event.location)
    elif isinstance(event, PreferenceSet):
        kept = tuple(p for p in section.preferences if p.key != event.key)
        entry = Preference(key=event.key, value=event.value, set_at=event.occurred_at)
        section = msgspec.structs.replace(section, preferences=(*kept, entry)[-CAP_PREFERENCES:])
    else:
        return section
    return msgspec.structs.replace(section, updated_at=event.occurred_at)


PROJECTION = Projection(
    dataset="attributes",
    reads=(NameSet, BirthdaySet, LocationSet, PreferenceSet),
    section=Attributes,
    fold=fold,
    default_refresh="realtime",
    retention=f"latest value of each attribute, up to {CAP_PREFERENCES} preferences",
)
