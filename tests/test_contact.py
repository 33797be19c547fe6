"""The contact policy: consent, sensitive life events, quiet hours, caps."""

from __future__ import annotations

import datetime as dt
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from profilestore.config import Cap, ContactSettings, QuietHours
from profilestore.contact import ContactPolicy, Sent, Verdict, customer_zone
from projections.attributes import Attributes
from projections.consents import Consent, Consents
from projections.social import LifeEvent, Social

PARIS = ZoneInfo("Europe/Paris")
NOON = dt.datetime(2026, 3, 2, 12, 0, tzinfo=dt.UTC)


def granted(*pairs: tuple[str, str, bool]) -> Consents:
    return Consents(
        consents=tuple(
            Consent(channel=c, purpose=p, granted=g, changed_at=NOON, source="test")
            for c, p, g in pairs
        )
    )


def check(
    policy: ContactPolicy,
    *,
    sections: dict[str, Any],
    now: dt.datetime = NOON,
    transactional: bool = False,
    sent: list[Sent] | None = None,
    channel: str = "email",
    purpose: str = "marketing",
    zone: ZoneInfo = PARIS,
) -> Verdict:
    return policy.check(
        channel=channel,
        purpose=purpose,
        transactional=transactional,
        sections=sections,
        timezone=zone,
        sent=sent or [],
        now=now,
    )


@pytest.fixture
def policy() -> ContactPolicy:
    return ContactPolicy(ContactSettings())


def test_unknown_consent_means_no_and_a_grant_means_yes(policy: ContactPolicy) -> None:
    assert check(policy, sections={}).action == "suppress"
    assert check(policy, sections={"consents": granted(("email", "marketing", True))}).action == (
        "send"
    )
    withdrawn = check(policy, sections={"consents": granted(("email", "marketing", False))})
    assert withdrawn == Verdict(
        "suppress", "the customer withdrew marketing on email", code="withdrawn"
    )


def test_transactional_needs_no_grant_but_stops_at_its_own_withdrawal(
    policy: ContactPolicy,
) -> None:
    unsubscribed = {"consents": granted(("email", "marketing", False))}
    assert check(policy, sections={}, transactional=True, purpose="transactional").action == "send"
    assert check(
        policy, sections=unsubscribed, transactional=True, purpose="transactional"
    ).action == ("send")
    refused = {"consents": granted(("email", "transactional", False))}
    assert check(policy, sections=refused, transactional=True, purpose="transactional") == Verdict(
        "suppress", "the customer withdrew transactional on email", code="withdrawn"
    )


def test_quiet_hours_defer_to_the_end_of_the_window_in_the_customers_zone(
    policy: ContactPolicy,
) -> None:
    yes = {"consents": granted(("email", "marketing", True))}
    late = dt.datetime(2026, 3, 2, 21, 30, tzinfo=dt.UTC)  # 22:30 in Paris
    verdict = check(policy, sections=yes, now=late)
    assert verdict.action == "defer"
    assert verdict.until == dt.datetime(2026, 3, 3, 7, 0, tzinfo=dt.UTC)  # 08:00 in Paris
    early = dt.datetime(2026, 3, 3, 5, 0, tzinfo=dt.UTC)  # 06:00 in Paris
    assert check(policy, sections=yes, now=early).until == verdict.until
    # 21:30 UTC is 13:30 in Los Angeles: not quiet there.
    la = ZoneInfo("America/Los_Angeles")
    assert check(policy, sections=yes, now=late, zone=la).action == "send"
    # Transactional messages are not held back.
    assert check(policy, sections=yes, now=late, transactional=True).action == "send"


def test_a_window_within_one_day_and_an_empty_window(policy: ContactPolicy) -> None:
    yes = {"consents": granted(("email", "marketing", True))}
    lunch = ContactPolicy(ContactSettings(quiet_hours=QuietHours(start="12:00", end="14:00")))
    assert check(lunch, sections=yes, zone=ZoneInfo("UTC")).until == NOON.replace(hour=14)
    none = ContactPolicy(ContactSettings(quiet_hours=QuietHours(start="00:00", end="00:00")))
    late = dt.datetime(2026, 3, 2, 23, 0, tzinfo=dt.UTC)
    assert check(none, sections=yes, now=late).action == "send"
    # A channel outside the configured ones has no quiet hours.
    posted = {"consents": granted(("post", "marketing", True))}
    assert check(policy, sections=posted, now=late, channel="post").action == "send"


