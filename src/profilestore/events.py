"""The event catalogue: every customer interaction profilestore records.

Events are data: frozen msgspec Structs in one tagged union, so a batch of JSON decodes
straight into typed objects and a bad field comes back as ``$.field`` with the reason.
All events share one envelope (the fields of :class:`Event`); each type adds its payload.

Every number and every text is bounded by what it means to the business (the limits below;
the README lists them): a value a fold could not add up, or a text that would bloat every
document it lands in, is refused at the door with the field and the reason. The bounds
apply to what clients send; events already stored are read back without them (see
:mod:`profilestore.mapper`), so tightening a bound never makes history unreadable.

Schema evolution: a new field always gets a default. A renamed or reshaped event bumps
``class_version`` and gains an ``upcast_vN_vN1(state)`` static method, the convention of
the ``eventsourcing`` library; stored history is never edited (see :mod:`profilestore.mapper`).
"""

from __future__ import annotations

import datetime as dt
import typing
import zoneinfo
from decimal import Decimal
from typing import Annotated, ClassVar, Literal

import msgspec

# Normalisation lives in normalise.py (it follows the process-wide identifier policy). The
# names below stay importable from here for existing callers: `X as X` marks a re-export.
from profilestore.normalise import CONTROL_CHARACTER as CONTROL_CHARACTER  # noqa: PLC0414
from profilestore.normalise import escape_network as escape_network  # noqa: PLC0414
from profilestore.normalise import normalise_identifier as normalise_identifier  # noqa: PLC0414
from profilestore.normalise import unescape_network as unescape_network  # noqa: PLC0414

# --- shared field types -----------------------------------------------------------------

MONEY_MAX = Decimal(10**12)
"""The largest amount (price, total, refund) accepted: one trillion in any currency."""
MONEY_PLACES = 4
"""Decimal places an amount may have (``9.9999``; more digits only if they are zeros)."""
_MONEY_QUANTUM = Decimal(1).scaleb(-MONEY_PLACES)
COUNT_MAX = 1_000_000_000
"""The largest count a client reports (search results)."""
SAFE_INTEGER = 2**53 - 1
"""The largest integer preference value: exact in JSON everywhere and in every store."""
PREFERENCE_NUMBER_MAX = 1e15
"""The largest magnitude of a float preference value (so never infinite or NaN)."""


NO_CONTROL_CHARACTERS = r"^[^\x00-\x1f\x7f-\x9f]*\Z"
"""No control character (C0, DEL, C1) anywhere: PostgreSQL cannot store a NUL in text, and
an identifier must mean the same on every backend, so none is accepted on any. (It ends
in an end-of-string anchor, not ``$``, which would let a trailing newline through.)"""

Key = Annotated[str, msgspec.Meta(min_length=1, max_length=256, pattern=NO_CONTROL_CHARACTERS)]
"""An identifier supplied by a client system (event id, customer id, order id, ...)."""

Text = Annotated[str, msgspec.Meta(max_length=10_000)]
ShortText = Annotated[str, msgspec.Meta(max_length=512)]
Timestamp = Annotated[dt.datetime, msgspec.Meta(tz=True)]
Quantity = Annotated[int, msgspec.Meta(ge=1, le=1_000_000)]
Money = Decimal
"""An amount: 0 to :data:`MONEY_MAX`, at most :data:`MONEY_PLACES` decimal places, checked
by the events that carry one (``_check_money``: msgspec has no constraints on decimals)."""
Currency = Annotated[str, msgspec.Meta(pattern=r"^[A-Z]{3}$")]
Probability = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]
Sentiment = Annotated[float, msgspec.Meta(ge=-1.0, le=1.0)]
CountryCode = Annotated[str, msgspec.Meta(pattern=r"^[A-Z]{2}$")]

IdentifierKind = Literal["email", "phone", "handle", "device"]
ConsentChannel = Literal["email", "sms", "phone", "push", "post", "social", "web"]
LifeEventKind = Literal[
    "moved",
    "new_job",
    "engaged",
    "married",
    "new_baby",
    "graduation",
    "retirement",
    "new_pet",
    "bereavement",
    "other",
]
TicketPriority = Literal["low", "normal", "high", "urgent"]


def is_time_zone(name: str) -> bool:
    """Whether ``name`` is an IANA time zone this machine knows."""
    if not 1 <= len(name) <= 64:
        return False  # the longest IANA name is 32 characters; longer is no file name
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        return False
    return True


