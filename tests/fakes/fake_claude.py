#!/usr/bin/env python3
"""Stand-in for the `claude` CLI in headless stream-json mode.

Invoked the way the gateway runs the real tool::

    claude -p --output-format stream-json --verbose --include-partial-messages \
        ... [--model M] [--system-prompt-file F]   < prompt

The prompt is read from stdin. Behaviour is driven by environment variables:

FAKE_MODE           ok (default), echo, schema (JSON for the schema it got,
                    see schema_answer.py; echo without one), not_logged_in, upstream_401,
                    upstream_429, upstream_500, exit_nonzero, hang,
                    ignore_term, grandchild, byte_by_byte, huge_line,
                    invalid_utf8, garbage, slow_exit,
                    from_prompt (the prompt's first word, mode:<name>, picks one)
FAKE_TEXT           answer text (default "Hi! I am a fake model.")
FAKE_CHUNKS         number of text deltas (default 3)
FAKE_INPUT_TOKENS   default 10
FAKE_OUTPUT_TOKENS  default 5
FAKE_COST           total_cost_usd (default 0.00014)
FAKE_DELAY          seconds to sleep between deltas (default 0)
FAKE_GATE           file that must exist before anything after the first
                    delta is written (polled every 10 ms, up to 30 s)
FAKE_RECORD         append a JSON line describing this invocation
FAKE_GRANDCHILD_PID file receiving the grandchild pid (mode grandchild)
FAKE_HUGE_BYTES     size of the huge line (mode huge_line, default 10000000)
FAKE_EXIT_DELAY     seconds to linger before exiting (mode slow_exit, default 5)
"""

import datetime
import json
import os
import signal
import subprocess
import sys
import time
import urllib.parse
import uuid

# ---------------------------------------------------------------------------
# Shared helpers (each fake is standalone, so these are repeated per script)
# ---------------------------------------------------------------------------

DEFAULT_TEXT = "Hi! I am a fake model."
SECRET = "sk-ant-SECRET0123456789abcdef"
INVALID_MARK = "@@FAKE-INVALID-UTF8@@"
MODES = (
    "ok",
    "echo",
    "not_logged_in",
    "upstream_401",
    "upstream_429",
    "upstream_500",
    "exit_nonzero",
    "hang",
    "ignore_term",
    "grandchild",
    "byte_by_byte",
    "huge_line",
    "invalid_utf8",
    "garbage",
    "slow_exit",
    "schema",
)


def env_int(name, default):
    value = os.environ.get(name, "").strip()
    try:
        return int(value) if value else default
    except ValueError:
        return default


def env_float(name, default):
    value = os.environ.get(name, "").strip()
    try:
        return float(value) if value else default
    except ValueError:
        return default


def arg_value(args, *names):
    """Value of the last `NAME VALUE` / `NAME=VALUE` option among args."""
    found = None
    i = 0
    while i < len(args):
        arg = args[i]
        for name in names:
            if arg == name and i + 1 < len(args):
                found = args[i + 1]
                i += 1
                break
            if arg.startswith(name + "="):
                found = arg[len(name) + 1 :]
                break
        i += 1
    return found


