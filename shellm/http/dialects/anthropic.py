"""
The Anthropic dialect: C{POST /v1/messages} (and C{GET /v1/models} for a
client that sends C{anthropic-version}).

Pure functions and one small stream writer: the API parses a body with
L{parse_request}, runs the L{CompletionRequest}, and writes the outcome with
L{completion_json} or a L{MessageStream}; errors go out through
L{error_json}.

What SheLLM does with the request fields:

  - honoured: C{model}, C{max_tokens} (required), C{messages} (user and
    assistant turns; string or text-block content), C{system} (string or
    text blocks), C{temperature}, C{top_p}, C{stop_sequences}, C{stream}.
    Sampling fields reach the backends that take them and are otherwise
    not applied.
  - structured output and tools (L{shellm.structured}): C{output_config.format}
    (and the older C{output_format}), C{tools}, C{tool_choice}, C{tool_use}
    blocks in assistant turns and C{tool_result} blocks in user turns;
    calls come back as C{tool_use} blocks with C{stop_reason: tool_use}.
  - accepted and ignored: C{metadata}, C{top_k}, C{service_tier},
    C{thinking} of type C{disabled}, C{cache_control} on blocks, and fields
    this module does not know.
  - refused with a 400 that names the field or block type: server tools,
    C{mcp_servers}, C{thinking} when enabled, a schema SheLLM cannot
    handle, structured output together with tools, more than
    L{MAX_STOP_SEQUENCES} C{stop_sequences}, and every other content block
    (image, document, thinking, ...).
  - a conversation must end with a user turn: SheLLM cannot continue a
    partial assistant turn (prefill).
"""

from __future__ import annotations

import datetime
import json

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
    json_schema_spec,
    make_tool,
    tool_call_text,
    tool_result_text,
    tools_spec,
)

MAX_TOKENS_LIMIT = 128000
#: The Anthropic API documents no count; SheLLM's own bound, so a request
#: cannot hand a backend an unbounded list (OpenAI allows 4).
MAX_STOP_SEQUENCES = 16


@frozen
class MessageOptions:
    """
    What the response writers need from the request.

    @ivar model: the model name the client asked for.
    @ivar response_model: the name reported in C{message_start}, before the
        answering model is known.
    """

    request_id: str
    model: str
    response_model: str
    stream: bool = False


# -- parsing


def _text_blocks(value, where: str, role: str | None = None) -> str:
    """
    The text of a string or of a list of text blocks; an assistant turn's
    C{tool_use} and a user turn's C{tool_result} blocks are rendered as
    marked text (L{shellm.structured.tool_result_text}).
    """
    if isinstance(value, str):
        return value
    if not isinstance(value, list):
        raise InvalidField(f"{where}: must be a string or a list of text blocks", where)
    texts = []
    for j, block in enumerate(value):
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text" and isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif kind == "tool_use" and role == ASSISTANT and isinstance(block.get("name"), str):
            texts.append(tool_call_text(block["name"], json.dumps(block.get("input", {})), block.get("id")))
        elif kind == "tool_result" and role == USER:
            content = block.get("content", "")
            result = _text_blocks(content, f"{where}.{j}.content") if content else ""
            call_id = block.get("tool_use_id")
            call_id = call_id if isinstance(call_id, str) else None
            texts.append(tool_result_text(result, call_id, is_error=bool(block.get("is_error"))))
        elif isinstance(kind, str) and kind != "text":
            raise InvalidField(
                f'{where}.{j}: content block type "{kind[:50]}" is not supported; SheLLM takes text blocks '
                "(and tool_use, tool_result) only",
                f"{where}.{j}.type",
            )
        else:
            raise InvalidField(
                f'{where}.{j}: must be a text block: {{"type": "text", "text": "..."}}',
                f"{where}.{j}",
            )
    return "\n".join(texts)


