"""Specifications of the projections in ``projections/``: one pure fold per dataset.

Every fold here goes through :func:`run`, which checks on each step that the fold did not
mutate the section or the event it was given, and that the final section round-trips
through JSON the way the document stores keep it.
"""

from __future__ import annotations

import datetime as dt
import itertools
import pkgutil
from collections.abc import Iterable
from decimal import Decimal
from typing import Any

import msgspec
import pytest

import projections
from profilestore.events import (
    EVENT_CLASSES,
    ActivityTracked,
    BirthdaySet,
    CartCleared,
    CartItemAdded,
    CartItemRemoved,
    CheckoutStarted,
    ConsentGiven,
    ConsentWithdrawn,
    EmailClicked,
    EmailOpened,
    EmailSent,
    EmailUnsubscribed,
    Event,
    IdentifierLinked,
    IdentifierSeen,
    IdentifierUnlinked,
    IdentityLinked,
    IdentityUnlinked,
    InterestShown,
    InterestWithdrawn,
    LifeEventDetected,
    Location,
    LocationSet,
    MessageReplied,
    NameSet,
    OrderCancelled,
    OrderLine,
    OrderPlaced,
    OrderReturned,
    PageViewed,
    PreferenceSet,
    ProductViewed,
    ReferralMade,
    Searched,
    SocialPostObserved,
    SurveyAnswered,
    TicketOpened,
    TicketResolved,
    event_type_name,
)
from profilestore.mapper import topics_for
from profilestore.projection import Projection
from projections import (
    attributes,
    browsing,
    carts,
    consents,
    email,
    engagement,
    identities,
    interests,
    orders,
    service,
    social,
)

T0 = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.UTC)
_ids = itertools.count(1)


def at(minutes: float) -> dt.datetime:
    """A fixed, tz-aware instant ``minutes`` after T0."""
    return T0 + dt.timedelta(minutes=minutes)


def ev(cls: type[Event], minute: float = 0, **payload: Any) -> Any:
    """An event of ``cls`` for customer c1, occurring ``minute`` minutes after T0."""
    payload.setdefault("source", "test")
    return cls(event_id=f"ev-{next(_ids)}", customer_id="c1", occurred_at=at(minute), **payload)


def roundtrip(section: msgspec.Struct) -> msgspec.Struct:
    return msgspec.json.Decoder(type(section)).decode(msgspec.json.encode(section))


def step(projection: Projection[Any], section: Any, event: Event) -> Any:
    """One fold, asserting it left its inputs untouched."""
    section_before = msgspec.json.encode(section)
    event_before = msgspec.json.encode(event)
    result = projection.fold(section, event)
    assert msgspec.json.encode(section) == section_before, "fold mutated its section"
    assert msgspec.json.encode(event) == event_before, "fold mutated its event"
    assert type(result) is projection.section
    return result


def run(projection: Projection[Any], events: Iterable[Event], section: Any = None) -> Any:
    """Fold ``events`` from ``section`` (default: empty); the result must round-trip."""
    section = projection.empty() if section is None else section
    for event in events:
        section = step(projection, section, event)
    assert roundtrip(section) == section
    return section


def assert_deeply_frozen(value: object, path: str = "section") -> None:
    """Structs all frozen, sequences all tuples, all the way down."""
    if isinstance(value, msgspec.Struct):
        assert type(value).__struct_config__.frozen, f"{path}: {type(value).__name__} not frozen"
        for name in value.__struct_fields__:
            assert_deeply_frozen(getattr(value, name), f"{path}.{name}")
    elif isinstance(value, tuple):
        for i, item in enumerate(value):
            assert_deeply_frozen(item, f"{path}[{i}]")
    else:
        assert not isinstance(value, list | dict | set | bytearray), f"{path} is mutable"


# --- sample events and scenarios --------------------------------------------------------

LINE = OrderLine(sku="sku-1", name="Mug", quantity=2, unit_price=Decimal("4.50"))

SAMPLES: dict[type[Event], dict[str, Any]] = {
    IdentifierSeen: {"kind": "email", "value": "Ann@Example.com"},
    IdentifierLinked: {"kind": "phone", "value": "+44 20 7946 0000"},
    IdentifierUnlinked: {"kind": "email", "value": "old@example.com"},
    IdentityLinked: {"other": "pos-7", "actor": "ops", "reason": "same person"},
    IdentityUnlinked: {"other": "pos-7", "rule": "shared-email", "rule_version": 1},
    NameSet: {"first_name": "Ann", "last_name": "Lee"},
    BirthdaySet: {"birthday": dt.date(1990, 1, 2)},
    LocationSet: {"location": Location(city="Leeds", country="GB")},
    PreferenceSet: {"key": "newsletter", "value": True},
    CartItemAdded: {
        "cart_id": "cart-1",
        "sku": "sku-1",
        "unit_price": Decimal("4.50"),
        "currency": "GBP",
    },
    CartItemRemoved: {"cart_id": "cart-1", "sku": "sku-1"},
    CartCleared: {"cart_id": "cart-1"},
    CheckoutStarted: {"cart_id": "cart-1"},
    OrderPlaced: {
        "order_id": "o-1",
        "cart_id": "cart-1",
        "items": (LINE,),
        "total": Decimal("9.00"),
        "currency": "GBP",
    },
    OrderReturned: {"order_id": "o-1", "amount_refunded": Decimal("4.50")},
    OrderCancelled: {"order_id": "o-1"},
    PageViewed: {"url": "https://shop.example/", "title": "Home", "session_id": "s1"},
    ProductViewed: {"sku": "sku-1", "price": Decimal("4.50"), "session_id": "s1"},
    Searched: {"query": "mug", "results": 3, "session_id": "s1"},
    EmailSent: {"message_id": "m-1", "campaign": "spring", "subject": "Hello"},
    EmailOpened: {"message_id": "m-1"},
    EmailClicked: {"message_id": "m-1", "url": "https://shop.example/sale"},
    EmailUnsubscribed: {"message_id": "m-1"},
    SocialPostObserved: {
        "network": "mastodon",
        "handle": "@ann",
        "post_id": "p-1",
        "text": "Love my new mug",
        "sentiment": 0.8,
    },
    LifeEventDetected: {"kind": "moved", "detail": "to Leeds", "confidence": 0.7},
    TicketOpened: {"ticket_id": "t-1", "subject": "Broken mug", "priority": "high"},
    TicketResolved: {"ticket_id": "t-1", "resolution": "refunded"},
    SurveyAnswered: {"survey_id": "nps-1", "nps": 9, "comment": "great"},
    ConsentGiven: {"channel": "email"},
    ConsentWithdrawn: {"channel": "sms", "purpose": "service"},
    ActivityTracked: {"name": "Video Played", "properties": {"video.id": "v-1", "seconds": 42}},
    InterestShown: {
        "occasion_id": "sale-1",
        "title": "Spring sale",
        "starts_at": dt.datetime(2026, 4, 1, 9, 0, tzinfo=dt.UTC),
    },
    InterestWithdrawn: {"occasion_id": "sale-1"},
    ReferralMade: {"referral_id": "ref-1", "referred_customer_id": "c-9", "channel": "email"},
    MessageReplied: {"channel": "sms", "message_id": "sms-1"},
}


