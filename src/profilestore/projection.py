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
import traceback
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import msgspec

from profilestore.errors import ConfigError, InvalidProjection
from profilestore.events import EVENT_TYPES, Event
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
    derived: bool = False
    """Its sections are computed from other datasets' by a job of their own (the scores),
    not folded from the log: refreshes, rebuilds and identity regroups leave them to it;
    ``reads`` then says which events make it stale (its freshness) and ``fold`` keeps a
    section as it is."""
    topics: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        # Checked here, when the module is imported, so that a mistake is one error naming
        # the field rather than a failure deep inside a refresh.
        if not isinstance(self.dataset, str) or not DATASET_NAME.match(self.dataset):
            raise InvalidProjection(
                "dataset", f"{self.dataset!r} must match {DATASET_NAME.pattern}"
            )
        if not isinstance(self.reads, tuple):
            raise InvalidProjection(
                "reads", f"must be a tuple of event classes, not a {type(self.reads).__name__}"
            )
        for read in self.reads:
            if not is_event_class(read):
                raise InvalidProjection(
                    "reads",
                    f"holds {read!r}, which is not an event class of the catalogue "
                    "(profilestore.events)",
                )
        if not (isinstance(self.section, type) and issubclass(self.section, msgspec.Struct)):
            raise InvalidProjection(
                "section", f"must be a msgspec Struct class, not {self.section!r}"
            )
        if not callable(self.fold):
            raise InvalidProjection(
                "fold", f"must be a function (section, event) -> section, not {self.fold!r}"
            )
        if not isinstance(self.default_refresh, str) or not CADENCE.match(self.default_refresh):
            raise InvalidProjection(
                "default_refresh",
                f"{self.default_refresh!r} must be 'realtime', 'manual', "
                "'every <N><s|m|h|d>' or 'cron <five fields>'",
            )
        if not isinstance(self.retention, str):
            raise InvalidProjection("retention", f"must be a text, not {self.retention!r}")
        if self.lookup_keys is not None and not callable(self.lookup_keys):
            raise InvalidProjection(
                "lookup_keys", f"must be a function section -> keys, not {self.lookup_keys!r}"
            )
        if isinstance(self.version, bool) or not isinstance(self.version, int) or self.version < 1:
            raise InvalidProjection("version", f"must be an integer >= 1, not {self.version!r}")
        topics = tuple(t for cls in self.reads for t in topics_for(cls))
        object.__setattr__(self, "topics", topics)

    def empty(self) -> S:
        return self.section()


def keep_last(items: tuple[T, ...], item: T, cap: int) -> tuple[T, ...]:
    """``items`` plus ``item`` at the end, keeping the newest ``cap``."""
    if len(items) >= cap:
        return (*items[len(items) - cap + 1 :], item)
    return (*items, item)


def is_event_class(value: object) -> bool:
    """An event type a projection can read: an Event subclass tagged with a type of the
    catalogue (the log decodes no other), not the envelope or an abstract base."""
    return (
        isinstance(value, type)
        and issubclass(value, Event)
        and value.__struct_config__.tag in EVENT_TYPES
    )


def load_projection(module_path: str, *, source: str, path: str) -> Projection[Any]:
    """Import ``module_path`` and return its ``PROJECTION``; errors name the config field,
    the module and, for a bad ``Projection(...)``, its field."""
    try:
        module = importlib.import_module(module_path)
    except ImportError as e:
        raise ConfigError(
            source, path, f"cannot import projection module {module_path!r}: {e}"
        ) from None
    except InvalidProjection as e:
        raise ConfigError(
            source,
            path,
            f"projection module {module_path!r}{raised_at(e)}: {e}; fix its PROJECTION",
        ) from None
    except Exception as e:  # any error in the user's module: one line, not a traceback
        raise ConfigError(
            source,
            path,
            f"projection module {module_path!r} failed on import{raised_at(e)}: "
            f"{type(e).__name__}: {e}",
        ) from None
    projection = getattr(module, "PROJECTION", None)
    if not isinstance(projection, Projection):
        raise ConfigError(
            source, path, f"module {module_path!r} defines no PROJECTION = Projection(...)"
        )
    return projection


def raised_at(error: BaseException) -> str:
    """`` (file.py, line N)`` of the innermost module-level statement that raised ``error``
    (the module being imported, or one it imports), if any."""
    if isinstance(error, SyntaxError) and error.filename:
        return f" ({error.filename}, line {error.lineno})"
    frames = [f for f in traceback.extract_tb(error.__traceback__) if f.name == "<module>"]
    return f" ({frames[-1].filename}, line {frames[-1].lineno})" if frames else ""


def check_projections(projections: Mapping[str, Projection[Any]], *, source: str) -> None:
    for name, projection in projections.items():
        if projection.dataset != name:
            raise ConfigError(
                source,
                f"datasets.{name}",
                f"the module's PROJECTION is for dataset {projection.dataset!r}, not {name!r}",
            )
