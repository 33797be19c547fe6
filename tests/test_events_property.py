"""Property: no event, however extreme, poisons the store.

Events are generated from the catalogue's own constraints (``msgspec.inspect`` of every
event Struct: lengths, ranges, patterns, literals, the amounts' ``MONEY_MAX`` and
``MONEY_PLACES``), each field pushed to its bounds, just past them and far past them.
Batches go through the three doors (Python, ``POST /v1/events``, ``profilestore ingest
-``); whatever is accepted must refresh, verify, replay as of now and rebuild cleanly,
and whatever is refused must leave the log as it was.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from litestar.testing import TestClient
from test_api import api_settings, headers

from profilestore.api import create_app
from profilestore.cli import main
from profilestore.config import load_settings
from profilestore.errors import CustomerNotFound, InvalidEvent
from profilestore.events import EVENT_TYPES, MONEY_MAX, MONEY_PLACES
from profilestore.store import ProfileStore, open_store

PROFILE = settings(
    max_examples=100,
    deadline=None,
    derandomize=True,  # the same examples every run: no flakes, no example database
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
CUSTOMERS = ("c1", "c2", "c3")
_ids = itertools.count()
_MISSING = object()
_NUMBERS = msgspec.json.Encoder(decimal_format="number")  # huge amounts as bare JSON numbers


def _wire(value: Any) -> Any:
    """``value`` as a client sends it: JSON has no NaN or Infinity, so those go as text."""
    if isinstance(value, Decimal) and not value.is_finite():
        return str(value)
    if isinstance(value, dict):
        return {k: _wire(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_wire(v) for v in value]
    return value


class _JSON:
    @staticmethod
    def encode(value: Any) -> bytes:
        return _NUMBERS.encode(_wire(value))


# --- strategies from the Structs' constraints ---------------------------------------------


def _amounts() -> st.SearchStrategy[Any]:
    step = Decimal(1).scaleb(-MONEY_PLACES)
    edges = [
        Decimal(0),
        step,
        MONEY_MAX,
        MONEY_MAX + step,
        step / 10,
        Decimal("-0.01"),
        Decimal("9.990000"),
        Decimal("1E+400"),
        Decimal("9E+999999"),
        Decimal("1E+1000000"),
        Decimal("-1E+1000000"),
        Decimal("NaN"),
        Decimal("Infinity"),
    ]
    inside = st.decimals(min_value=0, max_value=MONEY_MAX, places=MONEY_PLACES)
    as_given = st.sampled_from(edges) | inside
    return as_given | as_given.map(str) | st.sampled_from([9.99, 1e300, 10**30])


def _ints(info: msgspec.inspect.IntType) -> st.SearchStrategy[Any]:
    low = info.ge if info.ge is not None else (info.gt + 1 if info.gt is not None else None)
    high = info.le if info.le is not None else (info.lt - 1 if info.lt is not None else None)
    edges: list[Any] = [0, 1, -1, 2**53, 2**63, 10**30, -(10**30)]
    for bound in (low, high):
        if bound is not None:
            edges += [bound, bound - 1, bound + 1]
    inside = st.integers(low, high) if low is not None and high is not None else st.integers()
    return st.sampled_from(edges) | inside


def _floats(info: msgspec.inspect.FloatType) -> st.SearchStrategy[Any]:
    edges: list[Any] = [0.0, -0.0, 1e308, -1e308, float("inf"), float("nan"), 5e-324]
    for bound in (info.ge, info.le, info.gt, info.lt):
        if bound is not None:
            edges += [bound, bound - 1e-9 * max(1, abs(bound)), bound + 1e-9 * max(1, abs(bound))]
    return st.sampled_from(edges) | st.floats(info.ge, info.le) | st.integers(-5, 5)


IDENTIFIER_VALUES = [
    *("+44 20 7946 0018", "(415) 555-0003", "1-415-555-0003", "020 7946 0018", "555-01"),
    *("Ann@Example.com", "zo\u00eb@ex\u00e4mple.com", "ann@@example.com"),
    *("null", "UNDEFINED", "0", "00000000-0000-0000-0000-000000000000", "@ann", "dev-1", " "),
]
"""An identifier's ``value``: phones that parse in region US and ones that do not, emails,
placeholders (valid events that no lookup finds), handles and device ids."""


def _strs(info: msgspec.inspect.StrType, name: str) -> st.SearchStrategy[Any]:
    if name == "value":
        # Random text is almost never a phone or an email: give the identifiers' forms too.
        return st.sampled_from(IDENTIFIER_VALUES) | _strs(info, "")
    if info.pattern is not None:
        return st.from_regex(info.pattern, fullmatch=True) | st.sampled_from(["", "usd", "X"])
    samples = ["a", "ann@example.com", "+44 20 7946 0018", "https://shop.example/p", "\u00e9\u00e9"]
    lengths = [0, 1] + ([info.max_length, info.max_length + 1] if info.max_length else [])
    long = st.sampled_from(lengths).map(lambda n: "x" * n)
    return st.sampled_from(samples) | long | st.text(max_size=20)


def _times(tz: bool | None) -> st.SearchStrategy[Any]:
    moments = ["2026-01-01T10:00:00Z", "2026-06-30T23:59:59.999999+14:00", "1970-01-01T00:00:00Z"]
    edges = [
        "9999-12-31T23:59:59Z",
        "9999-12-31T23:59:59-14:00",
        "0001-01-01T00:00:00Z",
        "0001-01-01T00:00:00+14:00",
        "2026-01-01T10:00:00",
        "never",
    ]
    return st.sampled_from(moments) | st.sampled_from(edges)


def strategy(info: msgspec.inspect.Type, name: str = "") -> st.SearchStrategy[Any]:
    if isinstance(info, msgspec.inspect.UnionType):
        return st.one_of([strategy(t, name) for t in info.types])
    if isinstance(info, msgspec.inspect.NoneType):
        return st.none()
    if isinstance(info, msgspec.inspect.BoolType):
        return st.booleans()
    if isinstance(info, msgspec.inspect.IntType):
        return _ints(info)
    if isinstance(info, msgspec.inspect.FloatType):
        return _floats(info)
    if isinstance(info, msgspec.inspect.StrType):
        return _strs(info, name)
    if isinstance(info, msgspec.inspect.DecimalType):
        return _amounts()
    if isinstance(info, msgspec.inspect.DateTimeType):
        return _times(info.tz)
    if isinstance(info, msgspec.inspect.DateType):
        return st.sampled_from(["2000-02-29", "0001-01-01", "9999-12-31", "2001-02-29"])
    if isinstance(info, msgspec.inspect.LiteralType):
        return st.sampled_from([*info.values, "nonsense"])
    if isinstance(info, msgspec.inspect.VarTupleType | msgspec.inspect.ListType):
        item = strategy(info.item_type, name)
        low, high = info.min_length or 0, info.max_length
        sizes = [low, low + 1] + ([high, high + 1] if high else [])
        if low:
            sizes.append(low - 1)
        return st.sampled_from(sizes).flatmap(
            lambda n: st.lists(item, min_size=min(n, 3), max_size=min(n, 3)).map(
                lambda few: (few * (n // max(len(few), 1) + 1))[:n]
            )
        )
    if isinstance(info, msgspec.inspect.DictType):
        keys, values = strategy(info.key_type, name), strategy(info.value_type, name)
        high = info.max_length
        # Few arbitrary entries, or exactly at and just past the cap (named apart).
        at_cap = st.sampled_from([high, high + 1] if high else [50]).flatmap(
            lambda n: st.lists(values, min_size=1, max_size=3).map(
                lambda few: {f"p{i}": few[i % len(few)] for i in range(n)}
            )
        )
        return st.dictionaries(keys, values, max_size=3) | at_cap
    if isinstance(info, msgspec.inspect.StructType):
        return struct_strategy(info)
    raise AssertionError(f"no strategy for {name}: {info!r}")  # a new kind of field


def struct_strategy(info: msgspec.inspect.StructType) -> st.SearchStrategy[dict[str, Any]]:
    fields: dict[str, st.SearchStrategy[Any]] = {}
    for field in info.fields:
        if field.name == "recorded_at":
            continue
        value = strategy(field.type, field.name)
        fields[field.name] = value if field.required else (st.just(_MISSING) | value)
    tag = {info.tag_field: st.just(info.tag)} if info.tag_field else {}
    return st.fixed_dictionaries({**tag, **fields}).map(
        lambda found: {k: v for k, v in found.items() if v is not _MISSING}
    )


def identifier_strategy() -> st.SearchStrategy[dict[str, Any]]:
    """Identifier events whose kind and value go together often enough to be accepted."""
    return st.fixed_dictionaries(
        {
            "type": st.sampled_from([t for t in EVENT_TYPES if t.startswith("identifier.")]),
            "occurred_at": _times(tz=True),
            "kind": st.sampled_from(["email", "phone", "handle", "device"]),
            "value": st.sampled_from(IDENTIFIER_VALUES),
        },
        optional={"network": st.sampled_from(["twitter", "Insta:gram", " "])},
    )


def event_strategy() -> st.SearchStrategy[dict[str, Any]]:
    per_type = [struct_strategy(msgspec.inspect.type_info(c)) for c in EVENT_TYPES.values()]
    per_type.append(identifier_strategy())
    envelope = st.fixed_dictionaries({"customer_id": st.sampled_from(CUSTOMERS)})
    return st.tuples(st.one_of(per_type), envelope).map(
        # Fresh ids (not the generated ones), so accepted events are appended, not duplicates.
        lambda pair: pair[0] | pair[1] | {"event_id": f"gen-{next(_ids)}"}
    )


BATCHES = st.lists(event_strategy(), min_size=1, max_size=3)


# --- the doors -----------------------------------------------------------------------------


class Doors:
    def __init__(self, store: ProfileStore, client: TestClient[Any], home: Path) -> None:
        self.store = store
        self.client = client
        self.home = home

    def python(self, batch: list[dict[str, Any]]) -> bool:
        try:
            result = self.store.append(batch)
        except InvalidEvent:
            return False
        assert result.appended + result.duplicates == len(batch)
        return True

    def http(self, batch: list[dict[str, Any]]) -> bool:
        body = _JSON.encode({"events": batch})
        response = self.client.post(
            "/v1/events",
            content=body,
            headers=headers() | {"Content-Type": "application/json"},
        )
        assert response.status_code in (200, 400, 413, 422), response.text
        assert "error" in response.json() or response.status_code == 200
        return response.status_code == 200

    def cli(self, batch: list[dict[str, Any]]) -> bool:
        lines = b"\n".join(_JSON.encode(event) for event in batch).decode()
        outcome = CliRunner().invoke(
            main,
            ["--home", str(self.home), "ingest", "-", "--batch-size", str(len(batch))],
            input=lines,
        )
        assert outcome.exception is None or isinstance(outcome.exception, SystemExit)
        assert "Traceback" not in outcome.output
        assert outcome.exit_code in (0, 1), outcome.output
        return outcome.exit_code == 0


@pytest.fixture(scope="module")
def doors(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Doors]:
    home = tmp_path_factory.mktemp("property")
    configured = api_settings(load_settings(home=home), max_batch=10, max_body_bytes=2_000_000)
    with open_store(configured) as store, TestClient(create_app(store)) as client:
        yield Doors(store, client, home)


def assert_store_is_sound(doors: Doors) -> None:
    store = doors.store
    report = store.refresh()
    assert report.dead_letters == dict.fromkeys(store.projections, 0)
    for customer_id in CUSTOMERS:
        later = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
        try:
            store.profile(customer_id, as_of=later)
        except CustomerNotFound:
            continue
        answer = doors.client.get(
            f"/v1/profiles/{customer_id}", params={"as_of": later.isoformat()}, headers=headers()
        )
        assert answer.status_code == 200, answer.text
    verified = store.verify()
    assert verified.ok, (verified.drift[:3], verified.failures[:3])


@PROFILE
@given(batch=BATCHES, door=st.sampled_from(["python", "http", "cli"]))
def test_any_batch_is_all_or_nothing_and_never_poisons_the_store(
    doors: Doors, batch: list[dict[str, Any]], door: str
) -> None:
    head = doors.store.head()
    accepted = getattr(doors, door)(batch)
    if accepted:
        assert doors.store.head() >= head
    else:
        assert doors.store.head() == head  # a refused batch appends nothing
    assert_store_is_sound(doors)


def test_after_everything_generated_the_store_rebuilds_and_verifies_clean(doors: Doors) -> None:
    # Runs after the property in this module (same store): whatever it let in rebuilds.
    report = doors.store.rebuild()
    assert report.dead_letters == dict.fromkeys(doors.store.projections, 0)
    assert doors.store.verify().ok
    events = [json.loads(e) for e in map(msgspec.json.encode, doors.store.history("c1"))]
    assert all(e["customer_id"] == "c1" for e in events)
