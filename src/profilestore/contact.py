"""The contact policy: may this message go to this customer now?

Every firing passes :meth:`ContactPolicy.check` before anything is sent, in this order:

1. **Consent** (the one function that reads the consents dataset, :func:`latest_grant`,
   shared with ``ProfileStore.may_contact``). A marketing message needs a grant for its
   channel and purpose; unknown means no. A *transactional* message (a receipt: the
   customer expects it because of what they did) needs no grant, so an unsubscribe from
   marketing email does not stop receipts; but a withdrawal of its own purpose on its
   channel (``consent.withdrawn`` with ``purpose = "transactional"`` on ``email``) does:
   the customer said no to exactly that.
2. **Sensitive life events**: after a configured one (bereavement) no non-transactional
   message goes out for ``sensitive_for_days``. Suppressed, not deferred.
3. **Quiet hours** in the customer's time zone: a non-transactional message decided
   inside the window is *deferred* to its end (never dropped); the engine decides again
   then, so exit conditions and this policy are checked again.
4. **Frequency caps** per channel, per rolling 24 hours and 7 days, counting the
   non-transactional messages fired to any key of the customer. Transactional messages
   neither count nor are capped.

And **discretion** (seed item 9, "I'm not a fan of creepy"), a rule of the engine rather
than of any trigger: :meth:`ContactPolicy.discreet` leaves out of every payload the
fields not in ``payload_fields`` (at any depth), anything naming browsing behaviour
(views, searches, sessions, durations: never, even if allowlisted), lines whose
``category`` is sensitive, and any text naming a sensitive category or life event. A
message left with nothing to say (every line it was about was sensitive) is suppressed.

The functions here are pure: the engine gives them the profile's sections, the messages
already fired and the time.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal
from zoneinfo import ZoneInfo

from profilestore.config import ContactSettings
from profilestore.schedule import zone

DAY = dt.timedelta(days=1)
BEHAVIOUR = re.compile(r"view|search|session|brows|duration|seconds|dwell|time_spent", re.I)
"""Field names about browsing behaviour: left out of every message, allowlisted or not."""
WEEK = dt.timedelta(days=7)


def latest_grant(consents: Any, channel: str, purpose: str) -> Any | None:
    """The decision on record for ``channel`` and ``purpose`` in a consents section (the
    fold keeps the latest per pair), or None: the one reading of consents."""
    grants = getattr(consents, "consents", ()) if consents is not None else ()
    return next((c for c in grants if c.channel == channel and c.purpose == purpose), None)


def customer_zone(attributes: Any, default: ZoneInfo) -> ZoneInfo:
    """The customer's time zone from the attributes section, else ``default``."""
    location = getattr(attributes, "location", None)
    name = getattr(location, "timezone", None)
    if name:
        try:
            return zone(name)
        except ValueError:
            pass  # a zone this machine does not know: the default, rather than no decision
    return default


@dataclass(frozen=True)
class Verdict:
    """What the policy says: send now, defer until ``until``, or suppress (why)."""

    action: Literal["send", "defer", "suppress"]
    reason: str | None = None
    until: dt.datetime | None = None
    code: str | None = None
    """The reason as a short code (a metric's label): ``no_consent``, ``withdrawn``,
    ``sensitive_life_event``, ``quiet_hours``, ``frequency_cap``."""


SEND = Verdict("send")


@dataclass(frozen=True)
class Sent:
    """A message already fired to the customer, as caps count it."""

    channel: str
    at: dt.datetime
    transactional: bool


