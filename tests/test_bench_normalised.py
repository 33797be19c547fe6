"""The normalised baseline of the benchmarks (bench/normalised.py) gives back what is stored."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from itertools import islice
from pathlib import Path
from typing import Any

import msgspec
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.normalised import (
    NormalisedPostgres,
    NormalisedSQLite,
    UnsupportedShape,
    assert_same,
    derive_schema,
    json_form,
    stored_profiles,
)
from profilestore.config import load_settings
from profilestore.events import Event
from profilestore.population import generate
from profilestore.projection import Projection
from profilestore.store import ProfileStore, open_store

CUSTOMERS = 200


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProfileStore]:
    home = tmp_path_factory.mktemp("normalised")
    with open_store(load_settings(environ={}, home=home)) as store:
        events = generate(CUSTOMERS, seed=3, events_per_customer=30)
        while batch := list(islice(events, 200)):
            store.append(batch)
        store.refresh()
        yield store


@pytest.fixture(scope="module")
def customer_ids(store: ProfileStore) -> list[str]:
    ids = sorted({c for d in store.projections for c in store._documents.customer_ids(d)})
    assert len(ids) == CUSTOMERS
    return ids


def emails(store: ProfileStore, customer_ids: list[str]) -> dict[str, str]:
    """A few email lookup keys and who holds them, from the stored identities."""
    found: dict[str, str] = {}
    for customer_id in customer_ids[:: CUSTOMERS // 8]:
        profile = store._documents.get(customer_id, ["identities"])
        assert profile is not None
        for identifier in profile.sections["identities"].identifiers:
            if identifier.kind == "email":
                found[identifier.key] = customer_id
    assert len(found) >= 5
    return found


def check(
    store: ProfileStore, normalised: NormalisedSQLite | NormalisedPostgres, ids: list[str]
) -> None:
    normalised.create()
    assert normalised.load(stored_profiles(store, ids)) == CUSTOMERS
    assert assert_same(store, normalised, [*ids, "nobody"]) == CUSTOMERS + 1
    assert normalised.profile("nobody") is None
    for key, customer_id in emails(store, ids).items():
        assert normalised.find(key) == customer_id
    assert normalised.find("email:nobody@example.com") is None
    assert normalised.size_mb() > 0


def test_orders_schema(store: ProfileStore) -> None:
    tables = {
        t.name: t
        for root in derive_schema({"orders": store.projections["orders"]})
        for t in root.walk()
    }
    assert list(tables) == [
        "n_orders",
        "n_orders__recent",
        "n_orders__recent__items",
        "n_orders__lifetime_value",
    ]
    items = tables["n_orders__recent__items"]
    assert items.ords == ("parent_ord", "ord")
    assert [(c.name, c.kind, c.nullable) for c in items.columns] == [
        ("sku", "str", False),
        ("name", "str", True),
        ("quantity", "int", False),
        ("unit_price", "decimal", False),
        ("category", "str", True),
        ("brand", "str", True),
    ]


def test_sqlite_gives_back_every_profile(
    store: ProfileStore, customer_ids: list[str], tmp_path: Path
) -> None:
    normalised = NormalisedSQLite(store.projections, tmp_path / "normalised.sqlite")
    try:
        check(store, normalised, customer_ids)
        # A changed value is reported with its customer and path.
        customer_id, parent, line = normalised.conn.execute(
            "SELECT customer_id, parent_ord, ord FROM n_orders__recent__items LIMIT 1"
        ).fetchone()
        normalised.conn.execute(
            "UPDATE n_orders__recent__items SET unit_price = '-1' "
            "WHERE customer_id = ? AND parent_ord = ? AND ord = ?",
            (customer_id, parent, line),
        )
        path = rf"\$\.orders\.recent\[{parent}\]\.items\[{line}\]\.unit_price"
        with pytest.raises(AssertionError, match=rf"{customer_id} at {path}: '[\d.]+' != '-1'"):
            assert_same(store, normalised, [customer_id])
    finally:
        normalised.close()


@pytest.mark.postgres
def test_postgres_gives_back_every_profile(
    store: ProfileStore, customer_ids: list[str], postgres_schema: tuple[str, str]
) -> None:
    url, schema = postgres_schema
    normalised = NormalisedPostgres(store.projections, url, schema, chunk_customers=64)
    try:
        check(store, normalised, customer_ids)
    finally:
        normalised.close()


# --- shapes the default datasets do not have ------------------------------------------------


class Tag(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    label: str
    aliases: tuple[str, ...] = ()


class Extras(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    tags: tuple[Tag, ...] = ()
    codes: tuple[int | None, ...] = ()
    best: Tag | None = None
    flag: bool | None = None


class WithDict(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    counts: dict[str, int] = {}


def projection(section: type[Any]) -> Projection[Any]:
    def fold(s: Any, event: Event) -> Any:
        return s

    return Projection(
        dataset="extras",
        reads=(),
        section=section,
        fold=fold,
        default_refresh="manual",
        retention="none",
    )


def test_scalar_arrays_and_nested_structs_round_trip(tmp_path: Path) -> None:
    tags = (Tag(label="a", aliases=("x", "y")), Tag(label="b"), Tag(label="c", aliases=("z",)))
    sections = {
        "c1": Extras(tags=tags, codes=(3, None, 1), best=tags[0], flag=False),
        "c2": Extras(flag=None),
    }
    normalised = NormalisedSQLite({"extras": projection(Extras)}, tmp_path / "extras.sqlite")
    try:
        normalised.create()
        normalised.load((c, {"extras": s}) for c, s in sections.items())
        for customer_id, section in sections.items():
            assert normalised.profile(customer_id) == {"extras": json_form(section)}
        names = [t.name for root in normalised.roots.values() for t in root.walk()]
        assert "n_extras__best__aliases" in names
    finally:
        normalised.close()


def test_unsupported_shapes_fail_naming_the_field() -> None:
    with pytest.raises(UnsupportedShape, match=r"extras\.counts"):
        derive_schema({"extras": projection(WithDict)})
