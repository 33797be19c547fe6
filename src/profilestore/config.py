"""Settings: a TOML file decoded strictly into Structs, with environment overrides.

The file is found from ``--config``, else ``PROFILESTORE_CONFIG``, else
``./config/profilestore.toml``; with none, the built-in defaults below apply (and
``config/profilestore.toml`` in the repository states exactly these defaults, which a test
checks). Any setting can be overridden by an environment variable: the path in upper case
joined with double underscores, ``PROFILESTORE_<SECTION>__<KEY>[__<KEY>...]``, e.g.
``PROFILESTORE_DOCUMENTS__URL`` or ``PROFILESTORE_DATASETS__CARTS__EVERY``; values are
read as TOML where they parse (numbers, booleans) and as strings otherwise.
``PROFILESTORE_HOME`` sets the data directory that ``{home}`` in URLs refers to.

The rule for the environment: a name is a setting if it is ``PROFILESTORE_HOME``,
``PROFILESTORE_CONFIG``, or ``PROFILESTORE_`` followed by a name containing ``__``. Any
other ``PROFILESTORE_*`` name (a tool's or a test's own variable) is not a setting and is
ignored. A ``__`` name is decoded as strictly as the file, so a misspelt section or key is
an error naming the variable and the path.

Every error names the file (or variable) and the field path, e.g.
``config/profilestore.toml: Expected `int` >= 1 at `projector.page_size```.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import msgspec

from profilestore.errors import CadenceError, ConfigError
from profilestore.events import ConsentChannel, IdentifierKind, LifeEventKind
from profilestore.normalise import check_region, compile_patterns
from profilestore.schedule import cron_trigger, parse_interval, zone

ENV_PREFIX = "PROFILESTORE_"
ENV_PATH_SEPARATOR = "__"
DEFAULT_CONFIG = Path("config") / "profilestore.toml"


class Strict(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    pass


class StoreSettings(Strict, frozen=True, kw_only=True):
    home: str = ".profilestore"
    """Data directory of the embedded stores; ``PROFILESTORE_HOME`` or ``--home`` override."""


class EventLogSettings(Strict, frozen=True, kw_only=True):
    url: str = "sqlite:///{home}/events.sqlite"
    """``sqlite:///PATH`` or ``postgresql://user:password@host:port/dbname``."""
    postgres_schema: str = ""
    lock_timeout_s: Annotated[int, msgspec.Meta(ge=1)] = 30


class DocumentSettings(Strict, frozen=True, kw_only=True):
    url: str = "sqlite:///{home}/documents.sqlite"
    """``sqlite:///PATH`` or ``mongodb://host:port/dbname``."""
    collection: str = "profiles"
    sqlite_mmap_mb: Annotated[int, msgspec.Meta(ge=0, le=1 << 20)] = 4096
    """Embedded store: how much of the file lookups read through a memory map (0: off)."""


class ScheduleSettings(Strict, frozen=True, kw_only=True):
    timezone: str = "UTC"
    """IANA time zone that cron cadences are read in, e.g. "Europe/Paris"."""
    misfire_grace_s: Annotated[int, msgspec.Meta(ge=1)] = 3600
    """How late a scheduled run may still start; later ones are coalesced into the next."""
    lease_ttl_s: Annotated[int, msgspec.Meta(ge=5)] = 60
    """How long a dataset stays locked by a process that stopped renewing (it died)."""
    follower_poll_ms: Annotated[int, msgspec.Meta(ge=1, le=60_000)] = 5
    """How often the real-time follower checks an SQLite log for new events."""
    follower_batch: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 2000
    """Most events the follower folds per pass when it catches up."""
    rebuild_outdated: bool = True
    """Whether the worker rebuilds, in the background, a dataset whose stored documents
    another projection version built (reads keep answering from the old ones meanwhile)."""
    version_check_s: Annotated[int, msgspec.Meta(ge=1)] = 60
    """How often the worker looks for such datasets."""
    partitions: Annotated[int, msgspec.Meta(ge=1, le=1024)] = 1
    """How many partitions customers are split into, so several workers
    (``profilestore worker --partitions auto``) share the log; fixed once a store is
    partitioned (``profilestore partitions set N`` changes it, see docs/partitions.md)."""
    heartbeat_s: Annotated[int, msgspec.Meta(ge=1, le=3600)] = 5
    """How often a partitioned worker writes its heartbeat and rebalances; a worker
    whose heartbeat is older than ``lease_ttl_s`` counts as gone."""

    def __post_init__(self) -> None:
        try:
            zone(self.timezone)
        except CadenceError as e:
            raise ValueError(f"`timezone`: {e}") from None