def _check_money(owner: object, *names: str) -> None:
    for name in names:
        amount = getattr(owner, name)
        if amount is None:
            continue
        if not amount.is_finite() or not 0 <= amount <= MONEY_MAX:
            raise ValueError(f"`{name}` must be an amount from 0 to {MONEY_MAX:,}, not {amount}")
        # Compared with its own rounding, so trailing zeros (``9.990000``) pass.
        if amount.as_tuple().exponent < -MONEY_PLACES and amount != amount.quantize(_MONEY_QUANTUM):
            raise ValueError(
                f"`{name}` must have at most {MONEY_PLACES} decimal places, not {amount}"
            )


class Metadata(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, gc=False):
    """Who and what caused an event, for tracing and audit."""

    correlation_id: ShortText | None = None
    causation_id: ShortText | None = None
    actor: ShortText | None = None


class Event(
    msgspec.Struct,
    frozen=True,
    kw_only=True,
    forbid_unknown_fields=True,
    tag_field="type",
    gc=False,
):
    """The envelope every event carries.

    ``event_id`` is the client's idempotency key: appending the same id twice stores it once.
    ``customer_id`` is the customer's key in the client's systems; the log derives a stable
    stream id from it. ``recorded_at`` is set by the store on append; a value sent by a
    client is replaced.
    """

    class_version: ClassVar[int] = 1

    event_id: Key
    customer_id: Key
    occurred_at: Timestamp
    recorded_at: Timestamp | None = None
    source: ShortText = "unknown"
    metadata: Metadata | None = None

    @property
    def type_name(self) -> str:
        tag = type(self).__struct_config__.tag
        assert isinstance(tag, str)
        return tag


# --- identifiers ------------------------------------------------------------------------

Network = Annotated[str, msgspec.Meta(max_length=512, pattern=NO_CONTROL_CHARACTERS)]
"""A social network's name: part of a handle's lookup key, so held to the rule of keys."""


class _IdentifierEvent(Event, frozen=True, kw_only=True):
    kind: IdentifierKind
    value: Key
    network: Network | None = None

    def __post_init__(self) -> None:
        normalise_identifier(self.kind, self.value, self.network)

    @property
    def lookup_key(self) -> str:
        return normalise_identifier(self.kind, self.value, self.network)


class IdentifierSeen(_IdentifierEvent, tag="identifier.seen", frozen=True, kw_only=True):
    """An identifier observed in an interaction (a login, a form, an app session)."""


class IdentifierLinked(_IdentifierEvent, tag="identifier.linked", frozen=True, kw_only=True):
    """An identifier the customer or an operator asserted as theirs."""


class IdentifierUnlinked(_IdentifierEvent, tag="identifier.unlinked", frozen=True, kw_only=True):
    """An identifier no longer belonging to the customer."""


# --- identity links ---------------------------------------------------------------------

RESERVED_PREFIX = "~"
"""Customer keys may not start with it: it begins the ids of merged profiles."""


class _LinkEvent(Event, frozen=True, kw_only=True):
    other: Key
    """The other customer key (the event's own is ``customer_id``)."""
    rule: ShortText | None = None
    """The rule that decided, e.g. ``shared-email``; None for an operator's decision."""
    rule_version: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] | None = None
    actor: ShortText | None = None
    """The operator (or client) who decided, when no rule did."""
    reason: ShortText | None = None

    def __post_init__(self) -> None:
        if self.other == self.customer_id:
            raise ValueError(
                "`other` is the event's own customer_id: a key is not linked to itself"
            )
        if self.other.startswith(RESERVED_PREFIX):
            raise ValueError(
                f"`other` may not start with {RESERVED_PREFIX!r}: give a customer key, not the "
                "id of a merged profile"
            )
        if (self.rule is None) == (self.actor is None):
            raise ValueError("`rule` or `actor` (one of them) must say who decided")


class IdentityLinked(_LinkEvent, tag="identity.linked", frozen=True, kw_only=True):
    """Two customer keys are one person: they share one profile, the fold of both keys'
    events, until the link is retracted (:class:`IdentityUnlinked`).

    Appended by a rule (``rule``, ``rule_version``, the ``evidence``: the identifier both
    keys presented, and ``evidence_event_id``: the event that showed it) or by an operator
    (``actor``, ``reason``). The link's id is its ``event_id``.
    """

    evidence: Key | None = None
    evidence_event_id: Key | None = None


