"""The web UI's login: a signed session cookie standing for an API key.

The cookie holds no key: it names the key by its SHA-256 (what ``[api] keys`` holds), the
key's client name, an expiry and a random nonce, signed with HMAC-SHA256 under
``[api] session_secret`` (or a random per-process secret). Each request looks the digest up
in the configured keys again, so a key removed from the config ends its sessions and the
scopes are always today's. The cookie is HttpOnly and SameSite=Strict (Secure over HTTPS).

Every form that changes something carries a CSRF token as well: the HMAC of the session's
nonce (after login), or of a nonce in a short-lived SameSite=Strict login cookie (the
login form itself, so another site cannot log a browser in under its own key).
"""

from __future__ import annotations

import base64
import hmac
import secrets
import time

import msgspec

from profilestore.api.security import Keys

COOKIE = "profilestore_session"
LOGIN_COOKIE = "profilestore_login"
LOGIN_MINUTES = 30


class Session(msgspec.Struct, frozen=True, array_like=True):
    digest: str
    """The API key's SHA-256, as configured."""
    name: str
    expires: int
    """Unix seconds."""
    nonce: str


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Sessions:
    """Issues and reads session cookies and CSRF tokens under one secret."""

    def __init__(self, secret: str, minutes: int, keys: Keys) -> None:
        self.secret = secret.encode() if secret else secrets.token_bytes(32)
        self.seconds = minutes * 60
        self.keys = keys

    def _sign(self, purpose: str, payload: bytes) -> str:
        return _b64(hmac.new(self.secret, purpose.encode() + b"\x1f" + payload, "sha256").digest())

    # --- sessions ---------------------------------------------------------------------

    def issue(self, presented: str) -> tuple[str, Session, set[str]] | None:
        """A cookie value for a valid key, its session and scopes; None for an unknown key."""
        granted = self.keys.scopes(presented)  # constant-time, as the API's
        if granted is None or granted[0] is None:
            return None
        session = Session(
            digest=Keys.digest(presented),
            name=granted[0],
            expires=int(time.time()) + self.seconds,
            nonce=secrets.token_urlsafe(16),
        )
        payload = msgspec.json.encode(session)
        return f"{_b64(payload)}.{self._sign('session', payload)}", session, self.scopes(session)

    def read(self, cookie: str | None) -> Session | None:
        """The session a cookie stands for; None if absent, forged, expired or its key is
        no longer configured."""
        if not cookie or cookie.count(".") != 1:
            return None
        encoded, signature = cookie.split(".")
        try:
            payload = _unb64(encoded)
        except ValueError:
            return None
        if not hmac.compare_digest(signature, self._sign("session", payload)):
            return None
        try:
            session = msgspec.json.decode(payload, type=Session)
        except msgspec.DecodeError:
            return None
        if session.expires < time.time() or session.digest not in self.keys.keys:
            return None
        return session

    def scopes(self, session: Session | None) -> set[str]:
        """The session key's scopes as configured now (plus any anonymous ones)."""
        if session is None:
            return set(self.keys.anonymous)
        key = self.keys.keys.get(session.digest)
        return (set(key.scopes) if key else set()) | self.keys.anonymous

    # --- CSRF -------------------------------------------------------------------------

    def csrf(self, session: Session) -> str:
        return self._sign("csrf", session.nonce.encode())

    def login_nonce(self) -> str:
        return secrets.token_urlsafe(16)

    def login_csrf(self, nonce: str) -> str:
        return self._sign("login", nonce.encode())

    @staticmethod
    def matches(expected: str, given: str | None) -> bool:
        return bool(given) and hmac.compare_digest(expected, given or "")
