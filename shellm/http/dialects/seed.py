"""
SheLLM's own dialect: C{POST /completions} and C{/completions/stream}.
"""

from __future__ import annotations

import json

from shellm.completion import Completion, CompletionRequest
from shellm.errors import InvalidRequest, ShellmError
from shellm.http.dialects.conversation import clean_text
from shellm.http.sse import frame
from shellm.http.web import valid_request_id
from shellm.models import ModelTable
from shellm.structured import response_format_spec

MAX_TOKENS_LIMIT = 128000
_FIELDS = {"model", "prompt", "system", "max_tokens", "request_id", "fallback", "response_format", "cache"}


def parse_json_body(raw: bytes) -> dict:
    try:
        body = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise InvalidRequest("the request body is not valid UTF-8")
    except json.JSONDecodeError as e:
        raise InvalidRequest(f"the request body is not valid JSON ({e.msg} at position {e.pos})")
    except RecursionError:
        raise InvalidRequest("the request body is nested too deeply")
    except ValueError:
        # Python refuses to convert an integer of more than 4,300 digits
        # (sys.get_int_max_str_digits), with a plain ValueError.
        raise InvalidRequest("the request body holds a number too long to read")
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    return body


def parse_completion_request(
    body: dict, models: ModelTable, max_prompt_chars: int, request_id: str
) -> CompletionRequest:
    """
    Validate a seed body, once, into a L{CompletionRequest}.

    @raise InvalidRequest: naming the first field that is wrong.
    """
    unknown = sorted(set(body) - _FIELDS)
    if unknown:
        raise InvalidRequest(f"unknown field: {unknown[0]}")
    model = body.get("model")
    if model is None:
        raise InvalidRequest("missing required field: model")
    if not isinstance(model, str):
        raise InvalidRequest('field "model" must be a string')
    prompt = body.get("prompt")
    if prompt is None:
        raise InvalidRequest("missing required field: prompt")
    if not isinstance(prompt, str):
        raise InvalidRequest('field "prompt" must be a string')
    # Checked as the CLI will get it: a prompt of NULs is empty once cleaned.
    if not clean_text(prompt).strip():
        raise InvalidRequest('field "prompt" must not be empty')
    if len(prompt) > max_prompt_chars:
        raise InvalidRequest(f"prompt exceeds the maximum length of {max_prompt_chars} characters (got {len(prompt)})")
    system = body.get("system")
    if system is not None and not isinstance(system, str):
        raise InvalidRequest('field "system" must be a string')
    if system is not None and len(system) > max_prompt_chars:
        raise InvalidRequest(f"system exceeds the maximum length of {max_prompt_chars} characters (got {len(system)})")
    max_tokens = body.get("max_tokens")
    if isinstance(max_tokens, float) and max_tokens.is_integer():
        max_tokens = int(max_tokens)  # JSON does not tell 1 from 1.0
    if max_tokens is not None and (
        not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or not 1 <= max_tokens <= MAX_TOKENS_LIMIT
    ):
        raise InvalidRequest(f'field "max_tokens" must be an integer between 1 and {MAX_TOKENS_LIMIT}')
    given_id = body.get("request_id")
    if given_id is not None:
        if not isinstance(given_id, str) or not valid_request_id(given_id):
            raise InvalidRequest('field "request_id" must be 1 to 128 characters of letters, digits and . _ : -')
        request_id = given_id
    fallback = body.get("fallback", True)
    if not isinstance(fallback, bool):
        raise InvalidRequest('field "fallback" must be true or false')
    entry = models.resolve(model)
    if entry is None:
        raise InvalidRequest(f"unknown model: {model[:100]}. GET /providers lists the models")
    output = response_format_spec(body.get("response_format"))
    system = clean_text(system) if system else None
    if output is not None:
        system = "\n\n".join(filter(None, [system, output.instruction()]))
    return CompletionRequest(
        model=model,
        entry=entry,
        prompt=clean_text(prompt),
        system=system,
        max_tokens=max_tokens,
        request_id=request_id,
        fallback=fallback,
        output=output,
    )


def parse_request(body: dict, models: ModelTable, max_prompt_chars: int, request_id: str):
    """
    The same signature as the compatible dialects' parsers.
    """
    return parse_completion_request(body, models, max_prompt_chars, request_id), None


def error_json(error: ShellmError, request_id: str) -> dict:
    return {**error.to_json(), "request_id": request_id}


def completion_json(completion: Completion) -> dict:
    body = {
        "content": completion.content,
        "provider": completion.provider,
        "model": completion.model,
        "duration_ms": completion.duration_ms,
        "queued_ms": completion.queued_ms,
        "request_id": completion.request_id,
        "usage": completion.usage.to_json() if completion.usage else None,
        "cost_usd": completion.cost_usd,
    }
    if completion.answer is not None:
        body["validated"] = completion.answer.validated
        body["repaired"] = completion.answer.repaired
    if completion.fallback is not None:
        body["fallback"] = True
        body["original_provider"] = completion.fallback.original_provider
        body["original_error"] = completion.fallback.original_error
    return body


def delta_event(text: str) -> dict:
    return {"content": text, "done": False}


def final_event(completion: Completion) -> dict:
    body = completion_json(completion)
    body["content"] = ""
    return {"content": "", "done": True, **{k: v for k, v in body.items() if k != "content"}}


def error_event(error: ShellmError, request_id: str | None) -> dict:
    return {**error.to_json(), "done": True, "request_id": request_id}


class SeedStream:
    """
    The seed dialect's stream: one C{data:} frame per delta, then the final
    event or an error event.
    """

    def __init__(self, request_id: str):
        self._request_id = request_id

    def start(self) -> list[bytes]:
        return []

    def delta(self, text: str) -> list[bytes]:
        return [frame(delta_event(text))]

    def finish(self, completion: Completion) -> list[bytes]:
        return [frame(final_event(completion))]

    def fail(self, error: ShellmError) -> list[bytes]:
        return [frame(error_event(error, self._request_id))]