class IdentityUnlinked(_LinkEvent, tag="identity.unlinked", frozen=True, kw_only=True):
    """A link between two customer keys is retracted: ``link_id``, or every active link
    between the two when it is None. Their profiles become what they would be had the
    link never existed. An operator's retraction also stops rules from linking the two
    again (an operator may still link them)."""

    link_id: Key | None = None


# --- profile attributes -----------------------------------------------------------------


class NameSet(Event, tag="profile.name_set", frozen=True, kw_only=True):
    first_name: ShortText | None = None
    last_name: ShortText | None = None


class BirthdaySet(Event, tag="profile.birthday_set", frozen=True, kw_only=True):
    birthday: dt.date


class Location(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, gc=False):
    city: ShortText | None = None
    region: ShortText | None = None
    country: CountryCode | None = None
    postal_code: ShortText | None = None
    latitude: Annotated[float, msgspec.Meta(ge=-90, le=90)] | None = None
    longitude: Annotated[float, msgspec.Meta(ge=-180, le=180)] | None = None
    timezone: ShortText | None = None
    """The customer's IANA time zone (``Europe/Paris``): birthdays and quiet hours are
    read in it. Checked by :class:`LocationSet` at intake, not here, so a stored section
    holding one reads back wherever it is decoded."""


class LocationSet(Event, tag="profile.location_set", frozen=True, kw_only=True):
    location: Location

    def __post_init__(self) -> None:
        zone = self.location.timezone
        if zone is not None and not is_time_zone(zone):
            raise ValueError("`location.timezone` is not an IANA time zone such as 'Europe/Paris'")


PreferenceValue = str | int | float | bool | None
"""The shape of a preference value (what sections keep); events bound it (below)."""
BoundedPreferenceValue = (
    ShortText
    | Annotated[int, msgspec.Meta(ge=-SAFE_INTEGER, le=SAFE_INTEGER)]
    | Annotated[float, msgspec.Meta(ge=-PREFERENCE_NUMBER_MAX, le=PREFERENCE_NUMBER_MAX)]
    | bool
    | None
)


class PreferenceSet(Event, tag="profile.preference_set", frozen=True, kw_only=True):
    key: ShortText
    value: BoundedPreferenceValue


# --- carts ------------------------------------------------------------------------------


class CartItemAdded(Event, tag="cart.item_added", frozen=True, kw_only=True):
    cart_id: Key
    sku: Key
    name: ShortText | None = None
    quantity: Quantity = 1
    unit_price: Money
    currency: Currency

    def __post_init__(self) -> None:
        _check_money(self, "unit_price")


class CartItemRemoved(Event, tag="cart.item_removed", frozen=True, kw_only=True):
    """Removes ``quantity`` units of a line, or the whole line when quantity is absent."""

    cart_id: Key
    sku: Key
    quantity: Quantity | None = None


class CartCleared(Event, tag="cart.cleared", frozen=True, kw_only=True):
    cart_id: Key


class CheckoutStarted(Event, tag="cart.checkout_started", frozen=True, kw_only=True):
    cart_id: Key


# --- orders -----------------------------------------------------------------------------


class OrderLine(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, gc=False):
    sku: Key
    name: ShortText | None = None
    quantity: Quantity = 1
    unit_price: Money
    category: ShortText | None = None
    """The product's category (cross-sell reads it; sensitive ones never go out)."""
    brand: ShortText | None = None

    def __post_init__(self) -> None:
        _check_money(self, "unit_price")


class OrderPlaced(Event, tag="order.placed", frozen=True, kw_only=True):
    order_id: Key
    cart_id: Key | None = None
    items: Annotated[tuple[OrderLine, ...], msgspec.Meta(min_length=1, max_length=1000)]
    total: Money
    currency: Currency
    channel: ShortText | None = None

    def __post_init__(self) -> None:
        _check_money(self, "total")


class OrderReturned(Event, tag="order.returned", frozen=True, kw_only=True):
    order_id: Key
    amount_refunded: Money = Decimal(0)
    reason: ShortText | None = None

    def __post_init__(self) -> None:
        _check_money(self, "amount_refunded")


class OrderCancelled(Event, tag="order.cancelled", frozen=True, kw_only=True):
    order_id: Key
    reason: ShortText | None = None


# --- browsing ---------------------------------------------------------------------------


class PageViewed(Event, tag="browse.page_viewed", frozen=True, kw_only=True):
    url: Text
    title: ShortText | None = None
    referrer: Text | None = None
    session_id: ShortText | None = None


