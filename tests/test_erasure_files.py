"""No readable copy left: after ``erase`` and ``scrub``, a byte search of every file of the
embedded document store (the database with its free pages and unused page space, the
``-wal``, the ``-shm``) finds none of a forgotten customer's values.

The store is a real one with the identity graph, triggers, an experiment and the outbox
on, so the records they write (under their real keys and shapes) are covered; the
customer is a merged profile (a known key and an anonymous device), with a live and a
staging copy of its sections. The test first finds every value in the files, so it can
fail, and shows that without ``secure_delete`` the erased bytes would stay.
"""

from __future__ import annotations

import datetime as dt
import random
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_documents_contract import identities

from profilestore.config import Settings, load_settings
from profilestore.documents import SectionWrite
from profilestore.identity import is_canonical
from profilestore.sqlite_documents import SQLiteDocumentStore
from profilestore.sqlite_files import find_plaintext, store_files
from profilestore.store import ProfileStore, open_store

T0 = dt.datetime(2026, 3, 2, 12, 0, tzinfo=dt.UTC)  # a Monday, noon UTC: no quiet hours

KEY = "crm-zq-7f3x9"
ANONYMOUS = "web-zq-anon-51"
EMAIL = "zelda.quartzfield@example.org"
PHONE = "+14155550199"
FIRST, LAST = "Zeldarine", "Quartzfield"
DEVICE = "dev-zq-991"
NEIGHBOUR = "crm-zq-7f3"
"""A prefix of the customer's key. Not the other way round: a byte search for a key finds
every key it is a prefix of (the contract suite covers erasing c1 beside c10), and even
a key that, followed by the next column's bytes in SQLite's record format, spells it
(``crm-zq-7f3`` + ``attributes`` holds ``crm-zq-7f3a``), so the key ends in ``x9``."""
NEIGHBOUR_EMAIL = "neighbour.ngozi@example.org"

CONFIG = """
[triggers]
welcome = { trigger = "triggers.welcome", enabled = true }
receipt = { trigger = "triggers.receipt", enabled = true }
abandoned_cart = { trigger = "triggers.abandoned_cart", enabled = true }

[experiments]
welcome_copy = { trigger = "welcome", variants = { plain = 1, warm = 1 }, holdout = 0.1 }

[delivery]
file = "{home}/outbox.jsonl"
"""


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> dt.datetime:
        return self.now


def event(customer_id: str, type_: str, **payload: Any) -> dict[str, Any]:
    return {
        "type": type_,
        "event_id": "",  # numbered in order by the fixture: the same bytes every run
        "customer_id": customer_id,
        "occurred_at": "2026-03-02T11:00:00Z",
        **payload,
    }


def customer_events(key: str, email: str, first: str, last: str, **more: str) -> list[Any]:
    events = [
        event(key, "identifier.linked", kind="email", value=email),
        event(key, "profile.name_set", first_name=first, last_name=last),
        event(key, "consent.given", channel="email", purpose="marketing"),
        event(
            key,
            "order.placed",
            order_id=f"order-{key}",
            items=[{"sku": "S1", "name": "socks", "unit_price": "9.99"}],
            total="9.99",
            currency="EUR",
        ),
        event(  # added a minute ago: the abandoned-cart trigger waits on a timer
            key,
            "cart.item_added",
            occurred_at="2026-03-02T11:59:00Z",
            cart_id=f"cart-{key}",
            sku="S2",
            unit_price="5",
            currency="EUR",
        ),
    ]
    if "phone" in more:
        events.append(event(key, "identifier.seen", kind="phone", value=more["phone"]))
    if "device" in more:
        events.append(event(key, "identifier.seen", kind="device", value=more["device"]))
    return events


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    config = tmp_path / "profilestore.toml"
    config.write_text(CONFIG, encoding="utf-8")
    return load_settings(config, environ={}, home=tmp_path / "home")


@pytest.fixture
def store(settings: Settings) -> Iterator[ProfileStore]:
    clock = Clock()
    with open_store(settings, clock=clock) as opened:
        opened.run_triggers()  # triggers are on from here: later events fire them
        clock.now += dt.timedelta(seconds=1)
        events = [
            *customer_events(KEY, EMAIL, FIRST, LAST, phone=PHONE, device=DEVICE),
            # An anonymous visit on the same device: the device rule merges it in.
            event(ANONYMOUS, "identifier.seen", kind="device", value=DEVICE),
            event(ANONYMOUS, "browse.searched", query="quartz socks", results=3),
            *customer_events(NEIGHBOUR, NEIGHBOUR_EMAIL, "Ngozi", "Adeyemi"),
        ]
        for number, appended in enumerate(events):
            appended["event_id"] = f"evt-{number}"
        opened.append(events)
        opened.refresh()
        opened.run_triggers()
        opened.build_staging(["identities", "attributes"])  # a rebuild, not yet promoted
        yield opened


def documents_of(store: ProfileStore) -> SQLiteDocumentStore:
    documents = store._documents
    assert isinstance(documents, SQLiteDocumentStore)
    return documents


PROBES = [KEY.encode(), ANONYMOUS.encode(), EMAIL.encode(), PHONE.encode(), FIRST.encode()]
PROBES += [LAST.encode(), DEVICE.encode()]


