"""What a trigger is: the events it reads, where it speaks, and a pure decision.

A trigger module (see ``triggers/``) defines one :class:`Trigger` named ``TRIGGER``. Its
``decide`` is a pure function ``(event, profile, now, settings) -> decision``:

- :class:`Fire`: send this payload now, once per ``dedupe_key`` and customer;
- :class:`Wait`: look again at ``until`` (a durable timer: abandoned carts, birthdays,
  reminders), when the same function is called again with the same event, the profile
  as it is then and the time then, so it re-checks its exit conditions itself;
- ``None``: nothing to do.

The decision never sends anything, reads no database and keeps no state: the engine
(:mod:`profilestore.firing`) loads the profile, calls it, passes a firing through the
contact policy (:mod:`profilestore.contact`) and records every outcome, so the same
decision runs live, after a crash and in a test without a store.

A trigger is enabled and tuned by one line under ``[triggers]`` in the config; its
``settings`` Struct (defaults for every field) is decoded strictly from that line's
``settings`` table, so a mistyped knob is an error naming the file and the field.
"""

from __future__ import annotations

import datetime as dt
import importlib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar, get_args
from zoneinfo import ZoneInfo

import msgspec

from profilestore.errors import ConfigError, InvalidTrigger
from profilestore.events import ConsentChannel, Event
from profilestore.mapper import topics_for
from profilestore.projection import is_event_class, raised_at

S = TypeVar("S", bound=msgspec.Struct)

TRIGGER_NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
DEDUPE_KEY_CHARS = 200
"""The longest dedupe key a decision may return (it is part of a record key)."""


class NoSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The settings of a trigger with nothing to tune."""


@dataclass(frozen=True)
class ProfileView:
    """The customer as a decision sees it: one profile (every key of a merged customer),
    its sections at least as fresh as the event being decided, and its time zone."""

    profile_id: str
    """The profile's id now: a customer key, or a merged profile's canonical id."""
    customer_ids: tuple[str, ...]
    """Every customer key of the profile."""
    sections: Mapping[str, Any]
    """Dataset -> section (an empty one where the customer has none)."""
    timezone: ZoneInfo
    """The customer's own (``profile.location_set`` with a ``timezone``), else the
    configured ``[contact] timezone``."""

    def section(self, dataset: str) -> Any:
        return self.sections[dataset]


@dataclass(frozen=True)
class Wait:
    """Decide again at ``until``: one timer per ``dedupe_key`` and customer (a later Wait
    with the same key moves it)."""

    until: dt.datetime
    dedupe_key: str


@dataclass(frozen=True)
class Fire:
    """Send ``payload`` now (through the contact policy), once per ``dedupe_key`` and
    customer: a second firing with the same key, from any event or any key of a merged
    customer, is recorded as a duplicate and not sent. ``then``: also look again later
    (next year's birthday, the next reminder), whatever becomes of this firing."""

    payload: Mapping[str, Any]
    dedupe_key: str
    then: Wait | None = None


Decision = Fire | Wait | None
Decide = Callable[[Any, ProfileView, dt.datetime, Any], Decision]


@dataclass(frozen=True)
class Trigger(Generic[S]):
    """One trigger of the engine."""

    name: str
    reads: tuple[type[Event], ...]
    """The events that wake it (and that its timers look again at)."""
    channel: str
    """The consent channel it speaks on (``email``, ``sms``, ...)."""
    purpose: str
    """The consent purpose it needs (``marketing``); transactional ones need none."""
    transactional: bool
    """A message the customer expects because of what they did (a receipt): exempt from
    marketing consent, quiet hours and frequency caps, never from a withdrawal of its
    own purpose on its channel (see :mod:`profilestore.contact`)."""
    decide: Callable[[Any, ProfileView, dt.datetime, S], Decision]
    description: str
    """One line: what it sends and when (``profilestore triggers list`` shows it)."""
    needs: tuple[str, ...] = ()
    """The datasets its decision reads (checked against ``[datasets]`` when loaded)."""
    settings: type[S] = NoSettings  # type: ignore[assignment]
    """Its knobs: a Struct whose every field has a default (``[triggers.NAME.settings]``)."""
    warm_up: Literal["skip", "plan"] = "skip"
    """What becomes of events recorded before the trigger's cut-off: ``skip`` (not
    decided at all), or ``plan``: decided, and only a :class:`Wait` for a moment still
    to come is kept (a birthday set years ago still gets this year's greeting; nothing
    past is sent)."""
    topics: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        # Checked when the module is imported: a mistake is one error naming the field.
        if not isinstance(self.name, str) or not TRIGGER_NAME.match(self.name):
            raise InvalidTrigger("name", f"{self.name!r} must match {TRIGGER_NAME.pattern}")
        if not isinstance(self.reads, tuple) or not self.reads:
            raise InvalidTrigger("reads", "must be a non-empty tuple of event classes")
        for read in self.reads:
            if not is_event_class(read):
                raise InvalidTrigger(
                    "reads",
                    f"holds {read!r}, which is not an event class of the catalogue "
                    "(profilestore.events)",
                )
        if self.channel not in get_args(ConsentChannel):
            raise InvalidTrigger(
                "channel",
                f"{self.channel!r} is not a channel; one of {', '.join(get_args(ConsentChannel))}",
            )
        if not isinstance(self.purpose, str) or not 1 <= len(self.purpose) <= 512:
            raise InvalidTrigger("purpose", "must be a text of 1 to 512 characters")
        if not isinstance(self.transactional, bool):
            raise InvalidTrigger(
                "transactional", f"must be True or False, not {self.transactional!r}"
            )
        if not callable(self.decide):
            raise InvalidTrigger(
                "decide",
                "must be a function (event, profile, now, settings) -> decision, "
                f"not {self.decide!r}",
            )
        if not isinstance(self.description, str):
            raise InvalidTrigger("description", f"must be a text, not {self.description!r}")
        if not isinstance(self.needs, tuple) or not all(isinstance(n, str) for n in self.needs):
            raise InvalidTrigger("needs", "must be a tuple of dataset names")
        if self.warm_up not in ("skip", "plan"):
            raise InvalidTrigger("warm_up", f"must be 'skip' or 'plan', not {self.warm_up!r}")
        if not (isinstance(self.settings, type) and issubclass(self.settings, msgspec.Struct)):
            raise InvalidTrigger(
                "settings", f"must be a msgspec Struct class, not {self.settings!r}"
            )
        try:
            self.settings()
        except TypeError as e:
            raise InvalidTrigger("settings", f"every field needs a default ({e})") from None
        topics = tuple(t for cls in self.reads for t in topics_for(cls))
        object.__setattr__(self, "topics", topics)


@dataclass(frozen=True)
class EnabledTrigger:
    """A trigger as configured: its module's :class:`Trigger`, its decoded settings and
    the cut-off it was given (``since``; None: from when the engine first runs it)."""

    trigger: Trigger[Any]
    settings: Any
    since: dt.datetime | None = None
    stale_after: dt.timedelta | None = None
    """A firing decided this long after its event (or its timer's due time) is not sent."""

    @property
    def name(self) -> str:
        return self.trigger.name


def load_trigger(module_path: str, *, source: str, path: str) -> Trigger[Any]:
    """Import ``module_path`` and return its ``TRIGGER``; errors name the config field,
    the module and, for a bad ``Trigger(...)``, its field and line."""
    try:
        module = importlib.import_module(module_path)
    except ImportError as e:
        raise ConfigError(
            source, path, f"cannot import trigger module {module_path!r}: {e}"
        ) from None
    except InvalidTrigger as e:
        raise ConfigError(
            source, path, f"trigger module {module_path!r}{raised_at(e)}: {e}; fix its TRIGGER"
        ) from None
    except Exception as e:  # any error in the user's module: one line, not a traceback
        raise ConfigError(
            source,
            path,
            f"trigger module {module_path!r} failed on import{raised_at(e)}: "
            f"{type(e).__name__}: {e}",
        ) from None
    trigger = getattr(module, "TRIGGER", None)
    if not isinstance(trigger, Trigger):
        raise ConfigError(source, path, f"module {module_path!r} defines no TRIGGER = Trigger(...)")
    return trigger


def settings_of(trigger: Trigger[S], raw: Mapping[str, Any], *, source: str, path: str) -> S:
    """The trigger's settings decoded from its config table, strictly (unknown knobs and
    bad values name the field)."""
    try:
        return msgspec.convert(dict(raw), trigger.settings)
    except msgspec.ValidationError as e:
        reason, sep, at = str(e).rpartition(" - at `")
        where = at.rstrip("`").removeprefix("$").lstrip(".") if sep else ""
        raise ConfigError(
            source, ".".join(p for p in (path, where) if p), reason if sep else str(e)
        ) from None


def check_needs(enabled: Sequence[EnabledTrigger], datasets: Sequence[str], *, source: str) -> None:
    """Every dataset a trigger reads must be configured."""
    for entry in enabled:
        for dataset in entry.trigger.needs:
            if dataset not in datasets:
                raise ConfigError(
                    source,
                    f"triggers.{entry.name}",
                    f"trigger {entry.name!r} reads dataset {dataset!r}, which is not configured "
                    f"under [datasets] (configured: {', '.join(datasets)})",
                )


def check_decision(decision: object) -> Decision:
    """A decision as the engine accepts it; a bad one is a TypeError naming what is wrong."""
    if decision is None:
        return None
    if isinstance(decision, Fire) and decision.then is not None:
        if not isinstance(decision.then, Wait):
            raise TypeError("Fire.then must be a Wait or None")
        check_decision(decision.then)
    if isinstance(decision, Fire | Wait):
        key = decision.dedupe_key
        if not isinstance(key, str) or not 1 <= len(key) <= DEDUPE_KEY_CHARS:
            raise TypeError(f"dedupe_key must be a text of 1 to {DEDUPE_KEY_CHARS} characters")
        if "\x1f" in key:
            raise TypeError("dedupe_key may not hold the unit separator U+001F")
        if isinstance(decision, Wait) and (
            not isinstance(decision.until, dt.datetime) or decision.until.tzinfo is None
        ):
            raise TypeError("Wait.until must be a datetime with a time zone")
        if isinstance(decision, Fire) and not isinstance(decision.payload, Mapping):
            raise TypeError("Fire.payload must be a mapping")
        return decision
    raise TypeError(f"a decision is Fire, Wait or None, not {type(decision).__name__}")