def test_caps_count_non_transactional_messages_per_channel_in_rolling_windows() -> None:
    policy = ContactPolicy(ContactSettings(daily_cap=1, weekly_cap=2, caps={"sms": Cap(daily=3)}))
    yes = {"consents": granted(("email", "marketing", True), ("sms", "marketing", True))}
    hours_ago = [Sent(channel="email", at=NOON - dt.timedelta(hours=3), transactional=False)]
    assert check(policy, sections=yes, sent=hours_ago) == Verdict(
        "suppress", "frequency cap: 1 email message(s) in 24 hours", code="frequency_cap"
    )
    days_ago = [
        Sent(channel="email", at=NOON - dt.timedelta(days=d), transactional=False) for d in (2, 5)
    ]
    assert check(policy, sections=yes, sent=days_ago) == Verdict(
        "suppress", "frequency cap: 2 email message(s) in 7 days", code="frequency_cap"
    )
    long_ago = [Sent(channel="email", at=NOON - dt.timedelta(days=8), transactional=False)]
    receipts = [Sent(channel="email", at=NOON, transactional=True)] * 5
    assert check(policy, sections=yes, sent=long_ago + receipts).action == "send"
    assert check(policy, sections=yes, sent=hours_ago, channel="sms").action == "send"


def test_a_sensitive_life_event_suppresses_marketing_for_a_while(policy: ContactPolicy) -> None:
    social = Social(
        life_events=(
            LifeEvent(kind="bereavement", confidence=0.9, detected_at=NOON - dt.timedelta(days=10)),
        )
    )
    sections = {"consents": granted(("email", "marketing", True)), "social": social}
    assert check(policy, sections=sections) == Verdict(
        "suppress",
        "a sensitive life event (bereavement) was detected lately",
        code="sensitive_life_event",
    )
    later = NOON + dt.timedelta(days=90)
    assert check(policy, sections=sections, now=later).action == "send"
    assert check(policy, sections=sections, transactional=True).action == "send"


def test_the_customers_zone_comes_from_their_location() -> None:
    from projections.attributes import Location

    utc = ZoneInfo("UTC")
    assert customer_zone(None, utc) is utc
    assert customer_zone(Attributes(), utc) is utc
    paris = Attributes(location=Location(timezone="Europe/Paris"))
    assert customer_zone(paris, utc) == PARIS
    unknown = Attributes(location=Location(timezone="Nowhere/Land"))
    assert customer_zone(unknown, utc) is utc


def test_discretion_keeps_allowlisted_fields_and_leaves_out_the_sensitive(
    policy: ContactPolicy,
) -> None:
    payload = {
        "first_name": "Ann",
        "items": [
            {"sku": "S1", "name": "rug", "category": "Home"},
            {"sku": "S2", "name": "cream", "category": "Skin Conditions"},
        ],
        "product_view_count": 40,
        "seconds_browsing": 1200,
        "internal_score": 0.93,
        "occasion": "bereavement",
    }
    kept, left_out = policy.discreet(payload)
    assert kept == {
        "first_name": "Ann",
        "items": [{"sku": "S1", "name": "rug", "category": "Home"}],
    }
    assert left_out == [
        "$.items[1]",
        "$.product_view_count",
        "$.seconds_browsing",
        "$.internal_score",
        "$.occasion",
    ]
    assert not policy.emptied(payload, kept)
    only_sensitive = {"items": [{"sku": "S2", "category": "pharmacy"}]}
    assert policy.emptied(only_sensitive, policy.discreet(only_sensitive)[0])


def test_browsing_fields_are_left_out_even_when_allowlisted() -> None:
    policy = ContactPolicy(ContactSettings(payload_fields=["page_views", "name"]))
    assert policy.discreet({"page_views": 3, "name": "x"}) == ({"name": "x"}, ["$.page_views"])


def test_a_receipt_keeps_every_line_without_naming_a_sensitive_category(
    policy: ContactPolicy,
) -> None:
    payload = {"items": [{"sku": "S2", "name": "cream", "category": "Pharmacy"}]}
    kept, left_out = policy.discreet(payload, transactional=True)
    assert kept == {"items": [{"sku": "S2", "name": "cream"}]}
    assert left_out == ["$.items[0].category"]