class ContactPolicy:
    """``[contact]`` of the settings, ready to check firings."""

    def __init__(self, settings: ContactSettings) -> None:
        self.settings = settings
        self.default_zone = zone(settings.timezone)
        quiet = settings.quiet_hours
        self.quiet_start = dt.time.fromisoformat(quiet.start)
        self.quiet_end = dt.time.fromisoformat(quiet.end)
        self.quiet_channels = frozenset(quiet.channels)
        self.sensitive = frozenset(settings.sensitive_life_events)
        self.sensitive_for = dt.timedelta(days=settings.sensitive_for_days)
        self.payload_fields = frozenset(settings.payload_fields)
        self.sensitive_words = frozenset(
            w.strip().casefold()
            for w in (*settings.sensitive_categories, *settings.sensitive_life_events)
        )

    def discreet(
        self, payload: Mapping[str, Any], *, transactional: bool = False
    ) -> tuple[dict[str, Any], list[str]]:
        """The payload as it may go out, and the paths of what was left out. A
        transactional message (a receipt) keeps every line, only without a sensitive
        category named: the customer needs all of it."""
        left_out: list[str] = []
        kept = self._clean(payload, "$", left_out, keep_lines=transactional)
        return kept, left_out

    def _clean(self, value: Any, path: str, left_out: list[str], *, keep_lines: bool) -> Any:
        if isinstance(value, Mapping):
            kept = {}
            for key, item in value.items():
                name = str(key)
                where = f"{path}.{name}"
                if name not in self.payload_fields or BEHAVIOUR.search(name):
                    left_out.append(where)
                    continue
                if self._sensitive_text(item):
                    left_out.append(where)
                    continue
                kept[name] = self._clean(item, where, left_out, keep_lines=keep_lines)
            return kept
        if isinstance(value, list | tuple):
            cleaned = []
            for index, item in enumerate(value):
                where = f"{path}[{index}]"
                category = item.get("category") if isinstance(item, Mapping) else item
                if self._sensitive_text(category) and not (
                    keep_lines and isinstance(item, Mapping)
                ):
                    left_out.append(where)
                    continue
                cleaned.append(self._clean(item, where, left_out, keep_lines=keep_lines))
            return cleaned
        return value

    def _sensitive_text(self, value: Any) -> bool:
        return isinstance(value, str) and value.strip().casefold() in self.sensitive_words

    def emptied(self, before: Mapping[str, Any], after: Mapping[str, Any]) -> bool:
        """Whether leaving things out emptied a list the message was about."""
        return any(
            isinstance(value, list | tuple) and value and not after.get(key)
            for key, value in before.items()
        )

    def check(
        self,
        *,
        channel: str,
        purpose: str,
        transactional: bool,
        sections: Any,
        timezone: ZoneInfo,
        sent: Sequence[Sent],
        now: dt.datetime,
    ) -> Verdict:
        """The verdict for a message on ``channel`` for ``purpose``; ``sections`` maps
        dataset names to the customer's sections (``consents``, ``social`` are read)."""
        grant = latest_grant(sections.get("consents"), channel, purpose)
        if transactional:
            if grant is not None and not grant.granted:
                return Verdict(
                    "suppress", f"the customer withdrew {purpose} on {channel}", code="withdrawn"
                )
            return SEND
        if grant is None:
            return Verdict(
                "suppress", f"no consent on record for {purpose} on {channel}", code="no_consent"
            )
        if not grant.granted:
            return Verdict(
                "suppress", f"the customer withdrew {purpose} on {channel}", code="withdrawn"
            )
        sensitive = self.sensitive_event(sections.get("social"), now)
        if sensitive is not None:
            return Verdict(
                "suppress",
                f"a sensitive life event ({sensitive}) was detected lately",
                code="sensitive_life_event",
            )
        quiet_until = self.quiet_until(channel, timezone, now)
        if quiet_until is not None:
            return Verdict(
                "defer", "quiet hours in the customer's time zone", quiet_until, "quiet_hours"
            )
        return self.capped(channel, sent, now)

    def sensitive_event(self, social: Any, now: dt.datetime) -> str | None:
        """The kind of a configured sensitive life event detected within the period."""
        if not self.sensitive or social is None:
            return None
        for life_event in getattr(social, "life_events", ()):
            if (
                life_event.kind in self.sensitive
                and now - life_event.detected_at < self.sensitive_for
            ):
                return str(life_event.kind)
        return None

    def quiet_until(self, channel: str, timezone: ZoneInfo, now: dt.datetime) -> dt.datetime | None:
        """The end of the quiet window ``now`` falls in (in the customer's zone), or None."""
        start, end = self.quiet_start, self.quiet_end
        if start == end or channel not in self.quiet_channels:
            return None
        local = now.astimezone(timezone)
        moment = local.time().replace(tzinfo=None)
        if start < end:
            inside = start <= moment < end
            day = local.date()
        else:  # the window spans midnight
            inside = moment >= start or moment < end
            day = local.date() + DAY if moment >= start else local.date()
        if not inside:
            return None
        return dt.datetime.combine(day, end, tzinfo=timezone).astimezone(dt.UTC)

    def capped(self, channel: str, sent: Iterable[Sent], now: dt.datetime) -> Verdict:
        daily, weekly = self.settings.cap(channel)
        counted = [s.at for s in sent if s.channel == channel and not s.transactional]
        today = sum(1 for at in counted if now - at < DAY)
        week = sum(1 for at in counted if now - at < WEEK)
        if today >= daily:
            return Verdict(
                "suppress",
                f"frequency cap: {today} {channel} message(s) in 24 hours",
                code="frequency_cap",
            )
        if week >= weekly:
            return Verdict(
                "suppress",
                f"frequency cap: {week} {channel} message(s) in 7 days",
                code="frequency_cap",
            )
        return SEND
