"""A deterministic synthetic customer population, for the demo and the benchmarks.

:func:`generate` yields the event log of ``customers`` invented shoppers of a web shop,
interleaved across customers in ``occurred_at`` order, as event Structs from
:mod:`profilestore.events`. The same arguments always yield the same events, byte for byte:
all randomness comes from one ``random.Random(seed)`` consumed in a fixed order, and no
value depends on the clock or on hashing.

The model
---------
Customers sign up one after another over the first 70% of the period (``cust-0000001``
first), so the shop grows and every customer has some time left to live in it. Each
customer's life follows the Discover / Explore / Engage / Buy lifecycle:

* **First touch and signup** (Discover): an anonymous device and landing pages, then the
  signup form: email seen, name, usually a birthday and a location, a preference or two,
  marketing-email consent (about 70%), a welcome email; some give a phone (and SMS
  consent); about 40% link a Twitter or Instagram handle.
* **Episodes** (Explore, Engage, Buy) at random times after signup, each a short burst of
  related events: a browsing session (pages, searches, product views); a shopping trip
  (browsing, then a cart, maybe removals, then checkout and an order for about half of the
  carts; otherwise the cart is abandoned, which triggers an abandoned-cart email, or
  cleared); a marketing email (opened about 30% of the time, clicked about 30% of opens,
  rarely an unsubscribe); social posts with a sentiment, sometimes revealing a life event
  (moved, new job, married, ...) that has consequences (a new address, a new surname); a
  service ticket, usually resolved and sometimes followed by an NPS survey; a profile
  change (preference, new device, phone added or removed, consent given or withdrawn).
* **Triggered follow-ups** land later than their episode: the abandoned-cart reminder a
  day after, cancellations within hours, returns within weeks, ticket resolutions and
  surveys. A birthday email goes out on the day to consenting customers.

Each customer has an event budget (mean ``events_per_customer``, gamma-distributed so a
few customers are much busier than most), spread over a Poisson stream of episodes from
signup to the end of the period; the customer goes quiet once it is spent. Anything that
would fall at or after ``start + days`` is not emitted. Money is exact (``Decimal``), a
customer shops in the currency of their country, and an order's lines are exactly the
lines left in its cart, its total their sum.

Order and memory
----------------
The generator is a discrete-event simulation. A heap holds one entry per live customer,
keyed by the time of their next episode; new customers join from a lazily drawn, sorted
stream of signup times. Running an episode pushes its events (some in the future) onto a
second heap of pending events, and an event is yielded once no episode can start before
it. Memory is therefore O(customers) small objects (a ``_Customer`` of a few slots and a
heap entry, about 0.4 KB each) plus the events pending in the next few weeks (mostly
returns and follow-ups), never O(events): a million customers peak near 430 MB RSS.
Times are kept as integer milliseconds since ``start``; ties are broken by the order in
which events were created, so the order is deterministic too.
"""

from __future__ import annotations

import datetime as dt
import heapq
import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, TypeVar

from profilestore.events import (
    BirthdaySet,
    CartCleared,
    CartItemAdded,
    CartItemRemoved,
    CheckoutStarted,
    ConsentGiven,
    ConsentWithdrawn,
    EmailClicked,
    EmailOpened,
    EmailSent,
    EmailUnsubscribed,
    Event,
    IdentifierLinked,
    IdentifierSeen,
    IdentifierUnlinked,
    InterestShown,
    InterestWithdrawn,
    LifeEventDetected,
    LifeEventKind,
    Location,
    LocationSet,
    Metadata,
    NameSet,
    OrderCancelled,
    OrderLine,
    OrderPlaced,
    OrderReturned,
    PageViewed,
    PreferenceSet,
    ProductViewed,
    Searched,
    SocialPostObserved,
    SurveyAnswered,
    TicketOpened,
    TicketResolved,
)

__all__ = ["DEFAULT_START", "generate"]

DEFAULT_START = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
"""Where the generated period starts unless told otherwise (fixed, for determinism)."""

_E = TypeVar("_E", bound=Event)

_SECOND = 1_000
_MINUTE = 60 * _SECOND
_HOUR = 60 * _MINUTE
_DAY = 24 * _HOUR

_SIGNUP_SPAN = 0.7  # customers sign up during the first 70% of the period
_EPISODE_OVERSAMPLING = 1.5  # schedule more episodes than the budget needs; budget binds

_SHOP = "https://shop.example.com"

# --- reference data ---------------------------------------------------------------------

