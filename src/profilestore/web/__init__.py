"""The customer-360 web UI, served by ``profilestore serve`` under ``/ui``.

Server-rendered Jinja templates with htmx for the timeline's partial swaps (vendored in
``static/``: no build step, no CDN). Like the API it is a thin edge over
:class:`~profilestore.store.ProfileStore`, protected by the same API keys: a login form
trades a key for a signed session cookie (:mod:`profilestore.web.session`), the pages need
the ``read`` scope, a customer's raw events and the audit page ``audit``.

- :mod:`~profilestore.web.pages`: the routes (the router the app factory mounts)
- :mod:`~profilestore.web.views`: what a page shows, read through the store
- :mod:`~profilestore.web.render`: the Jinja environment (autoescape on) and headers
"""

from __future__ import annotations

from profilestore.web.pages import ROUTER, UI
from profilestore.web.session import Sessions

__all__ = ["ROUTER", "UI", "Sessions"]