def sample(cls: type[Event], minute: float = 0, **overrides: Any) -> Any:
    return ev(cls, minute, **{**SAMPLES[cls], **overrides})


PROJECTIONS: dict[str, Projection[Any]] = {
    m.PROJECTION.dataset: m.PROJECTION
    for m in (
        identities,
        attributes,
        consents,
        carts,
        orders,
        browsing,
        email,
        social,
        service,
        interests,
        engagement,
    )
}


def scenario(dataset: str) -> list[Event]:
    """A short, realistic history that leaves the dataset's section well populated."""
    if dataset == "identities":
        return [
            sample(IdentifierSeen, 0),
            sample(IdentifierLinked, 1),
            sample(IdentifierSeen, 2, kind="handle", value="@Ann", network="Mastodon"),
            sample(IdentifierSeen, 3, kind="device", value="dev-1"),
            sample(IdentifierSeen, 4, value="old@example.com"),
            sample(IdentifierUnlinked, 5),
        ]
    if dataset == "attributes":
        return [
            sample(NameSet, 0),
            sample(BirthdaySet, 1),
            sample(LocationSet, 2),
            sample(PreferenceSet, 3),
            sample(PreferenceSet, 4, key="size", value=42),
            sample(PreferenceSet, 5, key="ratio", value=0.5),
            sample(PreferenceSet, 6, key="colour", value="blue"),
            sample(PreferenceSet, 7, key="nothing", value=None),
        ]
    if dataset == "consents":
        return [sample(ConsentGiven, 0), sample(ConsentWithdrawn, 1), sample(ConsentGiven, 2)]
    if dataset == "carts":
        return [
            sample(CartItemAdded, 0, name="Mug", quantity=2),
            sample(CartItemAdded, 1, cart_id="cart-2", sku="sku-2", unit_price=Decimal("1.25")),
            sample(CartItemAdded, 2, cart_id="cart-3", sku="sku-3", unit_price=Decimal("3")),
            sample(CheckoutStarted, 3, cart_id="cart-3"),
            sample(OrderPlaced, 4, order_id="o-1", cart_id="cart-1"),
        ]
    if dataset == "orders":
        return [
            sample(OrderPlaced, 0),
            sample(OrderPlaced, 1, order_id="o-2", currency="EUR", total=Decimal("20")),
            sample(OrderPlaced, 2, order_id="o-3", total=Decimal("1.10")),
            sample(OrderReturned, 3),
            sample(OrderCancelled, 4, order_id="o-3"),
        ]
    if dataset == "browsing":
        return [sample(PageViewed, 0), sample(ProductViewed, 1), sample(Searched, 2)]
    if dataset == "email":
        return [
            sample(EmailSent, 0),
            sample(EmailOpened, 1),
            sample(EmailClicked, 2),
            sample(EmailClicked, 3, message_id="m-0"),
            sample(EmailUnsubscribed, 4),
        ]
    if dataset == "social":
        return [
            sample(SocialPostObserved, 0),
            sample(SocialPostObserved, 1, post_id="p-2", sentiment=-0.3),
            sample(LifeEventDetected, 2),
        ]
    if dataset == "service":
        return [
            sample(TicketOpened, 0),
            sample(TicketOpened, 1, ticket_id="t-2"),
            sample(TicketResolved, 2),
            sample(SurveyAnswered, 3),
        ]
    if dataset == "interests":
        return [
            sample(InterestShown, 0),
            sample(InterestShown, 1, occasion_id="launch-2", title="Launch"),
            sample(InterestShown, 2, title="Spring sale, moved"),
            sample(InterestWithdrawn, 3, occasion_id="launch-2"),
        ]
    if dataset == "engagement":
        return [
            sample(ConsentGiven, 0),
            sample(EmailSent, 1),
            sample(EmailOpened, 2),
            sample(EmailClicked, 3),
            sample(PageViewed, 4),
            sample(ProductViewed, 5),
            sample(Searched, 6),
            sample(OrderPlaced, 7),
            sample(OrderPlaced, 8, order_id="o-2", total=Decimal("21.00")),
            sample(MessageReplied, 9),
            sample(TicketOpened, 10),
            sample(SurveyAnswered, 11),
            sample(SocialPostObserved, 12),
            sample(ReferralMade, 13),
        ]
    raise AssertionError(dataset)


UNREAD = [
    pytest.param(name, cls, id=f"{name}-{event_type_name(cls)}")
    for name, projection in PROJECTIONS.items()
    for cls in EVENT_CLASSES
    if cls not in projection.reads
]


# --- every projection -------------------------------------------------------------------


def test_every_projection_module_is_covered_by_these_tests() -> None:
    modules = {m.name for m in pkgutil.iter_modules(projections.__path__)}
    # Scores are computed, not folded (their fold keeps a section as it is): tests/test_scores.py.
    assert modules == set(PROJECTIONS) | {"scores"}
    for name, projection in PROJECTIONS.items():
        assert projection.dataset == name


def test_every_event_type_has_a_sample() -> None:
    assert set(SAMPLES) == set(EVENT_CLASSES)


@pytest.mark.parametrize("name", PROJECTIONS)
def test_projection_topics_cover_exactly_the_tags_it_reads(name: str) -> None:
    projection = PROJECTIONS[name]
    tags = {event_type_name(cls) for cls in projection.reads}
    assert {topic.partition("#v")[0] for topic in projection.topics} == tags
    assert set(projection.topics) == {t for cls in projection.reads for t in topics_for(cls)}
    assert len(set(projection.topics)) == len(projection.topics)


