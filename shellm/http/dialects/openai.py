"""
The OpenAI dialect: C{POST /v1/chat/completions} and C{GET /v1/models}.

Pure functions and one small stream writer: the API parses a body with
L{parse_request}, runs the L{CompletionRequest}, and writes the outcome with
L{completion_json} or a L{ChatStream}; errors go out through L{error_json}.

What SheLLM does with the request fields:

  - honoured: C{model}, C{messages} (system, developer, user and assistant
    roles; string or text-part content; a message's C{name}, a plain
    identifier, is said in the framed transcript), C{max_completion_tokens} (or the
    older C{max_tokens}), C{temperature}, C{top_p}, C{stop}, C{stream},
    C{stream_options.include_usage}.  Sampling fields reach the backends
    that take them and are otherwise not applied.
  - C{response_format}: C{text} is the default; C{json_object} is accepted
    and asks for JSON in the system prompt (best effort: no backend enforces
    it); C{json_schema} is refused, no backend can guarantee a schema.
  - accepted and ignored, because they do not change what the answer means:
    C{n: 1}, C{seed}, C{user}, C{frequency_penalty}, C{presence_penalty},
    C{logit_bias} when empty, C{tools}/C{functions} when empty,
    C{tool_choice}/C{function_call} of C{"none"}, C{modalities: ["text"]},
    C{logprobs: false}, C{reasoning_effort} (one of L{REASONING_EFFORTS}: the
    CLIs pick their own), and any field this module does not know (clients
    add their own; OpenAI itself would refuse them).
  - refused with a 400 whose C{param} names the field: C{tools},
    C{tool_choice}, C{functions}, C{function_call}, tool messages and
    C{tool_calls}, C{n} > 1, C{logprobs: true}, C{top_logprobs}, a non-empty
    C{logit_bias}, C{audio}, C{modalities} other than text,
    C{web_search_options}, and image, audio and file parts.  A
    C{reasoning_effort} or a message C{name} that OpenAI would refuse is a
    400 too.
  - a conversation must end with a user message (after any system
    messages): SheLLM cannot continue a partial assistant turn.
"""

from __future__ import annotations

import re

from attrs import frozen

from shellm.completion import Completion, CompletionRequest
from shellm.errors import ShellmError
from shellm.http.dialects.conversation import (
    ASSISTANT,
    SYSTEM,
    USER,
    InvalidField,
    ModelNotFound,
    Turn,
    completion_request,
    number_field,
)
from shellm.http.sse import frame
from shellm.models import ModelEntry, ModelTable

MAX_TOKENS_LIMIT = 128000
MAX_STOP_SEQUENCES = 4
JSON_MODE_INSTRUCTION = "Reply with one valid JSON object and nothing else: no prose, no code fences."
_ROLES = {"system": SYSTEM, "developer": SYSTEM, "user": USER, "assistant": ASSISTANT}
REASONING_EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh")
# OpenAI's rule for a participant name; it also keeps the name safe to put
# in the transcript's markup.
_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


@frozen
class ChatOptions:
    """
    What the response writers need from the request.

    @ivar model: the model name the client asked for.
    @ivar response_model: the name reported while streaming, before the
        answering model is known.
    """

    request_id: str
    model: str
    response_model: str
    stream: bool = False
    include_usage: bool = False


# -- parsing


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _max_tokens(body: dict) -> int | None:
    found = None
    for name in ("max_tokens", "max_completion_tokens"):
        value = body.get(name)
        if value is None:
            continue
        if not _is_int(value) or not 1 <= value <= MAX_TOKENS_LIMIT:
            raise InvalidField(f'"{name}" must be an integer between 1 and {MAX_TOKENS_LIMIT}', name)
        found = value  # max_completion_tokens, the current name, wins
    return found