Scope = Literal["ingest", "read", "audit", "admin", "identity", "erasure"]


class ApiKey(Strict, frozen=True, kw_only=True):
    """A client of the HTTP API. Only the key's SHA-256 is configured, never the key."""

    name: Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
    sha256: Annotated[str, msgspec.Meta(pattern="^[0-9a-f]{64}$")]
    scopes: list[Scope]


class ApiSettings(Strict, frozen=True, kw_only=True):
    host: str = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 8080
    max_body_bytes: Annotated[int, msgspec.Meta(ge=1024)] = 5_000_000
    """Larger request bodies get 413."""
    max_batch: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 1000
    """Most events in one POST /v1/events; more get 422."""
    keys: list[ApiKey] = msgspec.field(default_factory=list)
    """``profilestore api-key new NAME --scopes read,ingest`` prints a key and its entry."""
    anonymous_scopes: list[Scope] = msgspec.field(default_factory=list)
    """Scopes granted without a key (e.g. ["read"] on a trusted network); none by default."""
    freshness_interval_ms: Annotated[int, msgspec.Meta(ge=10)] = 250
    """How often the API refreshes the lag it reports with profiles and in /metrics."""
    session_secret: str = ""
    """Signs the web UI's session cookies; empty: a random secret per process (sessions end
    when it restarts). Several API processes behind one address need the same one."""
    session_minutes: Annotated[int, msgspec.Meta(ge=1, le=10_080)] = 480
    """How long a web UI login lasts."""


_ORIGIN = re.compile(r"^https?://[^/\s?#]+\Z")


class SegmentSettings(Strict, frozen=True, kw_only=True):
    """The Segment-compatible endpoints (README: Segment-compatible ingestion)."""

    cors_origins: list[str] = msgspec.field(default_factory=list)
    """Browser origins (``https://shop.example``) that may call them; ``["*"]`` for any.
    None by default: a key in a web page is public, so opening it to browsers is a choice
    made per site. Requests with any other ``Origin`` are refused (403)."""

    def __post_init__(self) -> None:
        for index, origin in enumerate(self.cors_origins):
            if origin != "*" and not _ORIGIN.match(origin):
                raise ValueError(
                    f"`cors_origins[{index}]` is not an origin: give scheme://host[:port] "
                    '(no path), e.g. "https://shop.example", or "*" for any'
                )


# The catalogue's own literals (one declaration): settings name identifier kinds, consent
# channels and life events exactly as events do.
IdentifierKindName = IdentifierKind
ChannelName = ConsentChannel
LifeEventName = LifeEventKind


def _default_shared_after() -> dict[IdentifierKindName, int]:
    return {"email": 5, "phone": 5, "handle": 5, "device": 3}


