"""
What the three fake vendor servers share: a Twisted site on a free loopback
port, a record of every request, and a script for the next answer (text in
deltas with pauses, an error status, a hang, or a tool call followed by text
once the tool's result comes back).
"""

from __future__ import annotations

from attrs import define, field, frozen
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.web import server

from tests.fakes.serving import DEFAULT_TEXT, headers_of, json_body, json_bytes, quiet_site, set_status, split_text

#: What the fakes answer once a tool's result has come back.
AFTER_TOOL_TEXT = "I could not use that tool."


@frozen
class RecordedRequest:
    """
    One request as the fake received it; header names are lower case and
    C{body} is the parsed JSON (or L{None}).
    """

    method: str
    path: str
    uri: str
    headers: dict
    raw: bytes
    body: dict | None

    def text(self) -> str:
        return self.raw.decode("utf-8", "replace")


@frozen
class ToolTargets:
    """
    The paths a tool call aims at: the file a shell command would create, the
    file a write would create, and the secret a read would leak.
    """

    pwned: str
    written: str
    secret: str


@define
class Script:
    """
    How the next requests are answered.  C{gate}, when set, is awaited after
    the first text delta: the test decides when the rest follows.
    """

    text: str = DEFAULT_TEXT
    chunks: int = 3
    delay: float = 0.0
    gate: Deferred | None = None
    input_tokens: int = 10
    output_tokens: int = 5
    fail_status: int | None = None
    hang: bool = False
    #: "shell", "write" or "read": answer with that tool call first.
    tool: str | None = None
    #: Send the tool call even if the request does not offer the tool.
    force_tool: bool = False
    targets: ToolTargets | None = None
    after_tool_text: str = AFTER_TOOL_TEXT
    #: Extra headers on every model answer (the vendors' rate-limit headers).
    headers: dict = field(factory=dict)
    #: The body of a C{fail_status} answer, instead of the vendor's default.
    fail_body: dict | None = None
    #: What the ChatGPT backend's usage endpoint answers (codex's app-server
    #: reads it for C{account/rateLimits/read}); none: 404.
    usage: dict | None = None
    #: Answer requests that carry a schema (claude's StructuredOutput tool,
    #: codex's text.format, SheLLM's instruction for gemini) with JSON for it,
    #: or a bad answer when the prompt asks (tests/fakes/schema_answer.py).
    schema_answers: bool = False


#: A marker in a frame list: wait C{Script.delay} seconds here.
PAUSE = object()
#: A marker in a frame list: wait for C{Script.gate} here.
GATE = object()


@define(eq=False)
class _Open:
    request: object
    done: bool = False