def _stop(body: dict) -> tuple[str, ...]:
    value = body.get("stop")
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if (
        not isinstance(value, list)
        or len(value) > MAX_STOP_SEQUENCES
        or not all(isinstance(s, str) and s for s in value)
    ):
        raise InvalidField(
            f'"stop" must be a string or a list of at most {MAX_STOP_SEQUENCES} non-empty strings',
            "stop",
        )
    return tuple(value)


def _bool(body: dict, name: str) -> bool:
    value = body.get(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise InvalidField(f'"{name}" must be true or false', name)
    return value


def _refuse_unsupported(body: dict) -> None:
    """
    Fields that would change what the answer means, which SheLLM cannot do.
    """
    for name in ("tools", "functions"):
        if body.get(name):
            raise InvalidField(
                f'"{name}" is not supported: SheLLM serves text completions only, without tool calls',
                name,
            )
    for name in ("tool_choice", "function_call"):
        if body.get(name) not in (None, "none"):
            raise InvalidField(
                f'"{name}" is not supported: SheLLM serves text completions only, without tool calls',
                name,
            )
    n = body.get("n")
    if n is not None and (not _is_int(n) or n < 1):
        raise InvalidField('"n" must be a positive integer', "n")
    if n is not None and n > 1:
        raise InvalidField('"n" greater than 1 is not supported: SheLLM returns one choice', "n")
    if _bool(body, "logprobs"):
        raise InvalidField('"logprobs" is not supported: the backends do not report them', "logprobs")
    if body.get("top_logprobs") not in (None, 0):
        raise InvalidField('"top_logprobs" is not supported: the backends do not report them', "top_logprobs")
    logit_bias = body.get("logit_bias")
    if logit_bias is not None and not isinstance(logit_bias, dict):
        raise InvalidField('"logit_bias" must be an object', "logit_bias")
    if logit_bias:
        raise InvalidField('"logit_bias" is not supported: no backend takes token biases', "logit_bias")
    if body.get("audio") is not None:
        raise InvalidField('"audio" is not supported: SheLLM answers in text', "audio")
    modalities = body.get("modalities")
    if modalities is not None and modalities != ["text"]:
        raise InvalidField('"modalities" may only be ["text"]: SheLLM answers in text', "modalities")
    if body.get("web_search_options") is not None:
        raise InvalidField(
            '"web_search_options" is not supported: the backends run without web access', "web_search_options"
        )
    effort = body.get("reasoning_effort")
    if effort is not None and effort not in REASONING_EFFORTS:
        raise InvalidField(
            f'"reasoning_effort" must be one of {", ".join(REASONING_EFFORTS)}',
            "reasoning_effort",
        )


def _response_format(body: dict) -> str | None:
    """
    The system instruction that C{response_format} asks for, if any.
    """
    value = body.get("response_format")
    if value is None:
        return None
    kind = value.get("type") if isinstance(value, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return JSON_MODE_INSTRUCTION
    if kind == "json_schema":
        raise InvalidField(
            '"response_format" of type json_schema is not supported: no backend can guarantee '
            'a schema; use {"type": "json_object"} or describe the format in the prompt',
            "response_format",
        )
    raise InvalidField('"response_format" must be an object whose "type" is "text" or "json_object"', "response_format")


def _content(message: dict, where: str) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for j, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
            elif isinstance(kind, str) and kind != "text":
                raise InvalidField(
                    f'{where}.content[{j}]: content part type "{kind[:50]}" is not supported; only text parts are',
                    f"{where}.content[{j}].type",
                )
            else:
                raise InvalidField(
                    f'{where}.content[{j}] must be a text part: {{"type": "text", "text": "..."}}',
                    f"{where}.content[{j}]",
                )
        return "\n".join(texts)
    raise InvalidField(f"{where}.content must be a string or a list of text parts", f"{where}.content")


def _turns(body: dict) -> list[Turn]:
    messages = body.get("messages")
    if messages is None:
        raise InvalidField('missing required field: "messages"', "messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidField('"messages" must be a non-empty list', "messages")
    turns = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise InvalidField(f"{where} must be an object", where)
        role = message.get("role")
        if not isinstance(role, str):
            raise InvalidField(f"{where}.role must be a string", f"{where}.role")
        if role in ("tool", "function"):
            raise InvalidField(
                f'{where}: role "{role}" is not supported: SheLLM serves text completions only, without tool calls',
                f"{where}.role",
            )
        if role not in _ROLES:
            raise InvalidField(
                f'{where}.role must be one of "system", "developer", "user" or "assistant"',
                f"{where}.role",
            )
        for name in ("tool_calls", "function_call"):
            if message.get(name):
                raise InvalidField(
                    f'{where}.{name} is not supported: SheLLM serves text completions only, without tool calls',
                    f"{where}.{name}",
                )
        speaker = message.get("name")
        if speaker is not None and not (isinstance(speaker, str) and _NAME.fullmatch(speaker)):
            raise InvalidField(
                f"{where}.name must be 1 to 64 letters, digits, _ or -",
                f"{where}.name",
            )
        turns.append(Turn(_ROLES[role], _content(message, where), speaker))
    dialogue = [i for i, turn in enumerate(turns) if turn.role != SYSTEM]
    if not dialogue:
        raise InvalidField('"messages" must contain a user message', "messages")
    last = dialogue[-1]
    if turns[last].role != USER:
        raise InvalidField(
            f'the last message must have role "user" (messages[{last}] is "{messages[last]["role"]}"): '
            "SheLLM cannot continue a partial assistant turn",
            f"messages[{last}].role",
        )
    return turns


def parse_request(
    body: dict, models: ModelTable, max_prompt_chars: int, request_id: str
) -> tuple[CompletionRequest, ChatOptions]:
    """
    Validate a chat-completions body, once.

    @raise InvalidField: naming the first field that is wrong (400).
    @raise ModelNotFound: for a model that is not in the table (404).
    """
    model = body.get("model")
    if model is None:
        raise InvalidField('missing required field: "model"', "model")
    if not isinstance(model, str) or not model:
        raise InvalidField('"model" must be a non-empty string', "model")
    turns = _turns(body)
    _refuse_unsupported(body)
    extra_system = _response_format(body)
    max_tokens = _max_tokens(body)
    temperature = number_field(body, "temperature", 0, 2)
    top_p = number_field(body, "top_p", 0, 1)
    stop = _stop(body)
    stream = _bool(body, "stream")
    stream_options = body.get("stream_options")
    if stream_options is not None and not isinstance(stream_options, dict):
        raise InvalidField('"stream_options" must be an object', "stream_options")
    include_usage = False
    if stream_options:
        value = stream_options.get("include_usage")
        if value is not None and not isinstance(value, bool):
            raise InvalidField('"stream_options.include_usage" must be true or false', "stream_options.include_usage")
        include_usage = bool(value)
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise InvalidField('"user" must be a string', "user")
    entry = models.resolve(model)
    if entry is None:
        raise unknown_model(model)
    request = completion_request(
        turns,
        model=model,
        entry=entry,
        request_id=request_id,
        max_prompt_chars=max_prompt_chars,
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=top_p,
        stop=stop,
        extra_system=extra_system,
    )
    options = ChatOptions(
        request_id=request_id,
        model=model,
        response_model=entry.upstream or entry.alias,
        stream=stream,
        include_usage=include_usage,
    )
    return request, options


def unknown_model(name: str) -> ModelNotFound:
    return ModelNotFound(f"The model `{name[:100]}` does not exist. GET /v1/models lists the models.")


# -- responses


def _usage(completion: Completion) -> dict | None:
    usage = completion.usage
    if usage is None:
        return None
    return {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.input_tokens + usage.output_tokens,
    }


def _finish_reason(completion: Completion) -> str:
    return "length" if completion.finish_reason == "length" else "stop"


def completion_json(completion: Completion, options: ChatOptions, now: float) -> dict:
    """
    A C{chat.completion}.  C{model} is the model that answered; C{usage} is
    L{None} when the backend reported no token counts.
    """
    return {
        "id": f"chatcmpl-{options.request_id}",
        "object": "chat.completion",
        "created": int(now),
        "model": completion.model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": completion.content, "refusal": None},
                "logprobs": None,
                "finish_reason": _finish_reason(completion),
            }
        ],
        "usage": _usage(completion),
        "system_fingerprint": None,
    }


class ChatStream:
    """
    The C{chat.completion.chunk} stream of one request.  Each method returns
    the SSE frames to write, in order; L{start} is implied by the first call
    of another method.

    Every chunk names the same C{model} (L{ChatOptions.response_model}),
    since the answering model is only known at the end.  With
    C{include_usage}, chunks carry C{"usage": null} and the last one, with
    no choices, the totals, as OpenAI sends them.
    """

    def __init__(self, options: ChatOptions, now: float):
        self._options = options
        self._created = int(now)
        self._started = False
        self._ended = False

    def _chunk(self, choices: list, **extra) -> bytes:
        body = {
            "id": f"chatcmpl-{self._options.request_id}",
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": self._options.response_model,
            "system_fingerprint": None,
            "choices": choices,
        }
        if self._options.include_usage:
            body["usage"] = None
        body.update(extra)
        return frame(body)

    def _choice(self, delta: dict, finish_reason: str | None = None) -> list:
        return [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]

    def start(self) -> list[bytes]:
        """
        The role chunk, without content.
        """
        if self._started or self._ended:
            return []
        self._started = True
        return [self._chunk(self._choice({"role": "assistant"}))]

    def delta(self, text: str) -> list[bytes]:
        if self._ended or not text:
            return []
        return self.start() + [self._chunk(self._choice({"content": text}))]

    def finish(self, completion: Completion) -> list[bytes]:
        """
        The chunk with C{finish_reason}, the usage chunk when asked for, and
        C{[DONE]}.
        """
        if self._ended:
            return []
        frames = self.start()
        self._ended = True
        frames.append(self._chunk(self._choice({}, _finish_reason(completion))))
        if self._options.include_usage:
            frames.append(self._chunk([], usage=_usage(completion)))
        frames.append(frame("[DONE]"))
        return frames

    def fail(self, error: ShellmError) -> list[bytes]:
        """
        An error chunk and C{[DONE]}: never a C{finish_reason}, so no client
        mistakes a cut answer for a whole one.
        """
        if self._ended:
            return []
        self._ended = True
        return [frame(error_json(error, self._options.request_id)), frame("[DONE]")]


# -- errors


def error_type(status: int) -> str:
    """
    OpenAI's error C{type} for an HTTP status; only 5xx is C{server_error}.
    """
    if status >= 500:
        return "server_error"
    return {
        401: "authentication_error",
        403: "permission_error",
        404: "not_found_error",
        429: "rate_limit_error",
    }.get(status, "invalid_request_error")


def error_json(error: ShellmError, request_id: str | None = None) -> dict:
    """
    OpenAI's envelope.  C{code} is SheLLM's stable error code; C{param}
    names the offending field when known.  The request id travels in the
    C{x-request-id} header, as with OpenAI.
    """
    return {
        "error": {
            "message": error.message,
            "type": error_type(error.status),
            "code": error.code,
            "param": getattr(error, "param", None),
        }
    }


# -- models


def model_json(entry: ModelEntry, now: float) -> dict:
    """
    @param now: the C{created} time to report; pass the daemon's start time
        so the listing is stable.
    """
    return {"id": entry.alias, "object": "model", "created": int(now), "owned_by": entry.provider}


def models_json(models: ModelTable, now: float) -> dict:
    return {"object": "list", "data": [model_json(entry, now) for entry in models]}