@pytest.mark.parametrize(("name", "cls"), UNREAD)
def test_projection_leaves_section_unchanged_for_events_it_does_not_read(
    name: str, cls: type[Event]
) -> None:
    projection = PROJECTIONS[name]
    empty = projection.empty()
    assert step(projection, empty, sample(cls, 99)) == empty
    populated = run(projection, scenario(name))
    assert step(projection, populated, sample(cls, 99)) == populated


@pytest.mark.parametrize("name", PROJECTIONS)
def test_projection_scenario_is_pure_frozen_and_round_trips(name: str) -> None:
    projection = PROJECTIONS[name]
    history = scenario(name)
    section = run(projection, history)
    assert section != projection.empty()
    assert_deeply_frozen(section)
    with pytest.raises(AttributeError):
        setattr(section, section.__struct_fields__[0], ())
    assert roundtrip(projection.empty()) == projection.empty()
    # Folding the same history twice gives the same section: the fold is deterministic.
    assert run(projection, history) == section


# --- identities -------------------------------------------------------------------------


def test_identities_seen_email_is_stored_under_its_lower_cased_key() -> None:
    section = run(identities.PROJECTION, [sample(IdentifierSeen, 0, value=" Ann@Example.COM ")])
    (entry,) = section.identifiers
    assert entry.kind == "email"
    assert entry.key == "email:ann@example.com"
    assert entry.value == " Ann@Example.COM "
    assert entry.linked is False
    assert (entry.first_seen, entry.last_seen, entry.times_seen) == (at(0), at(0), 1)


def test_identities_phone_and_handle_keys_are_normalised() -> None:
    section = run(
        identities.PROJECTION,
        [
            sample(IdentifierSeen, 0, kind="phone", value="+44 (20) 7946-0000"),
            sample(IdentifierSeen, 1, kind="handle", value="@AnnLee", network=" Mastodon"),
        ],
    )
    assert [i.key for i in section.identifiers] == [
        "phone:+442079460000",
        "handle:mastodon:annlee",
    ]


def test_identities_seeing_a_known_identifier_again_updates_it_in_place_of_a_new_entry() -> None:
    section = run(
        identities.PROJECTION,
        [
            sample(IdentifierSeen, 0, value="ann@example.com"),
            sample(IdentifierSeen, 5, value="ANN@example.com"),
        ],
    )
    (entry,) = section.identifiers
    assert entry.value == "ANN@example.com"
    assert (entry.first_seen, entry.last_seen, entry.times_seen) == (at(0), at(5), 2)


def test_identities_seen_and_last_seen_times_hold_when_events_arrive_out_of_order() -> None:
    section = run(
        identities.PROJECTION,
        [sample(IdentifierSeen, 10), sample(IdentifierSeen, 3), sample(IdentifierSeen, 7)],
    )
    (entry,) = section.identifiers
    assert (entry.first_seen, entry.last_seen, entry.times_seen) == (at(3), at(10), 3)


def test_identities_linked_marks_identifier_linked_and_a_later_sighting_keeps_it_linked() -> None:
    section = run(
        identities.PROJECTION,
        [
            sample(IdentifierSeen, 0),
            sample(IdentifierLinked, 1, kind="email", value="ann@example.com"),
        ],
    )
    assert [(i.key, i.linked) for i in section.identifiers] == [("email:ann@example.com", True)]
    section = run(identities.PROJECTION, [sample(IdentifierSeen, 2)], section)
    assert section.identifiers[0].linked is True
    assert section.identifiers[0].times_seen == 3


def test_identities_unlink_removes_the_identifier_matched_by_normalised_key() -> None:
    section = run(
        identities.PROJECTION,
        [
            sample(IdentifierLinked, 0, kind="email", value="ann@example.com"),
            sample(IdentifierSeen, 1, kind="device", value="dev-1"),
            sample(IdentifierUnlinked, 2, kind="email", value="  ANN@EXAMPLE.com"),
        ],
    )
    assert [i.key for i in section.identifiers] == ["device:dev-1"]


def test_identities_unlink_of_an_unknown_identifier_changes_nothing() -> None:
    before = run(identities.PROJECTION, [sample(IdentifierSeen, 0)])
    after = run(identities.PROJECTION, [sample(IdentifierUnlinked, 1)], before)
    assert after == before


def test_identities_lookup_keys_are_the_normalised_keys() -> None:
    section = run(identities.PROJECTION, scenario("identities"))
    assert identities.PROJECTION.lookup_keys is not None
    assert sorted(identities.PROJECTION.lookup_keys(section)) == [
        "device:dev-1",
        "email:ann@example.com",
        "handle:mastodon:ann",
        "phone:+442079460000",
    ]
    assert list(identities.PROJECTION.lookup_keys(identities.PROJECTION.empty())) == []


def _emails(count: int, start_minute: int = 0) -> list[Event]:
    return [
        sample(IdentifierSeen, start_minute + n, value=f"user{n}@example.com") for n in range(count)
    ]


def test_identities_keep_at_most_20_per_kind_evicting_the_least_recently_seen_unlinked() -> None:
    cap = identities.CAP_PER_KIND
    assert cap == 20
    history = [
        # user0 is the oldest but linked; user1 is old but seen again last; user2 must go.
        sample(IdentifierLinked, -10, kind="email", value="user0@example.com"),
        *_emails(cap),
        sample(IdentifierSeen, 100, value="user1@example.com"),
        sample(IdentifierSeen, 101, kind="phone", value="+1 555 0100 000"),
    ]
    section = run(identities.PROJECTION, history)
    assert len(section.identifiers) == cap + 1  # 20 emails and a phone
    section = run(
        identities.PROJECTION, [sample(IdentifierSeen, 200, value="new@example.com")], section
    )
    keys = {i.key for i in section.identifiers}
    assert len([k for k in keys if k.startswith("email:")]) == cap
    assert "email:user2@example.com" not in keys
    assert {"email:user0@example.com", "email:user1@example.com", "email:new@example.com"} <= keys
    assert "phone:+15550100000" in keys


def test_identities_cap_is_per_kind_and_resighting_a_known_one_at_the_cap_evicts_nothing() -> None:
    cap = identities.CAP_PER_KIND
    history = [
        *_emails(cap),
        *(sample(IdentifierSeen, 50 + n, kind="device", value=f"dev-{n}") for n in range(5)),
        sample(IdentifierSeen, 60, value="user0@example.com"),
    ]
    section = run(identities.PROJECTION, history)
    assert len(section.identifiers) == cap + 5
    assert {f"email:user{n}@example.com" for n in range(cap)} <= {
        i.key for i in section.identifiers
    }