def split_text(text, n):
    """Split text into n pieces of roughly equal size (never empty pieces
    unless the text itself is empty)."""
    if not text:
        return [""]
    n = max(1, min(n, len(text)))
    size = len(text)
    return [text[i * size // n : (i + 1) * size // n] for i in range(n)]


def now_iso():
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def encode(obj):
    return (json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")


def read_prompt():
    data = sys.stdin.buffer.read()
    return data.decode("utf-8", errors="replace")


def parent_death_signal():
    # prctl(PR_GET_PDEATHSIG): the signal this process gets if its parent dies.
    import ctypes
    import ctypes.util

    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    signum = ctypes.c_int(0)
    libc.prctl(2, ctypes.byref(signum), 0, 0, 0)
    return signum.value


def record(prompt):
    path = os.environ.get("FAKE_RECORD")
    if not path:
        return
    rec = {
        "argv": sys.argv,
        "stdin": prompt,
        "cwd": os.getcwd(),
        "env": dict(os.environ),
        "pid": os.getpid(),
        "pgid": os.getpgid(0),
        "sid": os.getsid(0),
        "pdeathsig": parent_death_signal(),
    }
    spf = arg_value(sys.argv[1:], "--system-prompt-file")
    if spf is not None:
        try:
            with open(spf, "rb") as f:
                rec["system_prompt_file_content"] = f.read().decode("utf-8", errors="replace")
        except OSError as exc:
            rec["system_prompt_file_content"] = None
            rec["system_prompt_file_error"] = str(exc)
    line = (json.dumps(rec, ensure_ascii=False) + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def wait_gate():
    path = os.environ.get("FAKE_GATE")
    if not path:
        return
    deadline = time.monotonic() + 30.0
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)


def sleep_forever():
    while True:
        time.sleep(3600)


def stderr(text):
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


class Out:
    """Writes raw bytes to stdout, flushing every write; in byte-by-byte
    mode every single byte is written and flushed on its own."""

    def __init__(self, byte_by_byte=False):
        self.raw = sys.stdout.buffer
        self.byte_by_byte = byte_by_byte
        self.written = 0

    def write(self, data):
        if not self.byte_by_byte:
            self.raw.write(data)
            self.raw.flush()
            return
        for b in data:
            self.raw.write(bytes((b,)))
            self.raw.flush()
            self.written += 1
            if self.written % 64 == 0:
                time.sleep(0.0005)

    def line(self, obj):
        self.write(encode(obj))

    def text(self, s):
        self.write(s.encode("utf-8"))


GARBAGE_1 = "<<<not json>>>\n"
GARBAGE_2 = "\x1b[33mWarning:\x1b[0m fake terminal noise \x1b[2K\r\n"
GARBAGE_3 = '{"type": "truncated", "oops\n'


def spawn_grandchild():
    child = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(600)"], stdout=sys.stdout, stderr=sys.stderr
    )
    path = os.environ.get("FAKE_GRANDCHILD_PID")
    if path:
        with open(path, "w") as f:
            f.write("%d\n" % child.pid)
    return child


# ---------------------------------------------------------------------------
# claude specifics
# ---------------------------------------------------------------------------

DEFAULT_MODEL = "claude-opus-5-5"
NOT_LOGGED_IN = "Not logged in \u00b7 Please run /login"


def gateway_netloc():
    base = os.environ.get("ANTHROPIC_BASE_URL", "")
    netloc = urllib.parse.urlsplit(base).netloc if base else ""
    return netloc or "127.0.0.1:8080"


def upstream_error(status):
    if status == 401:
        return "Invalid API key \u00b7 Fix external API key", "authentication_failed"
    if status == 429:
        return ("API Error: Request rejected (429) \u00b7 rate limited (fake)", "rate_limit")
    return (
        "API Error: 500 fake failure. This is a server-side issue, usually "
        "temporary \u2014 try again in a moment. If it persists, check your "
        "inference gateway (%s)." % gateway_netloc(),
        "server_error",
    )


class Claude:
    def __init__(self, model, out):
        self.model = model
        self.out = out
        self.session_id = str(uuid.uuid4())
        self.started = time.monotonic()

    def _uuid(self):
        return str(uuid.uuid4())

    def init_line(self, api_key_source=None):
        if api_key_source is None:
            if os.environ.get("ANTHROPIC_API_KEY"):
                api_key_source = "ANTHROPIC_API_KEY"
            else:
                api_key_source = "none"
        return {
            "type": "system",
            "subtype": "init",
            "cwd": os.getcwd(),
            "session_id": self.session_id,
            "tools": [],
            "mcp_servers": [],
            "model": self.model,
            "permissionMode": "default",
            "slash_commands": [],
            "apiKeySource": api_key_source,
            "claude_code_version": "2.1.332",
            "output_style": "default",
            "agents": [],
            "skills": [],
            "plugins": [],
            "served_by_anthropic": False,
            "analytics_disabled": True,
            "uuid": self._uuid(),
        }

    def status_line(self, padding=None):
        line = {
            "type": "system",
            "subtype": "status",
            "status": "requesting",
            "session_id": self.session_id,
            "uuid": self._uuid(),
        }
        if padding is not None:
            line["padding"] = padding
        return line

    def stream_event(self, event, **extra):
        line = {
            "type": "stream_event",
            "event": event,
            "session_id": self.session_id,
            "parent_tool_use_id": None,
            "uuid": self._uuid(),
        }
        line.update(extra)
        return line

    def usage(self, input_tokens, output_tokens):
        return {
            "input_tokens": input_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "output_tokens": output_tokens,
        }

    def assistant_line(self, text, usage, model=None, **extra):
        line = {
            "type": "assistant",
            "message": {
                "id": "msg_fake000001",
                "type": "message",
                "role": "assistant",
                "model": model or self.model,
                "content": [{"type": "text", "text": text}],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": usage,
            },
            "parent_tool_use_id": None,
            "session_id": self.session_id,
            "uuid": self._uuid(),
            "timestamp": now_iso(),
            "request_id": "req_fake000002",
        }
        line.update(extra)
        return line

    def result_line(self, text, is_error, usage, cost, api_error_status=None, terminal_reason="completed"):
        duration = int((time.monotonic() - self.started) * 1000)
        model_usage = {}
        if not is_error:
            model_usage[self.model] = {
                "inputTokens": usage["input_tokens"],
                "outputTokens": usage["output_tokens"],
                "cacheReadInputTokens": 0,
                "cacheCreationInputTokens": 0,
                "costUSD": cost,
            }
        return {
            "type": "result",
            "subtype": "success",
            "is_error": is_error,
            "duration_ms": duration,
            "duration_api_ms": 0 if is_error else duration,
            "num_turns": 1,
            "result": text,
            "stop_reason": None if is_error else "end_turn",
            "session_id": self.session_id,
            "total_cost_usd": cost,
            "usage": usage,
            "modelUsage": model_usage,
            "permission_denials": [],
            "terminal_reason": terminal_reason,
            "api_error_status": api_error_status,
            "uuid": self._uuid(),
        }


def run_not_logged_in(c):
    zero = c.usage(0, 0)
    c.out.line(c.init_line(api_key_source="none"))
    c.out.line(
        c.assistant_line(
            NOT_LOGGED_IN, zero, model="<synthetic>", error="authentication_failed", is_api_error_message=True
        )
    )
    c.out.line(c.result_line(NOT_LOGGED_IN, True, zero, 0, api_error_status=None, terminal_reason="api_error"))
    return 1


def run_upstream(c, status):
    text, kind = upstream_error(status)
    zero = c.usage(0, 0)
    c.out.line(c.init_line())
    c.out.line(c.status_line())
    c.out.line(c.assistant_line(text, zero, model="<synthetic>", error=kind, is_api_error_message=True))
    c.out.line(c.result_line(text, True, zero, 0, api_error_status=status, terminal_reason="api_error"))
    return 1


def run_success(c, mode, text):
    out = c.out
    input_tokens = env_int("FAKE_INPUT_TOKENS", 10)
    output_tokens = env_int("FAKE_OUTPUT_TOKENS", 5)
    cost = env_float("FAKE_COST", 0.00014)
    delay = env_float("FAKE_DELAY", 0.0)
    chunks = split_text(text, env_int("FAKE_CHUNKS", 3))

    out.line(c.init_line())
    if mode == "garbage":
        out.text(GARBAGE_1)
    if mode == "huge_line":
        size = env_int("FAKE_HUGE_BYTES", 10_000_000)
        base = len(encode(c.status_line(padding="")))
        out.line(c.status_line(padding="x" * max(0, size - base)))
    out.line(c.status_line())
    out.line(
        c.stream_event(
            {
                "type": "message_start",
                "message": {
                    "id": "msg_fake000001",
                    "type": "message",
                    "role": "assistant",
                    "model": c.model,
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": c.usage(input_tokens, 1),
                },
            },
            api_message_id="msg_fake000001",
        )
    )
    out.line(
        c.stream_event(
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            }
        )
    )
    for i, chunk in enumerate(chunks):
        if i > 0 and delay > 0:
            time.sleep(delay)
        piece = chunk + INVALID_MARK if (mode == "invalid_utf8" and i == 0) else chunk
        data = encode(
            c.stream_event(
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "text_delta", "text": piece},
                }
            )
        )
        if mode == "invalid_utf8" and i == 0:
            data = data.replace(INVALID_MARK.encode("ascii"), b"\xff\xfe", 1)
        out.write(data)
        if i == 0:
            wait_gate()
            if mode == "garbage":
                out.text(GARBAGE_2)
    usage = c.usage(input_tokens, output_tokens)
    out.line(c.assistant_line(text, usage))
    out.line(c.stream_event({"type": "content_block_stop", "index": 0}))
    out.line(
        c.stream_event(
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": output_tokens},
            }
        )
    )
    out.line(c.stream_event({"type": "message_stop"}))
    if mode == "garbage":
        out.text(GARBAGE_3)
    out.line(c.result_line(text, False, usage, cost))
    return 0


