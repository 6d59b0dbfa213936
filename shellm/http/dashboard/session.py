"""
The dashboard's login session: a cookie signed with HMAC-SHA256 under a
secret derived from the server's key secret and the admin key (changing
either ends every session), CSRF tokens bound to the session, and the
security headers every dashboard answer carries.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from typing import Any

from attrs import frozen
from twisted.internet.interfaces import IReactorTime

from shellm.http.headers import header

#: The session cookie's name.
COOKIE = "shellm_dashboard"
#: How long a login lasts.
LIFETIME = 12 * 3600
#: How long a login form may be left open before it is sent.
LOGIN_FORM_LIFETIME = 3600
#: No script but our own file, no style but our own sheet, no other origin,
#: and nobody frames the page.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self';"
    " form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


def derive_secret(key_secret: bytes, admin_key: str | None) -> bytes:
    """
    The signing secret: the server's key secret (shared by every node on one
    store) bound to the admin key, so a new admin key logs everyone out.
    """
    admin = hashlib.sha256((admin_key or "").encode("utf-8")).digest()
    return hmac.new(key_secret, b"shellm dashboard session\0" + admin, hashlib.sha256).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@frozen
class DashboardSession:
    """
    Who logged in (C{admin} for the admin key, else the admin key's id), until
    when, and the session's CSRF token.
    """

    who: str
    expires: float
    csrf: str


class SessionSigner:
    """
    Issues and checks session cookies and login-form tokens.
    """

    def __init__(self, secret: bytes | Any, clock: IReactorTime, lifetime: float = LIFETIME):
        """
        @param secret: the signing secret, or what makes it when first needed
            (so a daemon whose dashboard is never opened reads no secret).
        """
        self._secret = secret
        self._clock = clock
        self.lifetime = lifetime

    def _key(self) -> bytes:
        if callable(self._secret):
            self._secret = self._secret()
        assert isinstance(self._secret, bytes)
        return self._secret

    def _sign(self, purpose: bytes, payload: str) -> str:
        return _b64(hmac.new(self._key(), purpose + b"\0" + payload.encode("ascii"), hashlib.sha256).digest())

    def _signed(self, purpose: bytes, body: dict[str, Any]) -> str:
        payload = _b64(json.dumps(body, separators=(",", ":"), sort_keys=True).encode("utf-8"))
        return payload + "." + self._sign(purpose, payload)

    def _opened(self, purpose: bytes, value: str | None) -> dict[str, Any] | None:
        if not value or value.count(".") != 1 or len(value) > 2000:
            return None
        payload, signature = value.split(".")
        if not hmac.compare_digest(self._sign(purpose, payload), signature):
            return None
        try:
            body = json.loads(_unb64(payload))
        except ValueError:
            return None
        if not isinstance(body, dict):
            return None
        expires = body.get("e")
        if not isinstance(expires, int | float) or expires <= self._clock.seconds():
            return None
        return body

    def issue(self, who: str) -> tuple[str, DashboardSession]:
        """
        A new session for C{who}: the cookie value and what it holds.
        """
        session = DashboardSession(who, self._clock.seconds() + self.lifetime, secrets.token_urlsafe(24))
        return self._signed(b"session", {"w": session.who, "e": session.expires, "c": session.csrf}), session

    def open(self, value: str | None) -> DashboardSession | None:
        """
        The session a cookie holds, or L{None} when it is missing, forged,
        altered or expired.
        """
        body = self._opened(b"session", value)
        if body is None or not isinstance(body.get("w"), str) or not isinstance(body.get("c"), str):
            return None
        return DashboardSession(body["w"], float(body["e"]), body["c"])

    def login_token(self) -> str:
        """
        The CSRF token of a login form (no session exists yet).
        """
        return self._signed(b"login", {"e": self._clock.seconds() + LOGIN_FORM_LIFETIME, "n": secrets.token_hex(8)})

    def login_token_ok(self, token: str | None) -> bool:
        return self._opened(b"login", token) is not None


def csrf_ok(session: DashboardSession, token: str | None) -> bool:
    """
    Whether a form's token is the session's own.
    """
    return token is not None and hmac.compare_digest(session.csrf.encode("ascii"), token.encode("utf-8", "replace"))


def cookie_header(value: str, secure: bool, max_age: int) -> bytes:
    """
    The C{Set-Cookie} value: scoped to the dashboard, out of scripts' reach,
    never sent by another site's page.
    """
    parts = [f"{COOKIE}={value}", "Path=/dashboard", f"Max-Age={max_age}", "HttpOnly", "SameSite=Strict"]
    if secure:
        parts.append("Secure")
    return "; ".join(parts).encode("ascii")


def cookie_value(cookie_header_value: str | None) -> str | None:
    """
    The session cookie's value in a C{Cookie} request header.
    """
    for part in (cookie_header_value or "").split(";"):
        name, _, value = part.strip().partition("=")
        if name == COOKIE:
            return value
    return None


def set_security_headers(request: Any) -> None:
    """
    What every dashboard answer carries, pages and errors alike.
    """
    request.setHeader(b"content-security-policy", CSP.encode("ascii"))
    request.setHeader(b"x-frame-options", b"DENY")
    request.setHeader(b"x-content-type-options", b"nosniff")
    request.setHeader(b"referrer-policy", b"same-origin")
    request.setHeader(b"cache-control", b"no-store")


def same_origin(request: Any) -> bool:
    """
    Whether a form post comes from the dashboard's own pages, when the
    browser says (C{Sec-Fetch-Site}, else C{Origin}); a client that says
    nothing is judged by its CSRF token alone.
    """
    site = header(request, b"sec-fetch-site")
    if site is not None:
        return site in ("same-origin", "none")
    origin = header(request, b"origin")
    if origin is None or origin == "null":
        return origin is None
    host = header(request, b"host") or ""
    return origin.split("://", 1)[-1] == host