class IdentitySettings(Strict, frozen=True, kw_only=True):
    """How identifiers are normalised and which ones link customer keys (README: Identity)."""

    default_region: str = "US"
    """Region (ISO 3166 alpha-2) a phone number without a country code is read in."""
    blocked_values: list[str] = msgspec.field(default_factory=list)
    """Values that identify nobody, beyond the built-in placeholders (null, undefined, 0,
    anonymous, ...), compared case-insensitively with the normalised value: never a lookup
    key, never a link."""
    blocked_patterns: list[str] = msgspec.field(default_factory=list)
    """Regular expressions of such values, matched against the whole normalised value (the
    part after ``KIND:``, and after ``NETWORK:`` for a handle; E.164 for a phone)."""
    auto_link: list[IdentifierKindName] = msgspec.field(
        default_factory=lambda: ["email", "phone", "device"]
    )
    """Identifier kinds strong enough for a rule to link two customer keys sharing one."""
    device_links: Literal["anonymous", "always"] = "anonymous"
    """A shared device links an anonymous key (no email or phone) into a known one only
    ("anonymous"), or any two keys ("always")."""
    shared_after: dict[IdentifierKindName, Annotated[int, msgspec.Meta(ge=1)]] = msgspec.field(
        default_factory=_default_shared_after
    )
    """An identifier held by more customer keys than this is shared (a household device, a
    family email): it links nobody."""
    max_cluster_keys: Annotated[int, msgspec.Meta(ge=2, le=10_000)] = 20
    """Most customer keys a rule may gather into one profile; operators may link beyond."""

    def __post_init__(self) -> None:
        # Checked here so a bad region or pattern is a settings error naming its field,
        # not a failure of the first event that needs it.
        check_region(self.default_region)
        compile_patterns(self.blocked_patterns)


class ProjectorSettings(Strict, frozen=True, kw_only=True):
    page_size: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 5000
    cache_sections: Annotated[int, msgspec.Meta(ge=1)] = 50_000
    ingest_batch: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 500


