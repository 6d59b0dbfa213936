"""
A fake Gemini API, as the Gemini CLI calls it:
C{POST /v1beta/models/<model>:streamGenerateContent?alt=sse} and
C{:generateContent} (which also serves the CLI's own structured calls, such
as its model router, by filling in the requested JSON schema), plus
C{:countTokens}.
"""

from __future__ import annotations

import json

from tests.e2e.fakes.base import FakeUpstream, RecordedRequest, fill_schema, json_bytes
from tests.fakes import schema_answer

TOOLS = {
    "shell": ("run_shell_command", lambda t: {"command": f"touch {t.pwned}", "description": "Create a file"}),
    "write": ("write_file", lambda t: {"file_path": t.written, "content": "written by a tool\n"}),
    "read": ("read_file", lambda t: {"file_path": t.secret}),
}

_STATUSES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    503: "UNAVAILABLE",
}

_MODELS = "/v1beta/models/"


def model_of(recorded: RecordedRequest) -> str | None:
    """
    The model named in the request's path.
    """
    if not recorded.path.startswith(_MODELS):
        return None
    return recorded.path[len(_MODELS) :].split(":", 1)[0]


def method_of(recorded: RecordedRequest) -> str | None:
    if ":" not in recorded.path:
        return None
    return recorded.path.rsplit(":", 1)[1]


def user_text(body: dict) -> str | None:
    """
    The last text part of the last user turn: where the prompt goes.
    """
    for content in reversed(body.get("contents") or []):
        if content.get("role", "user") != "user":
            continue
        texts = [p["text"] for p in content.get("parts") or [] if isinstance(p, dict) and "text" in p]
        if texts:
            return texts[-1]
    return None


def system_blocks(body: dict) -> list[str]:
    instruction = body.get("systemInstruction") or {}
    if isinstance(instruction, str):
        return [instruction]
    return [p.get("text", "") for p in instruction.get("parts") or [] if isinstance(p, dict)]


def tool_names(body: dict) -> list[str] | None:
    tools = body.get("tools")
    if tools is None:
        return None
    return [d.get("name") for t in tools if isinstance(t, dict) for d in t.get("functionDeclarations") or []]


def is_helper_call(body: dict | None) -> bool:
    """
    The CLI's own structured calls (its model router, ...): they ask for
    JSON by schema and carry no tools.
    """
    config = (body or {}).get("generationConfig") or {}
    return "responseJsonSchema" in config or "responseSchema" in config


def has_tool_result(body: dict) -> bool:
    contents = body.get("contents") or []
    return bool(contents) and any(
        isinstance(p, dict) and "functionResponse" in p for p in contents[-1].get("parts") or []
    )


def sse(data: dict) -> bytes:
    return b"data: " + json_bytes(data) + b"\r\n\r\n"


class FakeGemini(FakeUpstream):
    vendor = "gemini"

    def is_model_request(self, recorded: RecordedRequest) -> bool:
        return recorded.method == "POST" and method_of(recorded) in ("generateContent", "streamGenerateContent")

    def error_body(self, status: int) -> dict:
        kind = _STATUSES.get(status, "INTERNAL")
        return {"error": {"code": status, "message": f"fake {status} ({kind})", "status": kind}}

    def _usage(self) -> dict:
        script = self.script
        return {
            "promptTokenCount": script.input_tokens,
            "candidatesTokenCount": script.output_tokens,
            "totalTokenCount": script.input_tokens + script.output_tokens,
        }

    def _chunk(self, model, parts, finish=False) -> dict:
        candidate = {"content": {"role": "model", "parts": parts}, "index": 0}
        chunk = {"candidates": [candidate], "modelVersion": model, "responseId": "fake-response"}
        if finish:
            candidate["finishReason"] = "STOP"
            chunk["usageMetadata"] = self._usage()
        return chunk

    def answer(self, request, recorded: RecordedRequest):
        method = method_of(recorded)
        if recorded.method == "GET" and recorded.path.rstrip("/") == "/v1beta/models":
            return self.send_json(request, {"models": []})
        if method == "countTokens":
            return self.send_json(request, {"totalTokens": self.script.input_tokens})
        if not self.is_model_request(recorded) or recorded.body is None:
            return self.send_json(request, self.error_body(404), 404)
        body, model = recorded.body, model_of(recorded) or "gemini-fake"
        script = self.script
        config = body.get("generationConfig") or {}
        schema = config.get("responseJsonSchema") or config.get("responseSchema")
        if schema is not None:
            # One of the CLI's own helper calls (the model router, ...).
            text = json.dumps(fill_schema(schema))
            return self.send_json(request, self._chunk(model, [{"text": text}], finish=True))
        name, make_args = TOOLS.get(script.tool, (None, None))
        if name and self.wants_tool(set(tool_names(body) or []), name, has_tool_result(body)):
            self.tool_calls.append((script.tool, name))
            parts = [{"functionCall": {"name": name, "args": make_args(script.targets)}}]
            if method == "generateContent":
                return self.send_json(request, self._chunk(model, parts, finish=True))
            return self.send_frames(request, [sse(self._chunk(model, parts, finish=True))])
        after_tool = script.after_tool_text if has_tool_result(body) else None
        schema = schema_answer.schema_in_prompt(user_text(body) or "") if script.schema_answers else None
        if schema is not None:
            # No schema option: SheLLM's instruction carries it in the prompt.
            after_tool = schema_answer.answer_text(schema, user_text(body) or "")
        if method == "generateContent":
            text = after_tool or script.text
            return self.send_json(request, self._chunk(model, [{"text": text}], finish=True))
        frames = []
        pieces = self.text_pieces() if after_tool is None else [after_tool]
        left = sum(isinstance(p, str) for p in pieces)
        for piece in pieces:
            if isinstance(piece, str):
                left -= 1
                frames.append(sse(self._chunk(model, [{"text": piece}], finish=not left)))
            else:
                frames.append(piece)
        return self.send_frames(request, frames)
