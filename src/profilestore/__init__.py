"""profilestore: an event-sourced customer-profile store.

Events are appended once to an immutable log; projections fold them into one
array-shaped document per customer, each dataset refreshed on its own schedule.

    from profilestore import load_settings, open_store

    with open_store(load_settings(home="./.profilestore")) as store:
        store.append([{"type": "identifier.seen", ...}])
        store.refresh()
        profile = store.find("email", "ann@example.com")
"""

from profilestore.config import Settings, load_settings
from profilestore.documents import Profile
from profilestore.errors import (
    AmbiguousIdentifier,
    ConfigError,
    CustomerNotFound,
    IdentifierNotFound,
    InvalidEvent,
    NotFound,
    ProfileStoreError,
)
from profilestore.eventlog import AppendResult
from profilestore.store import ProfileStore, open_store

__all__ = [
    "AmbiguousIdentifier",
    "AppendResult",
    "ConfigError",
    "CustomerNotFound",
    "IdentifierNotFound",
    "InvalidEvent",
    "NotFound",
    "Profile",
    "ProfileStore",
    "ProfileStoreError",
    "Settings",
    "load_settings",
    "open_store",
]