def test_after_erase_and_scrub_no_byte_of_the_customer_is_left_in_the_files(
    store: ProfileStore,
) -> None:
    documents = documents_of(store)
    profile = store.resolve(KEY)
    assert is_canonical(profile) and store.resolve(ANONYMOUS) == profile
    members = store.members(profile)
    assert sorted(members) == sorted([KEY, ANONYMOUS])
    kinds = {kind for (kind,) in documents._connection().execute("SELECT kind FROM records")}
    # What the graph, the engine, the experiment and the outbox wrote is all there.
    assert {"identity.key", "identity.link", "identity.identifier", "identity.kinds"} <= kinds
    assert {"trigger.fired", "trigger.outcome", "trigger.timer", "trigger.contacts"} <= kinds
    assert {"experiment.assignment", "outbox.pending"} <= kinds
    files = store_files(documents.path)
    assert find_plaintext(files, PROBES) == list(range(len(PROBES)))  # the test can fail

    counts = documents.erase([profile, *members], [EMAIL, PHONE, DEVICE])
    assert documents.scrub() is True

    assert counts["sections"] > 0 and counts["sections:staging"] > 0
    assert counts["lookup_keys"] > 0 and counts["lookup_keys:staging"] > 0
    assert counts["records:trigger.fired"] > 0 and counts["records:identity.link"] > 0
    assert find_plaintext(store_files(documents.path), PROBES) == []
    assert Path(f"{documents.path}-wal").stat().st_size == 0
    # The neighbour, whose key is a prefix of the customer's, is whole.
    neighbour = store.profile(NEIGHBOUR)
    assert neighbour.sections["attributes"].first_name == "Ngozi"
    assert store.find("email", NEIGHBOUR_EMAIL).customer_id == NEIGHBOUR
    assert [o.status for o in store.trigger_log(NEIGHBOUR)].count("fired") >= 2
    assert find_plaintext(files, [NEIGHBOUR.encode(), NEIGHBOUR_EMAIL.encode()]) == [0, 1]

    store.close()
    assert find_plaintext(store_files(documents.path), PROBES) == []


class _WithoutSecureDelete(SQLiteDocumentStore):
    """The embedded store with SQLite's default: freed space is not zeroed."""

    def _connect(self) -> sqlite3.Connection:
        conn = super()._connect()
        conn.execute("PRAGMA secure_delete=OFF")
        return conn


def test_without_secure_delete_the_erased_bytes_would_stay_in_the_file(
    tmp_path: Path, store: ProfileStore
) -> None:
    # Why every connection zeroes freed space: the same erasure on a copy whose
    # connections do not leaves the values in the database file's free space.
    documents = documents_of(store)
    profile = store.resolve(KEY)
    members = store.members(profile)
    copy = tmp_path / "copy.sqlite"
    source = documents._connection()
    with sqlite3.connect(copy) as target:
        source.backup(target)
    target.close()
    plain = _WithoutSecureDelete(str(copy), documents.schemas)
    try:
        plain.erase([profile, *members], [EMAIL, PHONE, DEVICE])
        assert plain.scrub() is True
        assert plain.get(profile) is None
        assert find_plaintext(store_files(copy), PROBES) != []
    finally:
        plain.close()


def test_find_plaintext_finds_a_value_across_a_chunk_boundary_and_says_only_which(
    tmp_path: Path,
) -> None:
    file = tmp_path / "documents.sqlite"
    file.write_bytes(b"\x00" * 5 + EMAIL.encode() + b"\x00" * 20 + "Ångström".encode())
    probes = [b"nowhere", EMAIL.encode(), "Ångström".encode(), b"\x00\x00\x00zel"]

    # Chunks of 8 bytes: every probe straddles at least one boundary.
    assert find_plaintext([file, tmp_path / "missing-wal"], probes, chunk_bytes=8) == [1, 2, 3]
    assert find_plaintext([file], probes) == [1, 2, 3]
    assert find_plaintext([], probes) == []
    with pytest.raises(ValueError, match=r"probes\[0\] is empty"):
        find_plaintext([file], [b""])


def test_a_row_moved_by_a_page_split_leaves_a_copy_only_compaction_removes(
    tmp_path: Path, schemas: dict[str, Any]
) -> None:
    # secure_delete zeroes what is deleted, not what was moved: writing sections in a
    # random order splits pages, and SQLite leaves the old bytes of the rows it moved in
    # the unused gap of the page they left. Erasing those customers later zeroes their
    # rows where they live, not those copies; rebuilding the file (scrub(compact=True),
    # which forget does when its search still finds a copy) does. The order is seeded:
    # with SQLite 3.40 it leaves such copies behind.
    documents = SQLiteDocumentStore(str(tmp_path / "documents.sqlite"), schemas)
    keys = [f"cust-{i:05d}" for i in range(300)]
    rng = random.Random(8)
    position = 0
    for _ in range(5):
        order = keys[:]
        rng.shuffle(order)
        for key in order:
            position += 1
            lookup = tuple(f"email:{key}.{j}@example.org" for j in range(rng.randrange(1, 4)))
            # One section per write: a write puts its batch in key order, and the order
            # is this test's subject.
            write = SectionWrite(key, identities(*lookup), position, lookup)
            documents.write("identities", [write], refreshed_at=T0)
    gone = keys[::3]
    probes = [key.encode() for key in gone]
    try:
        for key in gone:
            documents.erase([key])
        assert documents.scrub() is True
        assert find_plaintext(store_files(documents.path), probes) != []  # the stale copies

        assert documents.scrub(compact=True) is True

        assert find_plaintext(store_files(documents.path), probes) == []
        assert documents.get(gone[0]) is None and documents.get(keys[1]) is not None
    finally:
        documents.close()
