"""Identity resolution: merges, unmerges, rules, and what every reader makes of them."""

from __future__ import annotations

import datetime as dt
import itertools
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from conftest import make_document_store
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from profilestore.config import Settings, load_settings
from profilestore.documents import DocumentStore
from profilestore.errors import (
    CustomerNotFound,
    InvalidEvent,
    InvalidLink,
    LinkNotFound,
)
from profilestore.follower import Follower
from profilestore.identity import is_canonical
from profilestore.sqlite_log import open_sqlite_log
from profilestore.store import ProfileStore, load_projections, open_store

T0 = dt.datetime(2026, 3, 1, 9, 0, tzinfo=dt.UTC)
_ids = itertools.count()


def event(customer_id: str, type_: str, **payload: Any) -> dict[str, Any]:
    return {
        "type": type_,
        "event_id": f"e{next(_ids)}",
        "customer_id": customer_id,
        "occurred_at": "2026-03-01T09:00:00Z",
        **payload,
    }


def seen(customer_id: str, kind: str, value: str, **extra: Any) -> dict[str, Any]:
    return event(customer_id, "identifier.seen", kind=kind, value=value, **extra)


def order(customer_id: str, order_id: str, total: str = "10.00") -> dict[str, Any]:
    return event(
        customer_id,
        "order.placed",
        order_id=order_id,
        items=[{"sku": "S1", "unit_price": total}],
        total=total,
        currency="USD",
    )


def named(customer_id: str, first: str) -> dict[str, Any]:
    return event(customer_id, "profile.name_set", first_name=first)


def cart(customer_id: str, cart_id: str, sku: str) -> dict[str, Any]:
    return event(
        customer_id,
        "cart.item_added",
        cart_id=cart_id,
        sku=sku,
        unit_price="5.00",
        currency="USD",
    )


def snapshot(documents: DocumentStore) -> dict[tuple[str, str], Any]:
    """Every live section, decoded to builtins, with its position."""
    found = {}
    for dataset in documents.schemas:
        ids = list(documents.customer_ids(dataset))
        for customer_id, stored in documents.load(dataset, ids).items():
            found[(dataset, customer_id)] = (msgspec.to_builtins(stored.section), stored.position)
    return found


def sections_only(found: dict[tuple[str, str], Any]) -> dict[tuple[str, str], Any]:
    return {key: value[0] for key, value in found.items()}


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> dt.datetime:
        self.now += dt.timedelta(seconds=1)
        return self.now


def manual_settings(settings: Settings, **identity: Any) -> Settings:
    """Every dataset refreshed by hand; identity rules as given."""
    return msgspec.structs.replace(
        settings, identity=msgspec.structs.replace(settings.identity, **identity)
    )


@pytest.fixture
def store(settings: Settings) -> Iterator[ProfileStore]:
    with open_store(settings, clock=Clock()) as opened:
        yield opened


def make_store(kind: str, home: Path, request: pytest.FixtureRequest, **identity: Any) -> Any:
    settings = manual_settings(load_settings(environ={}, home=home), **identity)
    projections = load_projections(settings)
    from profilestore.documents import DatasetSchema

    schemas = {
        name: DatasetSchema(p.section, keyed=p.lookup_keys is not None)
        for name, p in projections.items()
    }
    documents = make_document_store(kind, request, home, schemas)
    home.mkdir(parents=True, exist_ok=True)
    log = open_sqlite_log(str(home / "events.sqlite"))
    return ProfileStore(settings, log, documents, projections, clock=Clock())


# --- merging --------------------------------------------------------------------------


