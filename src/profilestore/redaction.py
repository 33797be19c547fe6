"""What an erasure takes out of the record store, decided the same on every backend.

:meth:`~profilestore.documents.DocumentStore.erase` removes a customer's sections and
lookup keys by customer id. Records are another matter: the identity graph, the trigger
engine, the outbox, experiments and the run journal key and fill them in a dozen ways
(``c1``, ``receipt\\x1fc1\\x1forder:A-1``, ``carts/c1``, ``email:ann@example.com``, a link
``{"a": "c1", "b": "c9"}``, a change ``{"profiles": {"c9": ["c9"]}, "dropped": ["c1"]}``).
An :class:`Erasure` judges one record at a time, from its key and its decoded JSON, with
no knowledge of its kind, so a record kind added later is covered too:

- **The key** names the customer when one of the terms is a whole component of it,
  components being split by ``/``, ``:`` and the unit separator ``\\x1f`` (the separators
  the record kinds use). The record is deleted. ``c1`` never matches ``c10``.
- **A field** (an object's value, at any depth) that *is* one of the terms makes the
  object about the customer: the object goes, and with it the record, unless the object
  is an element of a list (a list of contacts, of identifiers), which only loses it.
- **A member**: a list element or an object key that is a term is taken out of its list
  or object (the keys of a profile in an identity change, the holders of an identifier,
  a key's devices); the record stays, redacted, so what it says of other customers
  stands. A list of mixed types is a tuple (``[position, profile]``): a term in it makes
  the whole tuple go from its list.
- **Free text** (an error message, a reason) that contains a term between non-word
  characters (``KeyError('c1')``) keeps its text with the term replaced by
  :data:`ERASED`.

Terms are compared exactly, as stored (identifier keys are stored normalised): pass the
normalised values. A term shared with another customer (a household's email, a first
name) also erases or redacts that customer's records that hold it, so pass the values that
identify this customer.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

import msgspec

from profilestore.errors import InvalidArgument

ERASED = "[erased]"
"""What a term in free text is replaced with."""

KEY_SEPARATORS = frozenset("/:\x1f")
"""What separates the components of a record key, across the record kinds."""

MAX_TERMS = 10_000

_ENCODE = msgspec.json.Encoder().encode


class Verdict(Enum):
    KEEP = "keep"
    DELETE = "delete"
    REDACT = "redact"


class _Tainted:
    """Marks a value that is about an erased customer (its holder goes)."""


_TAINTED = _Tainted()


@dataclass(frozen=True)
class Erasure:
    """The customers to erase and every value that identifies them; see the module
    docstring for how a record is judged."""

    customer_ids: tuple[str, ...]
    terms: frozenset[str]
    """Customer ids and terms together: what a record may not hold."""
    needles: tuple[tuple[str, bytes], ...]
    """Each term, and the term as it appears inside stored JSON (escaped, without
    quotes): a record whose key and body hold none of them is kept without a look."""
    _text: re.Pattern[str]

    @classmethod
    def of(cls, customer_ids: Sequence[str], terms: Sequence[str]) -> Erasure:
        """Checked: ``InvalidArgument`` naming the first empty or non-text entry (an empty
        term would match every key), or too many of them."""
        for field, values in (("customer_ids", customer_ids), ("terms", terms)):
            if isinstance(values, str):
                raise InvalidArgument(field, "must be a list of strings, not one string")
            if len(values) > MAX_TERMS:
                raise InvalidArgument(field, f"holds more than {MAX_TERMS} entries")
            for i, value in enumerate(values):
                if not isinstance(value, str) or not value.strip():
                    raise InvalidArgument(f"{field}[{i}]", "must be a non-empty string")
        ids = tuple(dict.fromkeys(customer_ids))
        every = frozenset((*ids, *terms))
        # Longest first, so a term that extends another is replaced whole.
        ordered = sorted(every, key=lambda t: (-len(t), t))
        alternatives = "|".join(re.escape(t) for t in ordered) or "(?!)"
        return cls(
            customer_ids=ids,
            terms=every,
            needles=tuple((t, _ENCODE(t)[1:-1]) for t in ordered),
            _text=re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)"),
        )

    # --- keys ---------------------------------------------------------------------------

    def key_names(self, key: str) -> bool:
        """Whether one of the terms is a whole component of ``key``."""
        for term in self.terms:
            start = key.find(term)
            while start >= 0:
                end = start + len(term)
                if (start == 0 or key[start - 1] in KEY_SEPARATORS) and (
                    end == len(key) or key[end] in KEY_SEPARATORS
                ):
                    return True
                start = key.find(term, start + 1)
        return False

    # --- bodies -------------------------------------------------------------------------

    def judge(self, key: str, value: Any) -> tuple[Verdict, Any]:
        """What becomes of the record (``key``, decoded ``value``): kept, deleted, or
        redacted (with its new value)."""
        if self.key_names(key):
            return Verdict.DELETE, None
        cleaned = self._clean(value)
        if cleaned is _TAINTED:
            return Verdict.DELETE, None
        if cleaned == value:
            return Verdict.KEEP, value
        return Verdict.REDACT, cleaned

    def _clean(self, node: Any) -> Any:
        if isinstance(node, str):
            if node in self.terms:
                return _TAINTED
            return self._text.sub(ERASED, node)
        if isinstance(node, list):
            cleaned = [self._clean(element) for element in node]
            if _is_tuple(node):
                return _TAINTED if any(c is _TAINTED for c in cleaned) else cleaned
            return [c for c in cleaned if c is not _TAINTED]
        if isinstance(node, dict):
            kept: dict[str, Any] = {}
            for field, value in node.items():
                if field in self.terms:
                    continue
                cleaned_value = self._clean(value)
                if cleaned_value is _TAINTED:
                    return _TAINTED
                kept[self._text.sub(ERASED, field)] = cleaned_value
            return kept
        return node


def _is_tuple(values: list[Any]) -> bool:
    """A list of more than one JSON type (``[position, "profile"]``) is a tuple: its
    elements mean something together, and are not taken out one by one."""
    return len({_json_type(v) for v in values}) > 1


def _json_type(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "literal"
    if isinstance(value, int | float):
        return "number"
    return type(value).__name__
