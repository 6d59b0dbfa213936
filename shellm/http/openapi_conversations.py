"""
The OpenAPI description of the conversation routes: SheLLM sessions
(C{/sessions}) and the OpenAI Responses API (C{/v1/responses}); merged
into C{/openapi.json} by L{shellm.http.openapi.document}.
"""

from __future__ import annotations

from typing import Any

from shellm.http.openapi_templates import TEMPLATE_NAME

_SECURITY: list[dict[str, list[str]]] = [{"bearer": []}, {"apiKey": []}, {}]


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def _vendor_error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {
            "application/json": {
                "schema": {"type": "object", "required": ["error"], "properties": {"error": {"type": "object"}}}
            }
        },
    }


def _json(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_METADATA = {
    "type": ["object", "null"],
    "maxProperties": 16,
    "additionalProperties": {"type": "string", "maxLength": 512},
    "propertyNames": {"maxLength": 64},
}

SESSION = {
    "type": "object",
    "required": ["id", "object", "model", "system", "metadata", "created_at", "expires_at", "turn_count"],
    "properties": {
        "id": {"type": "string"},
        "object": {"const": "session"},
        "model": {"type": ["string", "null"]},
        "system": {"type": ["string", "null"]},
        "metadata": {"type": "object"},
        "created_at": {"type": "integer"},
        "updated_at": {"type": "integer"},
        "expires_at": {"type": "integer"},
        "turn_count": {"type": "integer"},
        "chars": {"type": "integer"},
        "usage": {"type": "object"},
        "turns": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["seq", "prompt", "answer", "model", "provider", "usage", "created_at"],
                "properties": {
                    "seq": {"type": "integer"},
                    "prompt": {"type": "string"},
                    "answer": {"type": "string"},
                    "model": {"type": ["string", "null"]},
                    "provider": {"type": ["string", "null"]},
                    "usage": {"type": ["object", "null"]},
                    "created_at": {"type": "integer"},
                },
            },
        },
    },
}

RESPONSE = {
    "type": "object",
    "required": ["id", "object", "created_at", "status", "model", "output", "usage"],
    "properties": {
        "id": {"type": "string"},
        "object": {"const": "response"},
        "created_at": {"type": "integer"},
        "status": {"enum": ["completed", "incomplete", "in_progress", "failed"]},
        "model": {"type": "string"},
        "output": {"type": "array", "items": {"type": "object"}},
        "usage": {
            "type": ["object", "null"],
            "properties": {
                "input_tokens": {"type": "integer"},
                "output_tokens": {"type": "integer"},
                "total_tokens": {"type": "integer"},
            },
        },
        "previous_response_id": {"type": ["string", "null"]},
        "history_truncated": {"type": "boolean"},
    },
}


#: OpenAI's C{prompt} (C{ResponsePromptParam}): a SheLLM prompt template.
PROMPT = {
    "type": ["object", "null"],
    "required": ["id"],
    "description": "a prompt template: its text is the first user message, its system before instructions",
    "properties": {
        "id": TEMPLATE_NAME,
        "version": {"type": ["string", "integer", "null"], "description": "default: the latest"},
        "variables": {"type": ["object", "null"], "description": "strings, numbers or input_text parts"},
    },
}


