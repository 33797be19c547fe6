"""Scores: where the customer is and what they are worth, computed, not folded.

The section is written by the scoring job (:mod:`profilestore.scoring`), daily by default,
from the ``engagement`` section and the population's current fit; it is a dataset so that
profile reads, ``find``, the freshness block and the trigger engine see it like any other.
Its position is the ``engagement`` position the scores were computed from: the freshness
block says how many events the scores do not reflect yet.

Every part names the fit (``fit_version``) and the rules (``rules_version``) that made it,
and when (``computed_at``), so a profile is explainable (``profilestore scores explain``).
"""

from __future__ import annotations

import msgspec

from profilestore.events import Event, Timestamp
from profilestore.projection import Projection
from projections.engagement import READS


class Fact(msgspec.Struct, frozen=True, kw_only=True, gc=False, array_like=True):
    """A fact a rule tested: ``[name, value, "at_least" | "at_most", threshold]``."""

    name: str
    value: float
    test: str
    threshold: float


class Placement(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A stage and the rule that placed the customer there."""

    stage: str
    rule: int
    """The rule's index in the config list (0 is the first)."""
    because: str
    """The rule in words, with the customer's facts."""
    facts: tuple[Fact, ...] = ()
    rules_version: str


class Component(msgspec.Struct, frozen=True, kw_only=True, gc=False, array_like=True):
    """``[name, raw value, points 0-100]``."""

    name: str
    value: float
    points: float


class Engagement4I(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    score: float
    """0-100: the mean of the components' points."""
    percentile: float
    """Share of the population (0-100) scoring below, as of the fit."""
    components: tuple[Component, ...]


class Rfm(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """Quintiles over the buyers of the fit: 5 is the most recent, frequent, valuable."""

    recency: int
    frequency: int
    monetary: int
    cell: str


class ChannelRank(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    channel: str
    responses: int
    """Opens, clicks, replies and purchases on the channel."""
    sent: int
    rate: float | None
    """Responses per message sent (None where sends are not known)."""


class Lifetime(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    p_alive: float
    expected_orders: float
    expected_spend: float
    horizon_months: int
    currency: str
    model_version: str


class Scores(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    computed_at: Timestamp | None = None
    fit_version: str | None = None
    """The population fit every part of this section was computed with."""
    lifecycle: Placement | None = None
    journey: Placement | None = None
    involvement: Engagement4I | None = None
    interaction: Engagement4I | None = None
    intimacy: Engagement4I | None = None
    influence: Engagement4I | None = None
    rfm: Rfm | None = None
    """None for a customer who never ordered."""
    value_tier: str | None = None
    channels: tuple[ChannelRank, ...] = ()
    """Channels the customer consented to, best responding first."""
    lifetime: Lifetime | None = None
    """None when the fit has no lifetime-value model (no repeat buyer yet)."""


def fold(section: Scores, event: Event) -> Scores:
    """Events do not change scores: the scoring job does (see the module docstring)."""
    return section


PROJECTION = Projection(
    dataset="scores",
    reads=READS,
    section=Scores,
    fold=fold,
    default_refresh="cron 0 4 * * *",
    retention="the latest scoring, computed from engagement and the current fit",
    derived=True,
)