class DatasetSettings(Strict, frozen=True, kw_only=True):
    projection: str
    """Import path of the module defining ``PROJECTION``."""
    refresh: str | None = None
    """``"realtime"``; or use ``every`` or ``cron`` instead; none of the three: the
    projection module's ``default_refresh``."""
    every: str | None = None
    """An interval such as ``"15m"`` (s, m, h, d)."""
    cron: str | None = None
    """A five-field cron expression; days of the week by name (``sun``)."""

    def __post_init__(self) -> None:
        given = [k for k in ("refresh", "every", "cron") if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(f"give one of `refresh`, `every`, `cron`, not {given}")
        if self.refresh is not None and self.refresh not in ("realtime", "manual"):
            raise ValueError(f'`refresh` must be "realtime" or "manual", not {self.refresh!r}')
        try:
            if self.every is not None:
                parse_interval(self.every)
            if self.cron is not None:
                cron_trigger(self.cron, dt.UTC)
        except CadenceError as e:
            raise ValueError(f"`{given[0]}`: {e}") from None

    @property
    def cadence(self) -> str | None:
        """The configured cadence, or None to use the projection's default."""
        if self.every is not None:
            return f"every {self.every}"
        if self.cron is not None:
            return f"cron {self.cron}"
        return self.refresh


def _default_datasets() -> dict[str, DatasetSettings]:
    def dataset(name: str, **refresh: str) -> DatasetSettings:
        return DatasetSettings(projection=f"projections.{name}", **refresh)

    return {
        "identities": dataset("identities", refresh="realtime"),
        "attributes": dataset("attributes", refresh="realtime"),
        "consents": dataset("consents", refresh="realtime"),
        "carts": dataset("carts", refresh="realtime"),
        "browsing": dataset("browsing", every="5m"),
        "email": dataset("email", every="5m"),
        "orders": dataset("orders", every="1h"),
        "service": dataset("service", every="1h"),
        "social": dataset("social", cron="0 3 * * sun"),
        "interests": dataset("interests", refresh="realtime"),
        "engagement": dataset("engagement", every="15m"),
        "scores": dataset("scores", cron="0 4 * * *"),
    }


class TriggerSettings(Strict, frozen=True, kw_only=True):
    """One trigger (README: Triggers): its module and how it is tuned."""

    trigger: str
    """Import path of the module defining ``TRIGGER``."""
    enabled: bool = False
    """Off by default: turning a trigger on is a decision to write to customers."""
    since: Annotated[dt.datetime, msgspec.Meta(tz=True)] | None = None
    """Fire only for events recorded at or after this time; none: from when the engine
    first ran the trigger enabled (so enabling it on an old store sends nothing old)."""
    settings: dict[str, Any] = msgspec.field(default_factory=dict)
    """The trigger's knobs, decoded strictly into its module's ``settings`` Struct."""
    stale_after_hours: Annotated[int, msgspec.Meta(ge=0)] = 72
    """A message decided this long after its event (an engine down for days) is not
    sent, but suppressed as too late; 0: no limit. Triggers that plan ahead decide
    about the present and are not held to it."""


HOUR_MINUTE = r"^([01][0-9]|2[0-3]):[0-5][0-9]$"


class QuietHours(Strict, frozen=True, kw_only=True):
    """A window of the customer's local day in which nothing but transactional messages
    is sent; a message decided inside it waits for its end. ``start == end``: none."""

    start: Annotated[str, msgspec.Meta(pattern=HOUR_MINUTE)] = "21:00"
    end: Annotated[str, msgspec.Meta(pattern=HOUR_MINUTE)] = "08:00"
    channels: list[ChannelName] = msgspec.field(
        default_factory=lambda: ["email", "sms", "phone", "push"]
    )


class Cap(Strict, frozen=True, kw_only=True):
    daily: Annotated[int, msgspec.Meta(ge=0)] | None = None
    """Most messages per rolling 24 hours on the channel (none: ``[contact] daily_cap``)."""
    weekly: Annotated[int, msgspec.Meta(ge=0)] | None = None
    """Most messages per rolling 7 days (none: ``[contact] weekly_cap``)."""


SENSITIVE_CATEGORIES = (
    "health",
    "medical",
    "pharmacy",
    "sexual wellness",
    "intimate apparel",
    "pregnancy",
    "weight loss",
    "skin conditions",
    "adult",
)
PAYLOAD_FIELDS = (
    *("first_name", "occasion", "offer", "discount_percent"),
    *("order_id", "placed_at", "items", "sku", "name", "quantity", "unit_price", "total"),
    *("currency", "cart_id", "value", "category", "categories", "brand", "product"),
    *("tier", "orders", "spend", "event_key", "title", "starts_at", "url", "days_before"),
)
"""What a message may say by default: names of things bought, carted or signed up for,
amounts the customer paid, an offer; never a count or duration of browsing."""


class ContactSettings(Strict, frozen=True, kw_only=True):
    """The contact policy every non-transactional firing passes (README: Triggers)."""

    timezone: str = "UTC"
    """IANA zone of customers who gave none (``profile.location_set`` with a timezone)."""
    quiet_hours: QuietHours = msgspec.field(default_factory=QuietHours)
    daily_cap: Annotated[int, msgspec.Meta(ge=0)] = 2
    """Most non-transactional messages per channel per customer in 24 hours."""
    weekly_cap: Annotated[int, msgspec.Meta(ge=0)] = 5
    """... and in 7 days."""
    caps: dict[ChannelName, Cap] = msgspec.field(default_factory=dict)
    """Per channel, instead of the two above, e.g. ``{ sms = { daily = 1, weekly = 2 } }``."""
    sensitive_life_events: list[LifeEventName] = msgspec.field(
        default_factory=lambda: ["bereavement"]
    )
    """Life events after which no non-transactional message goes out for a while."""
    sensitive_for_days: Annotated[int, msgspec.Meta(ge=0, le=3650)] = 90
    sensitive_categories: list[Annotated[str, msgspec.Meta(min_length=1, max_length=512)]] = (
        msgspec.field(default_factory=lambda: list(SENSITIVE_CATEGORIES))
    )
    """Product categories that never appear in a message (compared case-insensitively):
    lines of them are left out, and a message left with nothing is not sent."""
    payload_fields: list[Annotated[str, msgspec.Meta(min_length=1, max_length=100)]] = (
        msgspec.field(default_factory=lambda: list(PAYLOAD_FIELDS))
    )
    """The only field names a message may carry (at any depth); others are left out."""

    def __post_init__(self) -> None:
        try:
            zone(self.timezone)
        except CadenceError as e:
            raise ValueError(f"`timezone`: {e}") from None

    def cap(self, channel: str) -> tuple[int, int]:
        """(daily, weekly) caps of ``channel``."""
        own = self.caps.get(channel)  # type: ignore[call-overload]
        daily = own.daily if own is not None and own.daily is not None else self.daily_cap
        weekly = own.weekly if own is not None and own.weekly is not None else self.weekly_cap
        return daily, weekly


class Endpoint(Strict, frozen=True, kw_only=True):
    """A webhook receiver of fired messages, signed per Standard Webhooks."""

    url: Annotated[str, msgspec.Meta(pattern=r"^https?://")]
    secrets: Annotated[list[Annotated[str, msgspec.Meta(min_length=1)]], msgspec.Meta(min_length=1)]
    """``whsec_`` + base64 secrets: the first signs, every one is sent as a signature
    (``webhook-signature: v1,... v1,...``), so a receiver can rotate its secret."""
    channels: list[ChannelName] = msgspec.field(
        default_factory=lambda: ["email", "sms", "phone", "push", "post", "social", "web"]
    )
    """The channels whose messages it receives."""
    timeout_s: Annotated[float, msgspec.Meta(gt=0, le=300)] = 10.0


class DeliverySettings(Strict, frozen=True, kw_only=True):
    """Where fired messages go (README: Triggers): webhooks and a JSON Lines file."""

    endpoints: dict[Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9_-]{0,39}$")], Endpoint] = (
        msgspec.field(default_factory=dict)
    )
    file: str = ""
    """A JSON Lines file every message is appended to (``{home}`` allowed; "": none)."""
    retry_base_s: Annotated[float, msgspec.Meta(gt=0)] = 2.0
    """Retries wait exponentially from this, with full jitter ..."""
    retry_max_s: Annotated[float, msgspec.Meta(gt=0)] = 3600.0
    """... at most this long between two attempts ..."""
    retry_horizon_s: Annotated[int, msgspec.Meta(ge=0)] = 86_400
    """... for this long after the first attempt: then the message is a dead letter."""
    poll_ms: Annotated[int, msgspec.Meta(ge=1, le=60_000)] = 200
    """How often the worker looks for messages to deliver."""
    concurrency: Annotated[int, msgspec.Meta(ge=1, le=64)] = 8
    """Most webhook requests in flight at once (a page of due messages is sent in
    parallel; each message is still delivered at least once, under one webhook-id)."""


