"""
The OpenAPI description of the jobs API (L{shellm.http.jobs_api}), added
to C{/openapi.json} by L{shellm.http.openapi.document}.
"""

from __future__ import annotations

from typing import Any

from shellm.http.openapi_templates import NO_TEMPLATE, PROMPT_OR_TEMPLATE, TEMPLATE_FIELDS
from shellm.state.jobs import STATUSES


def _json(description: str, ref: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": {"$ref": ref}}}}


_SECURITY: list[dict[str, list[str]]] = [{"bearer": []}, {"apiKey": []}, {}]
_JOB_ID = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}
#: A callback URL SheLLM takes: http(s), a host, no credentials.
CALLBACK_URL = {
    "type": ["string", "null"],
    "maxLength": 2048,
    "pattern": "^https?://[A-Za-z0-9.-]+(:[0-9]{1,4})?(/[A-Za-z0-9._~/-]*)?$",
    "description": "POSTed the finished job, signed in the Standard Webhooks format",
}


def paths(errors: dict[str, Any]) -> dict[str, Any]:
    """
    The C{/jobs} routes; C{errors} are the usual error answers by status.
    """
    common = {k: errors[k] for k in ("400", "401", "500")}
    return {
        "/jobs": {
            "post": {
                "summary": "Accept a /completions body to run later; the result is polled or called back",
                "security": _SECURITY,
                "parameters": [
                    {
                        "name": "Idempotency-Key",
                        "in": "header",
                        "required": False,
                        "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[!-~]+$"},
                        "description": "the same key and body within 24 h answer the same job",
                    }
                ],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/JobRequest"}}},
                },
                "responses": {
                    "202": _json("Accepted: stored, and queued", "#/components/schemas/JobAccepted"),
                    "200": _json("The job this Idempotency-Key already names", "#/components/schemas/JobAccepted"),
                    "422": errors["400"] | {"description": "The Idempotency-Key was used with another body"},
                    "404": errors["400"] | {"description": NO_TEMPLATE},
                    **{k: v for k, v in errors.items() if k not in ("502", "504")},
                },
            },
            "get": {
                "summary": "The key's own jobs, newest first",
                "security": _SECURITY,
                "parameters": [
                    {"name": "status", "in": "query", "schema": {"type": "string", "enum": list(STATUSES)}},
                    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 100}},
                    {"name": "cursor", "in": "query", "schema": {"type": "string"}},
                ],
                "responses": {
                    "200": _json("A page of jobs", "#/components/schemas/JobList"),
                    **common,
                    "503": errors["503"],
                },
            },
        },
        "/jobs/{job_id}": {
            "get": {
                "summary": "A job: status, timestamps, attempts, result or error, webhook deliveries",
                "security": _SECURITY,
                "parameters": [_JOB_ID],
                "responses": {
                    "200": _json("The job", "#/components/schemas/Job"),
                    "404": errors["400"] | {"description": "No such job (or another key's)"},
                    **common,
                    "503": errors["503"],
                },
            },
            "delete": {
                "summary": "Cancel a job: a queued one never runs, a running CLI is stopped",
                "security": _SECURITY,
                "parameters": [_JOB_ID],
                "responses": {
                    "200": _json("The job, cancelled (or as it ended)", "#/components/schemas/Job"),
                    "404": errors["400"] | {"description": "No such job (or another key's)"},
                    **common,
                    "503": errors["503"],
                },
            },
        },
        "/jobs/{job_id}/redeliver": {
            "post": {
                "summary": "Send the job's webhook again",
                "security": _SECURITY,
                "parameters": [_JOB_ID],
                "responses": {
                    "202": _json("Queued for delivery", "#/components/schemas/Job"),
                    "409": errors["400"] | {"description": "No webhook to send (no callback_url, or not finished)"},
                    "404": errors["400"] | {"description": "No such job (or another key's)"},
                    **common,
                    "503": errors["503"],
                },
            }
        },
    }


def schemas(max_prompt_chars: int) -> dict[str, Any]:
    job_json = {
        "type": "object",
        "required": ["id", "object", "status", "created_at", "attempts"],
        "properties": {
            "id": {"type": "string"},
            "object": {"const": "job"},
            "status": {"type": "string", "enum": list(STATUSES)},
            "created_at": {"type": "number"},
            "started_at": {"type": ["number", "null"]},
            "finished_at": {"type": ["number", "null"]},
            "attempts": {"type": "integer", "description": "runs started (an interrupted run is retried once)"},
            "callback_url": {"type": ["string", "null"]},
            "metadata": {"type": ["object", "null"]},
            "result": {
                "description": "when succeeded: the /completions answer",
                "anyOf": [{"$ref": "#/components/schemas/Completion"}, {"type": "null"}],
            },
            "error": {"type": ["object", "null"], "description": "when failed or cancelled: {error, message}"},
            "deliveries": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "id": {"type": "string", "description": "the webhook-id header"},
                        "url": {"type": "string"},
                        "state": {"type": "string", "enum": ["pending", "delivered", "gone", "failed"]},
                        "next_attempt_at": {"type": ["number", "null"]},
                        "attempts": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "properties": {
                                    "attempt": {"type": "integer"},
                                    "at": {"type": "number"},
                                    "status_code": {"type": ["integer", "null"]},
                                    "error": {"type": ["string", "null"]},
                                },
                            },
                        },
                    },
                },
            },
        },
    }
    return {
        "JobRequest": {
            "type": "object",
            "required": ["model"],
            "anyOf": PROMPT_OR_TEMPLATE,
            "additionalProperties": False,
            "description": "A /completions body, plus callback_url and metadata (a template is rendered at once)",
            **_job_request(max_prompt_chars),
        },
        "JobAccepted": {
            "type": "object",
            "required": ["id", "object", "status", "status_url"],
            "properties": {
                "id": {"type": "string"},
                "object": {"const": "job"},
                "status": {"type": "string", "enum": list(STATUSES)},
                "status_url": {"type": "string"},
            },
        },
        "Job": job_json,
        "JobList": {
            "type": "object",
            "required": ["object", "data", "next_cursor"],
            "properties": {
                "object": {"const": "list"},
                "data": {"type": "array", "items": {"$ref": "#/components/schemas/Job"}},
                "next_cursor": {"type": ["string", "null"]},
            },
        },
    }


def _job_request(max_prompt_chars: int) -> dict[str, Any]:
    return {
        "properties": {
            "model": {"$ref": "#/components/schemas/CompletionRequest/properties/model"},
            "prompt": {"type": "string", "minLength": 1, "maxLength": max_prompt_chars, "pattern": "\\S"},
            "system": {"type": ["string", "null"], "maxLength": max_prompt_chars},
            **TEMPLATE_FIELDS,
            "max_tokens": {"type": ["integer", "null"], "minimum": 1, "maximum": 128000},
            "request_id": {"type": ["string", "null"], "pattern": "^[A-Za-z0-9._:\\-]{1,128}$"},
            "fallback": {"type": "boolean"},
            "callback_url": CALLBACK_URL,
            "metadata": {"type": ["object", "null"], "description": "kept with the job, at most 4 KiB of JSON"},
        },
    }