class ProductViewed(Event, tag="browse.product_viewed", frozen=True, kw_only=True):
    sku: Key
    name: ShortText | None = None
    category: ShortText | None = None
    price: Money | None = None
    session_id: ShortText | None = None

    def __post_init__(self) -> None:
        _check_money(self, "price")


class Searched(Event, tag="browse.searched", frozen=True, kw_only=True):
    query: ShortText
    results: Annotated[int, msgspec.Meta(ge=0, le=COUNT_MAX)] | None = None
    session_id: ShortText | None = None


# --- email ------------------------------------------------------------------------------


class EmailSent(Event, tag="email.sent", frozen=True, kw_only=True):
    message_id: Key
    campaign: ShortText
    subject: ShortText | None = None


class EmailOpened(Event, tag="email.opened", frozen=True, kw_only=True):
    message_id: Key


class EmailClicked(Event, tag="email.clicked", frozen=True, kw_only=True):
    message_id: Key
    url: Text


class EmailUnsubscribed(Event, tag="email.unsubscribed", frozen=True, kw_only=True):
    message_id: Key | None = None
    list_id: ShortText | None = None


# --- social -----------------------------------------------------------------------------


class SocialPostObserved(Event, tag="social.post_observed", frozen=True, kw_only=True):
    network: ShortText
    handle: ShortText
    post_id: Key
    text: Text
    sentiment: Sentiment | None = None
    url: Text | None = None


class LifeEventDetected(Event, tag="social.life_event_detected", frozen=True, kw_only=True):
    kind: LifeEventKind
    detail: ShortText | None = None
    confidence: Probability = 1.0
    network: ShortText | None = None
    post_id: Key | None = None


# --- service ----------------------------------------------------------------------------


class TicketOpened(Event, tag="service.ticket_opened", frozen=True, kw_only=True):
    ticket_id: Key
    subject: ShortText
    channel: ShortText | None = None
    priority: TicketPriority = "normal"


class TicketResolved(Event, tag="service.ticket_resolved", frozen=True, kw_only=True):
    ticket_id: Key
    resolution: ShortText | None = None


class SurveyAnswered(Event, tag="service.survey_answered", frozen=True, kw_only=True):
    survey_id: Key
    nps: Annotated[int, msgspec.Meta(ge=0, le=10)] | None = None
    score: Annotated[float, msgspec.Meta(ge=0, le=100)] | None = None
    comment: Text | None = None


# --- consent ----------------------------------------------------------------------------


class ConsentGiven(Event, tag="consent.given", frozen=True, kw_only=True):
    channel: ConsentChannel
    purpose: ShortText = "marketing"


class ConsentWithdrawn(Event, tag="consent.withdrawn", frozen=True, kw_only=True):
    channel: ConsentChannel
    purpose: ShortText = "marketing"


# --- advocacy and replies ---------------------------------------------------------------


class ReferralMade(Event, tag="referral.made", frozen=True, kw_only=True):
    """The customer referred someone (a referral code redeemed, an invite accepted): the
    advocacy the Influence score counts. ``referred_customer_id`` is the newcomer's key,
    when known."""

    referral_id: Key
    referred_customer_id: Key | None = None
    channel: ConsentChannel | None = None


class MessageReplied(Event, tag="message.replied", frozen=True, kw_only=True):
    """The customer replied to a message of ours on a channel (an email answered, an SMS
    returned, a push notification acted upon in the app): an interaction by channel."""

    channel: ConsentChannel
    message_id: Key | None = None


# --- anything else a source tracked ------------------------------------------------------

PROPERTIES_MAX = 100
"""Most properties one generic tracked event keeps."""

PropertyName = Annotated[
    str, msgspec.Meta(min_length=1, max_length=256, pattern=NO_CONTROL_CHARACTERS)
]
"""A property's name: dotted for a nested one (``products.0.sku``)."""

Properties = Annotated[
    dict[PropertyName, BoundedPreferenceValue], msgspec.Meta(max_length=PROPERTIES_MAX)
]
"""A flat JSON object of bounded scalars (the values a preference may hold)."""


