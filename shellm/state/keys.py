"""
Client keys an administrator makes, rotates and revokes without a restart,
kept in the state store (so every node sharing it sees them).

A key is C{shellm_} + base62 of 32 random bytes + a 6-character base62
CRC32 checksum, so a typo is told apart from a key that does not exist
without a lookup.  Only C{HMAC-SHA256(secret, key)} is stored; the key is
shown once.  L{KeyRing} keeps every node's view within a second of the
store.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import zlib
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from attrs import frozen
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from shellm.state.schema import SQLITE, table_exists
from shellm.state.store import Cursor, Store, StoreTarget, connect_now

PREFIX = "shellm_"
_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_BODY_LENGTH = 43  # 256 bits in base62
_CHECK_LENGTH = 6
#: Characters of a key shown in lists and logs.
SHOWN_PREFIX = 12
#: How often a node re-reads the keys: a change is in force within twice this.
REFRESH_INTERVAL = 1.0


def _base62(number: int, length: int) -> str:
    digits = []
    for _ in range(length):
        number, digit = divmod(number, 62)
        digits.append(_ALPHABET[digit])
    return "".join(reversed(digits))


def _checksum(body: str) -> str:
    return _base62(zlib.crc32(body.encode("ascii")), _CHECK_LENGTH)


def new_key() -> str:
    """
    A fresh random key (256 bits) with its prefix and checksum.
    """
    body = _base62(int.from_bytes(secrets.token_bytes(32), "big"), _BODY_LENGTH)
    return PREFIX + body + _checksum(body)


def looks_like_key(token: str) -> bool:
    """
    Whether C{token} has the shape of a SheLLM-made key.
    """
    return token.startswith(PREFIX)


def checksum_ok(token: str) -> bool:
    """
    Whether a C{shellm_} token's checksum matches (else it was mistyped).
    """
    rest = token[len(PREFIX) :]
    if len(rest) != _BODY_LENGTH + _CHECK_LENGTH or any(c not in _ALPHABET for c in rest):
        return False
    return hmac.compare_digest(_checksum(rest[:_BODY_LENGTH]), rest[_BODY_LENGTH:])


def load_secret(value: str | None, path: str) -> bytes:
    """
    The server secret keys are hashed with: C{value} (a setting) or the
    content of C{path}, created (0600) with 32 random bytes when missing.
    Nodes sharing a store must share the secret.  Read at start-up only.
    """
    if value:
        return value.encode("utf-8")
    path = os.path.abspath(os.path.expanduser(path))
    try:
        with open(path, "rb") as f:
            secret = f.read().strip()
    except FileNotFoundError:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        secret = secrets.token_hex(32).encode("ascii")
        descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        with os.fdopen(descriptor, "wb") as f:
            f.write(secret + b"\n")
    if len(secret) < 16:
        raise ValueError(f"{path}: the key secret is shorter than 16 bytes")
    return secret


def key_hash(secret: bytes, key: str) -> str:
    return hmac.new(secret, key.encode("utf-8"), hashlib.sha256).hexdigest()


@frozen
class KeyRecord:
    """
    One stored key, without the key itself.
    """

    id: str
    name: str
    prefix: str
    key_hash: str
    prev_hash: str | None
    prev_valid_until: float | None
    models: tuple[str, ...] | None
    rpm: int
    daily_tokens: int | None
    monthly_tokens: int | None
    expires_at: float | None
    note: str | None
    admin: bool
    created_at: float
    updated_at: float
    revoked_at: float | None

    def status(self, now: float) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return "active"

    def to_json(self, now: float, last_used_at: float | None = None) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "prefix": self.prefix,
            "models": list(self.models) if self.models is not None else None,
            "rpm": self.rpm,
            "daily_tokens": self.daily_tokens,
            "monthly_tokens": self.monthly_tokens,
            "expires_at": self.expires_at,
            "note": self.note,
            "admin": self.admin,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "revoked_at": self.revoked_at,
            "last_used_at": last_used_at,
            "rotation_grace_until": self.prev_valid_until if self.prev_hash else None,
            "status": self.status(now),
            "source": "db",
        }


_COLUMNS = (
    "id, name, prefix, key_hash, prev_hash, prev_valid_until, models, rpm, daily_tokens,"
    " monthly_tokens, expires_at, note, admin, created_at, updated_at, revoked_at"
)
#: What PATCH may change.
EDITABLE = ("name", "models", "rpm", "daily_tokens", "monthly_tokens", "expires_at", "note")


def _record(row: Sequence[Any]) -> KeyRecord:
    values = list(row)
    values[6] = tuple(json.loads(values[6])) if values[6] is not None else None
    values[12] = bool(values[12])
    for index in (7, 8, 9):
        values[index] = int(values[index]) if values[index] is not None else None
    return KeyRecord(*values)


class NameTaken(Exception):
    """
    A live key already has that name.
    """


class KeyStore:
    """
    The keys' rows: create, read, change, rotate, revoke; and the audit log.
    """

    def __init__(self, store: Store, secret: bytes | Callable[[], bytes], clock: IReactorTime):
        """
        @param secret: the hashing secret, or what reads it when first
            needed (so a daemon that never sees a stored key makes no file).
        """
        self.store = store
        self._secret = secret
        self._clock = clock

    def secret(self) -> bytes:
        """
        The server secret (read when first needed).
        """
        if callable(self._secret):
            self._secret = self._secret()
        return self._secret

    def hash(self, key: str) -> str:
        return key_hash(self.secret(), key)

    def all(self) -> Deferred[list[KeyRecord]]:
        return ensureDeferred(self._all())

    async def _all(self) -> list[KeyRecord]:
        rows = await self.store.query(f"SELECT {_COLUMNS} FROM api_keys ORDER BY created_at, id")
        return [_record(row) for row in rows]

    def get(self, key_id: str) -> Deferred[KeyRecord | None]:
        return ensureDeferred(self._get(key_id))

    async def _get(self, key_id: str) -> KeyRecord | None:
        rows = await self.store.query(f"SELECT {_COLUMNS} FROM api_keys WHERE id = ?", (key_id,))
        return _record(rows[0]) if rows else None

    def create(self, actor: str, fields: dict[str, Any], admin: bool = False) -> Deferred[tuple[KeyRecord, str]]:
        """
        Store a new key with C{fields} (validated already); fires with its
        record and the key, which is never available again.

        @raise NameTaken: (as a failure) a live key has that name.
        """
        key = new_key()
        now = self._clock.seconds()
        record = KeyRecord(
            id="key_" + secrets.token_hex(8),
            name=fields["name"],
            prefix=key[:SHOWN_PREFIX],
            key_hash=self.hash(key),
            prev_hash=None,
            prev_valid_until=None,
            models=fields.get("models"),
            rpm=fields.get("rpm") or 10,
            daily_tokens=fields.get("daily_tokens"),
            monthly_tokens=fields.get("monthly_tokens"),
            expires_at=fields.get("expires_at"),
            note=fields.get("note"),
            admin=admin,
            created_at=now,
            updated_at=now,
            revoked_at=None,
        )

        def insert(cursor: Cursor) -> None:
            taken = cursor.execute(
                "SELECT 1 FROM api_keys WHERE name = ? AND revoked_at IS NULL", (record.name,)
            ).fetchone()
            if taken is not None:
                raise NameTaken(record.name)
            cursor.execute(
                f"INSERT INTO api_keys ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                _row_of(record),
            )
            _audit(cursor, now, actor, "create", record.id, {"name": record.name, "admin": admin})

        return self.store.interact(insert).addCallback(lambda _: (record, key))

    def update(self, actor: str, key_id: str, changes: dict[str, Any]) -> Deferred[KeyRecord | None]:
        """
        Change the editable fields of a live key; fires with the new record,
        or L{None} when there is no live key C{key_id}.
        """
        now = self._clock.seconds()

        def change(cursor: Cursor) -> KeyRecord | None:
            row = cursor.execute(
                f"SELECT {_COLUMNS} FROM api_keys WHERE id = ? AND revoked_at IS NULL", (key_id,)
            ).fetchone()
            if row is None:
                return None
            if "name" in changes:
                taken = cursor.execute(
                    "SELECT 1 FROM api_keys WHERE name = ? AND revoked_at IS NULL AND id <> ?",
                    (changes["name"], key_id),
                ).fetchone()
                if taken is not None:
                    raise NameTaken(changes["name"])
            values = [_column_value(name, changes[name]) for name in changes]
            assignments = ", ".join(f"{name} = ?" for name in changes)
            cursor.execute(f"UPDATE api_keys SET {assignments}, updated_at = ? WHERE id = ?", (*values, now, key_id))
            _audit(cursor, now, actor, "update", key_id, {"fields": sorted(changes)})
            return _record(cursor.execute(f"SELECT {_COLUMNS} FROM api_keys WHERE id = ?", (key_id,)).fetchone())

        return self.store.interact(change)

    def rotate(self, actor: str, key_id: str, grace_seconds: float) -> Deferred[tuple[KeyRecord, str] | None]:
        """
        A new key for C{key_id}; the old one keeps working for
        C{grace_seconds}.  Fires with the record and the new key, or
        L{None} when there is no live key C{key_id}.
        """
        key = new_key()
        now = self._clock.seconds()

        def rotate(cursor: Cursor) -> tuple[KeyRecord, str] | None:
            row = cursor.execute(
                "SELECT key_hash FROM api_keys WHERE id = ? AND revoked_at IS NULL", (key_id,)
            ).fetchone()
            if row is None:
                return None
            previous = row[0] if grace_seconds > 0 else None
            cursor.execute(
                "UPDATE api_keys SET key_hash = ?, prefix = ?, prev_hash = ?, prev_valid_until = ?,"
                " updated_at = ? WHERE id = ?",
                (
                    self.hash(key),
                    key[:SHOWN_PREFIX],
                    previous,
                    now + grace_seconds if previous else None,
                    now,
                    key_id,
                ),
            )
            _audit(cursor, now, actor, "rotate", key_id, {"grace_seconds": grace_seconds})
            record = _record(cursor.execute(f"SELECT {_COLUMNS} FROM api_keys WHERE id = ?", (key_id,)).fetchone())
            return record, key

        return self.store.interact(rotate)

    def revoke(self, actor: str, key_id: str) -> Deferred[bool]:
        """
        Revoke a live key (the row stays, for the request log); fires with
        whether there was one.
        """
        now = self._clock.seconds()

        def revoke(cursor: Cursor) -> bool:
            row = cursor.execute("SELECT 1 FROM api_keys WHERE id = ? AND revoked_at IS NULL", (key_id,)).fetchone()
            if row is None:
                return False
            cursor.execute(
                "UPDATE api_keys SET revoked_at = ?, updated_at = ?, prev_hash = NULL WHERE id = ?",
                (now, now, key_id),
            )
            _audit(cursor, now, actor, "revoke", key_id, {})
            return True

        return self.store.interact(revoke)

    def audit(self, actor: str, action: str, details: dict[str, Any]) -> Deferred[None]:
        """
        Record an administrative action that changed no key.
        """
        now = self._clock.seconds()
        return self.store.interact(lambda cursor: _audit(cursor, now, actor, action, None, details))

    def last_used(self) -> Deferred[dict[str, float]]:
        """
        When each key was last used, from the request log.
        """
        return self.store.query(
            "SELECT key_id, MAX(time) FROM usage WHERE key_id IS NOT NULL GROUP BY key_id"
        ).addCallback(lambda rows: {row[0]: float(row[1]) for row in rows})


def _column_value(name: str, value: Any) -> Any:
    if name == "models":
        return json.dumps(list(value)) if value is not None else None
    return value


def _row_of(record: KeyRecord) -> tuple[Any, ...]:
    return (
        record.id,
        record.name,
        record.prefix,
        record.key_hash,
        record.prev_hash,
        record.prev_valid_until,
        _column_value("models", record.models),
        record.rpm,
        record.daily_tokens,
        record.monthly_tokens,
        record.expires_at,
        record.note,
        1 if record.admin else 0,
        record.created_at,
        record.updated_at,
        record.revoked_at,
    )


def _audit(cursor: Cursor, now: float, actor: str, action: str, key_id: str | None, details: dict[str, Any]) -> None:
    cursor.execute(
        "INSERT INTO audit_log (at, actor, action, key_id, details) VALUES (?, ?, ?, ?, ?)",
        (now, actor, action, key_id, json.dumps(details, sort_keys=True)),
    )


class KeyRing:
    """
    This node's copy of the stored keys, by hash, re-read every
    L{REFRESH_INTERVAL}: a key made, changed or revoked on any node is in
    force here within two intervals, with no reload.  While the store is
    down the last copy stays in force.
    """

    log = Logger()

    def __init__(self, keys: KeyStore, clock: IReactorTime):
        self.keys = keys
        self._clock = clock
        self._by_hash: dict[str, tuple[KeyRecord, float | None]] = {}
        self.records: tuple[KeyRecord, ...] = ()
        #: Whether the keys were read from the store yet; until then
        #: L{assume_client_keys} stands in (fail closed).
        self.loaded = False
        self.assume_client_keys = False
        self._loop = LoopingCall(self.refresh)
        self._loop.clock = clock

    def now(self) -> float:
        return self._clock.seconds()

    def start(self) -> None:
        self._loop.start(REFRESH_INTERVAL, now=True).addErrback(
            lambda failure: self.log.failure("key refresh stopped", failure)
        )

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()

    def refresh(self) -> Deferred[Any]:
        """
        Re-read the keys now; fires when done (a failure is logged, and the
        last copy kept).
        """
        if not self.keys.store.up:
            return Deferred.fromCoroutine(_nothing())
        reading = self.keys.all()
        reading.addCallback(self.replace)
        reading.addErrback(lambda failure: self.log.warn("could not re-read the keys: {why}", why=str(failure.value)))
        return reading

    def replace(self, records: Iterable[KeyRecord]) -> None:
        by_hash: dict[str, tuple[KeyRecord, float | None]] = {}
        kept = tuple(records)
        for record in kept:
            by_hash[record.key_hash] = (record, None)
            if record.prev_hash is not None and record.revoked_at is None:
                by_hash[record.prev_hash] = (record, record.prev_valid_until)
        self._by_hash, self.records = by_hash, kept
        self.loaded = True

    def find(self, token: str) -> tuple[KeyRecord, float | None] | None:
        """
        The record a presented key hashes to (and, for a rotated-out key,
        until when it is valid), or L{None}.
        """
        digest = self.keys.hash(token)
        found = self._by_hash.get(digest)
        if found is None or not hmac.compare_digest(digest, self._hash_of(found, digest)):
            return None
        return found

    @staticmethod
    def _hash_of(found: tuple[KeyRecord, float | None], digest: str) -> str:
        record, grace = found
        return record.prev_hash or "" if grace is not None else record.key_hash

    @property
    def any_client_keys(self) -> bool:
        """
        Whether any client key was ever made here: from then on, auth is on
        (revoking every key must not open the gateway).
        """
        if not self.loaded:
            return self.assume_client_keys
        return any(not record.admin for record in self.records)

    @property
    def any_admin_keys(self) -> bool:
        return any(record.admin and record.revoked_at is None for record in self.records)


def had_client_keys(target: StoreTarget) -> bool:
    """
    At start-up (never on a running reactor): whether the store holds any
    client key, so that auth is on from the first request, before the
    keys are read.  A database that cannot be asked counts as yes.
    """
    if target.engine == SQLITE and not os.path.exists(target.location):
        return False
    try:
        connection = connect_now(target)
    except Exception:
        return True
    try:
        cursor = Cursor(connection.cursor(), target.engine)
        if not table_exists(cursor, "api_keys"):
            return False
        return cursor.execute("SELECT 1 FROM api_keys WHERE admin = 0 LIMIT 1").fetchone() is not None
    except Exception:
        return True
    finally:
        connection.close()


async def _nothing() -> None:
    return None