def test_identities_when_all_of_a_kind_are_linked_the_least_recently_seen_goes() -> None:
    cap = identities.CAP_PER_KIND
    history = [
        sample(IdentifierLinked, n, kind="email", value=f"user{n}@example.com") for n in range(cap)
    ]
    section = run(
        identities.PROJECTION, [*history, sample(IdentifierSeen, 99, value="x@example.com")]
    )
    keys = {i.key for i in section.identifiers}
    assert len(keys) == cap
    assert "email:user0@example.com" not in keys
    assert "email:x@example.com" in keys


# --- attributes -------------------------------------------------------------------------


def test_attributes_name_set_last_write_wins() -> None:
    section = run(
        attributes.PROJECTION,
        [
            sample(NameSet, 0, first_name="Ann", last_name="Lee"),
            sample(NameSet, 1, first_name="Anne", last_name="Smith"),
        ],
    )
    assert (section.first_name, section.last_name) == ("Anne", "Smith")
    assert section.updated_at == at(1)


def test_attributes_name_fields_are_not_overwritten_by_none() -> None:
    section = run(
        attributes.PROJECTION,
        [
            sample(NameSet, 0, first_name="Ann", last_name="Lee"),
            sample(NameSet, 1, first_name=None, last_name="Smith"),
            sample(NameSet, 2, first_name="Anne", last_name=None),
        ],
    )
    assert (section.first_name, section.last_name) == ("Anne", "Smith")


def test_attributes_birthday_and_location_last_write_wins_replacing_the_whole_location() -> None:
    section = run(
        attributes.PROJECTION,
        [
            sample(BirthdaySet, 0, birthday=dt.date(1990, 1, 2)),
            sample(LocationSet, 1, location=Location(city="Leeds", country="GB")),
            sample(BirthdaySet, 2, birthday=dt.date(1991, 3, 4)),
            sample(LocationSet, 3, location=Location(country="FR", latitude=48.85)),
        ],
    )
    assert section.birthday == dt.date(1991, 3, 4)
    assert section.location == Location(country="FR", latitude=48.85)
    assert section.updated_at == at(3)


def test_attributes_preference_set_replaces_the_same_key_and_moves_it_last() -> None:
    section = run(
        attributes.PROJECTION,
        [
            sample(PreferenceSet, 0, key="a", value=1),
            sample(PreferenceSet, 1, key="b", value="x"),
            sample(PreferenceSet, 2, key="a", value=False),
        ],
    )
    assert [(p.key, p.value, p.set_at) for p in section.preferences] == [
        ("b", "x", at(1)),
        ("a", False, at(2)),
    ]


def test_attributes_preferences_capped_at_100_keeping_the_most_recently_set() -> None:
    cap = attributes.CAP_PREFERENCES
    assert cap == 100
    history = [sample(PreferenceSet, n, key=f"k{n}", value=n) for n in range(cap + 5)]
    section = run(attributes.PROJECTION, history)
    assert len(section.preferences) == cap
    assert section.preferences[0].key == "k5"
    assert section.preferences[-1].key == f"k{cap + 4}"


# --- consents ---------------------------------------------------------------------------


def test_consents_keep_the_latest_grant_per_channel_and_purpose_with_change_count() -> None:
    section = run(
        consents.PROJECTION,
        [
            sample(ConsentGiven, 0, channel="email"),
            sample(ConsentWithdrawn, 1, channel="email", purpose="marketing", source="web-form"),
        ],
    )
    (consent,) = section.consents
    assert (consent.channel, consent.purpose) == ("email", "marketing")
    assert consent.granted is False
    assert consent.changed_at == at(1)
    assert consent.source == "web-form"
    assert consent.changes == 2


def test_an_email_unsubscribe_withdraws_email_marketing_naming_its_event() -> None:
    unsubscribed = sample(EmailUnsubscribed, 1)
    section = run(consents.PROJECTION, [sample(ConsentGiven, 0), unsubscribed])
    (consent,) = section.consents
    assert (consent.channel, consent.purpose, consent.granted) == ("email", "marketing", False)
    assert consent.event_id == unsubscribed.event_id


def test_consents_are_tracked_separately_per_channel_and_per_purpose() -> None:
    section = run(
        consents.PROJECTION,
        [
            sample(ConsentGiven, 0, channel="email"),
            sample(ConsentGiven, 1, channel="sms"),
            sample(ConsentWithdrawn, 2, channel="email", purpose="profiling"),
            sample(ConsentGiven, 3, channel="email"),
        ],
    )
    state = {(c.channel, c.purpose): (c.granted, c.changes) for c in section.consents}
    assert state == {
        ("email", "marketing"): (True, 2),
        ("sms", "marketing"): (True, 1),
        ("email", "profiling"): (False, 1),
    }


# --- carts ------------------------------------------------------------------------------


def add(minute: float, cart_id: str = "cart-1", sku: str = "sku-1", **fields: Any) -> Any:
    return sample(CartItemAdded, minute, cart_id=cart_id, sku=sku, **fields)


def test_carts_first_item_opens_a_cart_in_its_currency() -> None:
    section = run(carts.PROJECTION, [add(0, name="Mug", quantity=2, currency="EUR")])
    (cart,) = section.open
    assert (cart.cart_id, cart.status, cart.currency) == ("cart-1", "open", "EUR")
    assert [(x.sku, x.name, x.quantity) for x in cart.lines] == [("sku-1", "Mug", 2)]
    assert cart.value == Decimal("9.00")
    assert (cart.created_at, cart.updated_at, section.last_activity_at) == (at(0), at(0), at(0))
    assert section.abandoned == ()


def test_carts_item_added_twice_sums_quantity_keeps_name_and_takes_the_latest_price() -> None:
    section = run(
        carts.PROJECTION,
        [add(0, name="Mug", quantity=2), add(1, quantity=3, unit_price=Decimal("4.00"))],
    )
    (line,) = section.open[0].lines
    assert (line.name, line.quantity, line.unit_price) == ("Mug", 5, Decimal("4.00"))
    assert section.open[0].value == Decimal("20.00")
    assert section.open[0].created_at == at(0)
    assert section.open[0].updated_at == at(1)


