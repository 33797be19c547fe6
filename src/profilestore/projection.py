"""What a dataset is: the events it reads, the section it owns, and a pure fold.

A projection module (see ``projections/``) defines one :class:`Projection` named
``PROJECTION``. The fold is a pure function ``(section, event) -> section`` over frozen
Structs whose lists are tuples, so it cannot mutate what it was given and the same code
builds live documents, rebuilds, and an auditor's view of the past.

Declare section Structs ``frozen=True, kw_only=True, gc=False``: they hold only scalars,
tuples and other such Structs, so they cannot form reference cycles, and keeping them out
of the cyclic garbage collector makes rebuilds about a third faster (the projector holds
tens of thousands of sections in memory, which each collection would otherwise walk).
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import msgspec

from profilestore.errors import ConfigError
from profilestore.events import Event
from profilestore.mapper import topics_for

S = TypeVar("S", bound=msgspec.Struct)
T = TypeVar("T")

DATASET_NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
CADENCE = re.compile(r"^(realtime|manual|every \d+[smhd]|cron \S+ \S+ \S+ \S+ \S+)$")
"""How often a dataset is refreshed, as config and ``datasets`` listings spell it."""


@dataclass(frozen=True)
class Projection(Generic[S]):
    """One dataset of the profile document."""

    dataset: str
    reads: tuple[type[Event], ...]
    section: type[S]
    fold: Callable[[S, Any], S]
    default_refresh: str
    """Used when the config line gives none: ``realtime``, ``every 15m`` or ``cron ...``."""
    retention: str
    """Human-readable caps, e.g. 'last 100 page views'; shown by ``datasets`` listings."""
    lookup_keys: Callable[[S], Iterable[str]] | None = None
    """Identifier keys (``email:...``) under which the profile can be found."""
    version: int = 1
    """Raise it when the fold changes what it makes of events already stored: stored
    documents built by another version are reported and rebuilt (blue/green)."""
    topics: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        if not DATASET_NAME.match(self.dataset):
            raise ValueError(f"dataset name {self.dataset!r} must match {DATASET_NAME.pattern}")
        if not CADENCE.match(self.default_refresh):
            raise ValueError(
                f"dataset {self.dataset!r}: default_refresh {self.default_refresh!r} must be "
                "'realtime', 'every <N><s|m|h|d>' or 'cron <five fields>'"
            )
        if isinstance(self.version, bool) or not isinstance(self.version, int) or self.version < 1:
            raise ValueError(f"dataset {self.dataset!r}: version must be an integer >= 1")
        topics = tuple(t for cls in self.reads for t in topics_for(cls))
        object.__setattr__(self, "topics", topics)

    def empty(self) -> S:
        return self.section()

    def fold_all(self, section: S, events: Iterable[Event]) -> S:
        for event in events:
            section = self.fold(section, event)
        return section


def keep_last(items: tuple[T, ...], item: T, cap: int) -> tuple[T, ...]:
    """``items`` plus ``item`` at the end, keeping the newest ``cap``."""
    if len(items) >= cap:
        return (*items[len(items) - cap + 1 :], item)
    return (*items, item)


def replace_where(
    items: tuple[T, ...], match: Callable[[T], bool], change: Callable[[T], T]
) -> tuple[T, ...]:
    """``items`` with ``change`` applied to those matching; the input is not modified."""
    return tuple(change(x) if match(x) else x for x in items)


def load_projection(module_path: str, *, source: str, path: str) -> Projection[Any]:
    """Import ``module_path`` and return its ``PROJECTION``; errors name the config field."""
    try:
        module = importlib.import_module(module_path)
    except ImportError as e:
        raise ConfigError(
            source, path, f"cannot import projection module {module_path!r}: {e}"
        ) from None
    projection = getattr(module, "PROJECTION", None)
    if not isinstance(projection, Projection):
        raise ConfigError(
            source, path, f"module {module_path!r} defines no PROJECTION = Projection(...)"
        )
    return projection


def check_projections(projections: Mapping[str, Projection[Any]], *, source: str) -> None:
    for name, projection in projections.items():
        if projection.dataset != name:
            raise ConfigError(
                source,
                f"datasets.{name}",
                f"the module's PROJECTION is for dataset {projection.dataset!r}, not {name!r}",
            )