class ActivityTracked(Event, tag="activity.tracked", frozen=True, kw_only=True):
    """Something the customer did that no typed event describes, kept so that nothing a
    source sends is lost: a Segment ``track`` of any other name (``call`` "track", its
    event name in ``name``), or a ``group`` call (``call`` "group", ``group_id``).

    ``properties`` is flat and capped; a sender that had more, or longer texts, says how
    many it dropped or shortened in ``properties_cut`` (see :mod:`profilestore.segment`).
    No dataset folds it yet: it is in the customer's history and export.
    """

    name: Annotated[str, msgspec.Meta(min_length=1, max_length=512)]
    call: Literal["track", "group"] = "track"
    group_id: Key | None = None
    properties: Properties = msgspec.field(default_factory=dict)
    properties_cut: Annotated[int, msgspec.Meta(ge=0, le=COUNT_MAX)] = 0


# --- interests --------------------------------------------------------------------------


class InterestShown(Event, tag="interest.shown", frozen=True, kw_only=True):
    """The customer showed interest in an upcoming occasion (a sale, a launch, a concert):
    saved it, registered, asked to be reminded. Sent again with the same ``occasion_id``
    when it moves."""

    occasion_id: Key
    title: ShortText
    starts_at: Timestamp
    url: Text | None = None


class InterestWithdrawn(Event, tag="interest.withdrawn", frozen=True, kw_only=True):
    """The customer is no longer interested in the occasion (or it was called off)."""

    occasion_id: Key


AnyEvent = (
    IdentifierSeen
    | IdentifierLinked
    | IdentifierUnlinked
    | IdentityLinked
    | IdentityUnlinked
    | NameSet
    | BirthdaySet
    | LocationSet
    | PreferenceSet
    | CartItemAdded
    | CartItemRemoved
    | CartCleared
    | CheckoutStarted
    | OrderPlaced
    | OrderReturned
    | OrderCancelled
    | PageViewed
    | ProductViewed
    | Searched
    | EmailSent
    | EmailOpened
    | EmailClicked
    | EmailUnsubscribed
    | SocialPostObserved
    | LifeEventDetected
    | TicketOpened
    | TicketResolved
    | SurveyAnswered
    | ConsentGiven
    | ConsentWithdrawn
    | ActivityTracked
    | InterestShown
    | InterestWithdrawn
    | ReferralMade
    | MessageReplied
)
"""The tagged union a client's event decodes into."""

EVENT_CLASSES: tuple[type[Event], ...] = typing.get_args(AnyEvent)


def event_type_name(cls: type[Event]) -> str:
    tag = cls.__struct_config__.tag
    assert isinstance(tag, str)
    return tag


EVENT_TYPES: dict[str, type[Event]] = {event_type_name(c): c for c in EVENT_CLASSES}


# --- the store's own events (never sent by clients) -------------------------------------


Tally = Annotated[int, msgspec.Meta(ge=0, le=SAFE_INTEGER)]
"""A count the store made (of keys, events, bytes, records)."""


class PlaintextCheck(msgspec.Struct, frozen=True, kw_only=True):
    """The search for a readable copy: which files, how many bytes and values, what was
    found (counts only: the values are never written anywhere)."""

    applicable: bool
    """False where the stores are servers (PostgreSQL, MongoDB): their files are not ours
    to read; the README says what an operator does there."""
    files: Tally = 0
    bytes_scanned: Tally = 0
    values: Tally = 0
    found: Tally = 0
    compacted: bool = False
    """True when a first search found a copy and the embedded document store was rebuilt
    before the search counted here (a stale copy of a row that a page split moved,
    which ``secure_delete`` does not zero: see ``DocumentStore.scrub``)."""


class ErasureReceipt(msgspec.Struct, frozen=True, kw_only=True):
    """What an erasure did, for auditors: no personal data (README: Privacy)."""

    request_id: ShortText
    received_at: dt.datetime
    completed_at: dt.datetime
    keys: Tally
    """Customer keys of the profile (every key of a merged profile)."""
    data_keys_destroyed: Tally
    events_forgotten: Tally
    """Events of those keys' streams: kept, unreadable (type, time, position only)."""
    deleted: Annotated[dict[ShortText, Tally], msgspec.Meta(max_length=1000)]
    """Derived records deleted, per kind (sections, lookup keys, records by kind)."""
    plaintext: PlaintextCheck
    chain_intact: bool
    """The forgotten streams' hash chains still verify from their stored bytes."""
    log_position: Tally
    """The log head when the keys were destroyed."""


class ErasureRecorded(Event, tag="erasure.recorded", frozen=True, kw_only=True):
    """An erasure receipt, appended by the store to its ``~erasures`` stream (a key no
    client may use), so the audit chain and digests cover it."""

    receipt: ErasureReceipt


EVENT_TYPES[event_type_name(ErasureRecorded)] = ErasureRecorded