def _turns(body: dict) -> list[Turn]:
    messages = body.get("messages")
    if messages is None:
        raise InvalidField("messages: field required", "messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidField("messages: must be a non-empty list", "messages")
    turns = []
    system = body.get("system")
    if system is not None:
        turns.append(Turn(SYSTEM, _text_blocks(system, "system")))
    for i, message in enumerate(messages):
        where = f"messages.{i}"
        if not isinstance(message, dict):
            raise InvalidField(f"{where}: must be an object", where)
        role = message.get("role")
        if role not in (USER, ASSISTANT):
            raise InvalidField(
                f'{where}.role: must be "user" or "assistant" (the system prompt goes in "system")',
                f"{where}.role",
            )
        if "content" not in message:
            raise InvalidField(f"{where}.content: field required", f"{where}.content")
        turns.append(Turn(role, _text_blocks(message["content"], f"{where}.content", role)))
    if turns[-1].role != USER:
        last = len(messages) - 1
        raise InvalidField(
            f"messages.{last}: the last message must be a user turn; SheLLM cannot continue "
            "a partial assistant turn (prefill)",
            f"messages.{last}.role",
        )
    return turns


def _refuse_unsupported(body: dict) -> None:
    if body.get("mcp_servers"):
        raise InvalidField("mcp_servers: not supported; SheLLM offers only the client's own tools", "mcp_servers")
    thinking = body.get("thinking")
    if thinking is not None and not (isinstance(thinking, dict) and thinking.get("type") == "disabled"):
        raise InvalidField("thinking: extended thinking is not supported", "thinking")
    output_config = body.get("output_config")
    if output_config is not None and not isinstance(output_config, dict):
        raise InvalidField("output_config: must be an object", "output_config")


def _output_format(body: dict) -> OutputSpec | None:
    """
    C{output_config.format} (or the older C{output_format}): a JSON schema.
    """
    for where, value in (
        ("output_config.format", (body.get("output_config") or {}).get("format")),
        ("output_format", body.get("output_format")),
    ):
        if value is None:
            continue
        if not isinstance(value, dict) or value.get("type") != "json_schema":
            raise InvalidField(f'{where}: must be {{"type": "json_schema", "schema": {{...}}}}', f"{where}.type")
        if "schema" not in value:
            raise InvalidField(f"{where}.schema: field required", f"{where}.schema")
        return json_schema_spec(value["schema"], f"{where}.schema", value.get("name"))
    return None


def _tools(body: dict) -> OutputSpec | None:
    value = body.get("tools")
    choice = body.get("tool_choice")
    if choice is not None and not (isinstance(choice, dict) and choice.get("type") in ("auto", "any", "tool", "none")):
        raise InvalidField('tool_choice: must be {"type": "auto" | "any" | "tool" | "none"}', "tool_choice")
    if not value:
        if choice is not None and choice["type"] in ("any", "tool"):
            raise InvalidField("tool_choice: needs tools", "tool_choice")
        return None
    if not isinstance(value, list):
        raise InvalidField("tools: must be a list", "tools")
    tools = []
    for i, tool in enumerate(value):
        where = f"tools.{i}"
        if not isinstance(tool, dict):
            raise InvalidField(f"{where}: must be an object", where)
        if tool.get("type") not in (None, "custom"):
            raise InvalidField(
                f'{where}.type: server tools ("{str(tool.get("type"))[:50]}") are not supported; '
                "only the client's own tools are",
                f"{where}.type",
            )
        if "input_schema" not in tool:
            raise InvalidField(f"{where}.input_schema: field required", f"{where}.input_schema")
        tools.append(make_tool(tool.get("name"), tool.get("description"), tool["input_schema"], where))
    kind = (choice or {}).get("type", "auto")
    if kind == "none":
        return None
    parallel = not (choice or {}).get("disable_parallel_tool_use", False)
    only = None
    if kind == "tool":
        only = choice.get("name")
        if only not in {t.name for t in tools}:
            raise InvalidField(f"tool_choice.name: not one of the tools: {str(only)[:64]}", "tool_choice.name")
    return tools_spec(tools, "tools", kind in ("any", "tool"), parallel, only)


def parse_request(
    body: dict, models: ModelTable, max_prompt_chars: int, request_id: str
) -> tuple[CompletionRequest, MessageOptions]:
    """
    Validate a messages body, once.

    @raise InvalidField: naming the first field or block type that is wrong (400).
    @raise ModelNotFound: for a model that is not in the table (404).
    """
    model = body.get("model")
    if model is None:
        raise InvalidField("model: field required", "model")
    if not isinstance(model, str) or not model:
        raise InvalidField("model: must be a non-empty string", "model")
    max_tokens = body.get("max_tokens")
    if max_tokens is None:
        raise InvalidField("max_tokens: field required", "max_tokens")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or not 1 <= max_tokens <= MAX_TOKENS_LIMIT:
        raise InvalidField(f"max_tokens: must be an integer between 1 and {MAX_TOKENS_LIMIT}", "max_tokens")
    turns = _turns(body)
    _refuse_unsupported(body)
    output = _output_format(body)
    tools = _tools(body)
    if tools is not None:
        if output is not None:
            raise InvalidField("output_config.format: cannot be combined with tools yet", "output_config.format")
        output = tools
    temperature = number_field(body, "temperature", 0, 1)
    top_p = number_field(body, "top_p", 0, 1)
    top_k = body.get("top_k")
    if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 0):
        raise InvalidField("top_k: must be a non-negative integer", "top_k")
    stop = body.get("stop_sequences")
    if stop is None:
        stop = []
    if not isinstance(stop, list) or len(stop) > MAX_STOP_SEQUENCES or not all(isinstance(s, str) and s for s in stop):
        raise InvalidField(
            f"stop_sequences: must be a list of at most {MAX_STOP_SEQUENCES} non-empty strings", "stop_sequences"
        )
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise InvalidField("stream: must be true or false", "stream")
    metadata = body.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise InvalidField("metadata: must be an object", "metadata")
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
        stop=tuple(stop),
        output=output,
    )
    options = MessageOptions(
        request_id=request_id,
        model=model,
        response_model=entry.upstream or entry.alias,
        stream=bool(stream),
    )
    return request, options


