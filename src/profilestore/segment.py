"""Segment Spec messages as profilestore events: pure functions, no I/O.

Analytics SDKs that speak the Segment Spec (Segment's, RudderStack's, ...) send *calls*
(``identify``, ``track``, ``page``, ``screen``, ``alias``, ``group``). :func:`map_batch`
turns each into zero or more events of our catalogue, as plain dicts the store validates
one by one (:meth:`~profilestore.store.ProfileStore.append_valid`): one bad part of a
message, or one bad message, does not cost its valid siblings, because an SDK drops a
whole batch on a 4xx. The README's "Segment-compatible ingestion" table lists every row.

The decisions this module makes, each stated once:

- **Customer key**: the ``userId``; without one, :data:`ANONYMOUS_PREFIX` + the
  ``anonymousId``. A ``userId`` starting with that prefix is refused, so an anonymous key
  can never be a user's key (refusing is visible; escaping would make keys that are not
  the client's ids).
- **Devices**: every message carrying an ``anonymousId`` also says its key presented it
  as a ``device`` identifier, so the identity rules link the anonymous key into the known
  one (README "Identity"). That event's id derives from (key, anonymousId), not from the
  message: each key records a device once, and later messages' copies are duplicates.
- **Ids**: every event id derives from the ``messageId`` and the event's part of the
  message (``identify:email``, ``track``, ...), so a retried message is a duplicate and
  one message's several events never collide. Without a ``messageId`` the message's own
  content (less ``sentAt``) stands in for it, so an identical retry is still a duplicate.
- **Time**: Segment's clock-skew correction, ``timestamp = receivedAt - (sentAt -
  originalTimestamp)``; without ``sentAt`` the client's timestamp as given; without a
  timestamp, ``receivedAt``. Times without a zone are UTC.
- **Typed where the Spec allows, generic otherwise**: an E-commerce v2 event that lacks
  what its typed event needs (an ``order_id``, a product id, a price) is kept as the
  generic ``activity.tracked`` rather than refused; a value the typed event refuses (a
  negative price) is reported, since it is wrong, not merely absent.

Nothing here quotes a value in a reason: reasons go back to the client and to metrics,
and values are personal data.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

import msgspec

from profilestore.errors import InvalidEvent, RefusedMessage
from profilestore.events import (
    NO_CONTROL_CHARACTERS,
    PREFERENCE_NUMBER_MAX,
    PROPERTIES_MAX,
    SAFE_INTEGER,
)

ANONYMOUS_PREFIX = "anon:"
"""Begins the customer key of a visitor known only by an ``anonymousId``."""
DEFAULT_CART = "default"
"""The cart of E-commerce events that name none (the Spec's ``cart_id`` is optional)."""
DEFAULT_CURRENCY = "USD"
"""Amounts without a ``currency`` are in US dollars, as the Spec's examples assume."""
TRAITS_MAX = PROPERTIES_MAX
"""Most traits one ``identify`` turns into preferences (the attributes dataset keeps 100)."""
TEXT_MAX = 512
"""A generic property's text is cut to this many characters (a preference's bound)."""
PROPERTY_NAME_MAX = 256

Call = Literal["identify", "track", "page", "screen", "alias", "group"]
CALLS: tuple[Call, ...] = ("identify", "track", "page", "screen", "alias", "group")

_NAME_PART = re.compile(NO_CONTROL_CHARACTERS)
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}")
_LEADING_FIELD = re.compile(r"^`(\w+)`")


# --- what the mapping returns -----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Received:
    """How a request arrived: what every message of it is mapped with."""

    at: dt.datetime
    """``receivedAt``: the server's clock when the request arrived."""
    actor: str
    """Who sent it (``segment:<API key name>``): the actor of the links an alias makes."""
    sent_at: Any = None
    """The batch's ``sentAt``, if any (a message's own wins)."""
    context: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    """The batch's ``context``, under each message's own."""


