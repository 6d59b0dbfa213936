"""
The OpenAPI 3.1 description of the HTTP API, served at C{/openapi.json}.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from shellm import __version__
from shellm.http import jobs_openapi, openapi_admin, openapi_conversations
from shellm.http.openapi_templates import NO_TEMPLATE, PROMPT_OR_TEMPLATE, TEMPLATE_FIELDS


def _error(description: str) -> dict:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


_ERRORS = {
    "400": _error("Invalid request: bad JSON, a missing or wrong field, an unknown model"),
    "401": _error("A valid API key is required"),
    "403": _error("This client may not use the model"),
    "413": _error("The body is larger than SHELLM_MAX_BODY_BYTES"),
    "415": _error("Content-Type is not application/json"),
    "429": _error(
        "Rate limited, queue full, or quota_exhausted (the provider's subscription window is spent and no "
        "fallback may answer); see Retry-After"
    ),
    "500": _error("Internal error"),
    "502": _error("The provider failed"),
    "503": _error("The provider is unavailable"),
    "504": _error("The provider did not answer in time"),
}

#: One server-sent event, as clients parse it: C{data} holds a JSON object.
SSE_EVENT = {
    "type": "object",
    "required": ["data"],
    "properties": {
        "event": {"type": "string"},
        "data": {"type": "string", "contentMediaType": "application/json"},
        "id": {"type": "string"},
        "retry": {"type": "integer"},
    },
}

#: What any request may get before a route sees it: from the connection
#: (L{shellm.http.web.ShellmChannel}), always in SheLLM's own error shape.
_CONNECTION_ERRORS = {
    "408": _error("The request was not received in full within SHELLM_REQUEST_DEADLINE"),
    "431": _error("The request line or headers are too large (16 KiB, 500 headers)"),
}
_MALFORMED = _error("Not valid HTTP/1.1, a Host or path that is not UTF-8, or a key header sent twice")

_SECURITY = [{"bearer": []}, {"apiKey": []}, {}]

_NO_TEMPLATE = _error(NO_TEMPLATE)


#: The C{cache} field every completion dialect takes (L{shellm.routing.cache}).
CACHE_CONTROL = {
    "type": "object",
    "additionalProperties": False,
    "description": (
        "The response cache (on when the operator sets SHELLM_CACHE_TTL): ttl keeps this answer that many "
        "seconds (at most SHELLM_CACHE_TTL; 0: not kept), no_cache answers afresh (and stores the fresh "
        "answer), no_store does not keep it"
    ),
    "properties": {
        "ttl": {"type": "integer", "minimum": 0, "maximum": 365 * 86400},
        "no_cache": {"type": "boolean"},
        "no_store": {"type": "boolean"},
    },
}

#: The C{cache} field of a completion body: null is as good as left out.
CACHE_FIELD = {"anyOf": [{"$ref": "#/components/schemas/CacheControl"}, {"type": "null"}]}

#: The completion routes the response cache serves, in every dialect.
CACHED_ROUTES = ("/completions", "/completions/stream", "/v1/chat/completions", "/v1/messages", "/v1/responses")

_CACHE_CONTROL_HEADER = {
    "name": "Cache-Control",
    "in": "header",
    "required": False,
    "description": "no-cache: answer afresh; no-store: do not keep the answer (as the cache field's flags)",
    "schema": {"type": "string"},
}

_CACHE_HEADERS = {
    "X-SheLLM-Cache": {
        "description": (
            "When answers are cached: hit (from the cache), miss (run, and kept when it may be) or bypass "
            "(the cache was not read: no_cache, a session turn, a previous_response_id)"
        ),
        "schema": {"type": "string", "enum": ["hit", "miss", "bypass"]},
    },
    "Age": {"description": "On a hit: seconds since the answer was stored", "schema": {"type": "integer"}},
}


def _cached(paths: dict) -> None:
    """
    The cache's field, request header and response headers, on every
    completion route.
    """
    for route in CACHED_ROUTES:
        if route not in paths:
            continue  # a document without the mounted sub-apps' routes
        operation = paths[route]["post"]
        schema = operation["requestBody"]["content"]["application/json"]["schema"]
        if "properties" in schema:
            schema["properties"]["cache"] = CACHE_FIELD
        operation.setdefault("parameters", []).append(_CACHE_CONTROL_HEADER)
        operation["responses"]["200"] = {**operation["responses"]["200"], "headers": _CACHE_HEADERS}


#: Where a prompt may come from a template, and the answer that says which.
TEMPLATED = (
    ("/completions", "200"),
    ("/completions", "202"),
    ("/completions/stream", "200"),
    ("/jobs", "202"),
    ("/v1/responses", "200"),
)

_TEMPLATE_HEADER = {
    "X-SheLLM-Template": {
        "description": "When the prompt was made from a template: its name@version (also in the request log)",
        "schema": {"type": "string"},
    }
}


def _templated(paths: dict) -> None:
    """
    The template header, on every answer whose prompt a template may make.
    """
    for route, status in TEMPLATED:
        if route not in paths:
            continue  # a document without the mounted sub-apps' routes
        responses = paths[route]["post"]["responses"]
        responses[status] = {
            **responses[status],
            "headers": {**responses[status].get("headers", {}), **_TEMPLATE_HEADER},
        }


def _completion_body() -> dict:
    return {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/CompletionRequest"}}},
    }


def rendered(models: Iterable[Any], max_prompt_chars: int) -> bytes:
    """
    The document as served, for this daemon's model entries (each with an
    C{alias} and a C{provider}).  Built on the first request for it, not
    at start-up: few clients ever ask.
    """
    entries = list(models)
    aliases = [entry.alias for entry in entries]
    allowable = aliases + sorted({entry.provider for entry in entries} - set(aliases))
    extra_paths = {
        **openapi_admin.admin_paths(allowable),
        **openapi_conversations.paths(aliases, max_prompt_chars),
    }
    return json.dumps(document(aliases, max_prompt_chars, extra_paths), ensure_ascii=False).encode("utf-8")


def document(models: list[str], max_prompt_chars: int, extra_paths: dict | None = None) -> dict:
    """
    The whole document, for this daemon's model table and prompt limit;
    C{extra_paths} adds the compatible dialects' routes.
    """
    paths = {
        "/completions": {
            "post": {
                "summary": "Run a completion and return it whole",
                "security": _SECURITY,
                "requestBody": _completion_body(),
                "responses": {
                    "200": {
                        "description": "The completion",
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Completion"}}},
                    },
                    **{k: v for k, v in _ERRORS.items()},
                    "404": _NO_TEMPLATE,
                },
            }
        },
        "/completions/stream": {
            "post": {
                "summary": "Run a completion and stream its deltas as server-sent events",
                "security": _SECURITY,
                "requestBody": _completion_body(),
                "responses": {
                    "200": {
                        "description": (
                            "Server-sent events: {content, done: false} per delta, then a final "
                            "{done: true, ...} or {error, message, done: true}"
                        ),
                        "content": {"text/event-stream": {"schema": SSE_EVENT}},
                    },
                    **{k: v for k, v in _ERRORS.items() if k not in ("502", "503", "504")},
                    "404": _NO_TEMPLATE,
                },
            }
        },
        "/providers": {
            "get": {
                "summary": "Providers, their models, health, capabilities and circuits",
                "security": _SECURITY,
                "responses": {
                    "200": {
                        "description": "The providers",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["providers", "models"],
                                    "properties": {"providers": {"type": "array"}, "models": {"type": "array"}},
                                }
                            }
                        },
                    },
                    "401": _ERRORS["401"],
                },
            }
        },
        "/health": {
            "get": {
                "summary": "Liveness and a summary of providers and queues",
                "description": (
                    "Never needs a key.  When auth is on, a caller without a valid key gets the "
                    "short form (status, each provider's usable, queue activity); with a key, or "
                    "when auth is off, every detail."
                ),
                "security": _SECURITY,
                "responses": {
                    "200": {
                        "description": "Health",
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Health"}}},
                    }
                },
            }
        },
        "/usage": {
            "get": {
                "summary": "The caller's usage (all clients' when auth is off)",
                "security": _SECURITY,
                "parameters": [
                    {
                        "name": "period",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string", "enum": ["24h", "7d", "30d"]},
                    }
                ],
                "responses": {
                    "200": {
                        "description": "Totals by provider and model",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["period", "totals", "by_model"],
                                    "properties": {
                                        "period": {"type": "string"},
                                        "client": {"type": ["string", "null"]},
                                        "totals": {"type": "object"},
                                        "by_model": {"type": "array"},
                                    },
                                }
                            }
                        },
                    },
                    "400": _ERRORS["400"],
                    "401": _ERRORS["401"],
                    "500": _ERRORS["500"],
                    "503": _error("The state store (SHELLM_DB) cannot be reached now"),
                },
            }
        },
        "/usage/quota": {
            "get": {
                "summary": "Each provider's subscription windows, as its CLI last reported them",
                "description": (
                    "A provider is exhausted while a window is rejected or used at or above the threshold "
                    "(SHELLM_QUOTA_THRESHOLD), until that window's resets_at; the router then skips it. "
                    "Windows are forgotten at their reset.  Needs a client key when auth is on."
                ),
                "security": _SECURITY,
                "responses": {
                    "200": {
                        "description": "The windows by provider",
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Quota"}}},
                    },
                    "401": _ERRORS["401"],
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "description": (
                    "Needs a client key when auth is on, unless SHELLM_METRICS_PUBLIC=1: the metrics "
                    "name clients and count their tokens."
                ),
                "security": _SECURITY,
                "responses": {
                    "200": {
                        "description": "Metrics in the Prometheus text format",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    "401": _ERRORS["401"],
                },
            }
        },
        "/openapi.json": {
            "get": {
                "summary": "This document",
                "responses": {
                    "200": {
                        "description": "OpenAPI 3.1",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    }
                },
            }
        },
    }
    paths.update(_compatible_paths(models))
    paths.update(jobs_openapi.paths(_ERRORS))
    paths["/completions"]["post"]["responses"]["202"] = {
        "description": "With a callback_url in the body (see POST /jobs): accepted as a job",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/JobAccepted"}}},
    }
    for route in ("/completions", "/completions/stream"):
        paths[route]["post"]["responses"].update(
            {
                "404": _error("session_id names no session of this key (unknown or expired)"),
                "409": _error("session_busy: the session is answering another turn; or session_full"),
            }
        )
    paths.update(extra_paths or {})
    _cached(paths)
    _templated(paths)
    for operations in paths.values():
        for operation in operations.values():
            operation["responses"].setdefault("400", _MALFORMED)
            operation["responses"].update(_CONNECTION_ERRORS)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "SheLLM",
            "version": __version__,
            "description": "One HTTP API for LLM command-line tools and API providers.",
            "license": {"name": "MIT", "identifier": "MIT"},
        },
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "x-api-key"},
            },
            "schemas": {
                **jobs_openapi.schemas(max_prompt_chars),
                "CompletionRequest": {
                    "type": "object",
                    "required": ["model"],
                    "anyOf": PROMPT_OR_TEMPLATE,
                    "additionalProperties": False,
                    "properties": {
                        "model": {"type": "string", "enum": models},
                        "prompt": {"type": "string", "minLength": 1, "maxLength": max_prompt_chars, "pattern": "\\S"},
                        **TEMPLATE_FIELDS,
                        "system": {"type": ["string", "null"], "maxLength": max_prompt_chars},
                        "max_tokens": {"type": ["integer", "null"], "minimum": 1, "maximum": 128000},
                        "request_id": {"type": ["string", "null"], "pattern": "^[A-Za-z0-9._:\\-]{1,128}$"},
                        "fallback": {"type": "boolean"},
                        "response_format": {
                            "anyOf": [{"$ref": "#/components/schemas/ResponseFormat"}, {"type": "null"}]
                        },
                        "session_id": {
                            "type": "string",
                            "minLength": 1,
                            "description": "continue this session (POST /sessions)",
                        },
                        "cache": CACHE_FIELD,
                    },
                },
                "CacheControl": CACHE_CONTROL,
                "ResponseFormat": RESPONSE_FORMAT,
                "Usage": {
                    "type": ["object", "null"],
                    "required": ["input_tokens", "output_tokens"],
                    "properties": {"input_tokens": {"type": "integer"}, "output_tokens": {"type": "integer"}},
                },
                "Completion": {
                    "type": "object",
                    "required": [
                        "content",
                        "provider",
                        "model",
                        "duration_ms",
                        "queued_ms",
                        "request_id",
                        "usage",
                        "cost_usd",
                    ],
                    "properties": {
                        "content": {"type": "string"},
                        "provider": {"type": "string"},
                        "model": {"type": "string"},
                        "duration_ms": {"type": "integer"},
                        "queued_ms": {"type": "integer"},
                        "request_id": {"type": "string"},
                        "usage": {"$ref": "#/components/schemas/Usage"},
                        "cost_usd": {"type": ["number", "null"]},
                        "fallback": {"type": "boolean"},
                        "validated": {
                            "type": "boolean",
                            "description": "With response_format: the answer followed the schema",
                        },
                        "repaired": {"type": "boolean", "description": "It took SheLLM's one repair attempt"},
                        "original_provider": {"type": "string"},
                        "original_error": {"type": "object"},
                    },
                },
                "Error": {
                    "type": "object",
                    "required": ["error", "message"],
                    "properties": {
                        "error": {"type": "string"},
                        "message": {"type": "string"},
                        "request_id": {"type": ["string", "null"]},
                        "retry_after": {"type": "integer"},
                    },
                },
                "QuotaWindow": {
                    "type": "object",
                    "required": ["kind", "status", "used", "resets_at", "observed_at", "source"],
                    "properties": {
                        "kind": {
                            "type": "string",
                            "description": "five_hour, seven_day, daily, or another name the CLI gave "
                            "(seven_day_opus; usage_limit when a limit text named no window)",
                        },
                        "status": {"type": "string", "enum": ["allowed", "allowed_warning", "rejected"]},
                        "used": {"type": ["number", "null"], "minimum": 0, "maximum": 1},
                        "resets_at": {"type": ["number", "null"], "description": "Unix time"},
                        "observed_at": {"type": ["number", "null"], "description": "Unix time"},
                        "source": {"type": "string", "enum": ["stream", "app-server", "error"]},
                        "model": {
                            "type": ["string", "null"],
                            "description": "a per-model quota (gemini's daily ones): the model string passed on, "
                            "(default) for the CLI's default; null: the whole provider",
                        },
                    },
                },
                "QuotaState": {
                    "type": "object",
                    "required": ["state", "resets_at", "windows"],
                    "properties": {
                        "state": {"type": "string", "enum": ["ok", "warning", "exhausted"]},
                        "resets_at": {"type": ["number", "null"], "description": "when exhausted: the last reset"},
                        "windows": {"type": "array", "items": {"$ref": "#/components/schemas/QuotaWindow"}},
                    },
                },
                "Quota": {
                    "type": "object",
                    "required": ["threshold", "providers"],
                    "properties": {
                        "threshold": {"type": "number"},
                        "providers": {
                            "type": "object",
                            "additionalProperties": {"$ref": "#/components/schemas/QuotaState"},
                        },
                    },
                },
                "Health": {
                    "type": "object",
                    "description": (
                        "uptime_seconds, version and each provider's installed, authenticated, "
                        "version, error, circuit and quota ({state: ok|warning|exhausted, resets_at}) "
                        "are only there for a caller with a valid key, "
                        "or when auth is off; without them each provider says only whether it is usable."
                    ),
                    "required": ["status", "providers", "queue"],
                    "properties": {
                        "status": {"type": "string", "enum": ["ok", "degraded", "down"]},
                        "providers": {"type": "object", "additionalProperties": {"type": "object"}},
                        "queue": {"type": "object"},
                        "uptime_seconds": {"type": "integer"},
                        "version": {"type": "string"},
                        "store": {
                            "description": "The state store (SHELLM_DB) and whether it answers now",
                            "type": ["object", "null"],
                            "required": ["engine", "up"],
                            "properties": {
                                "engine": {"type": "string", "enum": ["sqlite", "postgresql"]},
                                "up": {"type": "boolean"},
                            },
                        },
                    },
                },
            },
        },
    }


def _vendor_error(description: str) -> dict:
    return {
        "description": description,
        "content": {
            "application/json": {
                "schema": {"type": "object", "required": ["error"], "properties": {"error": {"type": "object"}}}
            }
        },
    }


#: Structured output: an OpenAI-shaped response_format (the native route
#: takes it too).  The answer is validated against the schema (draft
#: 2020-12), repaired once, or a 502 invalid_output.  A schema larger than
#: 32,000 characters of JSON, nested deeper than 24 levels, with a $ref
#: outside itself or dynamic references is a 400.
RESPONSE_FORMAT = {
    "description": "text (the default), json_object, or json_schema; the answer is validated against the schema",
    "oneOf": [
        {"type": "object", "required": ["type"], "properties": {"type": {"enum": ["text", "json_object"]}}},
        {
            "type": "object",
            "required": ["type", "json_schema"],
            "properties": {
                "type": {"const": "json_schema"},
                "json_schema": {
                    "type": "object",
                    "required": ["schema"],
                    "properties": {
                        "name": {"type": "string"},
                        "strict": {"type": "boolean"},
                        "schema": {"type": "object"},
                    },
                },
            },
        },
    ],
}
_PARAMETERS = {"type": "object", "description": "The JSON Schema of the arguments"}
OPENAI_TOOL = {
    "type": "object",
    "required": ["type", "function"],
    "properties": {
        "type": {"const": "function"},
        "function": {
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"},
                "description": {"type": "string"},
                "parameters": _PARAMETERS,
            },
        },
    },
}
ANTHROPIC_TOOL = {
    "type": "object",
    "required": ["name", "input_schema"],
    "properties": {
        "name": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"},
        "description": {"type": "string"},
        "input_schema": _PARAMETERS,
    },
}
ANTHROPIC_FORMAT = {
    "type": "object",
    "required": ["type", "schema"],
    "properties": {"type": {"const": "json_schema"}, "schema": {"type": "object"}},
}


def _compatible_paths(models: list[str]) -> dict:
    """
    The OpenAI- and Anthropic-compatible routes.  Their bodies follow the
    vendors' own APIs (see the README for what is supported); errors use
    the vendors' envelopes.
    """
    message = {
        "type": "object",
        "required": ["role", "content"],
        "properties": {"role": {"type": "string"}, "content": {}},
    }
    errors = {
        code: _vendor_error(d)
        for code, d in (
            ("400", "Invalid request"),
            ("401", "A valid API key is required"),
            ("403", "This client may not use the model"),
            ("404", "Unknown model"),
            ("413", "Body too large"),
            ("415", "Not JSON"),
            ("429", "Rate limited, queue full or subscription window spent (quota_exhausted)"),
            ("500", "Internal error"),
            ("502", "The provider failed"),
            ("503", "The provider is unavailable"),
            ("504", "The provider did not answer in time"),
        )
    }
    answer = {
        "description": "The answer, or server-sent events when stream is true",
        "content": {"application/json": {"schema": {"type": "object"}}, "text/event-stream": {"schema": SSE_EVENT}},
    }
    model_list = {
        "description": "Models",
        "content": {
            "application/json": {
                "schema": {"type": "object", "required": ["data"], "properties": {"data": {"type": "array"}}}
            }
        },
    }
    return {
        "/v1/chat/completions": {
            "post": {
                "summary": "OpenAI-compatible chat completions",
                "security": _SECURITY,
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["model", "messages"],
                                "properties": {
                                    "model": {"type": "string", "enum": models},
                                    "messages": {"type": "array", "minItems": 1, "items": message},
                                    "stream": {"type": "boolean"},
                                    "max_tokens": {"type": "integer", "minimum": 1, "maximum": 128000},
                                    "temperature": {"type": "number", "minimum": 0, "maximum": 2},
                                    "response_format": {"$ref": "#/components/schemas/ResponseFormat"},
                                    "tools": {"type": "array", "items": OPENAI_TOOL, "maxItems": 64},
                                    "tool_choice": {
                                        "oneOf": [
                                            {"type": "string", "enum": ["auto", "none", "required"]},
                                            {"type": "object", "required": ["type", "function"]},
                                        ]
                                    },
                                    "parallel_tool_calls": {"type": "boolean"},
                                },
                            }
                        }
                    },
                },
                "responses": {"200": answer, **errors},
            }
        },
        "/v1/messages": {
            "post": {
                "summary": "Anthropic-compatible messages",
                "security": _SECURITY,
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["model", "max_tokens", "messages"],
                                "properties": {
                                    "model": {"type": "string", "enum": models},
                                    "max_tokens": {"type": "integer", "minimum": 1, "maximum": 128000},
                                    "messages": {"type": "array", "minItems": 1, "items": message},
                                    "system": {"type": "string"},
                                    "stream": {"type": "boolean"},
                                    "tools": {"type": "array", "items": ANTHROPIC_TOOL, "maxItems": 64},
                                    "tool_choice": {
                                        "type": "object",
                                        "required": ["type"],
                                        "properties": {"type": {"enum": ["auto", "any", "tool", "none"]}},
                                    },
                                    "output_config": {
                                        "type": "object",
                                        "properties": {"format": ANTHROPIC_FORMAT},
                                    },
                                    "output_format": ANTHROPIC_FORMAT,
                                },
                            }
                        }
                    },
                },
                "responses": {"200": answer, **errors},
            }
        },
        "/v1/models": {
            "get": {
                "summary": "Every model alias, owned_by its provider",
                "security": _SECURITY,
                "responses": {"200": model_list, "400": errors["400"], "401": errors["401"]},
            }
        },
        "/v1/models/{model_id}": {
            "get": {
                "summary": "One model alias",
                "security": _SECURITY,
                "parameters": [{"name": "model_id", "in": "path", "required": True, "schema": {"type": "string"}}],
                "responses": {
                    "200": {
                        "description": "The model",
                        "content": {"application/json": {"schema": {"type": "object", "required": ["id"]}}},
                    },
                    "400": errors["400"],
                    "401": errors["401"],
                    "404": errors["404"],
                },
            }
        },
    }