def test_carts_value_is_the_sum_of_price_times_quantity_over_lines() -> None:
    section = run(
        carts.PROJECTION,
        [
            add(0, sku="a", quantity=3, unit_price=Decimal("1.10")),
            add(1, sku="b", quantity=1, unit_price=Decimal("0.05")),
            add(2, sku="c", quantity=2, unit_price=Decimal("10")),
        ],
    )
    assert section.open[0].value == Decimal("23.35")


def test_carts_removing_some_quantity_decrements_the_line() -> None:
    section = run(
        carts.PROJECTION,
        [
            add(0, quantity=5),
            add(1, sku="sku-2", unit_price=Decimal("1")),
            sample(CartItemRemoved, 2, quantity=2),
        ],
    )
    assert [(x.sku, x.quantity) for x in section.open[0].lines] == [("sku-1", 3), ("sku-2", 1)]
    assert section.open[0].value == Decimal("14.50")


def test_carts_removing_the_line_quantity_or_more_drops_the_line() -> None:
    for removed in (2, 7):
        section = run(
            carts.PROJECTION, [add(0, quantity=2), sample(CartItemRemoved, 1, quantity=removed)]
        )
        (cart,) = section.open
        assert cart.lines == ()
        assert cart.value == Decimal(0)


def test_carts_removing_without_quantity_drops_the_whole_line() -> None:
    section = run(
        carts.PROJECTION,
        [
            add(0, quantity=4),
            add(1, sku="sku-2", unit_price=Decimal("2")),
            sample(CartItemRemoved, 2, sku="sku-1"),
        ],
    )
    assert [x.sku for x in section.open[0].lines] == ["sku-2"]
    assert section.open[0].value == Decimal("2")
    assert section.open[0].updated_at == at(2)


def test_carts_removing_an_sku_not_in_the_cart_changes_no_line() -> None:
    before = run(carts.PROJECTION, [add(0)])
    after = run(carts.PROJECTION, [sample(CartItemRemoved, 1, sku="nope")], before)
    assert after.open[0].lines == before.open[0].lines


def test_carts_cleared_cart_is_removed_and_not_abandoned() -> None:
    section = run(carts.PROJECTION, [add(0), sample(CartCleared, 1)])
    assert section.open == ()
    assert section.abandoned == ()
    assert section.last_activity_at == at(1)


def test_carts_checkout_started_sets_status_and_time() -> None:
    section = run(carts.PROJECTION, [add(0), sample(CheckoutStarted, 3)])
    (cart,) = section.open
    assert cart.status == "checkout"
    assert cart.checkout_started_at == at(3)
    assert cart.updated_at == at(3)


def test_carts_events_for_an_unknown_cart_only_record_activity() -> None:
    before = run(carts.PROJECTION, [add(0)])
    for n, cls in enumerate((CartItemRemoved, CartCleared, CheckoutStarted), start=1):
        after = run(carts.PROJECTION, [sample(cls, n, cart_id="other")], before)
        assert after == msgspec.structs.replace(before, last_activity_at=at(n))


def test_carts_new_cart_abandons_previous_cart_with_items() -> None:
    section = run(
        carts.PROJECTION,
        [add(0, quantity=2), sample(CheckoutStarted, 1), add(2, cart_id="cart-2")],
    )
    assert [c.cart_id for c in section.open] == ["cart-2"]
    (abandoned,) = section.abandoned
    assert abandoned.cart_id == "cart-1"
    assert abandoned.status == "abandoned"
    assert abandoned.value == Decimal("9.00")
    assert abandoned.checkout_started_at == at(1)


def test_carts_new_cart_drops_a_previous_empty_cart_without_abandoning_it() -> None:
    section = run(
        carts.PROJECTION,
        [add(0), sample(CartItemRemoved, 1), add(2, cart_id="cart-2")],
    )
    assert [c.cart_id for c in section.open] == ["cart-2"]
    assert section.abandoned == ()


def test_carts_abandoned_carts_capped_at_10_keeping_the_most_recent() -> None:
    cap = carts.CAP_ABANDONED
    assert cap == 10
    section = run(carts.PROJECTION, [add(n, cart_id=f"cart-{n}") for n in range(cap + 3)])
    assert [c.cart_id for c in section.open] == [f"cart-{cap + 2}"]
    assert [c.cart_id for c in section.abandoned] == [f"cart-{n}" for n in range(2, cap + 2)]


def test_carts_order_placed_from_an_open_cart_converts_it() -> None:
    section = run(carts.PROJECTION, [add(0), sample(CheckoutStarted, 1), sample(OrderPlaced, 2)])
    assert section.open == ()
    assert (section.converted, section.recovered) == (1, 0)
    assert section.abandoned == ()
    assert section.last_activity_at == at(2)


def test_carts_order_from_an_abandoned_cart_recovers_it() -> None:
    section = run(
        carts.PROJECTION,
        [add(0), add(1, cart_id="cart-2"), sample(OrderPlaced, 2, cart_id="cart-1")],
    )
    assert section.abandoned == ()
    assert [c.cart_id for c in section.open] == ["cart-2"]
    assert (section.converted, section.recovered) == (1, 1)


def test_carts_the_same_order_placed_twice_converts_the_cart_once() -> None:
    placed = sample(OrderPlaced, 2)
    again = sample(OrderPlaced, 3, order_id=placed.order_id)
    section = run(carts.PROJECTION, [add(0), placed, again])
    assert (section.converted, section.recovered) == (1, 0)
    section = run(carts.PROJECTION, [add(0), add(1, cart_id="cart-2"), placed, again])
    assert (section.converted, section.recovered) == (1, 1)


def test_carts_order_without_a_cart_or_from_an_unknown_cart_changes_nothing() -> None:
    before = run(carts.PROJECTION, [add(0)])
    assert run(carts.PROJECTION, [sample(OrderPlaced, 1, cart_id=None)], before) == before
    assert run(carts.PROJECTION, [sample(OrderPlaced, 1, cart_id="nope")], before) == before


# --- orders -----------------------------------------------------------------------------


def placed(minute: float, order_id: str, total: str, currency: str = "GBP", **kw: Any) -> Any:
    return sample(
        OrderPlaced, minute, order_id=order_id, total=Decimal(total), currency=currency, **kw
    )


def spend(section: orders.Orders) -> dict[str, Decimal]:
    return {s.currency: s.total for s in section.lifetime_value}