@dataclasses.dataclass(frozen=True)
class Derived:
    """One event made from a message, and where its fields came from (for rejections)."""

    index: int
    """The message's index in its batch."""
    call: str
    event: dict[str, Any]
    fields: Mapping[str, str]
    """Our top-level field -> the Segment field it came from (``value`` -> ``traits.email``)."""
    leaves: Mapping[str, str] = dataclasses.field(default_factory=dict)
    """Nested field names that Segment spells otherwise (``unit_price`` -> ``price``)."""

    def segment_field(self, path: str, reason: str = "") -> str:
        """The Segment field a validation path (``$.items[0].unit_price``) points at; a
        field of ours not listed in :attr:`fields` has its name under the call's object."""
        rest = path.removeprefix("$").lstrip(".")
        named = _LEADING_FIELD.match(reason)
        if named and rest and not rest.endswith(named.group(1)):
            rest += "." + named.group(1)  # a nested check names its field in the reason
        top = re.split(r"[.\[]", rest, maxsplit=1)[0]
        if not top:
            return self.fields.get("$", "$")
        tail = rest[len(top) :]
        leaf = re.search(r"\.(\w+)$", tail)
        if leaf and leaf.group(1) in self.leaves:
            tail = tail[: leaf.start()] + "." + self.leaves[leaf.group(1)]
        return self.fields.get(top, f"{self.fields.get('$', '$')}.{top}") + tail


class Rejection(msgspec.Struct, frozen=True):
    """A message, or part of one, that was not stored: the reason never quotes a value."""

    index: int
    """The message's index in the batch (0 for the single-call endpoints)."""
    type: str
    """The message's call (``track``, ...), ``unknown`` when it has none we know."""
    field: str
    """The Segment field at fault (``traits.phone``, ``properties.price``, ``$``)."""
    reason: str


class SegmentResult(msgspec.Struct, frozen=True):
    """The answer to a Segment call: what was stored, and what was not and why."""

    success: bool
    appended: int
    duplicates: int
    """Events already stored: a retried message, or a device its key recorded before."""
    rejected: list[Rejection]


@dataclasses.dataclass(frozen=True)
class MappedBatch:
    """A batch's messages as events, and the messages (or parts) refused while mapping."""

    derived: list[Derived]
    rejected: list[Rejection]
    calls: list[str]
    """Each message's call, ``unknown`` where it has none we know (for metrics)."""

    @property
    def events(self) -> list[dict[str, Any]]:
        return [d.event for d in self.derived]

    def result(
        self, appended: int, duplicates: int, invalid: Sequence[InvalidEvent]
    ) -> SegmentResult:
        """The answer, once the store has validated and appended :attr:`events`
        (``invalid`` indexes them)."""
        rejected = list(self.rejected)
        for error in invalid:
            derived = self.derived[error.index]
            rejected.append(
                Rejection(
                    derived.index,
                    derived.call,
                    derived.segment_field(error.path, error.reason),
                    error.reason,
                )
            )
        rejected.sort(key=lambda r: r.index)
        return SegmentResult(
            success=True, appended=appended, duplicates=duplicates, rejected=rejected
        )


# --- the batch --------------------------------------------------------------------------------


def map_batch(messages: Sequence[Any], received: Received, call: Call | None = None) -> MappedBatch:
    """Map every message; ``call`` is the call a single-call endpoint implies (``/v1/track``),
    None for ``/v1/batch`` (each message's ``type``)."""
    derived: list[Derived] = []
    rejected: list[Rejection] = []
    calls: list[str] = []
    for index, message in enumerate(messages):
        found = call or (message.get("type") if isinstance(message, dict) else None)
        name = found if found in CALLS else "unknown"
        calls.append(name)
        try:
            made, refused = _Message(index, message, name, received).derive()
        except RefusedMessage as e:
            rejected.append(Rejection(index, name, e.field, e.reason))
            continue
        derived.extend(made)
        rejected.extend(Rejection(index, name, e.field, e.reason) for e in refused)
    return MappedBatch(derived=derived, rejected=rejected, calls=calls)


def event_id(*parts: str) -> str:
    """A derived event id: stable for the same parts, 160 bits of SHA-256."""
    return "sg-" + hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:40]


# --- one message ------------------------------------------------------------------------------


