"""
C{/admin/}: key administration and the request log, for admin keys only
(C{SHELLM_ADMIN_KEY}, or a key made with C{shellm keys create --admin}).
Mounted by L{shellm.http.api}; errors are the seed dialect's JSON.  Prompt
templates are a sub-app of their own (L{shellm.http.templates_api}), mounted
at C{/admin/templates}.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from klein import Klein
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.iweb import IRequest
from werkzeug.exceptions import MethodNotAllowed as WerkzeugMethodNotAllowed
from werkzeug.exceptions import NotFound as WerkzeugNotFound

from shellm.errors import (
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    RequestTooLarge,
    ShellmError,
    UnsupportedMediaType,
)
from shellm.http.dialects import seed
from shellm.http.headers import header, presented_token
from shellm.http.templates_api import TemplatesAdmin
from shellm.models import ModelTable
from shellm.routing.auth import Authenticator, AuthRequired, Client
from shellm.routing.cache import ResponseCache
from shellm.state import request_log
from shellm.state.keys import EDITABLE, KeyRecord, KeyStore, NameTaken
from shellm.state.request_log import MAX_PAGE, LogFilter
from shellm.state.templates import TemplateStore

#: Longest rotation grace period.
MAX_GRACE = 7 * 86400


class AdminOnly(ShellmError):
    status = 403
    code = "admin_only"


class Conflict(ShellmError):
    status = 409
    code = "conflict"


def _json(request: IRequest, status: int, body: Any) -> bytes:
    data = json.dumps(body, ensure_ascii=False).encode("utf-8")
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"content-length", b"%d" % len(data))
    request.setHeader(b"x-request-id", request.request_id.encode("ascii"))  # type: ignore[attr-defined]
    return data


def _error(request: IRequest, error: ShellmError) -> bytes:
    if error.code == "auth_required":
        request.setHeader(b"www-authenticate", b'Bearer realm="shellm"')
    if error.retry_after is not None:
        request.setHeader(b"retry-after", str(error.retry_after).encode())
    return _json(request, error.status, seed.error_json(error, request.request_id))  # type: ignore[attr-defined]


def parse_time(field: str, value: Any) -> float:
    """
    A time given as UNIX seconds or ISO 8601 with an offset (C{Z} included).
    """
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00") if value.endswith("Z") else value)
        except ValueError:
            parsed = None
        if parsed is not None and parsed.tzinfo is not None:
            return parsed.timestamp()
    raise InvalidRequest(f"{field} must be UNIX seconds or an ISO 8601 time with an offset")


def check_key_fields(body: dict[str, Any], creating: bool, models: ModelTable, now: float) -> dict[str, Any]:
    """
    The key fields of C{body}, checked; the first bad one is named.
    """
    unknown = sorted(set(body) - set(EDITABLE))
    if unknown:
        raise InvalidRequest(f"{unknown[0]}: unknown field")
    fields: dict[str, Any] = {}
    if creating and "name" not in body:
        raise InvalidRequest("name: required")
    for name, value in body.items():
        fields[name] = _check_field(name, value, models, now)
    return fields


def _check_field(name: str, value: Any, models: ModelTable, now: float) -> Any:
    if name == "name":
        if not isinstance(value, str) or not value.strip() or len(value) > 100 or not value.isprintable():
            raise InvalidRequest("name: must be 1 to 100 printable characters")
        return value.strip()
    if name == "note":
        if value is not None and (not isinstance(value, str) or len(value) > 1000):
            raise InvalidRequest("note: must be text of at most 1000 characters, or null")
        return value
    if name == "models":
        if value is None:
            return None
        if not isinstance(value, list) or not all(isinstance(m, str) for m in value):
            raise InvalidRequest("models: must be a list of model names, or null for every model")
        known = {entry.alias for entry in models} | {entry.provider for entry in models}
        for model in value:
            if model not in known:
                raise InvalidRequest(f"models: {model!r} is not in the model table")
        return tuple(dict.fromkeys(value))
    if name in ("rpm", "daily_tokens", "monthly_tokens"):
        if value is None and name != "rpm":
            return None
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise InvalidRequest(f"{name}: must be a positive integer")
        return value
    if name == "expires_at":
        if value is None:
            return None
        when = parse_time("expires_at", value)
        if when <= now:
            raise InvalidRequest("expires_at: is in the past")
        return when
    raise InvalidRequest(f"{name}: unknown field")  # pragma: no cover


class AdminAPI:
    app = Klein()
    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        authenticator: Authenticator,
        keys: KeyStore,
        models: ModelTable,
        *,
        templates: TemplateStore | None = None,
        max_prompt_chars: int = 50000,
        cache: ResponseCache | None = None,
    ):
        """
        @param templates: the prompt templates; none means C{/admin/templates} is off.
        @param max_prompt_chars: the prompt limit a rendered template obeys.
        @param cache: the response cache shown and cleared at C{/admin/cache}.
        """
        self._clock = clock
        self._authenticator = authenticator
        self._keys = keys
        self._models = models
        self._templates = TemplatesAdmin(self, templates, max_prompt_chars) if templates is not None else None
        self._cache = cache

    def resource(self) -> Any:
        return self.app.resource()

    # -- for the mounted templates sub-app

    def authorize(self, request: IRequest) -> Client:
        return self._admin(request)

    def read_body(self, request: IRequest) -> dict[str, Any]:
        return self._body(request)

    def respond(self, request: IRequest, status: int, body: Any) -> bytes:
        return _json(request, status, body)

    def fail(self, request: IRequest, error: ShellmError) -> bytes:
        return _error(request, error)

    # -- helpers

    def _admin(self, request: IRequest) -> Client:
        token = presented_token(request)
        if not token:
            raise AuthRequired("an admin key is required (Authorization: Bearer <admin key>)")
        client = self._authenticator.authenticate(token)
        if not client.admin:
            raise AdminOnly("this key is not an admin key")
        return client

    @staticmethod
    def _actor(client: Client) -> str:
        return client.id or client.name

    def _body(self, request: IRequest) -> dict[str, Any]:
        kind = (header(request, b"content-type") or "").split(";")[0].strip().lower()
        if kind != "application/json":
            raise UnsupportedMediaType("Content-Type must be application/json")
        content = request.content
        if getattr(content, "overflowed", False):
            # Read past the cap it would be empty, and the error misleading.
            raise RequestTooLarge(f"the request body is larger than {content.cap} bytes")
        content.seek(0)
        raw = content.read()
        if not raw.strip():
            return {}
        body = seed.parse_json_body(raw)
        if not isinstance(body, dict):
            raise InvalidRequest("the body must be a JSON object")
        return body

    def _fields(self, body: dict[str, Any], creating: bool) -> dict[str, Any]:
        return check_key_fields(body, creating, self._models, self._clock.seconds())

    def _now(self) -> float:
        return self._clock.seconds()

    def _env_json(self, client: Client) -> dict[str, Any]:
        return {
            "id": "env:" + client.name,
            "name": client.name,
            "prefix": None,
            "models": sorted(client.models) if client.models is not None else None,
            "rpm": client.rpm,
            "daily_tokens": None,
            "monthly_tokens": None,
            "status": "active",
            "source": "env",
            "read_only": True,
        }

    async def _live(self, key_id: str) -> KeyRecord:
        if key_id.startswith("env:"):
            raise Conflict(f"{key_id} comes from SHELLM_CLIENTS and is read-only here")
        record = await self._keys.get(key_id)
        if record is None or record.revoked_at is not None:
            raise NotFound(f"no live key {key_id}")
        return record

    # -- errors

    @app.handle_errors(ShellmError)
    def shellm_error(self, request: IRequest, failure: Any) -> bytes:
        return _error(request, failure.value)

    @app.handle_errors(NameTaken)
    def name_taken(self, request: IRequest, failure: Any) -> bytes:
        return _error(request, Conflict(f"name: a live key is already called {failure.value.args[0]!r}"))

    @app.handle_errors(WerkzeugNotFound)
    def not_found(self, request: IRequest, failure: Any) -> bytes:
        self._admin(request)
        return _error(request, NotFound(f"no such endpoint: {request.path.decode('ascii', 'replace')[:200]}"))

    @app.handle_errors(WerkzeugMethodNotAllowed)
    def method_not_allowed(self, request: IRequest, failure: Any) -> bytes:
        allowed = failure.value.valid_methods or []
        request.setHeader(b"allow", ", ".join(allowed).encode())
        return _error(request, MethodNotAllowed(f"use {' or '.join(allowed)}"))

    # -- prompt templates

    @app.route("/templates", branch=True)
    def templates(self, request: IRequest) -> Any:
        if self._templates is None:
            self._admin(request)
            raise NotFound("prompt templates need the state store (SHELLM_DB)")
        if not request.postpath:
            request.postpath = [b""]  # the mount point itself is the sub-app's "/"
        return self._templates.resource()

    # -- keys

    @app.route("/keys", methods=["POST"])
    async def create_key(self, request: IRequest) -> bytes:
        admin = self._admin(request)
        fields = self._fields(self._body(request), creating=True)
        record, key = await self._keys.create(self._actor(admin), fields)
        self.log.info("key {id} ({prefix}) created by {actor}", id=record.id, prefix=record.prefix, actor=admin.name)
        await self._authenticator_refresh()
        return _json(request, 201, {**record.to_json(self._now()), "key": key})

    @app.route("/keys", methods=["GET"])
    async def list_keys(self, request: IRequest) -> bytes:
        self._admin(request)
        records = await self._keys.all()
        used = await self._keys.last_used()
        listing = [record.to_json(self._now(), used.get(record.id)) for record in records]
        listing += [self._env_json(client) for client in self._authenticator.clients]
        return _json(request, 200, {"keys": listing})

    @app.route("/keys/<key_id>", methods=["GET"])
    async def show_key(self, request: IRequest, key_id: str) -> bytes:
        self._admin(request)
        for client in self._authenticator.clients:
            if key_id == "env:" + client.name:
                return _json(request, 200, self._env_json(client))
        record = await self._keys.get(key_id)
        if record is None:
            raise NotFound(f"no key {key_id}")
        used = await self._keys.last_used()
        return _json(request, 200, record.to_json(self._now(), used.get(record.id)))

    @app.route("/keys/<key_id>", methods=["PATCH"])
    async def change_key(self, request: IRequest, key_id: str) -> bytes:
        admin = self._admin(request)
        fields = self._fields(self._body(request), creating=False)
        if not fields:
            raise InvalidRequest("give at least one of: " + ", ".join(EDITABLE))
        await self._live(key_id)
        record = await self._keys.update(self._actor(admin), key_id, fields)
        if record is None:
            raise NotFound(f"no live key {key_id}")
        self.log.info("key {id} changed by {actor}: {fields}", id=key_id, actor=admin.name, fields=sorted(fields))
        await self._authenticator_refresh()
        return _json(request, 200, record.to_json(self._now()))

    @app.route("/keys/<key_id>/rotate", methods=["POST"])
    async def rotate_key(self, request: IRequest, key_id: str) -> bytes:
        admin = self._admin(request)
        body = self._body(request)
        unknown = sorted(set(body) - {"grace_seconds"})
        if unknown:
            raise InvalidRequest(f"{unknown[0]}: unknown field")
        grace = body.get("grace_seconds", 0)
        if not isinstance(grace, int | float) or isinstance(grace, bool) or not 0 <= grace <= MAX_GRACE:
            raise InvalidRequest(f"grace_seconds: must be a number of seconds from 0 to {MAX_GRACE}")
        await self._live(key_id)
        rotated = await self._keys.rotate(self._actor(admin), key_id, float(grace))
        if rotated is None:
            raise NotFound(f"no live key {key_id}")
        record, key = rotated
        self.log.info("key {id} rotated by {actor} (grace {grace} s)", id=key_id, actor=admin.name, grace=grace)
        await self._authenticator_refresh()
        return _json(request, 200, {**record.to_json(self._now()), "key": key})

    @app.route("/keys/<key_id>", methods=["DELETE"])
    async def revoke_key(self, request: IRequest, key_id: str) -> bytes:
        admin = self._admin(request)
        await self._live(key_id)
        if not await self._keys.revoke(self._actor(admin), key_id):
            raise NotFound(f"no live key {key_id}")
        self.log.info("key {id} revoked by {actor}", id=key_id, actor=admin.name)
        await self._authenticator_refresh()
        record = await self._keys.get(key_id)
        assert record is not None
        return _json(request, 200, record.to_json(self._now()))

    async def _authenticator_refresh(self) -> None:
        # This node at once; the others within their refresh interval.
        ring = self._authenticator.ring
        if ring is not None:
            await ring.refresh()

    # -- the request log

    def _filter(self, request: IRequest) -> LogFilter:
        args = request.args

        def arg(name: str) -> str | None:
            values = args.get(name.encode())
            return values[0].decode("utf-8", "replace") if values else None

        def when(name: str) -> float | None:
            value = arg(name)
            if value is None:
                return None
            try:
                return float(value)
            except ValueError:
                return parse_time(name, value)

        status = arg("status")
        if status is not None and not status.isdigit():
            raise InvalidRequest("status: must be an HTTP status code")
        return LogFilter(
            since=when("since"),
            until=when("until"),
            key=arg("key"),
            provider=arg("provider"),
            status=int(status) if status is not None else None,
            error=arg("error"),
        )

    @staticmethod
    def _arg(request: IRequest, name: str) -> str | None:
        values = request.args.get(name.encode())
        return values[0].decode("utf-8", "replace") if values else None

    @app.route("/requests", methods=["GET"])
    async def requests(self, request: IRequest) -> bytes:
        self._admin(request)
        where = self._filter(request)
        limit_text = self._arg(request, "limit") or "50"
        if not limit_text.isdigit() or not 1 <= int(limit_text) <= MAX_PAGE:
            raise InvalidRequest(f"limit: must be from 1 to {MAX_PAGE}")
        cursor = self._arg(request, "cursor")
        if cursor is not None and not cursor.isdigit():
            raise InvalidRequest("cursor: not a cursor this API gave")
        page = await request_log.page(
            self._keys.store, where, int(limit_text), int(cursor) if cursor is not None else None
        )
        return _json(request, 200, page)

    @app.route("/stats", methods=["GET"])
    async def stats(self, request: IRequest) -> bytes:
        self._admin(request)
        where = self._filter(request)
        bucket = self._arg(request, "bucket") or "hour"
        if bucket not in ("hour", "day"):
            raise InvalidRequest("bucket: must be hour or day")
        by = self._arg(request, "by")
        if by is not None and by not in ("provider", "key", "model"):
            raise InvalidRequest("by: must be provider, key or model")
        if where.since is None:
            where = LogFilter(self._now() - 86400, where.until, where.key, where.provider, where.status, where.error)
        result = await request_log.stats(self._keys.store, where, 3600 if bucket == "hour" else 86400, by)
        return _json(request, 200, result)

    # -- the response cache

    def _cache_stats(self) -> dict[str, Any]:
        if self._cache is None:
            return {**ResponseCache(self._clock, 0, 1).stats(), "max_bytes": 0}
        return self._cache.stats()

    @app.route("/cache", methods=["GET"])
    def cache_stats(self, request: IRequest) -> bytes:
        self._admin(request)
        return _json(request, 200, self._cache_stats())

    @app.route("/cache", methods=["DELETE"])
    def clear_cache(self, request: IRequest) -> bytes:
        admin = self._admin(request)
        cleared = self._cache.clear() if self._cache is not None else 0
        self.log.info("response cache cleared by {actor}: {count} entries", actor=admin.name, count=cleared)
        return _json(request, 200, {"cleared": cleared, **self._cache_stats()})