def test_an_operator_merge_makes_one_profile_readable_by_either_key(store: ProfileStore) -> None:
    store.append(
        [
            seen("web-1", "email", "ann@example.com"),
            named("web-1", "Ann"),
            order("web-1", "o1"),
            seen("pos-9", "phone", "+14155550003"),
            order("pos-9", "o2"),
            cart("pos-9", "k1", "S9"),
        ]
    )
    store.refresh()
    result = store.link("web-1", "pos-9", actor="ops", reason="same person at the till")
    assert result.appended == 1 and is_canonical(result.profile_id)

    by_web, by_pos = store.profile("web-1"), store.profile("pos-9")
    assert by_web.canonical_id == by_pos.canonical_id == result.profile_id
    assert (by_web.customer_id, by_pos.customer_id) == ("web-1", "pos-9")
    assert by_web.sections == by_pos.sections
    orders = by_web.sections["orders"]
    assert {o.order_id for o in orders.recent} == {"o1", "o2"}
    identifiers = {i.key for i in by_web.sections["identities"].identifiers}
    assert identifiers == {"email:ann@example.com", "phone:+14155550003"}
    # Any identifier of the cluster finds it; the canonical id reads it too.
    assert store.find("phone", "+14155550003").canonical_id == result.profile_id
    assert store.find("email", "ann@example.com").sections == by_web.sections
    assert store.profile(result.profile_id).sections == by_web.sections
    # The keys' own documents are gone: one profile, not three.
    assert store._documents.get("web-1") is None and store._documents.get("pos-9") is None


def test_merging_again_appends_nothing(store: ProfileStore) -> None:
    store.append([named("a", "A"), named("b", "B")])
    first = store.link("a", "b", actor="ops")
    again = store.link("a", "b", actor="ops")
    assert (first.appended, again.appended) == (1, 0)
    assert again.profile_id == first.profile_id


def test_a_shared_email_links_two_keys_by_rule_with_its_evidence(store: ProfileStore) -> None:
    evidence = seen("app-2", "email", "Bo@Example.com ")
    store.append([seen("crm-1", "email", "bo@example.com"), order("crm-1", "o1")])
    store.append([evidence, order("app-2", "o2")])
    store.refresh()
    profile = store.profile("crm-1")
    assert profile.canonical_id == store.profile("app-2").canonical_id
    assert {o.order_id for o in profile.sections["orders"].recent} == {"o1", "o2"}
    explained = store.explain("app-2")
    assert sorted(explained.keys) == ["app-2", "crm-1"]
    (link,) = [link for link in explained.links if link.status == "active"]
    assert (link.rule, link.rule_version, link.evidence) == (
        "shared-email",
        1,
        "email:bo@example.com",
    )
    assert link.evidence_event_id == evidence["event_id"]
    # The link is a fact in the log, in the stream of the key that showed the evidence.
    assert [e.type_name for e in store.history("app-2")].count("identity.linked") == 1


def test_a_device_links_an_anonymous_key_into_a_known_one_only(store: ProfileStore) -> None:
    store.append(
        [
            seen("known", "email", "cy@example.com"),
            seen("known", "device", "dev-1"),
            seen("anon", "device", "dev-1"),
            seen("other-known", "email", "di@example.com"),
            seen("other-known", "device", "dev-2"),
            seen("third-known", "phone", "+14155550009"),
            seen("third-known", "device", "dev-2"),
        ]
    )
    store.refresh()
    assert store.resolve("anon") == store.resolve("known") != "known"
    assert store.resolve("other-known") == "other-known"
    refused = [link for link in store.explain("third-known").links if link.status == "refused"]
    assert [link.rule for link in refused] == ["shared-device"]
    assert refused[0].refused is not None and "both are known" in refused[0].refused


def test_a_device_refused_while_both_were_anonymous_links_once_one_signs_up(
    store: ProfileStore,
) -> None:
    # The usual order: an anonymous visit, then a sign-up whose device comes before its
    # email. Refused at first (neither key known), linked once the sign-up gives an email.
    store.append([seen("anon-7", "device", "tablet-7"), seen("user-7", "device", "tablet-7")])
    store.refresh()
    assert store.resolve("anon-7") == "anon-7"
    store.append([seen("user-7", "email", "gil@example.com")])
    store.refresh()
    assert store.resolve("anon-7") == store.resolve("user-7") != "user-7"
    statuses = sorted(link.status for link in store.explain("user-7").links)
    assert statuses == ["active", "refused"]  # the refusal stays on record