class _Message:
    """One Segment message being mapped: its key, time, id and envelope."""

    def __init__(self, index: int, message: Any, call: str, received: Received) -> None:
        if not isinstance(message, dict):
            raise RefusedMessage("$", "a message is a JSON object")
        if call == "unknown":
            raise RefusedMessage(
                "type", f"not a call this endpoint knows; one of {', '.join(CALLS)}"
            )
        self.index = index
        self.message = message
        self.call = call
        self.received = received
        context = message.get("context")
        self.context = {**received.context, **(context if isinstance(context, dict) else {})}
        self.user_id = _id(message, "userId")
        self.anonymous_id = _id(message, "anonymousId")
        if self.user_id is not None and self.user_id.startswith(ANONYMOUS_PREFIX):
            raise RefusedMessage(
                "userId",
                f"may not start with {ANONYMOUS_PREFIX!r}: it begins the keys of anonymous "
                "visitors (anonymousId)",
            )
        if self.user_id is not None:
            self.key, self.key_field = self.user_id, "userId"
        elif self.anonymous_id is not None and call != "alias":
            self.key, self.key_field = ANONYMOUS_PREFIX + self.anonymous_id, "anonymousId"
        elif call == "alias":
            raise RefusedMessage("userId", "an alias call needs a userId")
        else:
            raise RefusedMessage("userId", "a message needs a userId or an anonymousId")
        self.occurred_at = _occurred_at(message, received)
        message_id = message.get("messageId")
        if isinstance(message_id, str) and message_id:
            self.message_id: str | None = message_id
            self.base = message_id
        else:
            self.message_id = None
            content = {k: v for k, v in message.items() if k not in ("sentAt", "writeKey")}
            self.base = (
                "content:"
                + hashlib.sha256(msgspec.json.encode(content, order="sorted")).hexdigest()
            )

    def derive(self) -> tuple[list[Derived], list[RefusedMessage]]:
        """The message's events, and the parts of it refused (the rest is kept)."""
        made: list[Derived] = []
        refused: list[RefusedMessage] = []
        MAPPERS[self.call](self, made, refused)
        if self.anonymous_id is not None:
            made.append(
                self.event(
                    "",
                    {"type": "identifier.seen", "kind": "device", "value": self.anonymous_id},
                    {"value": "anonymousId", "kind": "anonymousId"},
                    fixed_id=event_id("device", self.key, self.anonymous_id),
                )
            )
        return made, refused

    def event(
        self,
        part: str,
        payload: dict[str, Any],
        fields: Mapping[str, str],
        *,
        leaves: Mapping[str, str] | None = None,
        fixed_id: str | None = None,
    ) -> Derived:
        library = self.context.get("library")
        name = library.get("name") if isinstance(library, dict) else None
        source = f"segment:{name}" if isinstance(name, str) and 0 < len(name) <= 100 else "segment"
        envelope = {
            "event_id": fixed_id or event_id(self.base, part),
            "customer_id": self.key,
            "occurred_at": self.occurred_at.isoformat(),
            "source": source,
            "metadata": {"correlation_id": self.message_id, "actor": self.received.actor},
        }
        where = {
            "$": self.main_object,
            "event_id": "messageId",
            "customer_id": self.key_field,
            "occurred_at": "timestamp",
            "source": "context.library.name",
            "metadata": "messageId",
            **fields,
        }
        return Derived(self.index, self.call, envelope | payload, where, leaves or {})

    @property
    def main_object(self) -> str:
        return "traits" if self.call in ("identify", "group") else "properties"

    def object(self, name: str) -> dict[str, Any]:
        """The message's object ``name`` ({} when absent)."""
        return _object(self.message.get(name), name)

    def context_object(self, name: str) -> dict[str, Any]:
        """The context's object ``name`` ({} when absent)."""
        return _object(self.context.get(name), f"context.{name}")


def _object(found: Any, field: str) -> dict[str, Any]:
    if found is None:
        return {}
    if not isinstance(found, dict):
        raise RefusedMessage(field, "must be a JSON object")
    return found


def _id(message: Mapping[str, Any], field: str) -> str | None:
    """A user or anonymous id as text (SDKs send numbers too); None when absent or empty."""
    value = message.get(field)
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise RefusedMessage(field, "must be a string or a number")
    return value if isinstance(value, str) else str(value)


# --- time -------------------------------------------------------------------------------------


def _parse_time(value: Any, field: str) -> dt.datetime | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise RefusedMessage(field, "must be an ISO 8601 time")
    try:
        parsed = dt.datetime.fromisoformat(value.strip())
    except ValueError:
        raise RefusedMessage(field, "is not an ISO 8601 time") from None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=dt.UTC)


