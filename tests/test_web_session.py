"""The web UI's session cookie: signed, expiring, and only as good as its key today."""

from __future__ import annotations

import hashlib

import pytest

from profilestore.api.security import Keys
from profilestore.config import ApiKey
from profilestore.web import session as session_module
from profilestore.web.session import Sessions

KEY = "a-key"


def _keys(*scopes: str) -> Keys:
    digest = hashlib.sha256(KEY.encode()).hexdigest()
    return Keys([ApiKey(name="support", sha256=digest, scopes=list(scopes))], [])


def test_a_cookie_names_the_key_by_digest_and_reads_back() -> None:
    sessions = Sessions("secret", 60, _keys("read"))
    issued = sessions.issue(KEY)
    assert issued is not None
    cookie, session, scopes = issued
    assert KEY not in cookie and scopes == {"read"}
    assert sessions.read(cookie) == session
    assert sessions.issue("another key") is None


def test_a_forged_or_foreign_cookie_is_no_session() -> None:
    sessions = Sessions("secret", 60, _keys("read"))
    issued = sessions.issue(KEY)
    assert issued is not None
    cookie = issued[0]
    payload, signature = cookie.split(".")
    assert sessions.read(f"{payload}.{signature[:-2]}AA") is None
    assert sessions.read("garbage") is None and sessions.read(None) is None
    assert Sessions("other secret", 60, _keys("read")).read(cookie) is None


def test_a_session_ends_when_it_expires_or_its_key_is_removed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sessions = Sessions("secret", 1, _keys("read", "audit"))
    issued = sessions.issue(KEY)
    assert issued is not None
    cookie = issued[0]
    now = session_module.time.time()
    monkeypatch.setattr(session_module.time, "time", lambda: now + 61)
    assert sessions.read(cookie) is None
    monkeypatch.undo()
    assert Sessions("secret", 1, Keys([], [])).read(cookie) is None
    narrowed = Sessions("secret", 1, _keys("read"))  # the scopes are today's config
    assert narrowed.scopes(narrowed.read(cookie)) == {"read"}


def test_csrf_tokens_are_bound_to_their_session_or_login_nonce() -> None:
    sessions = Sessions("secret", 60, _keys("read"))
    first, second = sessions.issue(KEY), sessions.issue(KEY)
    assert first is not None and second is not None
    assert sessions.csrf(first[1]) != sessions.csrf(second[1])
    assert sessions.matches(sessions.csrf(first[1]), sessions.csrf(first[1]))
    assert not sessions.matches(sessions.csrf(first[1]), None)
    nonce = sessions.login_nonce()
    assert sessions.login_csrf(nonce) != sessions.login_csrf(sessions.login_nonce())
