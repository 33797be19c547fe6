"""Refresh cadences: parsing, APScheduler triggers, next runs and catch-up.

A cadence is ``realtime`` (the follower applies events as they arrive), ``every 15m``
(an interval: s, m, h, d), ``cron M H DOM MON DOW`` (a five-field crontab in the
configured time zone), or ``manual``.

Crontab weekdays count from Sunday (0 or 7) while APScheduler 3 counts from Monday, so a
numeric day of week would silently shift a day. Day-of-week fields are translated to day
names here before APScheduler sees them. Cron also ORs a restricted day of month with a
restricted day of week where APScheduler ANDs them: such expressions are refused rather
than run on other days than the user meant.

Catch-up: a dataset whose last successful run is older than its previous due time (the
process was down when it fell due) is due now; one that never ran is due now.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from profilestore.errors import CadenceError

DAY_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_EVERY = re.compile(r"^(\d+)([smhd])$")


@dataclass(frozen=True)
class Cadence:
    kind: Literal["realtime", "every", "cron", "manual"]
    text: str
    seconds: int = 0
    cron: str = ""

    @property
    def scheduled(self) -> bool:
        return self.kind in ("every", "cron")


def parse_interval(value: str) -> int:
    """Seconds in an interval such as ``15m``."""
    match = _EVERY.match(value.strip())
    if not match:
        raise CadenceError(f"{value!r} is not an interval like '15m' (s, m, h, d)")
    seconds = int(match.group(1)) * _UNITS[match.group(2)]
    if seconds <= 0:
        raise CadenceError(f"{value!r} must be longer than zero")
    return seconds


def parse_cadence(text: str) -> Cadence:
    """``realtime``, ``manual``, ``every 15m`` or ``cron 0 3 * * sun``; checked fully."""
    text = " ".join(text.split())
    if text in ("realtime", "manual"):
        return Cadence(kind=text, text=text)  # type: ignore[arg-type]
    word, _, rest = text.partition(" ")
    if word == "every":
        return Cadence(kind="every", text=text, seconds=parse_interval(rest))
    if word == "cron":
        cron_trigger(rest, dt.UTC)  # validates
        return Cadence(kind="cron", text=text, cron=rest)
    raise CadenceError(f"{text!r} is not 'realtime', 'every <interval>' or 'cron <fields>'")


def _day_number(token: str) -> int:
    token = token.lower()
    if token in DAY_NAMES:
        return DAY_NAMES.index(token)
    if token.isdigit() and 0 <= int(token) <= 7:
        return int(token) % 7  # cron allows 7 for Sunday too
    raise CadenceError(f"day of week {token!r} is not 0-7 or a day name (sun, mon, ...)")


def translate_day_of_week(field: str) -> str:
    """A crontab day-of-week field as APScheduler day names: ``1-5`` -> ``mon,...,fri``."""
    if field == "*":
        return "*"
    days: set[int] = set()
    for part in field.split(","):
        span, _, step_text = part.partition("/")
        step = int(step_text) if step_text.isdigit() and int(step_text) > 0 else 0
        if step_text and not step:
            raise CadenceError(f"day of week step {step_text!r} must be a positive number")
        if span == "*":
            first, last = 0, 6
        elif "-" in span:
            low, _, high = span.partition("-")
            first, last = _day_number(low), _day_number(high)
            if high.strip() == "7":
                last = 7  # ranges like 5-7 run through Sunday
            if last < first:
                raise CadenceError(f"day of week range {span!r} runs backwards")
        else:
            first = _day_number(span)
            last = 6 if step else first
        days.update(d % 7 for d in range(first, last + 1, step or 1))
    return ",".join(DAY_NAMES[d] for d in sorted(days))


def cron_trigger(expression: str, timezone: dt.tzinfo) -> CronTrigger:
    """An APScheduler trigger with crontab semantics for ``M H DOM MON DOW``."""
    fields = expression.split()
    if len(fields) != 5:
        raise CadenceError(
            f"cron {expression!r} has {len(fields)} fields; expected 5 (minute hour "
            "day-of-month month day-of-week)"
        )
    minute, hour, day, month, day_of_week = fields
    if day != "*" and day_of_week != "*":
        raise CadenceError(
            f"cron {expression!r} restricts both day of month and day of week: cron means "
            "either, APScheduler both; split it into two datasets' schedules or use one"
        )
    try:
        return CronTrigger(
            minute=minute,
            hour=hour,
            day=day,
            month=month,
            day_of_week=translate_day_of_week(day_of_week),
            timezone=timezone,
        )
    except ValueError as e:
        raise CadenceError(f"cron {expression!r}: {e}") from None


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: a name too long for a file
        raise CadenceError(f"{name!r} is not an IANA time zone such as 'Europe/Paris'") from None


def trigger(cadence: Cadence, timezone: dt.tzinfo, last_run: dt.datetime | None) -> BaseTrigger:
    """The APScheduler trigger of a scheduled cadence; intervals count from the last run."""
    if cadence.kind == "every":
        start = last_run or dt.datetime.now(dt.UTC)
        return IntervalTrigger(seconds=cadence.seconds, start_date=start, timezone=timezone)
    if cadence.kind == "cron":
        return cron_trigger(cadence.cron, timezone)
    raise CadenceError(f"{cadence.text!r} is not a scheduled cadence")


def next_due(
    cadence: Cadence,
    timezone: dt.tzinfo,
    last_success: dt.datetime | None,
    now: dt.datetime,
) -> dt.datetime | None:
    """When the dataset should next run: ``now`` if it missed a run (or never ran)."""
    if not cadence.scheduled:
        return None
    if last_success is None:
        return now
    if cadence.kind == "every":
        due = last_success + dt.timedelta(seconds=cadence.seconds)
    else:
        fire = cron_trigger(cadence.cron, timezone).get_next_fire_time(None, last_success)
        if fire is None:
            return None
        due = fire
    return max(due, now) if due <= now else due


def fire_times(
    cadence: Cadence, timezone: dt.tzinfo, after: dt.datetime, count: int
) -> list[dt.datetime]:
    """The next ``count`` fire times strictly after ``after`` (for listings and tests)."""
    if not cadence.scheduled:
        return []
    times: list[dt.datetime] = []
    if cadence.kind == "every":
        step = dt.timedelta(seconds=cadence.seconds)
        return [after + step * (i + 1) for i in range(count)]
    cron = cron_trigger(cadence.cron, timezone)
    previous: dt.datetime | None = None
    moment = after + dt.timedelta(microseconds=1)
    while len(times) < count:
        fire = cron.get_next_fire_time(previous, moment)
        if fire is None:
            break
        times.append(fire)
        previous = fire
        moment = fire + dt.timedelta(microseconds=1)
    return times