def unknown_model(name: str) -> ModelNotFound:
    return ModelNotFound(f"model: {name[:100]} (GET /v1/models lists the models)")


# -- responses


def _calls(completion: Completion) -> tuple:
    return completion.answer.tool_calls if completion.answer is not None else ()


def _stop_reason(completion: Completion) -> str:
    if _calls(completion):
        return "tool_use"
    return "max_tokens" if completion.finish_reason == "length" else "end_turn"


def _tool_use_blocks(completion: Completion) -> list[dict]:
    return [
        {"type": "tool_use", "id": f"toolu_{call.id}", "name": call.name, "input": json.loads(call.arguments_json)}
        for call in _calls(completion)
    ]


def _usage(completion: Completion) -> dict:
    # Anthropic's usage fields are required integers: unknown counts are 0.
    usage = completion.usage
    return {
        "input_tokens": usage.input_tokens if usage else 0,
        "output_tokens": usage.output_tokens if usage else 0,
    }


def completion_json(completion: Completion, options: MessageOptions) -> dict:
    """
    A C{message}.  C{model} is the model that answered.
    """
    content = [{"type": "text", "text": completion.content}] if completion.content or not _calls(completion) else []
    body = {
        "id": f"msg_{options.request_id}",
        "type": "message",
        "role": "assistant",
        "content": content + _tool_use_blocks(completion),
        "model": completion.model,
        "stop_reason": _stop_reason(completion),
        "stop_sequence": None,
        "usage": _usage(completion),
    }
    if completion.answer is not None:
        body["shellm"] = {"validated": completion.answer.validated, "repaired": completion.answer.repaired}
    return body