ArmName = Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9_]{0,39}$")]


class ExperimentSettings(Strict, frozen=True, kw_only=True):
    """A test of a trigger (README: Triggers): variants by weight and a holdout share."""

    trigger: str
    """The trigger (a name under ``[triggers]``) whose firings it splits."""
    variants: dict[ArmName, Annotated[float, msgspec.Meta(gt=0)]]
    """Variant -> weight, e.g. ``{ plain = 1, coupon = 1 }``; the receiver gets the
    variant with the message and picks the content."""
    holdout: Annotated[float, msgspec.Meta(ge=0, lt=1)] = 0.1
    """The share of customers never sent it: the baseline."""
    window_days: Annotated[int, msgspec.Meta(ge=1, le=365)] = 7
    """A conversion is an order within this many days after the firing."""

    def __post_init__(self) -> None:
        if not self.variants:
            raise ValueError("`variants` must name at least one variant")
        if "holdout" in self.variants:
            raise ValueError("`variants`: 'holdout' is the name of the held-out share")


def _default_triggers() -> dict[str, TriggerSettings]:
    return {name: TriggerSettings(trigger=f"triggers.{name}") for name in SHIPPED_TRIGGERS}


SHIPPED_TRIGGERS = (
    "welcome",
    "intro_offer",
    "receipt",
    "birthday",
    "cross_sell",
    "try_new",
    "loyalty",
    "reminders",
    "abandoned_cart",
)
"""The trigger modules shipped in ``triggers/``, listed (disabled) in the default config."""


class PrivacySettings(Strict, frozen=True, kw_only=True):
    """Per-customer encryption and erasure (README: Privacy)."""

    encryption: bool = True
    """Encrypt each customer's events with a data key of their own (new logs only: an
    existing plain log stays plain until it is moved, see ``profilestore log encrypt``)."""
    key_encryption_key: str = "default"
    """The key that wraps the data keys, never stored with the data: ``env:VARIABLE``,
    ``file:PATH``, or ``default`` ($PROFILESTORE_KEK, else a key file in the user's config
    directory, made on first use)."""
    previous_key_encryption_keys: list[str] = msgspec.field(default_factory=list)
    """Keys data keys may still be wrapped by (after a rotation, until ``profilestore keys
    rotate`` re-wrapped them all)."""


