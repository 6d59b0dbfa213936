"""
Clients and their keys: who is calling, and what they may use.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable

from attrs import field, frozen

from shellm.errors import ShellmError

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

    def may_use(self, alias: str, provider: str) -> bool:
        return self.models is None or alias in self.models or provider in self.models


#: Who is calling when auth is off.
ANONYMOUS = Client(name="anonymous", key="", rpm=0)


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

    def __init__(self, clients: Iterable[Client]):
        self.replace(clients)

    def replace(self, clients: Iterable[Client]) -> None:
        """
        Swap in a new set of clients (SIGHUP); requests already admitted are
        not affected.
        """
        self._clients = tuple((_digest(c.key), c) for c in clients)

    @property
    def enabled(self) -> bool:
        return bool(self._clients)

    @property
    def clients(self) -> tuple[Client, ...]:
        return tuple(c for _, c in self._clients)

    def authenticate(self, token: str | None) -> Client:
        """
        @raise AuthRequired: when auth is on and C{token} matches no key.
        """
        if not self._clients:
            return ANONYMOUS
        presented = _digest(token or "")
        found = None
        for digest, client in self._clients:
            if hmac.compare_digest(presented, digest) and token:
                found = client
        if found is None:
            raise AuthRequired("a valid API key is required (Authorization: Bearer <key> or x-api-key)")
        return found


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
