"""
The OpenAI Responses dialect (C{/v1/responses}): the request body reduced
to text turns, and the response object and its event stream.  Errors use
the OpenAI envelope (L{shellm.http.dialects.openai.error_json}).
"""

from __future__ import annotations

import secrets
from typing import Any

from attrs import frozen

from shellm.completion import Completion
from shellm.errors import ShellmError
from shellm.http.dialects.conversation import ASSISTANT, SYSTEM, USER, InvalidField, Turn, number_field
from shellm.http.dialects.openai import error_json
from shellm.http.sse import frame

MAX_OUTPUT_TOKENS = 128000
_ROLES = {"system": SYSTEM, "developer": SYSTEM, "user": USER, "assistant": ASSISTANT}
_TEXT_PARTS = {"input_text", "output_text", "text"}
#: Fields read below, and fields that change nothing SheLLM does (accepted,
#: as the SDKs and LangChain send some of them by default).
_FIELDS = {
    "model",
    "input",
    "instructions",
    "max_output_tokens",
    "temperature",
    "top_p",
    "store",
    "previous_response_id",
    "metadata",
    "stream",
    "text",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "truncation",
    "user",
    "safety_identifier",
    "prompt_cache_key",
    "service_tier",
    "include",
    "reasoning",
    "stream_options",
    "prompt",
    # SheLLM's own: the response cache's controls (read by the API).
    "cache",
}


@frozen
class ResponsesRequest:
    model: str
    turns: tuple[Turn, ...]
    instructions: str | None
    max_output_tokens: int | None
    temperature: float | None
    top_p: float | None
    store: bool
    previous_response_id: str | None
    metadata: dict[str, str]
    stream: bool
    #: The prompt template used, as the response repeats it (C{id},
    #: C{version}, C{variables}).
    prompt: dict[str, Any] | None = None


def new_response_id() -> str:
    return "resp_" + secrets.token_hex(16)