def test_an_identifier_shared_by_too_many_keys_links_nobody(store: ProfileStore) -> None:
    # device: shared after 3 keys (config); a fourth key sharing it is refused.
    store.append([seen("k0", "email", "owner@example.com"), seen("k0", "device", "kiosk")])
    store.append([seen(f"k{i}", "device", "kiosk") for i in range(1, 6)])
    store.refresh()
    assert store.resolve("k4") == "k4" and store.resolve("k5") == "k5"
    reasons = {link.refused for link in store.explain("k4").links}
    assert any(r and "shared by more than 3" in r for r in reasons)


def test_a_rule_respects_the_cap_on_keys_per_profile(settings: Settings, tmp_path: Path) -> None:
    capped = manual_settings(settings, max_cluster_keys=3)
    with open_store(capped, clock=Clock()) as store:
        store.append([seen(f"c{i}", "email", "team@example.com") for i in range(3)])
        store.refresh()
        cluster = store.resolve("c0")
        assert {store.resolve(f"c{i}") for i in range(3)} == {cluster}
        store.append([seen("c9", "phone", "+14155550100"), seen("c0", "phone", "+14155550100")])
        store.refresh()
        assert store.resolve("c9") == "c9"
        # ...an operator may still link beyond it.
        store.link("c9", "c0", actor="ops")
        assert store.resolve("c9") == store.resolve("c0")


# --- unmerging ------------------------------------------------------------------------


def test_unmerge_restores_both_profiles_and_stops_the_rule_relinking(store: ProfileStore) -> None:
    store.append([seen("x", "email", "ed@example.com"), order("x", "o1")])
    store.refresh()
    before = snapshot(store._documents)
    store.append([seen("y", "email", "ed@example.com"), order("y", "o2")])
    store.refresh()
    assert store.resolve("x") == store.resolve("y")
    store.unlink("x", "y", actor="ops", reason="a shared family address")
    assert store.resolve("x") == "x" and store.resolve("y") == "y"
    after = snapshot(store._documents)
    assert {k: v for k, v in after.items() if k[1] == "x"} == before
    # New evidence does not bring the link back: an operator said no.
    store.append([seen("y", "email", "ed@example.com", source="crm")])
    store.refresh()
    assert store.resolve("y") == "y"
    # ...but an operator can.
    store.link("x", "y", actor="ops")
    assert store.resolve("x") == store.resolve("y")


def test_one_key_splits_out_of_a_cluster_of_three(store: ProfileStore) -> None:
    store.append([order(k, f"o-{k}") for k in "abc"])
    store.refresh()
    store.link("a", "b", actor="ops")
    store.link("b", "c", actor="ops")
    merged = store.resolve("a")
    assert {store.resolve(k) for k in "abc"} == {merged}
    store.unlink("c", actor="ops")  # every link of c
    assert store.resolve("c") == "c"
    assert store.resolve("a") == store.resolve("b") == merged  # a-b is the oldest link: id kept
    remaining = store.profile("a").sections["orders"]
    assert {o.order_id for o in remaining.recent} == {"o-a", "o-b"}
    assert {o.order_id for o in store.profile("c").sections["orders"].recent} == {"o-c"}


def test_chains_and_cycles_form_one_profile_that_a_retraction_keeps_whole(
    store: ProfileStore,
) -> None:
    store.append([order(k, f"o-{k}") for k in "pqr"])
    store.refresh()
    store.link("p", "q", actor="ops")
    store.link("q", "r", actor="ops")
    assert store.link("r", "p", actor="ops").appended == 1  # one profile; the word is kept
    store.unlink("p", "q", actor="ops")  # r still joins them
    assert len({store.resolve(k) for k in "pqr"}) == 1
    assert {o.order_id for o in store.profile("p").sections["orders"].recent} == {
        "o-p",
        "o-q",
        "o-r",
    }


