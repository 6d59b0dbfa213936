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
  - structured output and tools (L{shellm.structured}): C{response_format}
    (C{text}, C{json_object}, C{json_schema}), C{tools} of type
    C{function}, C{tool_choice}, C{parallel_tool_calls}, C{tool} messages
    and an assistant's C{tool_calls}; answers are validated, repaired once,
    and calls come back as C{tool_calls} with C{finish_reason: tool_calls}.
  - accepted and ignored, because they do not change what the answer means:
    C{n: 1}, C{seed}, C{user}, C{frequency_penalty}, C{presence_penalty},
    C{logit_bias} when empty, C{functions} when empty, C{function_call} of
    C{"none"}, C{modalities: ["text"]}, C{logprobs: false},
    C{reasoning_effort} (one of L{REASONING_EFFORTS}: the CLIs pick their
    own), and any field this module does not know (clients add their own;
    OpenAI itself would refuse them).
  - refused with a 400 whose C{param} names the field: C{functions},
    C{function_call}, C{function} messages, tools other than functions,
    C{response_format} together with C{tools}, C{n} > 1, C{logprobs:
    true}, C{top_logprobs}, a non-empty C{logit_bias}, C{audio},
    C{modalities} other than text, C{web_search_options}, a schema
    SheLLM cannot handle, and image, audio and file parts.  A
    C{reasoning_effort} or a message C{name} that OpenAI would refuse is a
    400 too.
  - a conversation must end with a user message (after any system
    messages): SheLLM cannot continue a partial assistant turn.
