"""
Cerebras, or any OpenAI-compatible chat-completions API, through treq.

Every call streams from upstream (C{stream: true}, usage included) and the
deltas are parsed as the body arrives; a non-streaming client request just
collects them.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from twisted.internet.defer import CancelledError, Deferred, ensureDeferred, succeed
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.web.client import ResponseDone
from twisted.web.http_headers import Headers

from shellm.completion import (
    CompletionRequest,
    EventSink,
    ProviderHealth,
    ProviderResult,
    ProviderRun,
    TextDelta,
    Usage,
)
from shellm.errors import InvalidRequest, ProviderFailed, ProviderUnavailable, RateLimited, Timeout
from shellm.logs import redact
from shellm.providers.base import Capabilities
from shellm.providers.cli import token_count
from shellm.providers.http_client import BytesBody, ReadyURL
from shellm.structured import OutputSpec

MAX_LINE_BYTES = 1024 * 1024
#: How much of an upstream error body is read (and logged, redacted).
ERROR_BODY_BYTES = 8 * 1024
HEALTH_TIMEOUT = 10.0


class StreamCut(Exception):
    """
    The upstream body ended before its final event.
    """


class LineReader(Protocol):
    """
    Receives a response body and hands each complete line to C{on_line} as
    soon as it arrives.  C{done} fires when the body ends cleanly; cancelling
    it drops the connection.
    """

    def __init__(self, on_line: Callable[[str], None], limit: int = MAX_LINE_BYTES):
        self._on_line = on_line
        self._limit = limit
        self._buffer = b""
        self.error: BaseException | None = None
        self.done = Deferred(self._cancel)

    def dataReceived(self, data: bytes) -> None:
        if self.error is not None:
            return
        lines = (self._buffer + data).split(b"\n")
        self._buffer = lines.pop()
        if len(self._buffer) > self._limit:
            self._fail(StreamCut("an upstream line was too long"))
            return
        for raw in lines:
            try:
                self._on_line(raw.rstrip(b"\r").decode("utf-8", "replace"))
            except Exception as e:
                self._fail(e)
                return

    def _fail(self, error: BaseException) -> None:
        self.error = error
        self.transport.stopProducing()

    def connectionLost(self, reason) -> None:
        if self.done.called:
            return
        if self.error is not None:
            self.done.errback(self.error)
        elif reason.check(ResponseDone):
            self.done.callback(None)
        else:
            self.done.errback(StreamCut("the upstream connection was cut"))

    def _cancel(self, d: Deferred) -> None:
        self.transport.stopProducing()


class BodyPrefix(Protocol):
    """
    Keeps the first C{limit} bytes of a response body, whatever its lines
    (an error body is usually one JSON object with no newline at the end),
    then stops reading.  C{done} fires with the body's end, however it ends.
    """

    def __init__(self, limit: int):
        self._limit = limit
        self.data = b""
        self.done: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.data = (self.data + data)[: self._limit]
        if len(self.data) >= self._limit:
            self.transport.stopProducing()

    def connectionLost(self, reason) -> None:
        if not self.done.called:
            self.done.callback(None)


def without_instruction(system: str | None, output: OutputSpec) -> str | None:
    """
    The system prompt without SheLLM's structured-output instruction.
    """
    instruction = output.instruction()
    if system and system.endswith(instruction):
        system = system[: -len(instruction)].rstrip()
    return system or None


class ChatStreamParser:
    """
    OpenAI-style C{chat.completion.chunk} server-sent events.
    """

    def __init__(self, sink: EventSink, tools: bool = False):
        self._sink = sink
        self.usage: Usage | None = None
        self.model: str | None = None
        self.done = False
        self.finish_reason: str | None = None
        #: With native tools the answer is held, then handed on as SheLLM's
        #: envelope (text and calls) for validation.
        self._tools = tools
        self._text: list[str] = []
        self._calls: dict[int, dict] = {}

    def feed(self, line: str) -> None:
        if not line.startswith("data:"):
            return  # comments, event names, blank separators
        data = line[5:].strip()
        if data == "[DONE]":
            self.done = True
            return
        try:
            chunk = json.loads(data)
        except ValueError:
            raise ProviderFailed("cerebras sent a malformed event")
        if not isinstance(chunk, dict):
            raise ProviderFailed("cerebras sent a malformed event")
        if chunk.get("error"):
            raise ProviderFailed("cerebras reported an error mid-stream")
        if isinstance(chunk.get("model"), str):
            self.model = chunk["model"]
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            tokens_in = token_count(usage.get("prompt_tokens"))
            tokens_out = token_count(usage.get("completion_tokens"))
            if tokens_in is not None and tokens_out is not None:
                self.usage = Usage(tokens_in, tokens_out)
        for choice in chunk.get("choices") or []:
            if not isinstance(choice, dict):
                continue
            delta = choice.get("delta") or {}
            text = delta.get("content")
            if isinstance(text, str) and text:
                if self._tools:
                    self._text.append(text)
                else:
                    self._sink(TextDelta(text))
            for call in delta.get("tool_calls") or [] if self._tools else []:
                if not isinstance(call, dict):
                    continue
                index = call.get("index", 0)
                made = self._calls.setdefault(index if isinstance(index, int) else 0, {"name": "", "arguments": ""})
                function = call.get("function") or {}
                if isinstance(function.get("name"), str):
                    made["name"] += function["name"]
                if isinstance(function.get("arguments"), str):
                    made["arguments"] += function["arguments"]
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]

    def hand_on_tool_answer(self) -> None:
        """
        With native tools, the whole answer as one envelope delta.
        """
        if not self._tools:
            return
        calls = [
            {"name": call["name"], "arguments": _arguments(call["arguments"])}
            for _, call in sorted(self._calls.items())
        ]
        content = "".join(self._text) or None
        self._sink(TextDelta(json.dumps({"content": content, "tool_calls": calls}, ensure_ascii=False)))


def response_format(output: OutputSpec) -> dict:
    """
    The API's own structured output: the schema (for tools, SheLLM's
    envelope) in C{response_format}, strict.
    """
    if output.kind == "json_object":
        return {"type": "json_object"}
    return {"type": "json_schema", "json_schema": {"name": output.name, "schema": output.schema, "strict": True}}


def native_tools(output: OutputSpec) -> dict:
    """
    The offered functions as the API's own C{tools}, C{tool_choice} and
    C{parallel_tool_calls}.
    """
    tools = [
        {"type": "function", "function": {"name": t.name, "description": t.description, "parameters": t.parameters}}
        for t in output.tools
    ]
    if output.required and len(tools) == 1:
        choice: object = {"type": "function", "function": {"name": output.tools[0].name}}
    else:
        choice = "required" if output.required else "auto"
    return {"tools": tools, "tool_choice": choice, "parallel_tool_calls": output.parallel}


def _arguments(text: str):
    try:
        return json.loads(text) if text else {}
    except ValueError:
        return text  # not JSON: the validation says so


def _was_cancelled(error: Exception) -> bool:
    """
    Whether a request failed because it was cancelled: before its response
    arrives, treq reports that as C{ResponseNeverReceived} (or
    C{RequestTransmissionFailed}) wrapping the L{CancelledError}.
    """
    return any(reason.check(CancelledError) for reason in getattr(error, "reasons", None) or ())


class CerebrasProvider:
    name = "cerebras"
    kind = "http"
    capabilities = Capabilities(system_prompt=True, max_tokens=True, streaming="token", sampling=True)
    log = Logger()

    def __init__(self, reactor, http, api_key: str | None, base_url: str, timeout: float):
        """
        @param http: a L{treq.client.HTTPClient} (over the daemon's own
            connection pool) or, in tests, a L{treq.testing.StubTreq}.
        """
        self._reactor = reactor
        self._http = http
        self._api_key = api_key
        self._timeout = timeout
        # Parsed once: building URLs and headers per request is a measurable
        # share of the daemon's CPU at a thousand requests a second.
        base_url = base_url.rstrip("/")
        self._completions_url = ReadyURL.ready(base_url + "/chat/completions")
        self._models_url = ReadyURL.ready(base_url + "/models")
        authorization = [f"Bearer {api_key}".encode("latin-1", "replace")]
        self._headers = Headers({b"Authorization": authorization})
        self._post_headers = Headers(
            {
                b"Authorization": authorization,
                b"Accept": [b"text/event-stream"],
                b"Content-Type": [b"application/json"],
            }
        )

    def start(self, request: CompletionRequest, upstream_model: str | None, sink: EventSink) -> ProviderRun:
        if not self._api_key:
            raise ProviderUnavailable("cerebras is not configured (CEREBRAS_API_KEY is not set)")
        messages = []
        system = request.system
        if request.output is not None and request.output.kind == "tools":
            # Native tools: the envelope SheLLM asks the CLIs for is not this API's way.
            system = without_instruction(system, request.output)
        if system:
            messages.append({"role": "system", "content": system})
        messages.append({"role": "user", "content": request.prompt})
        body = {
            "model": upstream_model,
            "messages": messages,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if request.max_tokens:
            body["max_completion_tokens"] = request.max_tokens
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.top_p is not None:
            body["top_p"] = request.top_p
        if request.stop:
            body["stop"] = list(request.stop)
        if request.output is not None and request.output.kind == "tools":
            body.update(native_tools(request.output))
        elif request.output is not None:
            body["response_format"] = response_format(request.output)
        finished = Deferred()
        running: list[Deferred] = []
        timed_out: list[bool] = []

        def time_out() -> None:
            timed_out.append(True)
            running[0].cancel()

        timer = self._reactor.callLater(self._timeout, time_out)

        async def call() -> ProviderResult:
            try:
                return await self._call(body, sink)
            except CancelledError:
                if timed_out:
                    raise Timeout("cerebras did not answer in time")
                raise
            finally:
                if timer.active():
                    timer.cancel()
                finished.callback(None)

        result = ensureDeferred(call())
        running.append(result)
        return ProviderRun(result=result, finished=finished)

    async def _call(self, body: dict, sink: EventSink) -> ProviderResult:
        try:
            # No redirects: following one would send the key to another URL.
            response = await self._http.post(
                self._completions_url,
                data=BytesBody(json.dumps(body).encode("utf-8")),
                headers=self._post_headers,
                unbuffered=True,
                allow_redirects=False,
            )
        except CancelledError:
            raise
        except Exception as e:
            if _was_cancelled(e):
                raise CancelledError()  # stopped by us (timeout, a client gone), not unreachable
            self.log.warn("cerebras unreachable: {why}", why=type(e).__name__)
            raise ProviderUnavailable("cerebras could not be reached")
        if response.code != 200:
            raise await self._upstream_error(response)
        parser = ChatStreamParser(sink, tools="tools" in body)
        reader = LineReader(parser.feed)
        response.deliverBody(reader)
        try:
            await reader.done
        except StreamCut:
            raise ProviderFailed("cerebras: the response was cut off")
        if not parser.done and parser.finish_reason is None:
            raise ProviderFailed("cerebras: the response was cut off")
        parser.hand_on_tool_answer()
        return ProviderResult(
            usage=parser.usage,
            model=parser.model,
            finish_reason="length" if parser.finish_reason == "length" else "stop",
        )

    async def _upstream_error(self, response) -> Exception:
        status = response.code
        reader = BodyPrefix(ERROR_BODY_BYTES)
        response.deliverBody(reader)
        await reader.done
        self.log.warn(
            "cerebras returned HTTP {status}: {body}",
            status=status,
            body=redact(reader.data.decode("utf-8", "replace")[:500]),
        )
        if status in (401, 403):
            return ProviderUnavailable(f"cerebras refused the API key (HTTP {status})")
        if status == 429:
            retry = response.headers.getRawHeaders(b"retry-after", [b""])[0]
            return RateLimited(
                "cerebras: the upstream rate limit was reached",
                retry_after=int(retry) if retry.isdigit() else 60,
            )
        if status in (400, 404, 413, 422):
            return InvalidRequest(f"cerebras rejected the request (HTTP {status})")
        return ProviderFailed(f"cerebras: upstream error (HTTP {status})")

    def check_health(self) -> Deferred:
        """
        The key is set and the API accepts it on C{GET /models}, which costs
        no tokens.
        """
        if not self._api_key:
            return succeed(ProviderHealth(True, False, "CEREBRAS_API_KEY is not set"))

        async def check() -> ProviderHealth:
            try:
                response = await self._http.get(
                    self._models_url,
                    headers=self._headers,
                    timeout=HEALTH_TIMEOUT,
                    allow_redirects=False,
                )
                await response.content()
            except CancelledError:
                raise
            except Exception:
                return ProviderHealth(True, False, "cerebras API unreachable")
            if response.code in (401, 403):
                return ProviderHealth(True, False, f"cerebras refused the API key (HTTP {response.code})")
            return ProviderHealth(True, True)

        return ensureDeferred(check())