def paths(models: list[str], max_prompt_chars: int) -> dict[str, Any]:
    session_id = [{"name": "session_id", "in": "path", "required": True, "schema": {"type": "string"}}]
    response_id = [{"name": "response_id", "in": "path", "required": True, "schema": {"type": "string"}}]
    native = {code: _error(text) for code, text in (("400", "Invalid request"), ("401", "A valid API key is required"))}
    missing = _error("No such session (unknown, expired, or another key's)")
    vendor = {
        code: _vendor_error(text)
        for code, text in (
            ("400", "Invalid request, naming the field (input items other than text, text.format, tools)"),
            ("401", "A valid API key is required"),
            ("403", "This client may not use the model"),
            ("404", "Unknown model, or no such response (unknown, expired, or another key's)"),
            ("413", "Body too large"),
            ("415", "Not JSON"),
            ("429", "Rate limited, queue full or subscription window spent"),
            ("500", "Internal error"),
            ("502", "The provider failed"),
            ("503", "The provider or the state store is unavailable"),
            ("504", "The provider did not answer in time"),
        )
    }
    stored = {"400": vendor["400"], "401": vendor["401"], "404": vendor["404"], "503": vendor["503"]}
    return {
        "/sessions": {
            "post": {
                "summary": "Start a session: later /completions with its session_id get its turns as history",
                "security": _SECURITY,
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "additionalProperties": False,
                                "properties": {
                                    "model": {"type": ["string", "null"], "enum": [*models, None]},
                                    "system": {"type": ["string", "null"], "maxLength": max_prompt_chars},
                                    "metadata": _METADATA,
                                },
                            }
                        }
                    },
                },
                "responses": {
                    "201": _json("The session", SESSION),
                    **native,
                    "413": _error("Body too large"),
                    "415": _error("Not JSON"),
                    "503": _error("The state store is unavailable"),
                },
            },
            "get": {
                "summary": "The key's own live sessions, oldest first",
                "security": _SECURITY,
                "parameters": [
                    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 100}},
                    {"name": "after", "in": "query", "schema": {"type": "string"}},
                ],
                "responses": {
                    "200": _json(
                        "A page of sessions",
                        {
                            "type": "object",
                            "required": ["object", "data", "has_more"],
                            "properties": {
                                "data": {"type": "array", "items": SESSION},
                                "has_more": {"type": "boolean"},
                            },
                        },
                    ),
                    **native,
                    "404": missing,
                    "503": _error("The state store is unavailable"),
                },
            },
        },
        "/sessions/{session_id}": {
            "get": {
                "summary": "A session with its turns (each with its model, provider and usage)",
                "security": _SECURITY,
                "parameters": session_id,
                "responses": {"200": _json("The session", SESSION), **native, "404": missing},
            },
            "delete": {
                "summary": "Delete a session and its turns",
                "security": _SECURITY,
                "parameters": session_id,
                "responses": {"200": _json("Deleted", {"type": "object"}), **native, "404": missing},
            },
        },
        "/v1/responses": {
            "post": {
                "summary": "OpenAI Responses API: create a response (JSON, or its event stream when stream is true)",
                "security": _SECURITY,
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["model"],
                                "anyOf": [{"required": ["input"]}, {"required": ["prompt"]}],
                                "properties": {
                                    "model": {"type": "string", "enum": models},
                                    "input": {"type": ["string", "array"]},
                                    "prompt": PROMPT,
                                    "instructions": {"type": ["string", "null"]},
                                    "max_output_tokens": {"type": ["integer", "null"], "minimum": 1, "maximum": 128000},
                                    "temperature": {"type": ["number", "null"], "minimum": 0, "maximum": 2},
                                    "top_p": {"type": ["number", "null"], "minimum": 0, "maximum": 1},
                                    "store": {"type": ["boolean", "null"]},
                                    "previous_response_id": {"type": ["string", "null"]},
                                    "metadata": _METADATA,
                                    "stream": {"type": ["boolean", "null"]},
                                },
                            }
                        }
                    },
                },
                "responses": {
                    "200": {
                        "description": "The response, or the Responses event stream when stream is true",
                        "content": {
                            "application/json": {"schema": RESPONSE},
                            "text/event-stream": {"schema": {"type": "object"}},
                        },
                    },
                    **vendor,
                },
            }
        },
        "/v1/responses/{response_id}": {
            "get": {
                "summary": "A stored response",
                "security": _SECURITY,
                "parameters": response_id,
                "responses": {"200": _json("The response", RESPONSE), **stored},
            },
            "delete": {
                "summary": "Delete a stored response",
                "security": _SECURITY,
                "parameters": response_id,
                "responses": {"200": _json("Deleted", {"type": "object"}), **stored},
            },
        },
        "/v1/responses/{response_id}/input_items": {
            "get": {
                "summary": "A stored response's input items",
                "security": _SECURITY,
                "parameters": [
                    *response_id,
                    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 100}},
                    {"name": "order", "in": "query", "schema": {"enum": ["asc", "desc"]}},
                    {"name": "after", "in": "query", "schema": {"type": "string"}},
                ],
                "responses": {"200": _json("A page of input items", {"type": "object"}), **stored},
            }
        },
    }