def test_bad_link_requests_get_clear_errors(store: ProfileStore) -> None:
    store.append([named("a", "A"), named("b", "B")])
    with pytest.raises(InvalidLink, match="`other` no event names this customer key"):
        store.link("a", "nobody", actor="ops")
    with pytest.raises(InvalidLink, match="same customer key"):
        store.link("a", "a", actor="ops")
    with pytest.raises(LinkNotFound):
        store.unlink("a", "b", actor="ops")
    merged = store.link("a", "b", actor="ops").profile_id
    with pytest.raises(InvalidLink, match="id of a merged profile"):
        store.link(merged, "a", actor="ops")
    with pytest.raises(InvalidEvent) as raised:
        store.append([named("~x", "X")])
    assert raised.value.path == "$.customer_id"
    assert store.unlink("a", "b", actor="ops").appended == 1
    assert store.unlink("a", "b", actor="ops").appended == 0  # idempotent


# --- every reader -----------------------------------------------------------------------


def test_history_as_of_export_and_verify_respect_links(store: ProfileStore) -> None:
    store.append([order("h1", "o1"), named("h2", "Hal")])
    store.refresh()
    before_merge = store.clock()
    merged = store.link("h1", "h2", actor="ops").profile_id
    store.append([order("h2", "o2")])
    store.refresh()

    history = store.history("h1")
    assert [e.customer_id for e in history if e.type_name != "identity.linked"] == [
        "h1",
        "h2",
        "h2",
    ]
    page, next_after = store.history_page("h2", limit=2)
    assert len(page) == 2 and next_after is not None
    rest, last = store.history_page("h2", after=next_after, limit=10)
    assert last is None and len(page) + len(rest) == len(history)

    old = store.profile("h1", as_of=before_merge)
    assert old.canonical_id == "h1" and "attributes" not in old.sections
    with pytest.raises(CustomerNotFound):
        store.profile(merged, as_of=before_merge)  # the merged profile did not exist yet
    now = store.profile("h1", as_of=store.clock())
    assert now.canonical_id == merged and "attributes" in now.sections

    export = store.export("h2")
    assert export.canonical_id == merged and sorted(export.keys) == ["h1", "h2"]
    assert len(export.events) == len(history)
    assert store.verify().ok


def test_the_follower_folds_a_member_keys_new_events_into_the_cluster(
    store: ProfileStore,
) -> None:
    store.append([cart("f1", "k1", "S1"), cart("f2", "k2", "S2")])
    realtime = [n for n in store.projections if store.cadence(n) == "realtime"]
    follower = Follower(store, realtime, poll_s=0.002)
    with follower:
        # Once it holds its datasets (a merge's regroup taking one at that very moment
        # would send it to stand by for seconds: not what this test is about).
        deadline = time.monotonic() + 30
        while not follower.leased and time.monotonic() < deadline:
            time.sleep(0.005)
        store.link("f1", "f2", actor="ops")
        store.append([cart("f2", "k3", "S3")])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            time.sleep(0.002)
            try:
                carts = store.profile("f1").sections["carts"]
            except CustomerNotFound:
                continue
            if len(carts.open) + len(carts.abandoned) == 3:
                break
        state = (
            store.resolve("f2"),
            list(store._documents.customer_ids("carts")),
            store._documents.get_records("identity.applied").get("carts"),
            store._documents.tracking("carts"),
            store.identity_status(),
            follower.last_error,
        )
    carts = store.profile("f2").sections["carts"] if state[1] else state
    # One customer has one open cart: starting k2 then k3 abandoned the earlier ones.
    assert [c.cart_id for c in carts.open] == ["k3"], state
    assert {c.cart_id for c in carts.abandoned} == {"k1", "k2"}


def test_a_merge_reaches_scheduled_datasets_before_their_next_refresh(
    store: ProfileStore,
) -> None:
    store.append([order("s1", "o1"), order("s2", "o2")])
    store.refresh()
    store.append([order("s2", "o3")])  # not yet folded: orders is refreshed hourly
    store.link("s1", "s2", actor="ops")
    orders = store.profile("s1").sections["orders"]
    # The merged section is the fold of both keys' events (the new one included: the
    # refold reads the streams), and the dataset's own position has not moved.
    assert {o.order_id for o in orders.recent} == {"o1", "o2", "o3"}
    store.refresh()
    assert store.verify().ok