"""

from __future__ import annotations

import re
from typing import Any

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
from shellm.structured import (
    OutputSpec,
    make_tool,
    response_format_spec,
    tool_call_text,
    tool_result_text,
    tools_spec,
)

MAX_TOKENS_LIMIT = 128000
MAX_STOP_SEQUENCES = 4
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
    if body.get("functions"):
        raise InvalidField('"functions" is not supported: use "tools"', "functions")
    if body.get("function_call") not in (None, "none"):
        raise InvalidField('"function_call" is not supported: use "tool_choice"', "function_call")
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


def _response_format(body: dict) -> OutputSpec | None:
    return response_format_spec(body.get("response_format"))


def _tools(body: dict) -> OutputSpec | None:
    """
    The functions offered and how they may be called, if any.
    """
    value = body.get("tools")
    choice = body.get("tool_choice")
    if not value:
        if choice not in (None, "none", "auto"):
            raise InvalidField('"tool_choice" needs "tools"', "tool_choice")
        return None
    if not isinstance(value, list):
        raise InvalidField('"tools" must be a list', "tools")
    tools = []
    for i, tool in enumerate(value):
        where = f"tools[{i}]"
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(tool.get("function"), dict):
            raise InvalidField(
                f'{where} must be {{"type": "function", "function": {{...}}}}: only function tools are supported',
                where,
            )
        function = tool["function"]
        tools.append(
            make_tool(
                function.get("name"), function.get("description"), function.get("parameters"), f"{where}.function"
            )
        )
    parallel = body.get("parallel_tool_calls", True)
    if not isinstance(parallel, bool):
        raise InvalidField('"parallel_tool_calls" must be true or false', "parallel_tool_calls")
    only = None
    if choice in (None, "auto"):
        required = False
    elif choice == "none":
        return None
    elif choice == "required":
        required = True
    elif isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("function"), dict):
        only, required = choice["function"].get("name"), True
        if only not in {t.name for t in tools}:
            raise InvalidField(f'"tool_choice" names a function not in "tools": {str(only)[:64]}', "tool_choice")
    else:
        raise InvalidField(
            '"tool_choice" must be "auto", "none", "required" or {"type": "function", "function": {"name": ...}}',
            "tool_choice",
        )
    return tools_spec(tools, "tools", required, parallel, only)


def _tool_calls_text(message: dict, where: str) -> str:
    calls = message.get("tool_calls")
    if not isinstance(calls, list):
        raise InvalidField(f"{where}.tool_calls must be a list", f"{where}.tool_calls")
    texts = []
    for j, call in enumerate(calls):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise InvalidField(
                f"{where}.tool_calls[{j}] must be a function call with a name", f"{where}.tool_calls[{j}]"
            )
        arguments = function.get("arguments")
        arguments = arguments if isinstance(arguments, str) else "{}"
        call_id = call.get("id")
        texts.append(tool_call_text(function["name"], arguments, call_id if isinstance(call_id, str) else None))
    return "\n".join(texts)


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
        if role == "function":
            raise InvalidField(f'{where}: role "function" is not supported: use "tool"', f"{where}.role")
        if role == "tool":
            call_id = message.get("tool_call_id")
            if not isinstance(call_id, str):
                raise InvalidField(f"{where}.tool_call_id must be a string", f"{where}.tool_call_id")
            turns.append(Turn(USER, tool_result_text(_content(message, where), call_id)))
            continue
        if role not in _ROLES:
            raise InvalidField(
                f'{where}.role must be one of "system", "developer", "user" or "assistant"',
                f"{where}.role",
            )
        if message.get("function_call"):
            raise InvalidField(f"{where}.function_call is not supported: use tool_calls", f"{where}.function_call")
        if role == "assistant" and message.get("tool_calls"):
            said = message.get("content")
            said = _content(message, where) if said else ""
            text = "\n".join(filter(None, [said, _tool_calls_text(message, where)]))
            turns.append(Turn(ASSISTANT, text))
            continue
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
    output = _response_format(body)
    tools = _tools(body)
    if tools is not None:
        if output is not None:
            raise InvalidField('"response_format" and "tools" cannot be combined yet', "response_format")
        output = tools
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
        output=output,
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
    if _calls(completion):
        return "tool_calls"
    return "length" if completion.finish_reason == "length" else "stop"


def _calls(completion: Completion) -> tuple:
    return completion.answer.tool_calls if completion.answer is not None else ()


def _tool_calls_json(completion: Completion) -> list[dict]:
    return [
        {"id": f"call_{call.id}", "type": "function", "function": {"name": call.name, "arguments": call.arguments_json}}
        for call in _calls(completion)
    ]


def _shellm_json(completion: Completion) -> dict | None:
    """
    What SheLLM says about a structured answer: validated, and whether it
    took the repair attempt.
    """
    answer = completion.answer
    if answer is None:
        return None
    return {"validated": answer.validated, "repaired": answer.repaired}


def completion_json(completion: Completion, options: ChatOptions, now: float) -> dict:
    """
    A C{chat.completion}.  C{model} is the model that answered; C{usage} is
    L{None} when the backend reported no token counts.
    """
    message: dict[str, Any] = {"role": "assistant", "content": completion.content, "refusal": None}
    if _calls(completion):
        message["content"] = completion.content or None
        message["tool_calls"] = _tool_calls_json(completion)
    body = {
        "id": f"chatcmpl-{options.request_id}",
        "object": "chat.completion",
        "created": int(now),
        "model": completion.model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": _finish_reason(completion),
            }
        ],
        "usage": _usage(completion),
        "system_fingerprint": None,
    }
    if completion.answer is not None:
        body["shellm"] = _shellm_json(completion)
    return body


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
        self._sent = False

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
        self._sent = True
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
        answer = completion.answer
        if answer is not None and answer.tool_calls:
            # Held back until validated: the text, then each call whole.
            if answer.content:
                frames.append(self._chunk(self._choice({"content": answer.content})))
            for i, call in enumerate(_tool_calls_json(completion)):
                frames.append(self._chunk(self._choice({"tool_calls": [{"index": i, **call}]})))
        elif answer is not None and not self._sent and completion.content:
            frames.append(self._chunk(self._choice({"content": completion.content})))
        extra = {"shellm": _shellm_json(completion)} if answer is not None else {}
        frames.append(self._chunk(self._choice({}, _finish_reason(completion)), **extra))
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
