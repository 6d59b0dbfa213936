"""
A fake OpenAI Responses API, as Codex calls it: C{POST /v1/responses} with
C{"stream": true}, answered with the C{response.*} server-sent events.
C{GET /v1/models} lists nothing; any other GET (a WebSocket upgrade) gets 426.
"""

from __future__ import annotations

import json

from tests.e2e.fakes.base import FakeUpstream, RecordedRequest, json_bytes
from tests.fakes import schema_answer

_ERRORS = {
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided: fake."),
    403: ("invalid_request_error", "forbidden", "Forbidden."),
    429: ("rate_limit_error", "rate_limit_exceeded", "Rate limit reached (fake)."),
}


def patch_adding(path: str, text: str) -> str:
    lines = "".join("+" + line + "\n" for line in text.splitlines())
    return f"*** Begin Patch\n*** Add File: {path}\n{lines}*** End Patch\n"


def _exec(cmd: str):
    return {"cmd": cmd}


#: What a code-mode script sends back once it ran.
CODE_RAN = "code-mode-ran"


def _code(t) -> str:
    """
    "Code mode": JavaScript for the C{exec} tool that tries every nested
    tool that could touch the machine.
    """
    patch = patch_adding(t.written, "written by a tool")
    return "\n".join(
        [
            # Built at run time, so it is only ever upstream if the script ran.
            "const out = [['code', 'mode', 'ran'].join('-')];",
            "for (const [name, arg] of [",
            f"  ['exec_command', {{cmd: {json.dumps('touch ' + t.pwned + '; cat ' + t.secret)}}}],",
            f"  ['shell', {{command: ['sh', '-c', {json.dumps('touch ' + t.pwned)}]}}],",
            f"  ['apply_patch', {json.dumps(patch)}],",
            "]) {",
            "  try { out.push(name + ': ' + JSON.stringify(await tools[name](arg))); }",
            "  catch (e) { out.push(name + ' failed: ' + e); }",
            "}",
            "text(out.join('\\n'));",
        ]
    )


#: Tool call per kind: (vendor tool name, arguments or freeform input).
TOOLS = {
    "shell": ("exec_command", lambda t: _exec(f"touch {t.pwned}")),
    "write": ("apply_patch", lambda t: patch_adding(t.written, "written by a tool")),
    "read": ("exec_command", lambda t: _exec(f"cat {t.secret}")),
    "code": ("exec", _code),
}


def _declared(tools) -> list[dict]:
    found = []
    for tool in tools or []:
        if not isinstance(tool, dict):
            continue
        found.append(tool)
        found += _declared(tool.get("tools"))
    return found


def declared_tools(body: dict) -> list[dict]:
    """
    Every tool the request declares: top-level C{tools}, the tools of an
    C{additional_tools} input item ("code mode"), and namespace members.
    """
    tools = _declared(body.get("tools"))
    for item in body.get("input") or []:
        if isinstance(item, dict) and item.get("type") == "additional_tools":
            tools += _declared(item.get("tools"))
    return tools


def tool_names(body: dict) -> list[str] | None:
    if body.get("tools") is None and not any(
        isinstance(i, dict) and i.get("type") == "additional_tools" for i in body.get("input") or []
    ):
        return None
    return [t.get("name") or t.get("type") for t in declared_tools(body)]


def _texts(item: dict) -> list[str]:
    content = item.get("content")
    if isinstance(content, str):
        return [content]
    return [c.get("text", "") for c in content or [] if isinstance(c, dict)]


def user_text(body: dict) -> str | None:
    """
    The last text of the last user message: where the prompt goes.
    """
    for item in reversed(body.get("input") or []):
        if isinstance(item, dict) and item.get("role") == "user":
            texts = _texts(item)
            if texts:
                return texts[-1]
    return None


def system_blocks(body: dict) -> list[str]:
    blocks = [body["instructions"]] if isinstance(body.get("instructions"), str) else []
    for item in body.get("input") or []:
        if isinstance(item, dict) and item.get("role") in ("developer", "system"):
            blocks += _texts(item)
    return blocks


def is_helper_call(body: dict) -> bool:
    """
    Codex makes no structured side calls of its own here.
    """
    return False


def has_tool_result(body: dict) -> bool:
    items = [i for i in body.get("input") or [] if isinstance(i, dict)]
    return bool(items) and str(items[-1].get("type", "")).endswith("_call_output")