def test_orders_placed_records_the_order_counts_it_and_adds_its_value() -> None:
    section = run(orders.PROJECTION, [placed(0, "o-1", "9.00", channel="web")])
    (order,) = section.recent
    assert (order.order_id, order.status, order.placed_at) == ("o-1", "placed", at(0))
    assert (order.total, order.channel) == (Decimal("9.00"), "web")
    # The section keeps the line as its own Struct (same JSON, no intake checks).
    assert order.items == (
        orders.Line(sku="sku-1", name="Mug", quantity=2, unit_price=LINE.unit_price),
    )
    assert msgspec.json.encode(order.items) == msgspec.json.encode((LINE,))
    assert section.order_count == 1
    assert spend(section) == {"GBP": Decimal("9.00")}
    assert (section.first_order_at, section.last_order_at) == (at(0), at(0))


def test_orders_the_same_order_id_placed_twice_is_counted_once() -> None:
    first = placed(0, "o-1", "9.00")
    section = run(orders.PROJECTION, [first, placed(5, "o-1", "9.00")])
    assert section == run(orders.PROJECTION, [first])
    assert section.order_count == 1


def test_orders_lifetime_value_is_kept_per_currency() -> None:
    section = run(
        orders.PROJECTION,
        [placed(0, "o-1", "9.00"), placed(1, "o-2", "20", "EUR"), placed(2, "o-3", "1.10")],
    )
    assert spend(section) == {"GBP": Decimal("10.10"), "EUR": Decimal("20")}
    assert section.order_count == 3


def test_orders_first_and_last_order_dates_hold_when_orders_arrive_out_of_order() -> None:
    section = run(
        orders.PROJECTION,
        [placed(10, "o-1", "1"), placed(3, "o-2", "1"), placed(7, "o-3", "1")],
    )
    assert (section.first_order_at, section.last_order_at) == (at(3), at(10))


def test_orders_returns_refund_value_and_count_each_order_once() -> None:
    section = run(
        orders.PROJECTION,
        [
            placed(0, "o-1", "9.00"),
            sample(OrderReturned, 1, order_id="o-1", amount_refunded=Decimal("4.50")),
            sample(OrderReturned, 2, order_id="o-1", amount_refunded=Decimal("1.50")),
        ],
    )
    (order,) = section.recent
    assert (order.status, order.refunded) == ("returned", Decimal("6.00"))
    assert section.returned_count == 1
    assert spend(section) == {"GBP": Decimal("3.00")}
    assert section.order_count == 1


def test_orders_refunds_never_exceed_the_order_total() -> None:
    section = run(
        orders.PROJECTION,
        [
            placed(0, "o-1", "9.00"),
            placed(1, "o-2", "5.00"),
            sample(OrderReturned, 2, order_id="o-1", amount_refunded=Decimal("7")),
            sample(OrderReturned, 3, order_id="o-1", amount_refunded=Decimal("7")),
        ],
    )
    assert section.recent[0].refunded == Decimal("9.00")
    assert spend(section) == {"GBP": Decimal("5.00")}


def test_orders_cancelled_order_removes_its_value_and_counts_once() -> None:
    section = run(
        orders.PROJECTION,
        [
            placed(0, "o-1", "9.00"),
            placed(1, "o-2", "5.00"),
            sample(OrderCancelled, 2, order_id="o-1"),
            sample(OrderCancelled, 3, order_id="o-1"),
            sample(OrderReturned, 4, order_id="o-1", amount_refunded=Decimal("9")),
        ],
    )
    assert [(o.order_id, o.status, o.refunded) for o in section.recent] == [
        ("o-1", "cancelled", Decimal("9.00")),
        ("o-2", "placed", Decimal(0)),
    ]
    assert (section.order_count, section.cancelled_count, section.returned_count) == (2, 1, 0)
    assert spend(section) == {"GBP": Decimal("5.00")}


def test_orders_cancelling_a_partly_refunded_order_removes_only_the_rest() -> None:
    section = run(
        orders.PROJECTION,
        [
            placed(0, "o-1", "9.00", "EUR"),
            sample(OrderReturned, 1, order_id="o-1", amount_refunded=Decimal("2.00")),
            sample(OrderCancelled, 2, order_id="o-1"),
        ],
    )
    assert spend(section) == {"EUR": Decimal("0")}
    assert (section.returned_count, section.cancelled_count) == (1, 1)


def test_orders_return_or_cancellation_of_an_unknown_order_changes_nothing() -> None:
    before = run(orders.PROJECTION, [placed(0, "o-1", "9.00")])
    after = run(
        orders.PROJECTION,
        [sample(OrderReturned, 1, order_id="nope"), sample(OrderCancelled, 2, order_id="nope")],
        before,
    )
    assert after == before


def test_orders_recent_capped_at_50_while_counts_and_value_cover_all() -> None:
    cap = orders.CAP_RECENT
    assert cap == 50
    section = run(orders.PROJECTION, [placed(n, f"o-{n}", "1") for n in range(cap + 5)])
    assert len(section.recent) == cap
    assert section.recent[0].order_id == "o-5"
    assert section.order_count == cap + 5
    assert spend(section) == {"GBP": Decimal(cap + 5)}
    assert section.first_order_at == at(0)


# --- browsing ---------------------------------------------------------------------------


def test_browsing_keeps_the_last_100_page_views_and_counts_all() -> None:
    cap = browsing.CAP_PAGE_VIEWS
    assert cap == 100
    views = [sample(PageViewed, n, url=f"https://shop.example/{n}") for n in range(cap + 30)]
    section = run(browsing.PROJECTION, views)
    assert len(section.page_views) == cap
    assert [v.url for v in section.page_views] == [
        f"https://shop.example/{n}" for n in range(30, cap + 30)
    ]
    assert section.page_view_count == cap + 30
    assert (section.first_seen_at, section.last_seen_at) == (at(0), at(cap + 29))


def test_browsing_keeps_the_last_50_product_views_and_20_searches_and_counts_all() -> None:
    assert (browsing.CAP_PRODUCT_VIEWS, browsing.CAP_SEARCHES) == (50, 20)
    history = [
        *(sample(ProductViewed, n, sku=f"sku-{n}") for n in range(55)),
        *(sample(Searched, 100 + n, query=f"q{n}") for n in range(25)),
    ]
    section = run(browsing.PROJECTION, history)
    assert [p.sku for p in section.product_views] == [f"sku-{n}" for n in range(5, 55)]
    assert [s.query for s in section.searches] == [f"q{n}" for n in range(5, 25)]
    assert (section.product_view_count, section.search_count, section.page_view_count) == (
        55,
        25,
        0,
    )