# --- scores (README: Scores) ----------------------------------------------------------------

SCORE_FACTS = (
    *("orders", "spend", "days_since_order", "days_since_active", "p_alive"),
    *("visits", "page_views", "product_views", "searches", "email_opens", "email_clicks"),
    *("replies", "tickets", "comments", "surveys", "posts", "referrals", "nps", "sentiment"),
    *("visits_recent", "page_views_recent", "product_views_recent", "searches_recent"),
    *("opens_recent", "clicks_recent", "replies_recent", "tickets_recent", "orders_recent"),
)
"""What a stage rule may test, per customer at scoring time. ``*_recent`` count the last
``window_days`` days; ``days_since_*`` are 1e9 for never; ``nps`` is -1 without an answer;
``sentiment`` the mean of the social posts' (-1 to 1), 0 without one; ``spend`` in
``[scores] currency``."""

Fact = Literal[SCORE_FACTS]  # type: ignore[valid-type]
StageName = Annotated[str, msgspec.Meta(min_length=1, max_length=40)]


class StageRule(Strict, frozen=True, kw_only=True):
    """Place a customer at ``stage`` when every ``at_least`` fact is >= its value and
    every ``at_most`` fact <= its value; a rule with neither places everyone left."""

    stage: StageName
    at_least: dict[Fact, Annotated[float, msgspec.Meta(ge=-1e9, le=1e12)]] = msgspec.field(
        default_factory=dict
    )
    at_most: dict[Fact, Annotated[float, msgspec.Meta(ge=-1e9, le=1e12)]] = msgspec.field(
        default_factory=dict
    )


class StageRules(Strict, frozen=True, kw_only=True):
    """Ordered rules: the first that matches places the customer. The last must have no
    condition (everyone is placed somewhere)."""

    window_days: Annotated[int, msgspec.Meta(ge=1, le=90)] = 30
    """What ``*_recent`` facts count: the last this many days."""
    rules: Annotated[list[StageRule], msgspec.Meta(min_length=1, max_length=100)]

    def __post_init__(self) -> None:
        last = self.rules[-1]
        if last.at_least or last.at_most:
            raise ValueError("the last rule must have no condition: it places everyone left")


def _rule(stage: str, at_least: dict[str, float] | None = None, **at_most: float) -> StageRule:
    return msgspec.convert(
        {"stage": stage, "at_least": at_least or {}, "at_most": at_most}, StageRule
    )


def _default_lifecycle() -> StageRules:
    # Seed 000 (Forrester): Discover, Explore, Engage, Buy.
    return StageRules(
        window_days=30,
        rules=[
            _rule("Buy", {"orders": 1}),
            _rule("Engage", {"clicks_recent": 3, "product_views_recent": 2}),
            _rule("Engage", {"replies_recent": 1}),
            _rule("Engage", {"product_views_recent": 5}),
            _rule("Explore", {"visits_recent": 1}),
            _rule("Explore", {"opens_recent": 1}),
            _rule("Explore", {"clicks_recent": 1}),
            _rule("Discover"),
        ],
    )


def _default_journey() -> StageRules:
    # Seed 002: awareness, familiarity, consideration, purchase, loyalty.
    return StageRules(
        window_days=30,
        rules=[
            _rule("loyalty", {"orders": 3}, days_since_order=180),
            _rule("loyalty", {"orders": 2, "nps": 9}),
            _rule("loyalty", {"orders": 2, "referrals": 1}),
            _rule("purchase", {"orders": 1}),
            _rule("consideration", {"product_views_recent": 3}),
            _rule("consideration", {"clicks_recent": 2}),
            _rule("consideration", {"searches_recent": 2}),
            _rule("familiarity", {"visits": 2}),
            _rule("familiarity", {"email_opens": 2}),
            _rule("familiarity", {"replies": 1}),
            _rule("awareness"),
        ],
    )