def _occurred_at(message: Mapping[str, Any], received: Received) -> dt.datetime:
    """When it happened, corrected for the client's clock as Segment documents it."""
    field = "originalTimestamp" if "originalTimestamp" in message else "timestamp"
    original = _parse_time(message.get(field), field)
    if original is None:
        return received.at
    own = message.get("sentAt")
    sent = (
        _parse_time(own, "sentAt") if own is not None else _parse_time(received.sent_at, "sentAt")
    )
    if sent is None:
        return original
    try:
        return received.at - (sent - original)
    except OverflowError:
        raise RefusedMessage(field, "is out of range once corrected for the clock skew") from None


# --- values -----------------------------------------------------------------------------------


def _text(value: Any) -> str | None:
    """A text field from a Segment value: numbers as text; absent, empty or other: None."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str) and value.strip():
        return value
    return None


def _amount(value: Any) -> Any:
    """An amount as our decimal text (a float by its shortest repr, so 19.99 stays exact);
    anything else as given, for validation to refuse naming the field."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    return value


def _quantity(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return value


def _decimal(value: Any) -> Decimal | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        found = Decimal(_amount(value)) if isinstance(value, int | float | str) else None
    except InvalidOperation:
        return None
    return found if found is not None and found.is_finite() else None


def _currency(value: Any) -> Any:
    if value is None:
        return DEFAULT_CURRENCY
    return value.strip().upper() if isinstance(value, str) else value


def _first(source: Mapping[str, Any], *names: str) -> tuple[str, Any]:
    """The first of ``names`` that ``source`` holds (not None), and its value."""
    for name in names:
        if source.get(name) is not None:
            return name, source[name]
    return names[0], None


def flatten(value: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Leaves of a JSON value with dotted names (``products.0.sku``); empty containers
    have no leaves."""
    if isinstance(value, dict):
        for name, inner in value.items():
            yield from flatten(inner, f"{prefix}.{name}" if prefix else str(name))
    elif isinstance(value, list):
        for position, inner in enumerate(value):
            yield from flatten(inner, f"{prefix}.{position}" if prefix else str(position))
    else:
        yield prefix, value


def fit_properties(value: Mapping[str, Any]) -> tuple[dict[str, Any], int]:
    """A JSON object as a generic event's properties, and how many leaves were cut:

    flattened to dotted names; the first :data:`PROPERTIES_MAX` leaves kept; a name longer
    than 256 characters or holding a control character dropped; a text longer than
    :data:`TEXT_MAX` characters cut to that; an integer beyond 2^53 - 1 or a float beyond
    10^15 kept as its text."""
    kept: dict[str, Any] = {}
    cut = 0
    for name, leaf in flatten(value):
        fits = 0 < len(name) <= PROPERTY_NAME_MAX and _NAME_PART.match(name)
        if len(kept) >= PROPERTIES_MAX or not fits:
            cut += 1
            continue
        kept[name] = scalar = _bounded_scalar(leaf)
        if isinstance(scalar, str) and len(scalar) > TEXT_MAX:
            kept[name] = scalar[:TEXT_MAX]
            cut += 1
    return kept, cut


def _bounded_scalar(leaf: Any) -> Any:
    """A number a preference could not hold exactly, as its text."""
    if isinstance(leaf, int) and not isinstance(leaf, bool) and abs(leaf) > SAFE_INTEGER:
        return str(leaf)
    if isinstance(leaf, float) and abs(leaf) > PREFERENCE_NUMBER_MAX:
        return repr(leaf)
    return leaf


# --- the calls --------------------------------------------------------------------------------

Mapper = Callable[[_Message, list[Derived], list[RefusedMessage]], None]

IDENTIFY_CONSUMED = frozenset(
    {"email", "phone", "firstName", "first_name", "lastName", "last_name", "birthday", "address"}
)
ADDRESS_FIELDS = {
    "city": ("city",),
    "region": ("state", "region"),
    "postal_code": ("postalCode", "postal_code", "zip"),
}


def _identify(m: _Message, made: list[Derived], refused: list[RefusedMessage]) -> None:
    # RudderStack's SDKs send identify traits in context.traits; Segment's at the top.
    where = "traits" if "traits" in m.message else "context.traits"
    traits = m.object("traits") if where == "traits" else m.context_object("traits")
    for kind in ("email", "phone"):
        value = traits.get(kind)
        if value is None or value == "":
            continue
        made.append(
            m.event(
                f"identify:{kind}",
                {"type": "identifier.seen", "kind": kind, "value": _text(value) or value},
                {"value": f"{where}.{kind}", "kind": f"{where}.{kind}"},
            )
        )
    first_key, first = _first(traits, "firstName", "first_name")
    last_key, last = _first(traits, "lastName", "last_name")
    consumed = set(IDENTIFY_CONSUMED)
    if first is None and last is None and _text(traits.get("name")):
        consumed.add("name")  # split into the name; otherwise kept as a preference
        first_key = last_key = "name"
        first, _, last = str(traits["name"]).strip().partition(" ")
        last = last.strip() or None
    if first is not None or last is not None:
        made.append(
            m.event(
                "identify:name",
                {"type": "profile.name_set", "first_name": first, "last_name": last},
                {"first_name": f"{where}.{first_key}", "last_name": f"{where}.{last_key}"},
            )
        )
    birthday = traits.get("birthday")
    if birthday is not None:
        if isinstance(birthday, str) and _DATE.match(birthday):
            birthday = birthday[:10]
        made.append(
            m.event(
                "identify:birthday",
                {"type": "profile.birthday_set", "birthday": birthday},
                {"birthday": f"{where}.birthday"},
            )
        )
    rest = {k: v for k, v in traits.items() if k not in consumed}
    address = traits.get("address")
    if isinstance(address, dict):
        location, left = _location(address)
        if location:
            made.append(
                m.event(
                    "identify:location",
                    {"type": "profile.location_set", "location": location},
                    {"location": f"{where}.address"},
                    leaves={"region": "state", "postal_code": "postalCode"},
                )
            )
        rest |= {f"address.{k}": v for k, v in left.items()}
    elif address is not None:
        rest["address"] = address
    preferences = list(flatten(rest))
    for name, value in preferences[:TRAITS_MAX]:
        made.append(
            m.event(
                f"identify:trait:{name}",
                {"type": "profile.preference_set", "key": name, "value": value},
                {"key": f"{where}.{name}", "value": f"{where}.{name}"},
            )
        )
    if len(preferences) > TRAITS_MAX:
        refused.append(
            RefusedMessage(
                where,
                f"{len(preferences) - TRAITS_MAX} traits past the first {TRAITS_MAX} were not kept",
            )
        )


def _location(address: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The address fields a location holds, and the others (kept as preferences)."""
    location: dict[str, Any] = {}
    used: set[str] = set()
    for field, names in ADDRESS_FIELDS.items():
        name, value = _first(address, *names)
        if _text(value) is not None:
            location[field] = _text(value)
            used.add(name)
    country = address.get("country")
    if isinstance(country, str) and len(country.strip()) == 2 and country.strip().isalpha():
        location["country"] = country.strip().upper()
        used.add("country")
    return location, {k: v for k, v in address.items() if k not in used}


def _track(m: _Message, made: list[Derived], refused: list[RefusedMessage]) -> None:
    name = _text(m.message.get("event"))
    if name is None:
        raise RefusedMessage("event", "a track call needs an event name")
    properties = m.object("properties")
    typed = ECOMMERCE.get(name.strip().lower())
    found = typed(m, properties) if typed else None
    if found is None:
        found = _generic(m, name, properties, {"name": "event"})
    made.append(found)


def _generic(
    m: _Message,
    name: str,
    properties: Mapping[str, Any],
    fields: Mapping[str, str],
    **payload: Any,
) -> Derived:
    kept, cut = fit_properties(properties)
    return m.event(
        m.call,
        {
            "type": "activity.tracked",
            "name": name,
            "properties": kept,
            "properties_cut": cut,
            **payload,
        },
        {"properties": m.main_object, **fields},
    )


def _page(m: _Message, made: list[Derived], refused: list[RefusedMessage]) -> None:
    properties = m.object("properties")
    page = m.context.get("page") if m.call == "page" else None
    page = page if isinstance(page, dict) else {}
    name = _text(m.message.get("name"))
    url_field, url = "properties.url", None
    for source, where, key in (
        (properties, "properties", "url"),
        (page, "context.page", "url"),
        (properties, "properties", "path"),
        (page, "context.page", "path"),
    ):
        if _text(source.get(key)) is not None:
            url_field, url = f"{where}.{key}", _text(source.get(key))
            break
    if url is None:
        url_field, url = "name", f"{m.call}:{name or ''}"
    title = _text(properties.get("title")) or _text(page.get("title")) or name
    referrer = _text(properties.get("referrer")) or _text(page.get("referrer"))
    made.append(
        m.event(
            m.call,
            {"type": "browse.page_viewed", "url": url, "title": title, "referrer": referrer},
            {"url": url_field, "title": "properties.title", "referrer": "properties.referrer"},
        )
    )


def _alias(m: _Message, made: list[Derived], refused: list[RefusedMessage]) -> None:
    previous = _id(m.message, "previousId")
    if previous is None:
        raise RefusedMessage("previousId", "an alias call needs a previousId")
    # The Spec's previousId is an anonymousId or an earlier userId, and the message does
    # not say which: unless it is this message's own anonymousId, both readings are linked.
    # A key no event names joins no data; events later sent under it are this user's.
    readings = [("anonymous", ANONYMOUS_PREFIX + previous)]
    if previous != m.anonymous_id and not previous.startswith(ANONYMOUS_PREFIX):
        readings.insert(0, ("user", previous))
    for reading, other in readings:
        if other == m.key:
            continue
        made.append(
            m.event(
                f"alias:{reading}",
                {
                    "type": "identity.linked",
                    "other": other,
                    "actor": m.received.actor,
                    "reason": "segment alias",
                },
                {"other": "previousId", "actor": "writeKey", "reason": "previousId"},
            )
        )


def _group(m: _Message, made: list[Derived], refused: list[RefusedMessage]) -> None:
    group_id = _id(m.message, "groupId")
    if group_id is None:
        raise RefusedMessage("groupId", "a group call needs a groupId")
    made.append(
        _generic(
            m, "Group", m.object("traits"), {"group_id": "groupId"}, call="group", group_id=group_id
        )
    )


MAPPERS: dict[str, Mapper] = {
    "identify": _identify,
    "track": _track,
    "page": _page,
    "screen": _page,
    "alias": _alias,
    "group": _group,
}


# --- E-commerce v2 ----------------------------------------------------------------------------

Typed = Callable[[_Message, Mapping[str, Any]], Derived | None]

PRODUCT_LEAVES = {"unit_price": "price", "sku": "sku", "quantity": "quantity", "name": "name"}


def _product(properties: Mapping[str, Any], where: str = "properties") -> tuple[str, str] | None:
    """The product's key (``sku``, else ``product_id``) and the field it came from."""
    name, value = _first(properties, "sku", "product_id")
    text = _text(value)
    return (text, f"{where}.{name}") if text is not None else None


def _products_searched(m: _Message, p: Mapping[str, Any]) -> Derived | None:
    query = _text(p.get("query"))
    if query is None:
        return None
    results = p.get("results")
    payload: dict[str, Any] = {"type": "browse.searched", "query": query}
    if isinstance(results, int) and not isinstance(results, bool):
        payload["results"] = results
    return m.event("track", payload, {"query": "properties.query", "results": "properties.results"})


def _product_viewed(m: _Message, p: Mapping[str, Any]) -> Derived | None:
    product = _product(p)
    if product is None:
        return None
    payload = {
        "type": "browse.product_viewed",
        "sku": product[0],
        "name": _text(p.get("name")),
        "category": _text(p.get("category")),
        "price": _amount(p.get("price")),
    }
    return m.event("track", payload, {"sku": product[1], "price": "properties.price"})


def _product_added(m: _Message, p: Mapping[str, Any]) -> Derived | None:
    product = _product(p)
    if product is None or p.get("price") is None:
        return None
    payload = {
        "type": "cart.item_added",
        "cart_id": _text(p.get("cart_id")) or DEFAULT_CART,
        "sku": product[0],
        "name": _text(p.get("name")),
        "quantity": _quantity(p.get("quantity", 1)),
        "unit_price": _amount(p.get("price")),
        "currency": _currency(p.get("currency")),
    }
    return m.event(
        "track",
        payload,
        {"sku": product[1], "unit_price": "properties.price", "cart_id": "properties.cart_id"},
    )


def _product_removed(m: _Message, p: Mapping[str, Any]) -> Derived | None:
    product = _product(p)
    if product is None:
        return None
    payload = {
        "type": "cart.item_removed",
        "cart_id": _text(p.get("cart_id")) or DEFAULT_CART,
        "sku": product[0],
        "quantity": _quantity(p.get("quantity")),
    }
    return m.event("track", payload, {"sku": product[1], "cart_id": "properties.cart_id"})


def _checkout_started(m: _Message, p: Mapping[str, Any]) -> Derived | None:
    payload = {"type": "cart.checkout_started", "cart_id": _text(p.get("cart_id")) or DEFAULT_CART}
    return m.event("track", payload, {"cart_id": "properties.cart_id"})


def _lines(p: Mapping[str, Any]) -> tuple[list[dict[str, Any]], Decimal] | None:
    """An order's lines from ``products`` and their sum; None if a product lacks its id or
    price (the order cannot be typed)."""
    products = p.get("products")
    if not isinstance(products, list) or not products:
        return None
    lines: list[dict[str, Any]] = []
    total = Decimal(0)
    for item in products:
        product = _product(item) if isinstance(item, dict) else None
        price = _decimal(item.get("price")) if isinstance(item, dict) else None
        if product is None or price is None:
            return None
        quantity = _quantity(item.get("quantity", 1))
        lines.append(
            {
                "sku": product[0],
                "name": _text(item.get("name")),
                "quantity": quantity,
                "unit_price": _amount(item.get("price")),
            }
        )
        total += price * (quantity if isinstance(quantity, int) else 1)
    return lines, total


def _order_completed(m: _Message, p: Mapping[str, Any]) -> Derived | None:
    order_id = _text(p.get("order_id"))
    lines = _lines(p)
    if order_id is None or lines is None:
        return None
    total_key, total = _first(p, "total", "revenue")
    payload = {
        "type": "order.placed",
        "order_id": order_id,
        "cart_id": _text(p.get("cart_id")) or DEFAULT_CART,
        "items": lines[0],
        "total": _amount(total) if total is not None else str(lines[1]),
        "currency": _currency(p.get("currency")),
        "channel": _text(p.get("affiliation")),
    }
    return m.event(
        "track",
        payload,
        {
            "order_id": "properties.order_id",
            "items": "properties.products",
            "total": f"properties.{total_key}",
            "currency": "properties.currency",
            "channel": "properties.affiliation",
        },
        leaves=PRODUCT_LEAVES,
    )


def _order_refunded(m: _Message, p: Mapping[str, Any]) -> Derived | None:
    order_id = _text(p.get("order_id"))
    if order_id is None:
        return None
    amount_key, amount = _first(p, "total", "revenue", "value")
    if amount is None:
        lines = _lines(p)
        amount = str(lines[1]) if lines is not None else "0"
    payload = {
        "type": "order.returned",
        "order_id": order_id,
        "amount_refunded": _amount(amount),
        "reason": _text(p.get("reason")),
    }
    return m.event(
        "track",
        payload,
        {"order_id": "properties.order_id", "amount_refunded": f"properties.{amount_key}"},
    )


def _order_cancelled(m: _Message, p: Mapping[str, Any]) -> Derived | None:
    order_id = _text(p.get("order_id"))
    if order_id is None:
        return None
    payload = {"type": "order.cancelled", "order_id": order_id, "reason": _text(p.get("reason"))}
    return m.event("track", payload, {"order_id": "properties.order_id"})


ECOMMERCE: dict[str, Typed] = {
    "products searched": _products_searched,
    "product viewed": _product_viewed,
    "product added": _product_added,
    "product removed": _product_removed,
    "checkout started": _checkout_started,
    "order completed": _order_completed,
    "order refunded": _order_refunded,
    "order cancelled": _order_cancelled,
}
"""E-commerce v2 event names (compared without case) and their typed mappings; every
other name, ``Cart Viewed`` included (no cart event says "viewed"), is generic."""
