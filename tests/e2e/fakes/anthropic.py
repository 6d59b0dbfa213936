"""
A fake Anthropic Messages API, as Claude Code calls it: C{POST /v1/messages}
(SSE when C{"stream": true}, JSON otherwise), C{count_tokens}, C{GET
/v1/models}, and C{HEAD /} and C{/api/hello} answered 200.
"""

from __future__ import annotations

from tests.e2e.fakes.base import FakeUpstream, RecordedRequest, json_bytes
from tests.fakes import schema_answer

#: The tool claude's --json-schema offers the model.
STRUCTURED = "StructuredOutput"

#: The vendor's tool for each kind of tool call, and its input.
TOOLS = {
    "shell": ("Bash", lambda t: {"command": f"touch {t.pwned}", "description": "Create a file"}),
    "write": ("Write", lambda t: {"file_path": t.written, "content": "written by a tool\n"}),
    "read": ("Read", lambda t: {"file_path": t.secret}),
}

_ERRORS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
    529: "overloaded_error",
}


def sse(kind: str, data: dict) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + json_bytes(data) + b"\n\n"


def user_text(body: dict) -> str | None:
    """
    The last text part of the last user message: where the prompt goes.
    """
    for message in reversed(body.get("messages") or []):
        if message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            return content
        texts = [b.get("text") for b in content or [] if isinstance(b, dict) and b.get("type") == "text"]
        return texts[-1] if texts else None
    return None


def system_blocks(body: dict) -> list[str]:
    system = body.get("system")
    if isinstance(system, str):
        return [system]
    return [b.get("text", "") for b in system or [] if isinstance(b, dict)]


def tool_names(body: dict) -> list[str] | None:
    """
    The names of the declared tools, or L{None} if the request has no
    C{tools} field at all.
    """
    tools = body.get("tools")
    if tools is None:
        return None
    return [t.get("name") for t in tools if isinstance(t, dict)]


def is_helper_call(body: dict) -> bool:
    """
    Claude makes no structured side calls of its own here.
    """
    return False


def has_tool_result(body: dict) -> bool:
    messages = body.get("messages") or []
    if not messages or messages[-1].get("role") != "user":
        return False
    content = messages[-1].get("content")
    return isinstance(content, list) and any(isinstance(b, dict) and b.get("type") == "tool_result" for b in content)


def _called(body: dict, name: str) -> bool:
    """
    Whether an earlier assistant turn already called the tool C{name}.
    """
    return any(
        isinstance(block, dict) and block.get("type") == "tool_use" and block.get("name") == name
        for message in body.get("messages") or []
        if message.get("role") == "assistant" and isinstance(message.get("content"), list)
        for block in message["content"]
    )


class FakeAnthropic(FakeUpstream):
    vendor = "anthropic"

    def is_model_request(self, recorded: RecordedRequest) -> bool:
        return recorded.method == "POST" and recorded.path == "/v1/messages"

    def error_body(self, status: int) -> dict:
        kind = _ERRORS.get(status, "api_error")
        return {"type": "error", "error": {"type": kind, "message": f"fake {status} ({kind})"}}

    def answer(self, request, recorded: RecordedRequest):
        path, method = recorded.path, recorded.method
        if method == "HEAD" or path in ("/", "/api/hello"):
            return self.send_json(request, {})
        if method == "GET" and path == "/v1/models":
            return self.send_json(request, {"data": [], "has_more": False})
        if method == "POST" and path == "/v1/messages/count_tokens":
            return self.send_json(request, {"input_tokens": self.script.input_tokens})
        if not self.is_model_request(recorded) or recorded.body is None:
            return self.send_json(request, self.error_body(404), 404)
        body = recorded.body
        model = str(body.get("model") or "claude-fake")
        script = self.script
        name, make_input = TOOLS.get(script.tool, (None, None))
        if name and self.wants_tool(set(tool_names(body) or []), name, has_tool_result(body)):
            self.tool_calls.append((script.tool, name))
            return self._tool_use(request, body, model, name, make_input(script.targets))
        structured = self._structured_output(body)
        if structured is not None:
            self.tool_calls.append(("structured", STRUCTURED))
            return self._tool_use(request, body, model, STRUCTURED, structured)
        text = script.after_tool_text if has_tool_result(body) else None
        if not body.get("stream"):
            return self.send_json(request, self._message(model, text or script.text, "end_turn"))
        return self._stream_text(request, model, text)

    def _structured_output(self, body: dict):
        """
        With C{--json-schema} claude offers a StructuredOutput tool: the
        answer is a call to it (until its result comes back).
        """
        if not self.script.schema_answers or _called(body, STRUCTURED):
            return None
        tool = next((t for t in body.get("tools") or [] if isinstance(t, dict) and t.get("name") == STRUCTURED), None)
        if tool is None:
            return None
        prompt = "\n".join([*system_blocks(body), user_text(body) or ""])
        return schema_answer.answer(tool.get("input_schema") or {}, prompt)

    def _message(self, model, text, stop_reason, content=None) -> dict:
        return {
            "id": self.next_id("msg"),
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": content if content is not None else [{"type": "text", "text": text}],
            "stop_reason": stop_reason,
            "stop_sequence": None,
            "usage": {
                "input_tokens": self.script.input_tokens,
                "output_tokens": self.script.output_tokens,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
            },
        }

    def _start(self, model) -> list:
        message = self._message(model, "", None, content=[])
        message["usage"]["output_tokens"] = 1
        return [sse("message_start", {"type": "message_start", "message": message}), sse("ping", {"type": "ping"})]

    def _end(self, stop_reason) -> list:
        return [
            sse(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                    "usage": {"output_tokens": self.script.output_tokens},
                },
            ),
            sse("message_stop", {"type": "message_stop"}),
        ]

    def _stream_text(self, request, model, text: str | None):
        frames = self._start(model)
        frames.append(
            sse(
                "content_block_start",
                {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
            )
        )
        pieces = self.text_pieces() if text is None else [text]
        for piece in pieces:
            if isinstance(piece, str):
                frames.append(
                    sse(
                        "content_block_delta",
                        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}},
                    )
                )
            else:
                frames.append(piece)
        frames.append(sse("content_block_stop", {"type": "content_block_stop", "index": 0}))
        frames += self._end("end_turn")
        return self.send_frames(request, frames)

    def _tool_use(self, request, body, model, name, tool_input):
        block_id = self.next_id("toolu")
        if not body.get("stream"):
            content = [{"type": "tool_use", "id": block_id, "name": name, "input": tool_input}]
            return self.send_json(request, self._message(model, "", "tool_use", content))
        frames = (
            self._start(model)
            + [
                sse(
                    "content_block_start",
                    {
                        "type": "content_block_start",
                        "index": 0,
                        "content_block": {"type": "tool_use", "id": block_id, "name": name, "input": {}},
                    },
                ),
                sse(
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": 0,
                        "delta": {"type": "input_json_delta", "partial_json": json_bytes(tool_input).decode()},
                    },
                ),
                sse("content_block_stop", {"type": "content_block_stop", "index": 0}),
            ]
            + self._end("tool_use")
        )
        return self.send_frames(request, frames)