def _text_of(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise InvalidField(f"{where}.content must be a string or a list of text parts", f"{where}.content")
    texts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in _TEXT_PARTS and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif isinstance(kind, str):
            raise InvalidField(
                f'{where}.content[{j}]: content type "{kind[:50]}" is not supported; SheLLM takes text only',
                f"{where}.content[{j}].type",
            )
        else:
            raise InvalidField(f'{where}.content[{j}] must be {{"type": "input_text", "text": "..."}}', where)
    return "\n".join(texts)


def parse_input(value: Any) -> tuple[Turn, ...]:
    """
    C{input}: a string (one user message) or a list of message items.
    """
    if isinstance(value, str):
        return (Turn(USER, value),)
    if not isinstance(value, list) or not value:
        raise InvalidField('"input" must be a string or a non-empty list of message items', "input")
    turns = []
    for i, item in enumerate(value):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise InvalidField(f"{where} must be an object", where)
        kind = item.get("type", "message")
        if kind != "message":
            raise InvalidField(
                f'{where}: item type "{str(kind)[:50]}" is not supported; SheLLM takes message items with text',
                f"{where}.type",
            )
        role = item.get("role")
        if role not in _ROLES:
            raise InvalidField(f'{where}.role must be "user", "assistant", "system" or "developer"', f"{where}.role")
        turns.append(Turn(_ROLES[role], _text_of(item.get("content"), where)))
    return tuple(turns)


def parse_request(body: dict[str, Any], prompt: tuple[Turn, ...] = ()) -> ResponsesRequest:
    """
    @param prompt: the turns a prompt template made (C{"prompt"}), before
        the input items; with them C{"input"} may be left out.
    @raise InvalidField: naming the first field that is wrong.
    """
    unknown = sorted(set(body) - _FIELDS)
    if unknown:
        raise InvalidField(f'unknown field: "{unknown[0][:100]}"', unknown[0][:100])
    tools = body.get("tools")
    if tools:
        raise InvalidField('"tools" is not supported yet: SheLLM answers with text only', "tools")
    text = body.get("text")
    if text is not None:
        form = text.get("format") if isinstance(text, dict) else None
        if form is not None and not (isinstance(form, dict) and form.get("type") == "text"):
            raise InvalidField('"text.format" is not supported yet: only {"type": "text"}', "text.format")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidField('"model" must be a model name', "model")
    if "input" not in body and not prompt:
        raise InvalidField('missing required field: "input"', "input")
    turns = prompt + (parse_input(body["input"]) if "input" in body else ())
    instructions = body.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise InvalidField('"instructions" must be a string', "instructions")
    max_output = body.get("max_output_tokens")
    if max_output is not None and (
        not isinstance(max_output, int) or isinstance(max_output, bool) or not 1 <= max_output <= MAX_OUTPUT_TOKENS
    ):
        raise InvalidField(
            f'"max_output_tokens" must be an integer between 1 and {MAX_OUTPUT_TOKENS}', "max_output_tokens"
        )
    flags = {}
    for name, default in (("store", True), ("stream", False)):
        value = body.get(name)
        if value is not None and not isinstance(value, bool):
            raise InvalidField(f'"{name}" must be true or false', name)
        flags[name] = default if value is None else value
    previous = body.get("previous_response_id")
    if previous is not None and (not isinstance(previous, str) or not previous):
        raise InvalidField('"previous_response_id" must be a response id', "previous_response_id")
    metadata = body.get("metadata")
    if metadata is None:
        metadata = {}
    if (
        not isinstance(metadata, dict)
        or len(metadata) > 16
        or not all(
            isinstance(k, str) and isinstance(v, str) and len(k) <= 64 and len(v) <= 512 for k, v in metadata.items()
        )
    ):
        raise InvalidField('"metadata" must be an object of at most 16 string pairs', "metadata")
    return ResponsesRequest(
        model=model,
        turns=turns,
        instructions=instructions,
        max_output_tokens=max_output,
        temperature=number_field(body, "temperature", 0, 2),
        top_p=number_field(body, "top_p", 0, 1),
        store=flags["store"],
        previous_response_id=previous,
        metadata=metadata,
        stream=flags["stream"],
    )


# -- the response object


def output_message(message_id: str, text: str, status: str = "completed") -> dict[str, Any]:
    return {
        "id": message_id,
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
    }


def usage_json(input_tokens: int | None, output_tokens: int | None) -> dict[str, Any] | None:
    if input_tokens is None and output_tokens is None:
        return None
    return {
        "input_tokens": input_tokens or 0,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": output_tokens or 0,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": (input_tokens or 0) + (output_tokens or 0),
    }


def response_json(
    response_id: str,
    created_at: float,
    model: str,
    *,
    status: str,
    output: list[dict[str, Any]],
    usage: dict[str, Any] | None,
    instructions: str | None,
    previous_response_id: str | None,
    metadata: dict[str, str],
    store: bool,
    max_output_tokens: int | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    error: dict[str, Any] | None = None,
    incomplete: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    return {
        "id": response_id,
        "object": "response",
        "created_at": int(created_at),
        "status": status,
        "error": error,
        "incomplete_details": {"reason": incomplete} if incomplete else None,
        "instructions": instructions,
        "max_output_tokens": max_output_tokens,
        "model": model,
        "output": output,
        "parallel_tool_calls": False,
        "previous_response_id": previous_response_id,
        "reasoning": {"effort": None, "summary": None},
        "store": store,
        "temperature": temperature,
        "text": {"format": {"type": "text"}},
        "tool_choice": "none",
        "tools": [],
        "top_p": top_p,
        "truncation": "disabled",
        "usage": usage,
        "metadata": metadata,
        **extra,
    }


@frozen
class ResponseShape:
    """
    What the response object repeats from the request, and its ids.
    """

    id: str
    message_id: str
    created_at: float
    request: ResponsesRequest
    history_truncated: bool = False

    def body(self, status: str, output: list[dict[str, Any]], usage: dict[str, Any] | None = None, **more: Any) -> dict:
        request = self.request
        if request.prompt is not None:
            more["prompt"] = request.prompt
        return response_json(
            self.id,
            self.created_at,
            more.pop("model", request.model),
            status=status,
            output=output,
            usage=usage,
            instructions=request.instructions,
            previous_response_id=request.previous_response_id,
            metadata=request.metadata,
            store=request.store,
            max_output_tokens=request.max_output_tokens,
            temperature=request.temperature,
            top_p=request.top_p,
            history_truncated=self.history_truncated,
            **more,
        )

    def completed(self, completion: Completion) -> dict[str, Any]:
        usage = completion.usage
        incomplete = completion.finish_reason == "length"
        return self.body(
            "incomplete" if incomplete else "completed",
            [output_message(self.message_id, completion.content)],
            usage_json(usage.input_tokens, usage.output_tokens) if usage else None,
            model=completion.model,
            incomplete="max_output_tokens" if incomplete else None,
        )


class ResponseStream:
    """
    The Responses event stream of one request: C{response.created}, the
    output item and its text deltas, then C{response.completed} (or
    C{error} and C{response.failed}), each with its C{sequence_number}.
    """

    def __init__(self, shape: ResponseShape):
        self._shape = shape
        self._seq = 0
        self._text: list[str] = []
        self._started = False
        self._ended = False

    def _event(self, kind: str, **fields: Any) -> bytes:
        body = {"type": kind, "sequence_number": self._seq, **fields}
        self._seq += 1
        return frame(body, event=kind)

    def _where(self) -> dict[str, Any]:
        return {"item_id": self._shape.message_id, "output_index": 0, "content_index": 0}

    def start(self) -> list[bytes]:
        if self._started:
            return []
        self._started = True
        empty = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        return [
            self._event("response.created", response=self._shape.body("in_progress", [])),
            self._event("response.in_progress", response=self._shape.body("in_progress", [])),
            self._event(
                "response.output_item.added",
                output_index=0,
                item={**output_message(self._shape.message_id, "", "in_progress"), "content": []},
            ),
            self._event(
                "response.content_part.added",
                item_id=self._shape.message_id,
                output_index=0,
                content_index=0,
                part=empty,
            ),
        ]

    def delta(self, text: str) -> list[bytes]:
        if self._ended or not text:
            return []
        self._text.append(text)
        return self.start() + [self._event("response.output_text.delta", **self._where(), delta=text, logprobs=[])]

    def finish(self, completion: Completion) -> list[bytes]:
        if self._ended:
            return []
        frames = self.start()
        self._ended = True
        text = completion.content
        item = output_message(self._shape.message_id, text)
        return frames + [
            self._event("response.output_text.done", **self._where(), text=text, logprobs=[]),
            self._event(
                "response.content_part.done",
                item_id=self._shape.message_id,
                output_index=0,
                content_index=0,
                part=item["content"][0],
            ),
            self._event("response.output_item.done", output_index=0, item=item),
            self._event("response.completed", response=self._shape.completed(completion)),
        ]

    def fail(self, error: ShellmError) -> list[bytes]:
        if self._ended:
            return []
        frames = self.start()
        self._ended = True
        envelope = error_json(error)["error"]
        failure = {"code": error.code, "message": error.message}
        return frames + [
            self._event("error", code=error.code, message=error.message, param=envelope["param"]),
            self._event(
                "response.failed",
                response=self._shape.body(
                    "failed", [output_message(self._shape.message_id, "".join(self._text), "incomplete")], error=failure
                ),
            ),
        ]