_FIRST_NAMES = (
    "Ann", "Ben", "Chloe", "David", "Emma", "Farid", "Grace", "Hugo", "Isla", "Jack",
    "Keiko", "Liam", "Maya", "Noah", "Olivia", "Pablo", "Quinn", "Rosa", "Sam", "Tara",
    "Umar", "Vera", "Wei", "Xena", "Yusuf", "Zoe", "Amara", "Bruno", "Clara", "Diego",
    "Elena", "Felix", "Hannah", "Ivan", "Julia", "Karim", "Lena", "Marco", "Nina", "Oscar",
)  # fmt: skip
_LAST_NAMES = (
    "Adams", "Brown", "Costa", "Dubois", "Evans", "Fischer", "Garcia", "Hughes", "Ito",
    "Jensen", "Kelly", "Lopez", "Martin", "Nowak", "O'Brien", "Patel", "Quinn", "Rossi",
    "Schmidt", "Taylor", "Ueda", "Valdez", "Walsh", "Xu", "Young", "Zimmer", "Murphy",
    "Moreau", "Novak", "Silva", "Khan", "Larsen", "Meyer", "Byrne", "Romero", "Chen",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class _City:
    city: str
    region: str
    latitude: float
    longitude: float
    postal_prefix: str


@dataclass(frozen=True, slots=True)
class _Country:
    code: str
    currency: str
    dial: str
    language: str
    fx: float  # price multiplier from the USD list price
    cities: tuple[_City, ...]
    mobile_digits: int = 10  # digits of a mobile number after the country code


_COUNTRIES = (
    _Country("US", "USD", "+1", "en-US", 1.0, (
        _City("New York", "NY", 40.71, -74.01, "100"),
        _City("Austin", "TX", 30.27, -97.74, "787"),
        _City("Seattle", "WA", 47.61, -122.33, "981"),
        _City("Chicago", "IL", 41.88, -87.63, "606"),
        _City("Miami", "FL", 25.76, -80.19, "331"),
    )),
    _Country("GB", "GBP", "+44", "en-GB", 0.8, (
        _City("London", "England", 51.51, -0.13, "SW1"),
        _City("Manchester", "England", 53.48, -2.24, "M1"),
        _City("Edinburgh", "Scotland", 55.95, -3.19, "EH1"),
        _City("Cardiff", "Wales", 51.48, -3.18, "CF1"),
    )),
    _Country("DE", "EUR", "+49", "de-DE", 0.92, (
        _City("Berlin", "Berlin", 52.52, 13.40, "101"),
        _City("Munich", "Bavaria", 48.14, 11.58, "803"),
        _City("Hamburg", "Hamburg", 53.55, 9.99, "203"),
    )),
    _Country("FR", "EUR", "+33", "fr-FR", 0.92, (
        _City("Paris", "Ile-de-France", 48.86, 2.35, "750"),
        _City("Lyon", "Auvergne-Rhone-Alpes", 45.76, 4.84, "690"),
    ), mobile_digits=9),
    _Country("ES", "EUR", "+34", "es-ES", 0.92, (
        _City("Madrid", "Madrid", 40.42, -3.70, "280"),
        _City("Barcelona", "Catalonia", 41.39, 2.17, "080"),
    ), mobile_digits=9),
    _Country("IE", "EUR", "+353", "en-IE", 0.92, (
        _City("Dublin", "Leinster", 53.35, -6.26, "D0"),
        _City("Cork", "Munster", 51.90, -8.47, "T12"),
    )),
)  # fmt: skip
_COUNTRY_WEIGHTS = (0.45, 0.2, 0.12, 0.1, 0.07, 0.06)

# category -> (adjectives, nouns, lowest and highest USD list price)
_CATEGORIES: dict[str, tuple[tuple[str, ...], tuple[str, ...], int, int]] = {
    "shoes": (("Trail", "Canvas", "Leather", "Running"), ("Sneaker", "Boot", "Loafer"), 40, 180),
    "outerwear": (("Rain", "Down", "Wool", "Denim"), ("Jacket", "Parka", "Coat"), 60, 320),
    "dresses": (
        ("Linen", "Silk", "Summer", "Wrap"),
        ("Dress", "Midi Dress", "Maxi Dress"),
        35,
        220,
    ),
    "bags": (("Travel", "Leather", "Canvas", "Mini"), ("Backpack", "Tote", "Crossbody"), 25, 260),
    "home": (
        ("Linen", "Cotton", "Velvet", "Woven"),
        ("Cushion", "Throw", "Rug", "Curtain"),
        15,
        240,
    ),
    "kitchen": (("Cast-Iron", "Ceramic", "Copper", "Bamboo"), ("Pan", "Mug Set", "Knife"), 12, 180),
    "beauty": (("Hydrating", "Matte", "Vitamin C", "Night"), ("Serum", "Cream", "Lipstick"), 8, 90),
    "electronics": (
        ("Wireless", "Smart", "Portable", "Noise-Cancelling"),
        ("Speaker", "Headphones", "Charger"),
        20,
        400,
    ),
    "toys": (("Wooden", "Plush", "Building", "Musical"), ("Train", "Bear", "Blocks"), 10, 80),
    "sport": (
        ("Yoga", "Cycling", "Swim", "Trail"),
        ("Mat", "Jersey", "Goggles", "Shorts"),
        10,
        150,
    ),
    "baby": (("Organic", "Soft", "Travel", "Bamboo"), ("Onesie", "Blanket", "Stroller"), 10, 450),
}

_CATEGORY_NAMES = tuple(_CATEGORIES)

_SEARCHES: dict[str, tuple[str, ...]] = {
    "shoes": ("running shoes", "white sneakers", "waterproof boots"),
    "outerwear": ("rain jacket", "winter coat", "lightweight parka"),
    "dresses": ("summer dress", "wedding guest dress", "linen dress"),
    "bags": ("laptop backpack", "leather tote", "carry on bag"),
    "home": ("throw blanket", "area rug", "blackout curtains"),
    "kitchen": ("cast iron pan", "chef knife", "coffee mugs"),
    "beauty": ("vitamin c serum", "night cream", "matte lipstick"),
    "electronics": ("wireless headphones", "bluetooth speaker", "usb c charger"),
    "toys": ("wooden train", "building blocks", "toys for 3 year old"),
    "sport": ("yoga mat", "cycling jersey", "swim goggles"),
    "baby": ("baby stroller", "organic onesie", "swaddle blanket"),
}

_CAMPAIGNS = (
    ("spring-sale", "Spring sale: up to 30% off"),
    ("new-arrivals", "Just landed: this week's new arrivals"),
    ("weekly-picks", "Picked for you this week"),
    ("loyalty-reward", "A thank-you from us: 20% off your next order"),
    ("back-in-stock", "It's back: the item you looked at"),
    ("summer-edit", "The summer edit"),
    ("black-friday", "Black Friday starts now"),
)

_TICKET_SUBJECTS = (
    "Where is my order?",
    "Item arrived damaged",
    "Wrong size delivered",
    "Refund not received",
    "Cannot log in to my account",
    "Discount code not working",
    "Change delivery address",
)
_RESOLUTIONS = (
    "refund issued",
    "replacement sent",
    "tracking shared",
    "password reset",
    "answered",
)
_RETURN_REASONS = ("too small", "too large", "not as described", "changed my mind", "damaged")
_CANCEL_REASONS = ("ordered by mistake", "found it cheaper", "delivery too slow", "payment issue")

_POSITIVE_POSTS = (
    "Loving my new {product} from @shopexample!",
    "Best {category} purchase I've made this year.",
    "Fast delivery and great quality, thanks @shopexample",
)
_NEUTRAL_POSTS = (
    "Anyone tried the {product}? Thinking about it.",
    "Browsing {category} for the weekend.",
    "Coffee first, then errands.",
)
_NEGATIVE_POSTS = (
    "Still waiting on my order from @shopexample...",
    "The {product} broke after a week. Disappointed.",
    "Customer service on hold for 40 minutes, not great.",
)

# kind -> (post text, detail); {city} is filled in for a move
_LIFE_EVENTS: tuple[tuple[LifeEventKind, str, str], ...] = (
    ("moved", "Finally moved into our new place in {city}!", "moved to {city}"),
    ("new_job", "First day at the new job today!", "started a new job"),
    ("engaged", "She said yes!!", "got engaged"),
    ("married", "Just married! Best day of our lives.", "got married"),
    ("new_baby", "Welcome to the world, little one.", "had a baby"),
    ("graduation", "Graduated today, so proud.", "graduated"),
    ("retirement", "Last day at work after 30 years. Retired!", "retired"),
    ("new_pet", "Meet the newest member of the family: a puppy!", "adopted a dog"),
)

_PREFERENCES: tuple[tuple[str, tuple[str | int | bool, ...]], ...] = (
    ("favourite_category", tuple(_CATEGORIES)),
    ("clothing_size", ("XS", "S", "M", "L", "XL")),
    ("shoe_size", (36, 37, 38, 39, 40, 41, 42, 43, 44, 45)),
    ("newsletter_frequency", ("daily", "weekly", "monthly")),
    ("dark_mode", (True, False)),
)


@dataclass(frozen=True, slots=True)
class _Product:
    sku: str
    name: str
    category: str
    prices: dict[str, Decimal]  # currency -> unit price


def _catalogue(rng: random.Random) -> tuple[_Product, ...]:
    products = []
    for category, (adjectives, nouns, low, high) in _CATEGORIES.items():
        for i in range(30):
            usd = rng.uniform(low, high)
            prices = {c.currency: Decimal(f"{max(1, int(usd * c.fx))}.99") for c in _COUNTRIES}
            products.append(
                _Product(
                    sku=f"SKU-{category[:3].upper()}-{i:03d}",
                    name=f"{rng.choice(adjectives)} {rng.choice(nouns)}",
                    category=category,
                    prices=prices,
                )
            )
    return tuple(products)


# --- the simulation ---------------------------------------------------------------------


class _Simulation:
    """Shared state: the random stream, the catalogue and the heap of pending events."""

    def __init__(self, rng: random.Random, start: dt.datetime, days: int, epc: float) -> None:
        self.rng = rng
        self.start = start
        self.horizon = days * _DAY
        self.events_per_customer = epc
        self.catalogue = _catalogue(rng)
        self.by_category: dict[str, tuple[_Product, ...]] = {
            c: tuple(p for p in self.catalogue if p.category == c) for c in _CATEGORIES
        }
        self.pending: list[tuple[int, int, Event]] = []
        self.seq = 0
        # running means that calibrate each customer's budget to the requested average
        self.signups = 0
        self.signup_events = 0
        self.episodes = 0
        self.episode_events = 0

    def mean_signup(self) -> float:
        return self.signup_events / self.signups if self.signups else 12.0

    def mean_episode(self) -> float:
        return self.episode_events / self.episodes if self.episodes else 6.0

    def run(self, customers: int) -> Iterator[Event]:
        rng = self.rng
        pending = self.pending
        live: list[tuple[int, int, _Customer]] = []
        signup_span = max(1, int(self.horizon * _SIGNUP_SPAN))
        # Signup times are the order statistics of `customers` uniform draws, drawn lazily:
        # the next of m remaining lies at prev + (span - prev) * (1 - U ** (1/m)).
        arrived = 0
        arrival_f = 0.0
        next_arrival = 0
        if customers:
            arrival_f = signup_span * -math.expm1(math.log1p(-rng.random()) / customers)
            next_arrival = int(arrival_f)
        while True:
            arriving = arrived < customers and (not live or next_arrival <= live[0][0])
            if arriving:
                now = next_arrival
            elif live:
                now = live[0][0]
            else:
                break
            while pending and pending[0][0] <= now:
                yield heapq.heappop(pending)[2]
            if arriving:
                arrived += 1
                customer = _Customer(self, arrived)
                wake = customer.signup(now)
                if wake is not None:
                    heapq.heappush(live, (wake, arrived, customer))
                remaining = customers - arrived
                if remaining:
                    step = -math.expm1(math.log1p(-rng.random()) / remaining)
                    arrival_f += (signup_span - arrival_f) * step
                    next_arrival = int(arrival_f)
            else:
                _, number, customer = live[0]
                wake = customer.wake(now)
                if wake is None:
                    heapq.heappop(live)
                else:
                    heapq.heapreplace(live, (wake, number, customer))
        while pending:
            yield heapq.heappop(pending)[2]


class _Customer:
    """One customer's state between episodes; episodes are its methods."""

    __slots__ = (
        "bday_at",
        "budget",
        "cid",
        "country",
        "devices",
        "email",
        "emitted",
        "first",
        "handle",
        "interest_rng",
        "last",
        "marketing",
        "n",
        "network",
        "next_at",
        "number",
        "phone",
        "rate",
        "sim",
        "sms",
    )

    def __init__(self, sim: _Simulation, number: int) -> None:
        rng = sim.rng
        self.sim = sim
        self.number = number
        self.cid = f"cust-{number:07d}"
        self.n = 0  # events created, for event ids
        self.emitted = 0  # events emitted, against the budget
        self.country: _Country = rng.choices(_COUNTRIES, _COUNTRY_WEIGHTS)[0]
        self.first: str = rng.choice(_FIRST_NAMES)
        self.last: str = rng.choice(_LAST_NAMES)
        self.email = f"{self.first}.{self.last}.{number}@example.com".lower().replace("'", "")
        self.devices = 0
        self.phone: str | None = None
        self.sms = False
        self.marketing = False  # consented to, and not unsubscribed from, marketing email
        self.handle: str | None = None
        self.network: str | None = None
        self.budget = 0.0
        self.rate = 0.0
        self.next_at = 0
        self.bday_at: int | None = None
        self.interest_rng = random.Random(f"interest-{self.cid}")

    # --- plumbing -----------------------------------------------------------------------

    def _ev(self, t: int, cls: type[_E], source: str, **payload: Any) -> _E:
        """Create an event at ``t`` and queue it, unless it falls outside the period."""
        sim = self.sim
        self.n += 1
        event = cls(
            event_id=f"{self.cid}-{self.n}",
            customer_id=self.cid,
            occurred_at=sim.start + dt.timedelta(milliseconds=t),
            source=source,
            **payload,
        )
        if t < sim.horizon:
            sim.seq += 1
            entry: tuple[int, int, Event] = (t, sim.seq, event)
            heapq.heappush(sim.pending, entry)
            self.emitted += 1
        return event

    def _gap(self, low: int, high: int) -> int:
        return low + int(self.sim.rng.random() * (high - low))

    def _next_episode(self, t: int) -> int | None:
        """When this customer wakes next (an episode or a birthday), or None: gone quiet."""
        sim = self.sim
        if self.next_at <= t:
            if self.emitted >= self.budget - sim.mean_episode() / 2:
                return None
            self.next_at = t + 1 + int(sim.rng.expovariate(self.rate))
        wake = self.next_at
        if self.bday_at is not None and self.bday_at < wake:
            wake = self.bday_at
        return wake if wake < sim.horizon else None

    # --- lifecycle ----------------------------------------------------------------------

    def signup(self, t: int) -> int | None:
        """First touch and signup; returns when the customer wakes next."""
        sim = self.sim
        rng = sim.rng
        r = rng.random
        cid = self.cid
        source = rng.choices(("web", "ios", "android"), (0.6, 0.25, 0.15))[0]
        self.devices = 1
        self._ev(t, IdentifierSeen, source, kind="device", value=f"dev-{cid}-1")
        session = f"sess-{cid}-{self.n}"
        referrer = rng.choice(("https://www.google.com/", "https://www.instagram.com/", None))
        self._ev(
            t,
            PageViewed,
            source,
            url=f"{_SHOP}/",
            title="Home",
            referrer=referrer,
            session_id=session,
        )
        t += self._gap(10 * _SECOND, 3 * _MINUTE)
        if r() < 0.5:
            category = rng.choice(_CATEGORY_NAMES)
            self._ev(
                t,
                PageViewed,
                source,
                url=f"{_SHOP}/c/{category}",
                title=category.title(),
                session_id=session,
            )
            t += self._gap(10 * _SECOND, 2 * _MINUTE)
        self._ev(
            t,
            PageViewed,
            source,
            url=f"{_SHOP}/account/signup",
            title="Create account",
            session_id=session,
        )
        t += self._gap(30 * _SECOND, 3 * _MINUTE)
        self._ev(t, IdentifierSeen, source, kind="email", value=self.email)
        self._ev(t, NameSet, source, first_name=self.first, last_name=self.last)
        if r() < 0.7:
            self.marketing = True
            self._ev(t, ConsentGiven, source, channel="email")
        if source != "web" and r() < 0.5:
            self._ev(t, ConsentGiven, source, channel="push")
        t += self._gap(5 * _SECOND, 30 * _SECOND)
        welcome = self._ev(
            t,
            EmailSent,
            "esp",
            message_id=f"msg-{cid}-{self.n + 1}",
            campaign="welcome",
            subject="Welcome to Shop Example!",
        )
        self._email_engagement(t, welcome, open_p=0.5)

        t += self._gap(1 * _MINUTE, 5 * _MINUTE)
        if r() < 0.8:
            age_days = 18 * 365 + int(r() * 57 * 365)
            birthday = sim.start.date() - dt.timedelta(days=age_days)
            self._ev(t, BirthdaySet, source, birthday=birthday)
            if self.marketing:
                self.bday_at = self._birthday_after(birthday, t)
        if r() < 0.9:
            self._set_location(t, source)
        for _ in range(int(r() * 3)):
            key, values = rng.choice(_PREFERENCES)
            self._ev(t, PreferenceSet, source, key=key, value=rng.choice(values))
        self._ev(t, PreferenceSet, source, key="language", value=self.country.language)
        if r() < 0.35:
            self._add_phone(t, source)
        if r() < 0.4:
            self.network = "instagram" if r() < 0.55 else "twitter"
            self.handle = f"@{self.first}{self.last}{self.number}".lower().replace("'", "")
            self._ev(
                t, IdentifierLinked, source, kind="handle", value=self.handle, network=self.network
            )

        sim.signups += 1
        sim.signup_events += self.emitted
        # The budget left after signup, gamma-distributed around the average still needed.
        needed = max(0.0, sim.events_per_customer - sim.mean_signup())
        self.budget = self.emitted + needed * rng.gammavariate(2.0, 0.5)
        left = max(_HOUR, sim.horizon - t)
        episodes = (self.budget - self.emitted) / sim.mean_episode() * _EPISODE_OVERSAMPLING
        self.rate = max(episodes, 0.01) / left
        self.next_at = t
        return self._next_episode(t)

    def wake(self, t: int) -> int | None:
        """Run the episode due at ``t``; returns when the customer wakes next."""
        sim = self.sim
        before = self.emitted
        if self.bday_at is not None and t == self.bday_at and t < self.next_at:
            self._birthday(t)
            return self._next_episode(t)
        x = sim.rng.random()
        if x < 0.34:
            self._browse(t, self._source())
        elif x < 0.58:
            self._shop(t)
        elif x < 0.78:
            self._campaign(t) if self.marketing else self._browse(t, self._source())
        elif x < 0.89:
            self._social(t) if self.handle is not None else self._browse(t, self._source())
        elif x < 0.93:
            self._ticket(t)
        else:
            self._profile_change(t)
        sim.episodes += 1
        sim.episode_events += self.emitted - before
        self.next_at = t  # due again
        return self._next_episode(t)

    # --- episodes -----------------------------------------------------------------------

    def _source(self) -> str:
        return "web" if self.sim.rng.random() < 0.6 else "app"

    def _browse(self, t: int, source: str, category: str | None = None) -> tuple[int, str, str]:
        """A browsing session; returns its end time, session id and main category."""
        rng = self.sim.rng
        session = f"sess-{self.cid}-{self.n + 1}"
        if category is None:
            category = rng.choice(_CATEGORY_NAMES)
        if rng.random() < 0.5:
            self._ev(
                t,
                Searched,
                source,
                query=rng.choice(_SEARCHES[category]),
                results=int(rng.random() * 120),
                session_id=session,
            )
        else:
            self._ev(
                t,
                PageViewed,
                source,
                url=f"{_SHOP}/c/{category}",
                title=category.title(),
                session_id=session,
            )
        currency = self.country.currency
        for _ in range(1 + int(rng.random() * 4)):
            t += self._gap(15 * _SECOND, 4 * _MINUTE)
            product = rng.choice(self.sim.by_category[category])
            self._ev(
                t,
                ProductViewed,
                source,
                sku=product.sku,
                name=product.name,
                category=category,
                price=product.prices[currency],
                session_id=session,
            )
        self._interest(t, source, category)
        return t, session, category

    def _interest(self, t: int, source: str, category: str) -> None:
        """Now and then, interest in an upcoming sale of the category (sometimes
        withdrawn). Drawn from the customer's own generator, so adding it changed
        nothing else a population holds."""
        r = self.interest_rng.random
        if r() >= 0.02:
            return
        starts = self.sim.start + dt.timedelta(milliseconds=t + self._days(3, 30, r))
        occasion = f"{category.replace(' ', '-')}-sale-{starts:%Y%m%d}"
        self._ev(
            t,
            InterestShown,
            source,
            occasion_id=occasion,
            title=f"{category.title()} sale",
            starts_at=starts,
            url=f"{_SHOP}/sales/{occasion}",
        )
        if r() < 0.25:
            self._ev(t + self._days(0, 2, r), InterestWithdrawn, source, occasion_id=occasion)

    @staticmethod
    def _days(low: int, high: int, r: Any) -> int:
        return int((low + r() * (high - low)) * _DAY)

    def _shop(self, t: int) -> None:
        """Browse, fill a cart, then order it, abandon it or clear it."""
        rng = self.sim.rng
        r = rng.random
        source = self._source()
        t, _, category = self._browse(t, source)
        cart_id = f"cart-{self.cid}-{self.n + 1}"
        currency = self.country.currency
        lines: dict[str, tuple[_Product, int]] = {}
        for _ in range(1 + int(r() * 3)):
            t += self._gap(20 * _SECOND, 3 * _MINUTE)
            pool = self.sim.by_category[category if r() < 0.7 else rng.choice(_CATEGORY_NAMES)]
            product = rng.choice(pool)
            quantity = 1 if r() < 0.8 else 2 + int(r() * 2)
            self._ev(
                t,
                CartItemAdded,
                source,
                cart_id=cart_id,
                sku=product.sku,
                name=product.name,
                quantity=quantity,
                unit_price=product.prices[currency],
                currency=currency,
            )
            held = lines.get(product.sku)
            lines[product.sku] = (product, quantity + (held[1] if held else 0))
        if r() < 0.25:
            t += self._gap(20 * _SECOND, 5 * _MINUTE)
            sku = rng.choice(tuple(lines))
            product, held_quantity = lines[sku]
            if held_quantity > 1 and r() < 0.5:
                self._ev(t, CartItemRemoved, source, cart_id=cart_id, sku=sku, quantity=1)
                lines[sku] = (product, held_quantity - 1)
            else:
                self._ev(t, CartItemRemoved, source, cart_id=cart_id, sku=sku)
                del lines[sku]
        outcome = r()
        if lines and outcome < 0.5:
            t += self._gap(30 * _SECOND, 4 * _MINUTE)
            checkout = self._ev(t, CheckoutStarted, source, cart_id=cart_id)
            t += self._gap(1 * _MINUTE, 6 * _MINUTE)
            self._order(t, source, cart_id, tuple(lines.values()), checkout.event_id)
        elif lines and outcome < 0.58:
            t += self._gap(1 * _MINUTE, 20 * _MINUTE)
            self._ev(t, CartCleared, source, cart_id=cart_id)
        elif lines and self.marketing:
            # Abandoned: the trigger that reminds the customer a day later.
            t += self._gap(20 * _HOUR, 28 * _HOUR)
            reminder = self._ev(
                t,
                EmailSent,
                "esp",
                message_id=f"msg-{self.cid}-{self.n + 1}",
                campaign="abandoned-cart",
                subject="You left something in your cart",
            )
            self._email_engagement(t, reminder, open_p=0.4)

    def _order(
        self,
        t: int,
        source: str,
        cart_id: str,
        lines: Sequence[tuple[_Product, int]],
        checkout_id: str,
    ) -> None:
        rng = self.sim.rng
        currency = self.country.currency
        items = tuple(
            OrderLine(sku=p.sku, name=p.name, quantity=q, unit_price=p.prices[currency])
            for p, q in lines
        )
        total = sum((line.unit_price * line.quantity for line in items), Decimal(0))
        order_id = f"ord-{self.cid}-{self.n + 1}"
        self._ev(
            t,
            OrderPlaced,
            source,
            order_id=order_id,
            cart_id=cart_id,
            items=items,
            total=total,
            currency=currency,
            channel=source,
            metadata=Metadata(causation_id=checkout_id),
        )
        self._ev(
            t + self._gap(5 * _SECOND, 60 * _SECOND),
            EmailSent,
            "esp",
            message_id=f"msg-{self.cid}-{self.n + 1}",
            campaign="order-confirmation",
            subject=f"Your order {order_id}",
        )
        x = rng.random()
        if x < 0.05:
            self._ev(
                t + self._gap(10 * _MINUTE, 8 * _HOUR),
                OrderCancelled,
                "oms",
                order_id=order_id,
                reason=rng.choice(_CANCEL_REASONS),
            )
        elif x < 0.14:
            line = rng.choice(items)
            refund = line.unit_price * line.quantity if len(items) > 1 else total
            self._ev(
                t + self._gap(3 * _DAY, 25 * _DAY),
                OrderReturned,
                "oms",
                order_id=order_id,
                amount_refunded=refund,
                reason=rng.choice(_RETURN_REASONS),
            )

    def _campaign(self, t: int) -> None:
        campaign, subject = self.sim.rng.choice(_CAMPAIGNS)
        sent = self._ev(
            t,
            EmailSent,
            "esp",
            message_id=f"msg-{self.cid}-{self.n + 1}",
            campaign=campaign,
            subject=subject,
        )
        self._email_engagement(t, sent, open_p=0.3)

    def _birthday(self, t: int) -> None:
        sent = self._ev(
            t,
            EmailSent,
            "esp",
            message_id=f"msg-{self.cid}-{self.n + 1}",
            campaign="birthday",
            subject=f"Happy birthday, {self.first}!",
        )
        self.bday_at = t + 365 * _DAY  # near enough, for a period of about a year
        self._email_engagement(t, sent, open_p=0.45)  # may unsubscribe: no more birthdays

    def _birthday_after(self, birthday: dt.date, t: int) -> int | None:
        now = self.sim.start + dt.timedelta(milliseconds=t)
        for year in (now.year, now.year + 1):
            day = 28 if (birthday.month, birthday.day) == (2, 29) else birthday.day
            at = dt.datetime(year, birthday.month, day, 9, tzinfo=now.tzinfo)
            if at > now:
                return int((at - self.sim.start).total_seconds() * 1000)
        return None

    def _email_engagement(self, t: int, sent: EmailSent, open_p: float) -> None:
        """Maybe an open, a click and (for marketing) an unsubscribe, after ``t``."""
        rng = self.sim.rng
        if rng.random() >= open_p:
            return
        cause = Metadata(causation_id=sent.event_id, correlation_id=sent.message_id)
        t += _MINUTE + int(rng.expovariate(1 / (3 * _HOUR)))
        self._ev(t, EmailOpened, "esp", message_id=sent.message_id, metadata=cause)
        x = rng.random()
        if x < 0.3:
            t += self._gap(10 * _SECOND, 10 * _MINUTE)
            category = rng.choice(_CATEGORY_NAMES)
            self._ev(
                t,
                EmailClicked,
                "esp",
                message_id=sent.message_id,
                url=f"{_SHOP}/c/{category}?utm_campaign={sent.campaign}",
                metadata=cause,
            )
            if rng.random() < 0.5:
                self._browse(t + self._gap(5 * _SECOND, 30 * _SECOND), self._source(), category)
        elif x < 0.36 and self.marketing and sent.campaign not in ("welcome", "order-confirmation"):
            t += self._gap(10 * _SECOND, 5 * _MINUTE)
            self._ev(
                t,
                EmailUnsubscribed,
                "esp",
                message_id=sent.message_id,
                list_id="marketing",
                metadata=cause,
            )
            self._ev(t, ConsentWithdrawn, "esp", channel="email")
            self.marketing = False
            self.bday_at = None

    def _social(self, t: int) -> None:
        """Posts observed by social listening; sometimes a life event."""
        rng = self.sim.rng
        r = rng.random
        assert self.handle is not None and self.network is not None
        network, handle = self.network, self.handle
        for _ in range(1 + int(r() * 2)):
            product = rng.choice(self.sim.catalogue)
            x = r()
            if x < 0.5:
                template, sentiment = rng.choice(_POSITIVE_POSTS), 0.4 + r() * 0.6
            elif x < 0.8:
                template, sentiment = rng.choice(_NEUTRAL_POSTS), -0.2 + r() * 0.4
            else:
                template, sentiment = rng.choice(_NEGATIVE_POSTS), -1.0 + r() * 0.6
            post_id = f"{network}-{self.number}-{self.n + 1}"
            self._ev(
                t,
                SocialPostObserved,
                "social-listening",
                network=network,
                handle=handle,
                post_id=post_id,
                text=template.format(product=product.name, category=product.category),
                sentiment=round(sentiment, 3),
                url=f"https://{network}.example/{handle[1:]}/{post_id}",
            )
            t += self._gap(2 * _HOUR, 3 * _DAY)
        if r() < 0.18:
            kind, text, detail = rng.choice(_LIFE_EVENTS)
            city = rng.choice(self.country.cities)
            post_id = f"{network}-{self.number}-{self.n + 1}"
            post = self._ev(
                t,
                SocialPostObserved,
                "social-listening",
                network=network,
                handle=handle,
                post_id=post_id,
                text=text.format(city=city.city),
                sentiment=round(0.5 + r() * 0.5, 3),
            )
            t += self._gap(1 * _MINUTE, 2 * _HOUR)
            self._ev(
                t,
                LifeEventDetected,
                "social-listening",
                kind=kind,
                detail=detail.format(city=city.city),
                confidence=round(0.55 + r() * 0.4, 2),
                network=network,
                post_id=post_id,
                metadata=Metadata(causation_id=post.event_id),
            )
            if kind == "moved":
                self._set_location(t + self._gap(1 * _DAY, 14 * _DAY), "web", city)
            elif kind == "married" and r() < 0.3:
                self.last = rng.choice(_LAST_NAMES)
                self._ev(
                    t + self._gap(7 * _DAY, 30 * _DAY),
                    NameSet,
                    "web",
                    first_name=self.first,
                    last_name=self.last,
                )
            elif kind == "new_baby":
                self._ev(
                    t + self._gap(1 * _DAY, 10 * _DAY),
                    PreferenceSet,
                    "web",
                    key="favourite_category",
                    value="baby",
                )

    def _ticket(self, t: int) -> None:
        rng = self.sim.rng
        r = rng.random
        ticket_id = f"tkt-{self.cid}-{self.n + 1}"
        priority = rng.choices(("low", "normal", "high", "urgent"), (0.2, 0.6, 0.15, 0.05))[0]
        self._ev(
            t,
            TicketOpened,
            "helpdesk",
            ticket_id=ticket_id,
            subject=rng.choice(_TICKET_SUBJECTS),
            channel=rng.choice(("email", "chat", "phone")),
            priority=priority,
        )
        if r() < 0.92:
            t += _MINUTE + int(rng.expovariate(1 / (10 * _HOUR)))
            self._ev(
                t,
                TicketResolved,
                "helpdesk",
                ticket_id=ticket_id,
                resolution=rng.choice(_RESOLUTIONS),
            )
            if r() < 0.45:
                t += self._gap(2 * _HOUR, 2 * _DAY)
                nps = rng.choices(range(11), (3, 2, 2, 3, 3, 5, 6, 10, 18, 22, 26))[0]
                comment = None
                if r() < 0.3:
                    comment = "Quick and helpful, thanks." if nps >= 9 else "Took too long."
                self._ev(
                    t,
                    SurveyAnswered,
                    "helpdesk",
                    survey_id=f"nps-{ticket_id}",
                    nps=nps,
                    score=nps * 10.0,
                    comment=comment,
                )

    def _profile_change(self, t: int) -> None:
        rng = self.sim.rng
        x = rng.random()
        source = self._source()
        if x < 0.3:
            key, values = rng.choice(_PREFERENCES)
            self._ev(t, PreferenceSet, source, key=key, value=rng.choice(values))
        elif x < 0.45:
            self.devices += 1
            self._ev(
                t, IdentifierSeen, source, kind="device", value=f"dev-{self.cid}-{self.devices}"
            )
            if rng.random() < 0.5:  # a replacement: the old device goes
                self._ev(
                    t,
                    IdentifierUnlinked,
                    source,
                    kind="device",
                    value=f"dev-{self.cid}-{self.devices - 1}",
                )
        elif x < 0.6:
            if self.phone is None:
                self._add_phone(t, source)
            else:
                if self.sms:
                    self.sms = False
                    self._ev(t, ConsentWithdrawn, source, channel="sms")
                self._ev(t, IdentifierUnlinked, source, kind="phone", value=self.phone)
                self.phone = None
        elif x < 0.8:
            if self.marketing:
                self.marketing = False
                self.bday_at = None
                self._ev(t, ConsentWithdrawn, source, channel="email")
            else:
                self.marketing = True
                self._ev(t, ConsentGiven, source, channel="email")
        elif x < 0.9:
            channel = rng.choice(("push", "sms", "post"))
            self._ev(
                t, ConsentWithdrawn if rng.random() < 0.5 else ConsentGiven, source, channel=channel
            )
        else:
            self._set_location(t, source)

    # --- shared pieces --------------------------------------------------------------------

    def _set_location(self, t: int, source: str, city: _City | None = None) -> None:
        rng = self.sim.rng
        if city is None:
            city = rng.choice(self.country.cities)
        location = Location(
            city=city.city,
            region=city.region,
            country=self.country.code,
            postal_code=f"{city.postal_prefix}{int(rng.random() * 90) + 10}",
            latitude=round(city.latitude + (rng.random() - 0.5) * 0.2, 4),
            longitude=round(city.longitude + (rng.random() - 0.5) * 0.2, 4),
        )
        self._ev(t, LocationSet, source, location=location)

    def _add_phone(self, t: int, source: str) -> None:
        # Unique: a 7, the customer number, then how many events they had fill the digits
        # (a number of the country's length, so it parses as one: see normalise.py).
        spare = self.country.mobile_digits - 8
        events = f"{self.n % 10**spare:0{spare}d}"
        self.phone = f"{self.country.dial} 7{self.number:07d}{events}"
        self._ev(t, IdentifierLinked, source, kind="phone", value=self.phone)
        if self.sim.rng.random() < 0.5:
            self.sms = True
            self._ev(t, ConsentGiven, source, channel="sms")


def generate(
    customers: int,
    *,
    seed: int = 7,
    start: dt.datetime | None = None,
    days: int = 365,
    events_per_customer: float = 40.0,
) -> Iterator[Event]:
    """Yield the events of ``customers`` synthetic customers in ``occurred_at`` order.

    Every event falls in ``[start, start + days)``; ``start`` defaults to
    :data:`DEFAULT_START` and must be timezone-aware. Customers average about
    ``events_per_customer`` events each (never fewer than their signup, about 13). The
    same arguments always yield the same events. See the module docstring for the model.
    """
    if customers < 0:
        raise ValueError(f"`customers` must be >= 0, not {customers}")
    if days < 1:
        raise ValueError(f"`days` must be >= 1, not {days}")
    if events_per_customer <= 0:
        raise ValueError(f"`events_per_customer` must be > 0, not {events_per_customer}")
    if start is None:
        start = DEFAULT_START
    elif start.tzinfo is None or start.utcoffset() is None:
        raise ValueError("`start` must be timezone-aware")
    sim = _Simulation(random.Random(seed), start, days, events_per_customer)
    return sim.run(customers)