@pytest.fixture
def store_on_each_log(settings: Settings, log_backend: dict[str, Any]) -> Iterator[ProfileStore]:
    """A store over an SQLite log, and over a PostgreSQL one."""
    on_log = msgspec.structs.replace(
        settings,
        event_log=msgspec.structs.replace(
            settings.event_log, url=log_backend["url"], postgres_schema=log_backend["schema"]
        ),
    )
    with open_store(on_log, clock=Clock()) as opened:
        yield opened


def test_documents_after_merges_and_unmerges_equal_a_rebuild(
    store_on_each_log: ProfileStore, tmp_path: Path
) -> None:
    store = store_on_each_log
    store.append([order(k, f"o-{k}") for k in "abcdef"])
    store.append(
        [seen("a", "email", "shared@example.com"), seen("b", "email", "shared@example.com")]
    )
    store.refresh()
    store.link("c", "d", actor="ops")
    store.append([order("d", "o-d2"), cart("c", "k", "S")])
    store.link("d", "e", actor="ops")
    store.unlink("c", "d", actor="ops")
    store.link("f", "a", actor="ops")
    store.append([named("e", "Eve"), order("f", "o-f2")])
    store.refresh()
    fresh = msgspec.structs.replace(
        store.settings,
        documents=msgspec.structs.replace(
            store.settings.documents, url=f"sqlite:///{tmp_path}/fresh.sqlite"
        ),
    )
    with open_store(fresh) as rebuilt:
        rebuilt.refresh()
        expected = snapshot(rebuilt._documents)
    assert snapshot(store._documents) == expected
    assert store.verify().ok
    store.rebuild()  # blue/green: staged with the graph as it is, then swapped in
    assert snapshot(store._documents) == expected


# --- the property: unmerge(merge(A, B)) restores the documents ---------------------------

KEYS = ("a", "b", "c")


@st.composite
def histories(draw: st.DrawFn) -> list[dict[str, Any]]:
    kinds = st.sampled_from(["order", "name", "cart", "email", "view", "consent"])
    events = []
    for step in range(draw(st.integers(1, 14))):
        key = draw(st.sampled_from(KEYS))
        kind = draw(kinds)
        if kind == "order":
            events.append(order(key, f"o{step}", draw(st.sampled_from(["1.00", "20.50"]))))
        elif kind == "name":
            events.append(named(key, draw(st.sampled_from(["Ann", "Bo", "Cy"]))))
        elif kind == "cart":
            events.append(cart(key, f"k{draw(st.integers(0, 2))}", f"S{step}"))
        elif kind == "email":
            events.append(seen(key, "email", f"{key}{draw(st.integers(0, 2))}@example.com"))
        elif kind == "view":
            events.append(event(key, "browse.page_viewed", url=f"https://shop/{step}"))
        else:
            events.append(event(key, "consent.given", channel="email"))
    return events


@pytest.mark.parametrize("kind", ["sqlite", "mongomock"])
def test_unmerge_of_merge_restores_the_documents_exactly(
    kind: str, request: pytest.FixtureRequest
) -> None:
    @hypothesis_settings(
        max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow]
    )
    @given(before=histories(), linked=st.booleans())
    def check(before: list[dict[str, Any]], linked: bool) -> None:
        with (
            tempfile.TemporaryDirectory() as home,
            make_store(kind, Path(home), request) as store,
        ):
            store.append(before + [named(k, k.upper()) for k in KEYS])
            if linked:  # a is already merged with c
                store.link("a", "c", actor="ops")
            store.refresh()
            expected = snapshot(store._documents)
            store.link("a", "b", actor="ops")
            assert store.resolve("b") == store.resolve("a")
            store.unlink("a", "b", actor="ops")
            assert snapshot(store._documents) == expected

    check()
