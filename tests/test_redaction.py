"""How an erasure judges a record: by whole key components and whole values, never by a
substring (``c1`` is not ``c10``), redacting what also speaks of other customers."""

from __future__ import annotations

from typing import Any

import pytest

from profilestore.errors import InvalidArgument
from profilestore.redaction import ERASED, Erasure, Verdict

C1 = Erasure.of(["c1"], ["ann@example.com", "twitter:annlee", "Ångström"])


@pytest.mark.parametrize(
    "key",
    [
        "c1",
        "carts/c1",
        "receipt\x1fc1\x1forder:A-1",
        "c1\x1f00000000000000000012\x1freceipt\x1fe",
        "welcome_copy\x1fc1",
        "email:ann@example.com",
        "handle:twitter:annlee",
    ],
)
def test_a_key_with_a_term_as_a_whole_component_names_the_customer(key: str) -> None:
    assert C1.key_names(key)
    assert C1.judge(key, {"unrelated": True}) == (Verdict.DELETE, None)


@pytest.mark.parametrize(
    "key",
    [
        "c10",
        "xc1",
        "carts/c10",
        "receipt\x1fc10\x1forder:A-1",
        "email:c1@example.com",
        "c1-x",
        "email:bob.ann@example.com",
        "handle:twitter:annlee2",
        f"{1:020d}",
    ],
)
def test_a_key_holding_a_term_inside_a_longer_component_does_not(key: str) -> None:
    assert not C1.key_names(key)
    assert C1.judge(key, {"n": 1}) == (Verdict.KEEP, {"n": 1})


@pytest.mark.parametrize(
    ("value", "verdict", "kept"),
    [
        # A field that is the customer: the object is about them.
        ({"a": "c1", "b": "c9"}, Verdict.DELETE, None),
        ({"payload": {"email": "ann@example.com"}}, Verdict.DELETE, None),
        # Members go from their list or object; the rest stands.
        ({"keys": ["c1", "c9"]}, Verdict.REDACT, {"keys": ["c9"]}),
        ({"profiles": {"c1": ["c1"], "c9": ["c9"]}}, Verdict.REDACT, {"profiles": {"c9": ["c9"]}}),
        (
            {"recent": [{"to": "c1", "at": 1}, {"to": "c9", "at": 2}]},
            Verdict.REDACT,
            {"recent": [{"to": "c9", "at": 2}]},
        ),
        # A tuple (mixed types) goes whole from its list.
        ({"history": [[3, "c1"], [5, "c9"]]}, Verdict.REDACT, {"history": [[5, "c9"]]}),
        ([3, "c1"], Verdict.DELETE, None),
        # Free text keeps its words but the customer's.
        ({"error": "KeyError('c1')"}, Verdict.REDACT, {"error": f"KeyError('{ERASED}')"}),
        ({"note": "Mme Ångström, c1."}, Verdict.REDACT, {"note": f"Mme {ERASED}, {ERASED}."}),
        ({"error": "c10 ac1 c1x Ångströms"}, Verdict.KEEP, {"error": "c10 ac1 c1x Ångströms"}),
        ({"n": 1, "ok": True, "none": None}, Verdict.KEEP, {"n": 1, "ok": True, "none": None}),
    ],
)
def test_a_body_is_judged_by_whole_values(value: Any, verdict: Verdict, kept: Any) -> None:
    assert C1.judge("k", value) == (verdict, kept)


def test_terms_are_searched_for_as_stored_json_escapes_them() -> None:
    erasure = Erasure.of(["c1"], ['say "hi"\\', "Ångström"])
    assert dict(erasure.needles) == {
        "c1": b"c1",
        'say "hi"\\': b'say \\"hi\\"\\\\',
        "Ångström": "Ångström".encode(),
    }


@pytest.mark.parametrize(
    ("customer_ids", "terms", "field"),
    [([""], [], "customer_ids[0]"), (["c1"], ["a", "  "], "terms[1]"), (["c1"], "ann", "terms")],
)
def test_an_empty_or_misshapen_term_is_refused_naming_it(
    customer_ids: Any, terms: Any, field: str
) -> None:
    with pytest.raises(InvalidArgument) as raised:
        Erasure.of(customer_ids, terms)
    assert raised.value.field == field