def test_browsing_records_what_was_viewed_and_searched() -> None:
    section = run(browsing.PROJECTION, scenario("browsing"))
    assert section.page_views == (
        browsing.PageView(url="https://shop.example/", title="Home", at=at(0)),
    )
    assert section.product_views == (
        browsing.ProductView(sku="sku-1", price=Decimal("4.50"), at=at(1)),
    )
    assert section.searches == (browsing.Search(query="mug", results=3, at=at(2)),)


def test_browsing_counts_a_session_each_time_the_session_id_changes() -> None:
    section = run(
        browsing.PROJECTION,
        [
            sample(PageViewed, 0, session_id="s1"),
            sample(ProductViewed, 1, session_id="s1"),
            sample(Searched, 2, session_id=None),
            sample(PageViewed, 3, session_id="s2"),
            sample(PageViewed, 4, session_id=None),
        ],
    )
    assert section.session_count == 2
    assert section.last_session_id == "s2"


def test_browsing_first_and_last_seen_hold_when_events_arrive_out_of_order() -> None:
    section = run(
        browsing.PROJECTION,
        [sample(PageViewed, 10), sample(Searched, 2), sample(ProductViewed, 5)],
    )
    assert (section.first_seen_at, section.last_seen_at) == (at(2), at(10))


# --- email ------------------------------------------------------------------------------


def test_email_sent_records_the_message_and_counts_it() -> None:
    section = run(email.PROJECTION, [sample(EmailSent, 0)])
    assert section.messages == (
        email.Message(message_id="m-1", campaign="spring", subject="Hello", sent_at=at(0)),
    )
    assert (section.sent, section.opened, section.clicked) == (1, 0, 0)


def test_email_opens_are_unique_per_message() -> None:
    section = run(
        email.PROJECTION,
        [
            sample(EmailSent, 0),
            sample(EmailSent, 1, message_id="m-2"),
            sample(EmailOpened, 2),
            sample(EmailOpened, 3),
            sample(EmailOpened, 4),
        ],
    )
    assert (section.sent, section.opened) == (2, 1)
    message = section.messages[0]
    assert (message.opens, message.opened_at) == (3, at(2))
    assert section.last_opened_at == at(4)


def test_email_a_click_implies_an_open() -> None:
    section = run(email.PROJECTION, [sample(EmailSent, 0), sample(EmailClicked, 5)])
    (message,) = section.messages
    assert (message.opened_at, message.clicked_at) == (at(5), at(5))
    assert (message.opens, message.clicks) == (0, 1)
    assert (section.opened, section.clicked) == (1, 1)
    assert (section.last_opened_at, section.last_clicked_at) == (at(5), at(5))


def test_email_clicks_are_unique_per_message_and_an_open_then_click_is_one_open() -> None:
    section = run(
        email.PROJECTION,
        [
            sample(EmailSent, 0),
            sample(EmailOpened, 1),
            sample(EmailClicked, 2),
            sample(EmailClicked, 3),
            sample(EmailOpened, 4),
        ],
    )
    (message,) = section.messages
    assert (message.opens, message.clicks, message.clicked_at) == (2, 2, at(2))
    assert (section.opened, section.clicked) == (1, 1)
    assert section.last_clicked_at == at(3)


def test_email_engagement_with_a_message_sent_before_the_window_is_counted() -> None:
    section = run(email.PROJECTION, [sample(EmailOpened, 0, message_id="old")])
    (message,) = section.messages
    assert (message.message_id, message.sent_at, message.campaign) == ("old", None, None)
    assert (section.sent, section.opened) == (0, 1)


def test_email_the_same_message_sent_twice_is_counted_once_and_keeps_its_engagement() -> None:
    sent = sample(EmailSent, 0)
    history = [sent, sample(EmailOpened, 1)]
    once = run(email.PROJECTION, history)
    twice = run(email.PROJECTION, [*history, sample(EmailSent, 2, message_id=sent.message_id)])
    assert twice == once
    # An open after the duplicate is still the same message's second open, not a new one.
    twice = run(email.PROJECTION, [sample(EmailClicked, 3)], twice)
    assert (twice.sent, twice.opened, twice.clicked) == (1, 1, 1)


def test_email_sent_arriving_after_engagement_fills_in_the_message_keeping_engagement() -> None:
    section = run(
        email.PROJECTION,
        [sample(EmailOpened, 1), sample(EmailSent, 0), sample(EmailClicked, 2)],
    )
    (message,) = section.messages
    assert (message.campaign, message.subject, message.sent_at) == ("spring", "Hello", at(0))
    assert (message.opened_at, message.opens, message.clicks) == (at(1), 1, 1)
    assert (section.sent, section.opened, section.clicked) == (1, 1, 1)


def test_email_unsubscribed_is_recorded_with_its_time() -> None:
    section = run(
        email.PROJECTION, [sample(EmailSent, 0), sample(EmailUnsubscribed, 3, message_id=None)]
    )
    assert (section.unsubscribed, section.unsubscribed_at) == (True, at(3))
    assert section.sent == 1


def test_email_keeps_the_last_50_messages_and_counts_all() -> None:
    cap = email.CAP_MESSAGES
    assert cap == 50
    section = run(
        email.PROJECTION, [sample(EmailSent, n, message_id=f"m-{n}") for n in range(cap + 4)]
    )
    assert [m.message_id for m in section.messages] == [f"m-{n}" for n in range(4, cap + 4)]
    assert section.sent == cap + 4


# --- social -----------------------------------------------------------------------------


def post(minute: float, post_id: str, **fields: Any) -> Any:
    return sample(SocialPostObserved, minute, post_id=post_id, **fields)


def test_social_post_is_recorded_with_its_sentiment() -> None:
    section = run(social.PROJECTION, [post(0, "p-1", sentiment=0.5)])
    assert section.posts == (
        social.Post(
            network="mastodon",
            handle="@ann",
            post_id="p-1",
            text="Love my new mug",
            sentiment=0.5,
            at=at(0),
        ),
    )
    assert (section.post_count, section.sentiment_sum, section.sentiment_count) == (1, 0.5, 1)
    assert section.last_post_at == at(0)