class ValueTier(Strict, frozen=True, kw_only=True):
    name: StageName
    top_share: Annotated[float, msgspec.Meta(gt=0, le=1)]
    """The share of buyers, ranked by predicted value, from the top down to this tier."""


def _default_tiers() -> list[ValueTier]:
    return [
        ValueTier(name="platinum", top_share=0.05),
        ValueTier(name="gold", top_share=0.2),
        ValueTier(name="silver", top_share=0.5),
        ValueTier(name="bronze", top_share=1.0),
    ]


class ScoreSettings(Strict, frozen=True, kw_only=True):
    """``[scores]``: how the scores are fitted and applied (README: Scores). The daily
    scoring's cadence is the ``scores`` line under ``[datasets]``."""

    fit: str = "cron 0 2 * * sun"
    """When the population-wide parts are refitted (``every 7d``, ``cron ...``, ``manual``)."""
    horizon_months: Annotated[int, msgspec.Meta(ge=1, le=120)] = 12
    annual_discount_rate: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.0
    currency: Annotated[str, msgspec.Meta(pattern=r"^[A-Z]{3}$")] = "USD"
    """Money in scores (spend, monetary quintiles, predicted value) is in this currency."""
    exchange_rates: dict[
        Annotated[str, msgspec.Meta(pattern=r"^[A-Z]{3}$")], Annotated[float, msgspec.Meta(gt=0)]
    ] = msgspec.field(default_factory=dict)
    """Units of ``currency`` per unit of another; spend in a currency without a rate is
    counted at par (set the rates if you sell in several currencies)."""
    tiers: Annotated[list[ValueTier], msgspec.Meta(min_length=1, max_length=20)] = msgspec.field(
        default_factory=_default_tiers
    )
    """Value tiers of buyers by predicted value, best first; customers who never ordered
    are ``prospect``."""
    lifecycle: StageRules = msgspec.field(default_factory=_default_lifecycle)
    journey: StageRules = msgspec.field(default_factory=_default_journey)
    chunk: Annotated[int, msgspec.Meta(ge=100, le=1_000_000)] = 20_000
    """Customers scored and written per step (memory is bounded by it)."""
    swap: bool = True
    """Score into a staging area swapped in at once: reads see every profile on the old
    fit until the swap, every one on the new fit after it. ``false``: write each profile's
    scores in place (each profile still on one fit; the population on two during a run),
    which writes half as much (``bench/scores.py`` measures both)."""

    def __post_init__(self) -> None:
        shares = [t.top_share for t in self.tiers]
        if shares != sorted(shares) or len(set(shares)) != len(shares) or shares[-1] != 1.0:
            raise ValueError("`tiers`: top_share must increase from tier to tier and end at 1.0")
        word, _, rest = " ".join(self.fit.split()).partition(" ")
        if word not in ("every", "cron") and self.fit != "manual":
            raise ValueError("`fit` must be 'manual', 'every <interval>' or 'cron <fields>'")
        try:
            if word == "every":
                parse_interval(rest)
            elif word == "cron":
                cron_trigger(rest, dt.UTC)
        except CadenceError as e:
            raise ValueError(f"`fit`: {e}") from None


class Settings(Strict, frozen=True, kw_only=True):
    store: StoreSettings = msgspec.field(default_factory=StoreSettings)
    event_log: EventLogSettings = msgspec.field(default_factory=EventLogSettings)
    documents: DocumentSettings = msgspec.field(default_factory=DocumentSettings)
    projector: ProjectorSettings = msgspec.field(default_factory=ProjectorSettings)
    schedule: ScheduleSettings = msgspec.field(default_factory=ScheduleSettings)
    api: ApiSettings = msgspec.field(default_factory=ApiSettings)
    identity: IdentitySettings = msgspec.field(default_factory=IdentitySettings)
    privacy: PrivacySettings = msgspec.field(default_factory=PrivacySettings)
    segment: SegmentSettings = msgspec.field(default_factory=SegmentSettings)
    datasets: dict[str, DatasetSettings] = msgspec.field(default_factory=_default_datasets)
    triggers: dict[str, TriggerSettings] = msgspec.field(default_factory=_default_triggers)
    contact: ContactSettings = msgspec.field(default_factory=ContactSettings)
    delivery: DeliverySettings = msgspec.field(default_factory=DeliverySettings)
    experiments: dict[str, ExperimentSettings] = msgspec.field(default_factory=dict)
    scores: ScoreSettings = msgspec.field(default_factory=ScoreSettings)

    @property
    def home(self) -> Path:
        return Path(self.store.home)

    def url(self, template: str) -> str:
        return template.replace("{home}", str(self.home))


