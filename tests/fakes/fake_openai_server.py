#!/usr/bin/env python3
"""A small OpenAI-compatible chat-completions server for tests.

Use it in-process::

    fake, port = start_fake_openai(reactor)
    fake.text = "hello"            # behaviour is set through attributes
    ...  POST http://127.0.0.1:<port>/v1/chat/completions
    fake.requests                  # what the server received
    yield fake.stop()              # abort open connections, stop listening

or as a script: ``fake_openai_server.py --port 0`` prints ``PORT <n>`` on
its first stdout line and then serves until killed.

Routes: ``POST /v1/chat/completions`` and ``POST /chat/completions``
(plus ``GET /v1/models`` and ``GET /models``). Everything else is a 404.

Attributes of ``FakeOpenAI``:

text           answer text (default "Hi! I am a fake model.")
chunks         number of streamed content deltas (default 3)
delay          seconds between streamed events (default 0); a non-streaming
               answer is sent after one delay
input_tokens   usage.prompt_tokens (default 10)
output_tokens  usage.completion_tokens (default 5)
fail_status    if set, every chat request gets this HTTP status and an
               OpenAI-style error body containing SECRET
redirect_to    if set, every chat request gets a 307 to this URL
cut_after      if set to N, a streaming answer writes its first N SSE events
               (deltas, then the finish chunk, the usage chunk, [DONE]) and
               then aborts the TCP connection; a non-streaming answer writes
               the first half of its JSON body and aborts
stall          if true, a streaming answer sends the headers and its first
               event and then nothing more; a non-streaming answer sends
               only the headers
               (a streaming answer also sets a cookie, upstream_session=<n>)
requests       list of dicts {method, path, uri, headers, body, raw_body},
               one per request received (header names lower-case, body is
               the parsed JSON or None)
"""

import argparse
import copy
import itertools
import json
import os
import sys
import time

if not __package__:  # run as a script: make the tests package importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from twisted.web import server

from tests.fakes.serving import DEFAULT_TEXT, headers_of, json_body, json_bytes, quiet_site, set_status, split_text

SECRET = "csk-SECRETKEY0123456789"
CHAT_PATHS = (b"/v1/chat/completions", b"/chat/completions")
MODELS_PATHS = (b"/v1/models", b"/models")

_ids = itertools.count(1)


def _error_body(status):
    if status == 401:
        message = "Incorrect API key provided: %s. You can find your API key in your account settings." % SECRET
        kind, code = "invalid_request_error", "invalid_api_key"
    elif status == 429:
        message = "Rate limit reached for requests made with key %s. Please try again later." % SECRET
        kind, code = "rate_limit_error", "rate_limit_exceeded"
    elif status >= 500:
        message = "The server had an error while processing your request (key %s)." % SECRET
        kind, code = "server_error", None
    else:
        message = "Request failed with status %d (key %s)." % (status, SECRET)
        kind, code = "invalid_request_error", None
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


