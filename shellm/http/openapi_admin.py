"""
The C{/admin/} part of the OpenAPI document: key administration, the
request log and the response cache (L{shellm.http.admin_api}), and prompt
templates (L{shellm.http.templates_api}).
"""

from __future__ import annotations

from typing import Any

from shellm.http.openapi_templates import TEMPLATE_NAME, TEMPLATE_VARIABLES


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


_ADMIN_ERRORS = {
    "400": _error("Invalid input; the message starts with the field's name"),
    "401": _error("An admin key is required (none, or not a valid key, was sent)"),
    "403": _error("admin_only: a client key was sent"),
    "404": _error("No such key, or /admin/ is off (no admin key is configured)"),
    "415": _error("Content-Type is not application/json"),
    "503": _error("The state store (SHELLM_DB) cannot be reached now"),
}
_SECURITY: list[dict[str, list[str]]] = [{"bearer": []}, {"apiKey": []}]
_LIMIT = {"type": ["integer", "null"], "minimum": 1}


def _key_fields(models: list[str]) -> dict[str, Any]:
    return {
        "name": {"type": "string", "minLength": 1, "maxLength": 100},
        "models": {"type": ["array", "null"], "items": {"type": "string", "enum": models}},
        "rpm": {"type": "integer", "minimum": 1},
        "daily_tokens": _LIMIT,
        "monthly_tokens": _LIMIT,
        "expires_at": {
            "description": "UNIX seconds or ISO 8601 with an offset; in the future",
            "type": ["number", "string", "null"],
        },
        "note": {"type": ["string", "null"], "maxLength": 1000},
    }


_KEY = {
    "type": "object",
    "required": ["id", "name", "models", "rpm", "status", "source"],
    "properties": {
        "id": {"type": "string"},
        "name": {"type": "string"},
        "prefix": {"type": ["string", "null"]},
        "key": {"type": "string", "description": "Only when made or rotated: shown once"},
        "models": {"type": ["array", "null"], "items": {"type": "string"}},
        "rpm": {"type": "integer"},
        "daily_tokens": {"type": ["integer", "null"]},
        "monthly_tokens": {"type": ["integer", "null"]},
        "expires_at": {"type": ["number", "null"]},
        "created_at": {"type": "number"},
        "last_used_at": {"type": ["number", "null"]},
        "revoked_at": {"type": ["number", "null"]},
        "status": {"type": "string", "enum": ["active", "expired", "revoked"]},
        "source": {"type": "string", "enum": ["db", "env"]},
    },
}


_CACHE = {
    "type": "object",
    "required": ["enabled", "entries", "bytes", "hits", "misses", "hit_ratio"],
    "properties": {
        "enabled": {"type": "boolean", "description": "SHELLM_CACHE_TTL is set"},
        "entries": {"type": "integer"},
        "bytes": {"type": "integer"},
        "max_bytes": {"type": "integer"},
        "ttl": {"type": "number"},
        "shared": {"type": "boolean"},
        "hits": {"type": "integer"},
        "misses": {"type": "integer"},
        "bypasses": {"type": "integer"},
        "hit_ratio": {"type": ["number", "null"], "description": "hits / (hits + misses); null before any"},
        "cleared": {"type": "integer", "description": "DELETE only: the entries forgotten"},
    },
}