def _error_path(error: msgspec.ValidationError) -> tuple[str, str]:
    message = str(error)
    reason, sep, path = message.rpartition(" - at `")
    if not sep:
        return "", message
    return path.rstrip("`").removeprefix("$").lstrip("."), reason


def _set_path(tree: dict[str, Any], path: list[str], value: Any) -> None:
    node = tree
    for part in path[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[path[-1]] = value


def _parse_env_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def load_settings(
    path: str | Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    home: str | Path | None = None,
) -> Settings:
    """Read the settings file (see the module docstring) and apply overrides."""
    env = os.environ if environ is None else environ
    chosen = path or env.get(f"{ENV_PREFIX}CONFIG")
    source = str(chosen) if chosen else str(DEFAULT_CONFIG)
    tree: dict[str, Any] = {}
    file = Path(chosen) if chosen else DEFAULT_CONFIG
    if file.exists():
        try:
            tree = tomllib.loads(file.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(source, "", f"not valid TOML: {e}") from None
    elif chosen:
        raise ConfigError(source, "", "the configuration file does not exist")
    else:
        source = "built-in defaults"
    if not tree.get("datasets"):
        tree["datasets"] = msgspec.to_builtins(_default_datasets())
    if "triggers" not in tree:
        tree["triggers"] = msgspec.to_builtins(_default_triggers())
    overrides = []
    for name, raw in sorted(env.items()):
        if name == f"{ENV_PREFIX}HOME":
            _set_path(tree, ["store", "home"], raw)
        elif name.startswith(ENV_PREFIX) and ENV_PATH_SEPARATOR in name:
            parts = name.removeprefix(ENV_PREFIX).lower().split(ENV_PATH_SEPARATOR)
            _set_path(tree, parts, _parse_env_value(raw))
        else:
            continue  # PROFILESTORE_CONFIG was read above; other names are not settings
        overrides.append(name)
    if home is not None:
        _set_path(tree, ["store", "home"], str(home))
    if overrides:
        source = f"{source} (with environment overrides {', '.join(overrides)})"
    datasets = tree.get("datasets")
    if isinstance(datasets, dict):
        # Decoded one by one: msgspec reports a dict entry's path as `datasets[...]`.
        for name, entry in datasets.items():
            _convert(entry, DatasetSettings, source, f"datasets.{name}")
    experiments = tree.get("experiments")
    if isinstance(experiments, dict):
        for name, entry in experiments.items():
            _convert(entry, ExperimentSettings, source, f"experiments.{name}")
            if isinstance(entry, dict) and entry.get("trigger") not in tree.get("triggers", {}):
                raise ConfigError(
                    source,
                    f"experiments.{name}.trigger",
                    f"names no trigger under [triggers]: {entry.get('trigger')!r}",
                )
    triggers = tree.get("triggers")
    if isinstance(triggers, dict):
        for name, entry in triggers.items():
            _convert(entry, TriggerSettings, source, f"triggers.{name}")
    return _convert(tree, Settings, source, "")


S = TypeVar("S")


def _convert(value: Any, target: type[S], source: str, prefix: str) -> S:
    try:
        return msgspec.convert(value, target)
    except msgspec.ValidationError as e:
        field_path, reason = _error_path(e)
        path = ".".join(p for p in (prefix, field_path) if p)
        raise ConfigError(source, path, reason) from None
