"""Birthday (seed item 6, "I like special treats on my birthday"): a greeting on the day,
in the customer's time zone.

When a birthday is set (or was set before the trigger was enabled: it plans ahead), a
timer waits for ``send_hour`` on the next birthday in the customer's own time zone
(``profile.location_set`` with a ``timezone``, else ``[contact] timezone``). When it is
due the birthday is read again: changed meanwhile, the greeting waits for the new date;
on the day, it is sent once that year and the next year's timer is set. A birthday on
29 February is celebrated on 28 February in other years. A greeting that cannot go out
on the day (no consent, quiet hours until after midnight) is not sent late.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated

import msgspec

from profilestore.events import BirthdaySet, Event
from profilestore.trigger import Decision, Fire, ProfileView, Trigger, Wait


class Settings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    send_hour: Annotated[int, msgspec.Meta(ge=0, le=23)] = 9
    """The hour of the customer's local day the greeting goes out."""


def occurrence(birthday: dt.date, year: int) -> dt.date:
    """The birthday in ``year`` (29 February: the 28th in common years)."""
    try:
        return birthday.replace(year=year)
    except ValueError:
        return dt.date(year, 2, 28)


def decide(event: Event, profile: ProfileView, now: dt.datetime, settings: Settings) -> Decision:
    birthday = profile.section("attributes").birthday
    if birthday is None:
        return None
    zone = profile.timezone
    today = now.astimezone(zone).date()
    day = occurrence(birthday, today.year)
    if day < today:
        day = occurrence(birthday, today.year + 1)

    def at(date: dt.date) -> dt.datetime:
        return dt.datetime.combine(date, dt.time(settings.send_hour), tzinfo=zone)

    if day == today and now >= at(day):
        following = occurrence(birthday, today.year + 1)
        return Fire(
            payload={"first_name": profile.section("attributes").first_name},
            dedupe_key=f"birthday:{day.year}",
            then=Wait(until=at(following), dedupe_key=f"birthday:{following.year}"),
        )
    return Wait(until=at(day), dedupe_key=f"birthday:{day.year}")


TRIGGER = Trigger(
    name="birthday",
    reads=(BirthdaySet,),
    channel="email",
    purpose="marketing",
    transactional=False,
    decide=decide,
    description="a greeting at send_hour on the customer's birthday, in their time zone",
    needs=("attributes",),
    settings=Settings,
    warm_up="plan",
)