class FakeOpenAI:
    def __init__(self, reactor=None):
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.port = None
        self.requests = []
        self._open = {}  # request -> pending DelayedCall or None
        self.reset()

    # -- configuration --------------------------------------------------

    def reset(self):
        """Restore the default behaviour and forget recorded requests."""
        self.text = DEFAULT_TEXT
        self.chunks = 3
        self.delay = 0.0
        self.input_tokens = 10
        self.output_tokens = 5
        self.fail_status = None
        self.redirect_to = None
        self.cut_after = None
        self.stall = False
        del self.requests[:]

    @property
    def base_url(self):
        """http://127.0.0.1:<port>/v1 once listening."""
        return "http://127.0.0.1:%d/v1" % self.port.getHost().port

    def site(self):
        return quiet_site(self._handle)

    # -- lifecycle ------------------------------------------------------

    def abort_all(self):
        """Cancel pending timers and abort every connection still open."""
        for request, call in list(self._open.items()):
            if call is not None and call.active():
                call.cancel()
            self._abort(request)
        self._open.clear()

    def stop(self):
        """abort_all(), then stop listening; returns a Deferred."""
        self.abort_all()
        if self.port is None:
            from twisted.internet import defer

            return defer.succeed(None)
        return self.port.stopListening()

    # -- request handling -----------------------------------------------

    def _record(self, request, raw):
        headers = headers_of(request)
        body = json_body(raw)
        self.requests.append(
            {
                "method": request.method.decode("latin-1"),
                "path": request.path.decode("latin-1"),
                "uri": request.uri.decode("latin-1"),
                "headers": headers,
                "body": body,
                "raw_body": raw,
            }
        )
        return body

    def _send_json(self, request, status, obj):
        set_status(request, status)
        request.setHeader(b"content-type", b"application/json")
        return json_bytes(obj)

    def _handle(self, request):
        raw = request.content.read() if request.content is not None else b""
        body = self._record(request, raw)
        path = request.path
        if path in MODELS_PATHS and request.method == b"GET":
            return self._send_json(
                request,
                200,
                {
                    "object": "list",
                    "data": [{"id": "fake-model", "object": "model", "created": 0, "owned_by": "fake"}],
                },
            )
        if path not in CHAT_PATHS:
            return self._send_json(
                request,
                404,
                {
                    "error": {
                        "message": "Unknown path",
                        "type": "invalid_request_error",
                        "param": None,
                        "code": "not_found",
                    }
                },
            )
        if request.method != b"POST":
            return self._send_json(
                request,
                405,
                {
                    "error": {
                        "message": "Method not allowed",
                        "type": "invalid_request_error",
                        "param": None,
                        "code": None,
                    }
                },
            )
        if not isinstance(body, dict):
            return self._send_json(
                request,
                400,
                {
                    "error": {
                        "message": "Request body is not a JSON object",
                        "type": "invalid_request_error",
                        "param": None,
                        "code": None,
                    }
                },
            )
        fake = self._for_request(body)
        if fake.redirect_to is not None:
            request.setHeader(b"location", fake.redirect_to.encode())
            return self._send_json(request, 307, {})
        if fake.fail_status is not None:
            return self._send_json(request, int(fake.fail_status), _error_body(int(fake.fail_status)))

        self._open[request] = None
        request.notifyFinish().addBoth(self._finished, request)
        if body.get("stream"):
            fake._start_stream(request, body)
        else:
            fake._start_plain(request, body)
        return server.NOT_DONE_YET

    def _for_request(self, body):
        """
        Behaviour for one request: a last message starting with
        C{mode:<name>} overrides the server's settings for it alone
        (C{stall}, C{cut}, C{slow}, C{status<N>}); otherwise the settings.
        """
        messages = body.get("messages") or []
        last = messages[-1] if messages and isinstance(messages[-1], dict) else {}
        text = last.get("content")
        if body.get("tools"):
            # Native tools: a call to the first function, or text once a
            # result is in the prompt (see schema_answer.py for the markers).
            from tests.fakes import schema_answer

            prompt = "\n".join(m.get("content") or "" for m in messages if isinstance(m, dict))
            view = copy.copy(self)
            results = schema_answer._RESULT.findall(prompt)
            required = body.get("tool_choice") == "required"
            if results and "[unknown-tool]" not in prompt and not required:
                view.text = "The tool said: " + results[-1].strip()
                return view
            function = body["tools"][-1 if results else 0]["function"]
            name = "no_such_function" if "[unknown-tool]" in prompt else function["name"]
            arguments = schema_answer.sample(function.get("parameters") or {})
            if "[bad-json]" in prompt or ("[bad-once]" in prompt and schema_answer.REPAIR_NOTE not in prompt):
                arguments = {"unexpected": [1, 2]}
            view.tool_call = (name, json.dumps(arguments))
            return view
        answer_format = body.get("response_format")
        if isinstance(answer_format, dict) and answer_format.get("type") in ("json_schema", "json_object"):
            # Structured output: JSON for the schema (see schema_answer.py).
            from tests.fakes import schema_answer

            schema = (answer_format.get("json_schema") or {}).get("schema") or {"type": "object"}
            prompt = "\n".join(m.get("content") or "" for m in messages if isinstance(m, dict))
            view = copy.copy(self)
            view.text = schema_answer.answer_text(schema, prompt)
            return view
        if not isinstance(text, str) or not text.startswith("mode:"):
            return self
        view = copy.copy(self)  # shares the request records and open calls
        mode = text.split()[0][len("mode:") :]
        if mode == "stall":
            view.stall = True
        elif mode == "cut":
            view.cut_after = 2
        elif mode == "slow":
            view.delay = 0.05
        elif mode.startswith("status") and mode[6:].isdigit():
            view.fail_status = int(mode[6:])
        return view

    def _finished(self, _result, request):
        call = self._open.pop(request, None)
        if call is not None and call.active():
            call.cancel()
        return None

    def _abort(self, request):
        channel = getattr(request, "channel", None)
        transport = getattr(channel, "transport", None)
        if transport is not None:
            transport.abortConnection()

    def _cut(self, request, deadline=None):
        """Abort the connection once what was written so far has left the
        transport's buffers (abortConnection drops buffered data)."""
        if request not in self._open:
            return
        self._open[request] = None
        channel = getattr(request, "channel", None)
        transport = getattr(channel, "transport", None)
        if transport is None:
            return
        if deadline is None:
            deadline = self.reactor.seconds() + 2.0
        buffered = (
            len(getattr(transport, "dataBuffer", b""))
            - getattr(transport, "offset", 0)
            + len(getattr(transport, "_tempDataBuffer", ()))
        )
        if buffered > 0 and self.reactor.seconds() < deadline:
            self._open[request] = self.reactor.callLater(0.01, self._cut, request, deadline)
            return
        transport.abortConnection()

    def _usage(self):
        return {
            "prompt_tokens": self.input_tokens,
            "completion_tokens": self.output_tokens,
            "total_tokens": self.input_tokens + self.output_tokens,
        }

    def _schedule(self, request, delay, fn, *args):
        if request not in self._open:
            return
        if delay and delay > 0:
            self._open[request] = self.reactor.callLater(delay, fn, *args)
        else:
            fn(*args)

    # non-streaming

    def _start_plain(self, request, body):
        answer = {
            "id": "chatcmpl-fake%06d" % next(_ids),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model") or "fake-model",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": self.text},
                    "finish_reason": "stop",
                }
            ],
            "usage": self._usage(),
        }
        data = json_bytes(answer)
        set_status(request, 200)
        request.setHeader(b"content-type", b"application/json")
        if self.stall:
            request.write(b"")
            return
        if self.cut_after is not None:
            request.write(data[: len(data) // 2])
            self._open[request] = self.reactor.callLater(0.01, self._cut, request)
            return
        request.setHeader(b"content-length", b"%d" % len(data))
        self._schedule(request, self.delay, self._write_plain, request, data)

    def _write_plain(self, request, data):
        if request not in self._open:
            return
        self._open[request] = None
        request.write(data)
        request.finish()

    # streaming

    def _stream_events(self, body):
        cid = "chatcmpl-fake%06d" % next(_ids)
        created = int(time.time())
        model = body.get("model") or "fake-model"
        options = body.get("stream_options") or {}
        include_usage = isinstance(options, dict) and bool(options.get("include_usage"))

        def chunk(choices, usage=False):
            obj = {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": choices,
            }
            if include_usage:
                obj["usage"] = self._usage() if usage else None
            return b"data: " + json_bytes(obj) + b"\n\n"

        events = []
        tool_call = getattr(self, "tool_call", None)
        if tool_call is not None:
            call = {"index": 0, "id": "call_fake", "type": "function"}
            for i, part in enumerate(({"name": tool_call[0], "arguments": ""}, {"arguments": tool_call[1]})):
                delta = (
                    {"role": "assistant", "tool_calls": [{**call, "function": part}]}
                    if i == 0
                    else {"tool_calls": [{"index": 0, "function": part}]}
                )
                events.append(chunk([{"index": 0, "delta": delta, "finish_reason": None}]))
            events.append(chunk([{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]))
            if include_usage:
                events.append(chunk([], usage=True))
            events.append(b"data: [DONE]\n\n")
            return events
        for i, piece in enumerate(split_text(self.text, self.chunks)):
            delta = {"role": "assistant", "content": piece} if i == 0 else {"content": piece}
            events.append(chunk([{"index": 0, "delta": delta, "finish_reason": None}]))
        events.append(chunk([{"index": 0, "delta": {}, "finish_reason": "stop"}]))
        if include_usage:
            events.append(chunk([], usage=True))
        events.append(b"data: [DONE]\n\n")
        return events

    def _start_stream(self, request, body):
        events = self._stream_events(body)
        set_status(request, 200)
        request.setHeader(b"content-type", b"text/event-stream")
        request.setHeader(b"cache-control", b"no-cache")
        request.setHeader(b"set-cookie", b"upstream_session=%d; Path=/" % len(self.requests))
        request.write(b"")  # headers go out now
        self._stream_step(request, events, 0)

    def _stream_step(self, request, events, i):
        if request not in self._open:
            return
        self._open[request] = None
        while True:
            if self.cut_after is not None and i >= min(int(self.cut_after), len(events)):
                self._open[request] = self.reactor.callLater(0.01, self._cut, request)
                return
            if i >= len(events):
                request.finish()
                return
            request.write(events[i])
            i += 1
            if self.stall:
                return
            if self.delay and self.delay > 0 and i < len(events):
                self._schedule(request, self.delay, self._stream_step, request, events, i)
                return


def start_fake_openai(reactor, interface="127.0.0.1", port=0):
    """Listen on interface:port (ephemeral by default).

    Returns (FakeOpenAI, listening port)."""
    fake = FakeOpenAI(reactor)
    fake.port = reactor.listenTCP(port, fake.site(), interface=interface)
    return fake, fake.port


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--text", default=DEFAULT_TEXT)
    parser.add_argument("--chunks", type=int, default=3)
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--input-tokens", type=int, default=10)
    parser.add_argument("--output-tokens", type=int, default=5)
    parser.add_argument("--fail-status", type=int, default=None)
    parser.add_argument("--cut-after", type=int, default=None)
    parser.add_argument("--stall", action="store_true")
    args = parser.parse_args(argv)

    from twisted.internet import reactor

    fake, port = start_fake_openai(reactor, interface=args.host, port=args.port)
    fake.text = args.text
    fake.chunks = args.chunks
    fake.delay = args.delay
    fake.input_tokens = args.input_tokens
    fake.output_tokens = args.output_tokens
    fake.fail_status = args.fail_status
    fake.cut_after = args.cut_after
    fake.stall = args.stall
    sys.stdout.write("PORT %d\n" % port.getHost().port)
    sys.stdout.flush()
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