def test_social_posts_are_deduplicated_by_network_and_post_id() -> None:
    section = run(
        social.PROJECTION,
        [
            post(0, "p-1", sentiment=0.5),
            post(1, "p-1", sentiment=0.5, text="edited"),
            post(2, "p-1", network="bluesky", sentiment=-0.25),
        ],
    )
    assert [(p.network, p.post_id) for p in section.posts] == [
        ("mastodon", "p-1"),
        ("bluesky", "p-1"),
    ]
    assert section.posts[0].text == "Love my new mug"
    assert (section.post_count, section.sentiment_sum, section.sentiment_count) == (2, 0.25, 2)


def test_social_posts_without_sentiment_are_counted_but_not_scored() -> None:
    section = run(
        social.PROJECTION, [post(0, "p-1", sentiment=-1.0), post(1, "p-2", sentiment=None)]
    )
    assert (section.post_count, section.sentiment_sum, section.sentiment_count) == (2, -1.0, 1)


def test_social_post_text_is_truncated() -> None:
    section = run(social.PROJECTION, [post(0, "p-1", text="x" * 2000)])
    assert section.posts[0].text == "x" * social.POST_TEXT_CHARS


def test_social_keeps_the_last_20_posts_and_counts_all() -> None:
    cap = social.CAP_POSTS
    assert cap == 20
    section = run(social.PROJECTION, [post(n, f"p-{n}", sentiment=0.5) for n in range(cap + 3)])
    assert [p.post_id for p in section.posts] == [f"p-{n}" for n in range(3, cap + 3)]
    assert (section.post_count, section.sentiment_count) == (cap + 3, cap + 3)
    assert section.sentiment_sum == 0.5 * (cap + 3)
    assert section.last_post_at == at(cap + 2)


def test_social_last_post_at_holds_when_posts_arrive_out_of_order() -> None:
    section = run(social.PROJECTION, [post(10, "p-1"), post(3, "p-2")])
    assert section.last_post_at == at(10)


def test_social_life_events_are_recorded_and_capped_at_20() -> None:
    cap = social.CAP_LIFE_EVENTS
    assert cap == 20
    section = run(
        social.PROJECTION, [sample(LifeEventDetected, 0, kind="new_job", network="linkedin")]
    )
    assert section.life_events == (
        social.LifeEvent(
            kind="new_job", detail="to Leeds", confidence=0.7, detected_at=at(0), network="linkedin"
        ),
    )
    section = run(
        social.PROJECTION,
        [sample(LifeEventDetected, n, detail=f"d{n}") for n in range(cap + 2)],
    )
    assert [e.detail for e in section.life_events] == [f"d{n}" for n in range(2, cap + 2)]
    assert section.post_count == 0


# --- service ----------------------------------------------------------------------------


def test_service_opened_ticket_is_recorded_and_counted_open() -> None:
    section = run(service.PROJECTION, [sample(TicketOpened, 0, channel="phone")])
    assert section.tickets == (
        service.Ticket(
            ticket_id="t-1", subject="Broken mug", priority="high", channel="phone", opened_at=at(0)
        ),
    )
    assert (section.ticket_count, section.open_ticket_count) == (1, 1)


def test_service_the_same_ticket_opened_twice_is_counted_once() -> None:
    section = run(service.PROJECTION, [sample(TicketOpened, 0), sample(TicketOpened, 1)])
    assert (len(section.tickets), section.ticket_count, section.open_ticket_count) == (1, 1, 1)


def test_service_resolving_a_ticket_decrements_the_open_count_once() -> None:
    section = run(
        service.PROJECTION,
        [
            sample(TicketOpened, 0),
            sample(TicketOpened, 1, ticket_id="t-2"),
            sample(TicketResolved, 2, resolution="refunded"),
            sample(TicketResolved, 3, resolution="again"),
        ],
    )
    assert (section.ticket_count, section.open_ticket_count) == (2, 1)
    assert (section.tickets[0].resolved_at, section.tickets[0].resolution) == (at(2), "refunded")
    assert section.tickets[1].resolved_at is None


def test_service_resolving_an_unknown_ticket_changes_nothing() -> None:
    before = run(service.PROJECTION, [sample(TicketOpened, 0)])
    assert run(service.PROJECTION, [sample(TicketResolved, 1, ticket_id="nope")], before) == before


def test_service_last_nps_is_the_latest_given_and_not_cleared_by_a_survey_without_one() -> None:
    section = run(
        service.PROJECTION,
        [
            sample(SurveyAnswered, 0, nps=9),
            sample(SurveyAnswered, 1, survey_id="nps-2", nps=3),
            sample(SurveyAnswered, 2, survey_id="csat-1", nps=None, score=80.0),
        ],
    )
    assert section.last_nps == 3
    assert [(s.survey_id, s.nps, s.score) for s in section.surveys] == [
        ("nps-1", 9, None),
        ("nps-2", 3, None),
        ("csat-1", None, 80.0),
    ]


def test_service_keeps_the_last_20_tickets_and_10_surveys_and_counts_all_tickets() -> None:
    assert (service.CAP_TICKETS, service.CAP_SURVEYS) == (20, 10)
    history = [
        *(sample(TicketOpened, n, ticket_id=f"t-{n}") for n in range(23)),
        *(sample(SurveyAnswered, 100 + n, survey_id=f"s-{n}", nps=n % 11) for n in range(12)),
    ]
    section = run(service.PROJECTION, history)
    assert [t.ticket_id for t in section.tickets] == [f"t-{n}" for n in range(3, 23)]
    assert [s.survey_id for s in section.surveys] == [f"s-{n}" for n in range(2, 12)]
    assert (section.ticket_count, section.open_ticket_count) == (23, 23)
    assert section.last_nps == 11 % 11


def test_consents_an_older_decision_arriving_late_does_not_override_a_newer_one() -> None:
    section = run(
        consents.PROJECTION,
        [
            sample(ConsentWithdrawn, 10, channel="email", purpose="marketing"),
            sample(ConsentGiven, 5, channel="email", purpose="marketing"),
        ],
    )
    (consent,) = section.consents
    assert consent.granted is False
    assert consent.changed_at == at(10)
    assert consent.changes == 2


def test_carts_adding_to_an_abandoned_cart_reopens_it_with_its_lines() -> None:
    section = run(
        carts.PROJECTION, [add(0, "cart-1", "a"), add(1, "cart-2", "b"), add(2, "cart-1", "c")]
    )
    assert [c.cart_id for c in section.open] == ["cart-1"]
    assert [line.sku for line in section.open[0].lines] == ["a", "c"]
    assert section.open[0].status == "open"
    assert [c.cart_id for c in section.abandoned] == ["cart-2"]