class MessageStream:
    """
    The event stream of one request.  Each method returns the SSE frames to
    write, in order; L{start} is implied by the first call of another method.

    Token counts are only known at the end: C{message_start} carries zeros,
    and C{message_delta} the exact input and output counts (the SDKs take
    both from it).
    """

    def __init__(self, options: MessageOptions):
        self._options = options
        self._started = False
        self._ended = False
        self._sent = False

    def start(self) -> list[bytes]:
        """
        C{message_start}, C{content_block_start} and a C{ping}.
        """
        if self._started or self._ended:
            return []
        self._started = True
        message = {
            "id": f"msg_{self._options.request_id}",
            "type": "message",
            "role": "assistant",
            "content": [],
            "model": self._options.response_model,
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }
        return [
            frame({"type": "message_start", "message": message}, "message_start"),
            frame(
                {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
                "content_block_start",
            ),
            frame({"type": "ping"}, "ping"),
        ]

    def delta(self, text: str) -> list[bytes]:
        if self._ended or not text:
            return []
        self._sent = True
        return self.start() + [
            frame(
                {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}},
                "content_block_delta",
            )
        ]

    def finish(self, completion: Completion) -> list[bytes]:
        """
        C{content_block_stop}, C{message_delta} with the stop reason and
        exact usage, C{message_stop}.
        """
        if self._ended:
            return []
        frames = self.start()
        if completion.answer is not None and not self._sent and completion.content:
            frames += self.delta(completion.content)  # held back until validated
        self._ended = True
        frames.append(frame({"type": "content_block_stop", "index": 0}, "content_block_stop"))
        for i, block in enumerate(_tool_use_blocks(completion), start=1):
            arguments = json.dumps(block["input"], ensure_ascii=False)
            frames += [
                frame(
                    {"type": "content_block_start", "index": i, "content_block": {**block, "input": {}}},
                    "content_block_start",
                ),
                frame(
                    {
                        "type": "content_block_delta",
                        "index": i,
                        "delta": {"type": "input_json_delta", "partial_json": arguments},
                    },
                    "content_block_delta",
                ),
                frame({"type": "content_block_stop", "index": i}, "content_block_stop"),
            ]
        extra = {}
        if completion.answer is not None:
            extra["shellm"] = {"validated": completion.answer.validated, "repaired": completion.answer.repaired}
        return frames + [
            frame(
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": _stop_reason(completion), "stop_sequence": None},
                    "usage": _usage(completion),
                    **extra,
                },
                "message_delta",
            ),
            frame({"type": "message_stop"}, "message_stop"),
        ]

    def fail(self, error: ShellmError) -> list[bytes]:
        """
        An C{error} event, which ends the stream: never a C{message_stop}, so
        no client mistakes a cut answer for a whole one.
        """
        if self._ended:
            return []
        self._ended = True
        return [frame(error_json(error, self._options.request_id), "error")]


# -- errors


def error_type(status: int) -> str:
    """
    Anthropic's error C{type} for an HTTP status.
    """
    return {
        400: "invalid_request_error",
        401: "authentication_error",
        403: "permission_error",
        404: "not_found_error",
        413: "request_too_large",
        429: "rate_limit_error",
        503: "overloaded_error",
        504: "timeout_error",
        529: "overloaded_error",
    }.get(status, "api_error" if status >= 500 else "invalid_request_error")


def error_json(error: ShellmError, request_id: str | None = None) -> dict:
    body = {"type": "error", "error": {"type": error_type(error.status), "message": error.message}}
    if request_id is not None:
        body["request_id"] = request_id
    return body


# -- models (the Anthropic shape of GET /v1/models)


def _rfc3339(when: float) -> str:
    moment = datetime.datetime.fromtimestamp(int(when), datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def model_json(entry: ModelEntry, now: float) -> dict:
    """
    @param now: the C{created_at} time to report; pass the daemon's start
        time so the listing is stable.
    """
    return {
        "type": "model",
        "id": entry.alias,
        "display_name": f"{entry.alias} ({entry.provider})",
        "created_at": _rfc3339(now),
        "lifecycle": "active",
    }


def models_json(models: ModelTable, now: float) -> dict:
    data = [model_json(entry, now) for entry in models]
    return {
        "data": data,
        "has_more": False,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
    }
