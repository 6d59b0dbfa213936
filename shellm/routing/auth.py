"""
Clients and their keys: who is calling, and what they may use.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable
from typing import TYPE_CHECKING

from attrs import field, frozen

from shellm.errors import ShellmError
from shellm.state.keys import checksum_ok, looks_like_key

if TYPE_CHECKING:
    from shellm.state.keys import KeyRing

DEFAULT_RPM = 10


class AuthRequired(ShellmError):
    status = 401
    code = "auth_required"


class ModelNotAllowed(ShellmError):
    status = 403
    code = "model_not_allowed"


@frozen
class Client:
    """
    @ivar models: the providers and aliases this client may use; L{None}
        means all.
    """

    name: str
    key: str = field(repr=False)
    rpm: int = DEFAULT_RPM
    models: frozenset[str] | None = None
    #: The stored key's id (keys made with the admin API); limits, budgets
    #: and usage follow it, so a renamed or rotated key keeps them.
    id: str | None = None
    admin: bool = False
    daily_tokens: int | None = None
    monthly_tokens: int | None = None

    @property
    def scope(self) -> str:
        """
        What limits and usage are counted under.
        """
        return self.id if self.id is not None else self.name

    def may_use(self, alias: str, provider: str) -> bool:
        return self.models is None or alias in self.models or provider in self.models


#: Who is calling when auth is off.
ANONYMOUS = Client(name="anonymous", key="", rpm=0)
#: Who is calling with SHELLM_ADMIN_KEY.
ADMIN = Client(name="admin", key="", rpm=0, admin=True)


def parse_clients(text: str) -> tuple[Client, ...]:
    """
    Parse C{SHELLM_CLIENTS}: C{{"app": {"key": "...", "rpm": 10, "models":
    ["claude"]}}}.  An empty value means auth is off.

    @raise ValueError: for anything malformed; never silently ignored.
    """
    if not text.strip():
        return ()
    value = json.loads(text)
    if not isinstance(value, dict):
        raise ValueError('must be a JSON object: {"<client>": {"key": "<token>", "rpm": 10}}')
    clients, keys = [], set()
    for name, spec in value.items():
        if not name or not isinstance(spec, dict):
            raise ValueError(f"client {name!r} must be an object with a key")
        key = spec.get("key")
        if not isinstance(key, str) or len(key) < 16 or not key.isprintable() or " " in key:
            raise ValueError(f"client {name!r} needs a key of at least 16 printable characters")
        if key in keys:
            raise ValueError(f"client {name!r} reuses another client's key")
        keys.add(key)
        rpm = spec.get("rpm", DEFAULT_RPM)
        if not isinstance(rpm, int) or isinstance(rpm, bool) or rpm < 1:
            raise ValueError(f"client {name!r}: rpm must be a positive integer")
        models = spec.get("models")
        if models is not None and (not isinstance(models, list) or not all(isinstance(m, str) for m in models)):
            raise ValueError(f"client {name!r}: models must be a list of names")
        unknown = set(spec) - {"key", "rpm", "models"}
        if unknown:
            raise ValueError(f"client {name!r}: unknown field {sorted(unknown)[0]}")
        clients.append(Client(name, key, rpm, frozenset(models) if models is not None else None))
    return tuple(clients)


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8")).digest()


class Authenticator:
    """
    Matches a presented token against every configured key in constant
    time: each comparison is of two equal-length digests, and every key is
    compared whatever matched before, so timing reveals neither which key
    nor how much of one matched.
    """

    def __init__(self, clients: Iterable[Client], ring: KeyRing | None = None, admin_key: str | None = None):
        """
        @param ring: the keys made with the admin API, if any.
        @param admin_key: C{SHELLM_ADMIN_KEY}, if set.
        """
        self.ring = ring
        self._admin_digest = _digest(admin_key) if admin_key else None
        self.replace(clients)

    def replace(self, clients: Iterable[Client]) -> None:
        """
        Swap in a new set of clients (SIGHUP); requests already admitted are
        not affected.
        """
        self._clients = tuple((_digest(c.key), c) for c in clients)

    @property
    def enabled(self) -> bool:
        return bool(self._clients) or (self.ring is not None and self.ring.any_client_keys)

    @property
    def admin_enabled(self) -> bool:
        """
        Whether an admin key exists (else C{/admin/} is not there).
        """
        return self._admin_digest is not None or (self.ring is not None and self.ring.any_admin_keys)

    @property
    def admin_key_set(self) -> bool:
        """
        Whether C{SHELLM_ADMIN_KEY} is set.
        """
        return self._admin_digest is not None

    @property
    def clients(self) -> tuple[Client, ...]:
        return tuple(c for _, c in self._clients)

    def authenticate(self, token: str | None) -> Client:
        """
        @raise AuthRequired: when auth is on and C{token} matches no key.
        """
        presented = _digest(token or "")
        if token and self._admin_digest is not None and hmac.compare_digest(presented, self._admin_digest):
            return ADMIN
        stored = self.ring is not None and token is not None and looks_like_key(token)
        if stored and token is not None and checksum_ok(token):
            client = self._stored(token)
            if client is not None:
                return client
        if not self.enabled:
            return ANONYMOUS
        found = None
        for digest, client in self._clients:
            if hmac.compare_digest(presented, digest) and token:
                found = client
        if found is None:
            if stored and token is not None and not checksum_ok(token):
                raise AuthRequired("this key is mistyped: its checksum does not match")
            if stored:
                raise AuthRequired("this key is not known (it may have been deleted)")
            raise AuthRequired("a valid API key is required (Authorization: Bearer <key> or x-api-key)")
        return found

    def _stored(self, token: str) -> Client | None:
        """
        The client of a stored key, L{None} if no stored key matches (it
        may still be a C{SHELLM_CLIENTS} key).

        @raise AuthRequired: the key is revoked, rotated out or expired.
        """
        assert self.ring is not None
        found = self.ring.find(token)
        if found is None:
            return None
        record, grace_until = found
        now = self.ring.now()
        if record.revoked_at is not None:
            raise AuthRequired("this key was revoked")
        if grace_until is not None and grace_until <= now:
            raise AuthRequired("this key was rotated; use its replacement")
        if record.expires_at is not None and record.expires_at <= now:
            raise AuthRequired("this key expired")
        return Client(
            name=record.name,
            key="",
            rpm=record.rpm,
            models=frozenset(record.models) if record.models is not None else None,
            id=record.id,
            admin=record.admin,
            daily_tokens=record.daily_tokens,
            monthly_tokens=record.monthly_tokens,
        )


def token_from_headers(authorization: str | None, api_key: str | None) -> str | None:
    """
    C{Authorization: Bearer <token>} (any case of "Bearer"), else C{x-api-key}.
    """
    if authorization:
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    if api_key and api_key.strip():
        return api_key.strip()
    return None