class FakeUpstream:
    """
    Base of the fakes.  Subclasses implement L{answer}: look at the recorded
    request and either return bytes or call L{send_frames} and return
    C{server.NOT_DONE_YET}.
    """

    log = Logger()
    #: The vendor's name, for log messages.
    vendor = "fake"

    def __init__(self, reactor):
        self.reactor = reactor
        self.script = Script()
        self.requests: list[RecordedRequest] = []
        #: Tool calls sent, as (tool kind, vendor tool name).
        self.tool_calls: list[tuple[str, str]] = []
        self._open: list[_Open] = []
        self._port = None
        self._ids = 0

    # -- lifecycle

    def start(self) -> FakeUpstream:
        self._port = self.reactor.listenTCP(0, quiet_site(self.render), interface="127.0.0.1")
        return self

    @property
    def port(self) -> int:
        return self._port.getHost().port

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> Deferred:
        """
        Abort every connection still open (hanging answers too), stop
        listening.
        """
        for entry in self._open:
            if not entry.done:
                entry.done = True
                entry.request.channel.transport.abortConnection()
        self._open.clear()
        if self._port is None:
            return succeed(None)
        port, self._port = self._port, None
        return port.stopListening()

    # -- what the tests look at

    def api_requests(self) -> list[RecordedRequest]:
        """
        The model requests (subclasses say which paths those are).
        """
        return [r for r in self.requests if self.is_model_request(r)]

    def is_model_request(self, recorded: RecordedRequest) -> bool:
        raise NotImplementedError

    def next_id(self, prefix: str) -> str:
        self._ids += 1
        return f"{prefix}_fake{self._ids:06d}"

    # -- serving

    def render(self, request):
        raw = request.content.read() if request.content is not None else b""
        headers = headers_of(request)
        body = json_body(raw)
        recorded = RecordedRequest(
            method=request.method.decode("latin-1"),
            path=request.path.decode("latin-1"),
            uri=request.uri.decode("latin-1"),
            headers=headers,
            raw=raw,
            body=body if isinstance(body, dict) else None,
        )
        self.requests.append(recorded)
        if self.is_model_request(recorded):
            for name, value in self.script.headers.items():
                request.setHeader(name, value)
            if self.script.hang:
                self._track(request)
                return server.NOT_DONE_YET
            if self.script.fail_status is not None:
                return self.error(request, self.script.fail_status)
        return self.answer(request, recorded)

    def answer(self, request, recorded: RecordedRequest):
        raise NotImplementedError

    def error(self, request, status: int) -> bytes:
        set_status(request, status)
        request.setHeader(b"content-type", b"application/json")
        return json_bytes(self.script.fail_body or self.error_body(status))

    def error_body(self, status: int) -> dict:
        raise NotImplementedError

    def send_json(self, request, value, status: int = 200) -> bytes:
        set_status(request, status)
        request.setHeader(b"content-type", b"application/json")
        return json_bytes(value)

    def send_frames(self, request, frames: list, content_type=b"text/event-stream"):
        """
        Write C{frames} (bytes, or the L{PAUSE} and L{GATE} markers) one at a
        time, then finish the response.
        """
        request.setHeader(b"content-type", content_type)
        request.setHeader(b"cache-control", b"no-cache")
        entry = self._track(request)
        script = self.script

        async def write_all():
            for frame in frames:
                if entry.done:
                    return
                if frame is PAUSE:
                    if script.delay:
                        await deferLater(self.reactor, script.delay, lambda: None)
                elif frame is GATE:
                    if script.gate is not None:
                        await script.gate
                else:
                    request.write(frame)
            if not entry.done:
                entry.done = True
                request.finish()

        Deferred.fromCoroutine(write_all()).addErrback(
            lambda f: self.log.failure("fake {vendor} answer failed", f, vendor=self.vendor)
        )
        return server.NOT_DONE_YET

    def _track(self, request) -> _Open:
        entry = _Open(request)
        self._open.append(entry)

        def gone(_):
            entry.done = True

        request.notifyFinish().addBoth(gone)
        return entry

    def text_pieces(self) -> list:
        """
        The answer's deltas with the pauses between them: GATE after the
        first delta, PAUSE after each of the others.
        """
        out: list = []
        pieces = split_text(self.script.text, self.script.chunks)
        for i, piece in enumerate(pieces):
            out.append(piece)
            if i == 0:
                out.append(GATE)
            if i < len(pieces) - 1:
                out.append(PAUSE)
        return out

    def wants_tool(self, offered: set[str], tool_name: str, has_result: bool) -> bool:
        """
        Whether to answer this request with the scripted tool call: not once
        a tool result came back, and only if offered unless forced.
        """
        script = self.script
        if script.tool is None or has_result:
            return False
        return tool_name in offered or script.force_tool


def fill_schema(schema) -> object:
    """
    A value satisfying a JSON schema well enough for the CLIs' own
    structured calls (strings "fake", numbers 1, objects filled).
    """
    if not isinstance(schema, dict):
        return "fake"
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "string")
    kind = str(kind or "").lower()
    if "enum" in schema and schema["enum"]:
        return schema["enum"][0]
    if kind == "object" or "properties" in schema:
        return {k: fill_schema(v) for k, v in (schema.get("properties") or {}).items()}
    if kind == "array":
        return []
    if kind in ("integer", "number"):
        return max(1, schema.get("minimum", 1))
    if kind == "boolean":
        return False
    return "fake"