def schema_answer():
    """tests/fakes/schema_answer.py, beside this script (mode schema)."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import schema_answer as module

    return module


def run_structured(c, schema, prompt):
    """
    --json-schema: the answer arrives as the StructuredOutput tool's input,
    reported whole in the result line's structured_output.
    """
    value = json.loads(schema_answer().answer_text(schema, prompt))
    usage = c.usage(env_int("FAKE_INPUT_TOKENS", 10), env_int("FAKE_OUTPUT_TOKENS", 5))
    c.out.line(c.init_line())
    line = c.assistant_line("", usage)
    line["message"]["content"] = [
        {"type": "tool_use", "id": "toolu_fake000001", "name": "StructuredOutput", "input": value}
    ]
    c.out.line(line)
    result = c.result_line("", False, usage, env_float("FAKE_COST", 0.00014))
    result["structured_output"] = value
    c.out.line(result)
    return 0


def main():
    if sys.argv[1:] == ["--version"]:
        sys.stdout.write("2.1.332 (Claude Code)\n")
        return 0
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    mode = os.environ.get("FAKE_MODE", "ok") or "ok"
    prompt = read_prompt()
    record(prompt)
    if mode == "from_prompt":
        # "mode:<name> ..." in the prompt picks the behaviour per request.
        words = prompt.split()
        mode = words[0][len("mode:") :] if words and words[0].startswith("mode:") else "ok"
    if mode not in MODES:
        stderr("fake_claude: unknown FAKE_MODE %r" % mode)
        return 2

    model = arg_value(sys.argv[1:], "--model") or DEFAULT_MODEL
    c = Claude(model, Out(byte_by_byte=(mode == "byte_by_byte")))
    text = prompt if mode == "echo" else os.environ.get("FAKE_TEXT", DEFAULT_TEXT)

    if mode == "not_logged_in":
        return run_not_logged_in(c)
    if mode.startswith("upstream_"):
        return run_upstream(c, int(mode.split("_", 1)[1]))
    if mode == "exit_nonzero":
        c.out.line(c.init_line())
        stderr("Error: fake crash while talking to the API")
        stderr("  request headers: x-api-key: %s" % SECRET)
        stderr("  ANTHROPIC_API_KEY=%s" % SECRET)
        stderr("    at fakeRequest (/fake/claude/cli.js:1:1)")
        return 3
    if mode == "hang":
        c.out.line(c.init_line())
        sleep_forever()
    if mode == "ignore_term":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        c.out.line(c.init_line())
        sleep_forever()
    if mode == "grandchild":
        spawn_grandchild()

    schema = arg_value(sys.argv[1:], "--json-schema")
    if mode == "schema" and schema:
        return run_structured(c, json.loads(schema), prompt)
    if mode == "schema":
        text = prompt
    rc = run_success(c, mode, text)
    if mode == "slow_exit":
        time.sleep(env_float("FAKE_EXIT_DELAY", 5.0))
    return rc


if __name__ == "__main__":
    sys.exit(main())