class FakeOpenAIResponses(FakeUpstream):
    vendor = "openai"
    #: Each text delta in a message of its own (codex shows whole messages only).
    message_per_chunk = False

    def is_model_request(self, recorded: RecordedRequest) -> bool:
        return recorded.method == "POST" and recorded.path == "/v1/responses"

    def error_body(self, status: int) -> dict:
        kind, code, message = _ERRORS.get(status, ("server_error", None, f"fake {status} failure"))
        return {"error": {"message": message, "type": kind, "param": None, "code": code}}

    def answer(self, request, recorded: RecordedRequest):
        if recorded.method == "GET" and recorded.path == "/v1/models":
            return self.send_json(request, {"object": "list", "data": []})
        if recorded.method == "GET" and recorded.path.endswith("/wham/usage") and self.script.usage is not None:
            return self.send_json(request, self.script.usage)
        if recorded.method == "GET":
            return self.send_json(request, {"error": {"message": "no websockets"}}, 426)
        if not self.is_model_request(recorded) or recorded.body is None:
            return self.send_json(request, self.error_body(404), 404)
        body = recorded.body
        model = str(body.get("model") or "gpt-fake")
        script = self.script
        self._seq = 0
        response_id = self.next_id("resp")
        frames = [
            self._event("response.created", response=self._response(response_id, model, "in_progress")),
            self._event("response.in_progress", response=self._response(response_id, model, "in_progress")),
        ]
        name, make_args = TOOLS.get(script.tool, (None, None))
        offered = {t.get("name"): t for t in declared_tools(body)}
        if name and self.wants_tool(set(offered), name, has_tool_result(body)):
            self.tool_calls.append((script.tool, name))
            item = self._tool_item(name, make_args(script.targets), offered.get(name))
            frames += [
                self._event("response.output_item.added", output_index=0, item=item),
                self._event("response.output_item.done", output_index=0, item=item),
            ]
            output = [item]
        else:
            after_tool = script.after_tool_text if has_tool_result(body) else None
            fmt = (body.get("text") or {}).get("format") or {}
            if script.schema_answers and fmt.get("type") == "json_schema":
                # --output-schema: the schema arrives as text.format.
                after_tool = schema_answer.answer_text(fmt.get("schema") or {}, user_text(body) or "")
            pieces = self.text_pieces() if after_tool is None else [after_tool]
            output = []
            if self.message_per_chunk and after_tool is None:
                for piece in pieces:
                    if isinstance(piece, str):
                        frames += self._message(len(output), [piece], output)
                    else:
                        frames.append(piece)
            else:
                frames += self._message(0, pieces, output)
        completed = self._response(response_id, model, "completed", output)
        completed["usage"] = {
            "input_tokens": script.input_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": script.output_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": script.input_tokens + script.output_tokens,
        }
        frames.append(self._event("response.completed", response=completed))
        return self.send_frames(request, frames)

    def _event(self, kind: str, **fields) -> bytes:
        self._seq += 1
        data = {"type": kind, "sequence_number": self._seq, **fields}
        return b"event: " + kind.encode() + b"\ndata: " + json_bytes(data) + b"\n\n"

    def _response(self, response_id, model, status, output=()) -> dict:
        return {
            "id": response_id,
            "object": "response",
            "created_at": 1700000000,
            "status": status,
            "model": model,
            "output": list(output),
        }

    def _tool_item(self, name, args, declared: dict | None) -> dict:
        call_id = self.next_id("call")
        if isinstance(args, str) and (declared is None or declared.get("type") == "custom"):
            return {
                "type": "custom_tool_call",
                "id": self.next_id("ctc"),
                "status": "completed",
                "call_id": call_id,
                "name": name,
                "input": args,
            }
        if isinstance(args, str):
            args = {"input": args}
        return {
            "type": "function_call",
            "id": self.next_id("fc"),
            "status": "completed",
            "call_id": call_id,
            "name": name,
            "arguments": json_bytes(args).decode(),
        }

    def _message(self, index, pieces, output: list) -> list:
        """
        The frames of one assistant message made of C{pieces}; appends the
        finished item to C{output}.
        """
        item_id = self.next_id("msg")
        full = "".join(p for p in pieces if isinstance(p, str))
        part = {"type": "output_text", "text": "", "annotations": []}
        frames = [
            self._event(
                "response.output_item.added",
                output_index=index,
                item={"id": item_id, "type": "message", "status": "in_progress", "role": "assistant", "content": []},
            ),
            self._event("response.content_part.added", item_id=item_id, output_index=index, content_index=0, part=part),
        ]
        for piece in pieces:
            if isinstance(piece, str):
                frames.append(
                    self._event(
                        "response.output_text.delta", item_id=item_id, output_index=index, content_index=0, delta=piece
                    )
                )
            else:
                frames.append(piece)
        done_part = {"type": "output_text", "text": full, "annotations": []}
        item = {"id": item_id, "type": "message", "status": "completed", "role": "assistant", "content": [done_part]}
        frames += [
            self._event("response.output_text.done", item_id=item_id, output_index=index, content_index=0, text=full),
            self._event(
                "response.content_part.done", item_id=item_id, output_index=index, content_index=0, part=done_part
            ),
            self._event("response.output_item.done", output_index=index, item=item),
        ]
        output.append(item)
        return frames