def _json(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _operation(summary: str, responses: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"summary": summary, "security": _SECURITY, "responses": {**responses, **_ADMIN_ERRORS}, **extra}


def _body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


_KEY_ID = [{"name": "key_id", "in": "path", "required": True, "schema": {"type": "string"}}]


def _query(*names: str) -> list[dict[str, Any]]:
    kinds = {"limit": {"type": "integer", "minimum": 1, "maximum": 200}, "status": {"type": "integer"}}
    return [{"name": n, "in": "query", "required": False, "schema": kinds.get(n, {"type": "string"})} for n in names]


def admin_paths(models: list[str]) -> dict[str, Any]:
    """
    The C{/admin/} operations, for this daemon's model table.
    """
    fields = _key_fields(models)
    create = {"type": "object", "required": ["name"], "additionalProperties": False, "properties": fields}
    change = {"type": "object", "additionalProperties": False, "minProperties": 1, "properties": fields}
    one = _json("The key", _KEY)
    filters = ("since", "until", "key", "provider", "status", "error")
    return {
        **_template_paths(),
        "/admin/keys": {
            "post": _operation(
                "Make a key; the key is in this answer only",
                {"201": _json("The key, with `key`", _KEY), "409": _error("A live key has that name")},
                requestBody=_body(create),
            ),
            "get": _operation(
                "Every key, stored and from SHELLM_CLIENTS (read-only), without secrets",
                {"200": _json("The keys", {"type": "object", "properties": {"keys": {"type": "array"}}})},
            ),
        },
        "/admin/keys/{key_id}": {
            "get": _operation("One key", {"200": one}, parameters=_KEY_ID),
            "patch": _operation(
                "Change a key's name, models, limits, expiry or note",
                {"200": one, "409": _error("Name taken, or a read-only SHELLM_CLIENTS key")},
                parameters=_KEY_ID,
                requestBody=_body(change),
            ),
            "delete": _operation(
                "Revoke a key (404 once revoked)",
                {"200": one, "409": _error("A read-only SHELLM_CLIENTS key")},
                parameters=_KEY_ID,
            ),
        },
        "/admin/keys/{key_id}/rotate": {
            "post": _operation(
                "A new key, shown once; the old one works for grace_seconds",
                {"200": _json("The key, with the new `key`", _KEY), "409": _error("A read-only key")},
                parameters=_KEY_ID,
                requestBody=_body(
                    {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {"grace_seconds": {"type": "number", "minimum": 0, "maximum": 604800}},
                    }
                ),
            ),
        },
        "/admin/requests": {
            "get": _operation(
                "The request log, newest first, in pages (no prompt or answer text)",
                {
                    "200": _json(
                        "A page, and the cursor of the next (null at the end)",
                        {
                            "type": "object",
                            "required": ["requests", "next_cursor"],
                            "properties": {"requests": {"type": "array"}, "next_cursor": {"type": ["string", "null"]}},
                        },
                    )
                },
                parameters=_query(*filters, "limit", "cursor"),
            ),
        },
        "/admin/stats": {
            "get": _operation(
                "Requests, errors by code, p50/p95 latency, tokens and cost per hour or day",
                {"200": _json("The buckets", {"type": "object", "properties": {"buckets": {"type": "array"}}})},
                parameters=[
                    *_query(*filters),
                    {"name": "bucket", "in": "query", "schema": {"type": "string", "enum": ["hour", "day"]}},
                    {"name": "by", "in": "query", "schema": {"type": "string", "enum": ["provider", "key", "model"]}},
                ],
            ),
        },
        "/admin/cache": {
            "get": _operation(
                "The response cache (this node's): entries, bytes, hits, misses, hit_ratio",
                {"200": _json("The cache", _CACHE)},
            ),
            "delete": _operation(
                "Forget every cached answer on this node",
                {"200": _json("How many entries went, and the cache now", _CACHE)},
            ),
        },
    }


_TEMPLATE = {
    "type": "object",
    "required": ["name", "version", "template", "system", "variables", "source", "read_only"],
    "properties": {
        "name": {"type": "string"},
        "version": {"type": "integer"},
        "template": {"type": "string"},
        "system": {"type": ["string", "null"]},
        "variables": {"type": "array", "items": {"type": "string"}},
        "description": {"type": ["string", "null"]},
        "created_at": {"type": "number"},
        "created_by": {"type": ["string", "null"]},
        "source": {"type": "string", "enum": ["store", "folder"]},
        "read_only": {"type": "boolean"},
        "versions": {"type": "array", "items": {"type": "object"}},
    },
}
_NAME = [{"name": "name", "in": "path", "required": True, "schema": TEMPLATE_NAME}]
_VERSION = [
    {"name": "version", "in": "query", "required": False, "schema": {"type": "integer", "minimum": 1, "maximum": 10**9}}
]
_READ_ONLY = _error("template_read_only: the name is a SHELLM_TEMPLATES_DIR file's; or template_full")


def _template_paths() -> dict[str, Any]:
    create = {
        "type": "object",
        "required": ["name", "template"],
        "additionalProperties": False,
        "properties": {
            "name": TEMPLATE_NAME,
            "template": {"type": "string", "minLength": 1, "pattern": "\\S"},
            "system": {"type": ["string", "null"]},
            "variables": {
                "type": ["array", "null"],
                "items": {"type": "string"},
                "description": "when given, exactly the variables the template and system use",
            },
            "description": {"type": ["string", "null"], "maxLength": 1000},
        },
    }
    render = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "variables": TEMPLATE_VARIABLES,
            "version": {
                "type": ["integer", "string", "null"],
                "minimum": 1,
                "maximum": 1000000000,
                "pattern": "^[1-9][0-9]{0,8}$",
            },
        },
    }
    rendered = {
        "type": "object",
        "required": ["name", "version", "prompt", "system"],
        "properties": {
            "name": {"type": "string"},
            "version": {"type": "integer"},
            "prompt": {"type": "string"},
            "system": {"type": ["string", "null"]},
        },
    }
    deleted = {
        "type": "object",
        "required": ["name", "deleted_versions"],
        "properties": {"name": {"type": "string"}, "deleted_versions": {"type": "array", "items": {"type": "integer"}}},
    }
    listing = {
        "type": "object",
        "required": ["templates"],
        "properties": {
            "templates": {"type": "array", "items": {"type": "object"}},
            "folder": {"type": "object", "description": "SHELLM_TEMPLATES_DIR: its path, the files refused and why"},
        },
    }
    return {
        "/admin/templates": {
            "post": _operation(
                "Save a prompt template: version 1 of a new name, else the name's next version",
                {"201": _json("The version made", _TEMPLATE), "409": _READ_ONLY},
                requestBody=_body(create),
            ),
            "get": _operation("Every template, as its latest version stands", {"200": _json("The list", listing)}),
        },
        "/admin/templates/{name}": {
            "get": _operation(
                "A template's latest version, or the one asked for, with the list of its versions",
                {"200": _json("The version", _TEMPLATE)},
                parameters=_NAME + _VERSION,
            ),
            "delete": _operation(
                "Delete every version of a template, or the one asked for (its number is never reused)",
                {"200": _json("What was deleted", deleted), "409": _READ_ONLY},
                parameters=_NAME + _VERSION,
            ),
        },
        "/admin/templates/{name}/render": {
            "post": _operation(
                "Fill a template with variables, as a request would, without running anything",
                {"200": _json("The prompt and system text", rendered)},
                parameters=_NAME,
                requestBody=_body(render),
            ),
        },
    }
