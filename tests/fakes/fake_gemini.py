#!/usr/bin/env python3
"""Stand-in for the `gemini` CLI in headless stream-json mode.

Invoked the way the gateway runs the real tool::

    gemini -o stream-json [-m M] ...   < prompt

The prompt is read from stdin. Behaviour is driven by environment variables:

FAKE_MODE           ok (default), echo, schema (JSON for the schema it got,
                    see schema_answer.py; echo without one), not_logged_in, upstream_401,
                    upstream_429, upstream_500, exit_nonzero, hang,
                    ignore_term, grandchild, byte_by_byte, huge_line,
                    invalid_utf8, garbage, slow_exit,
                    from_prompt (the prompt's first word, mode:<name>, picks one)
FAKE_TEXT           answer text (default "Hi! I am a fake model.")
FAKE_CHUNKS         number of assistant deltas (default 3)
FAKE_INPUT_TOKENS   default 10
FAKE_OUTPUT_TOKENS  default 5
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
# gemini specifics
# ---------------------------------------------------------------------------

ROUTED_MODEL = "gemini-3.8-flash"
AUTH_ENV_VARS = "GEMINI_API_KEY, GOOGLE_GENAI_USE_VERTEXAI, GOOGLE_GENAI_USE_GCA"
UPSTREAM = {
    401: ("API key not valid. Please pass a valid API key.", "UNAUTHENTICATED"),
    429: ("Resource has been exhausted (e.g. check quota).", "RESOURCE_EXHAUSTED"),
    500: ("Internal error encountered.", "INTERNAL"),
}


class Gemini:
    def __init__(self, model, out):
        self.model = model
        self.out = out
        self.session_id = str(uuid.uuid4())
        self.started = time.monotonic()

    def init_line(self, padding=None):
        line = {
            "type": "init",
            "timestamp": now_iso(),
            "session_id": self.session_id,
            "model": self.model or "auto",
        }
        if padding is not None:
            line["padding"] = padding
        return line

    def user_line(self, prompt):
        return {
            "type": "message",
            "timestamp": now_iso(),
            "role": "user",
            "content": prompt,
        }

    def delta_line(self, text):
        return {
            "type": "message",
            "timestamp": now_iso(),
            "role": "assistant",
            "content": text,
            "delta": True,
        }

    def result_line(self, input_tokens, output_tokens):
        total = input_tokens + output_tokens
        return {
            "type": "result",
            "timestamp": now_iso(),
            "status": "success",
            "stats": {
                "total_tokens": total,
                "input_tokens": input_tokens,
                "output_tokens": output_tokens,
                "cached": 0,
                "input": input_tokens,
                "duration_ms": int((time.monotonic() - self.started) * 1000),
                "tool_calls": 0,
                "models": {
                    self.model or ROUTED_MODEL: {
                        "total_tokens": total,
                        "input_tokens": input_tokens,
                        "output_tokens": output_tokens,
                        "cached": 0,
                        "input": input_tokens,
                    },
                },
            },
        }


def run_not_logged_in():
    home = os.environ.get("GEMINI_CLI_HOME") or os.environ.get("HOME") or "~"
    stderr(
        "Please set an Auth method in your %s or specify one of the "
        "following environment variables before running: %s"
        % (os.path.join(home, ".gemini", "settings.json"), AUTH_ENV_VARS)
    )
    return 41


def run_upstream(g, prompt, status):
    message, api_status = UPSTREAM[status]
    g.out.line(g.init_line())
    g.out.line(g.user_line(prompt))
    inner = json.dumps({"error": {"code": status, "message": message, "status": api_status}})
    err = {
        "session_id": g.session_id,
        "error": {"type": "Error", "message": inner, "code": status},
    }
    sys.stderr.write(json.dumps(err, indent=2, ensure_ascii=False) + "\n")
    sys.stderr.flush()
    return status % 256


def run_success(g, mode, prompt, text):
    out = g.out
    input_tokens = env_int("FAKE_INPUT_TOKENS", 10)
    output_tokens = env_int("FAKE_OUTPUT_TOKENS", 5)
    delay = env_float("FAKE_DELAY", 0.0)
    chunks = split_text(text, env_int("FAKE_CHUNKS", 3))

    if mode == "huge_line":
        size = env_int("FAKE_HUGE_BYTES", 10_000_000)
        base = len(encode(g.init_line(padding="")))
        out.line(g.init_line(padding="x" * max(0, size - base)))
    else:
        out.line(g.init_line())
    if mode == "garbage":
        out.text(GARBAGE_1)
    out.line(g.user_line(prompt))
    for i, chunk in enumerate(chunks):
        if i > 0 and delay > 0:
            time.sleep(delay)
        piece = chunk + INVALID_MARK if (mode == "invalid_utf8" and i == 0) else chunk
        data = encode(g.delta_line(piece))
        if mode == "invalid_utf8" and i == 0:
            data = data.replace(INVALID_MARK.encode("ascii"), b"\xff\xfe", 1)
        out.write(data)
        if i == 0:
            wait_gate()
            if mode == "garbage":
                out.text(GARBAGE_2)
    if mode == "garbage":
        out.text(GARBAGE_3)
    out.line(g.result_line(input_tokens, output_tokens))
    return 0


def schema_answer():
    """tests/fakes/schema_answer.py, beside this script (mode schema)."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import schema_answer as module

    return module


def main():
    if sys.argv[1:] == ["--version"]:
        sys.stdout.write("0.61.0\n")
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
        stderr("fake_gemini: unknown FAKE_MODE %r" % mode)
        return 2

    model = arg_value(sys.argv[1:], "-m", "--model")
    g = Gemini(model, Out(byte_by_byte=(mode == "byte_by_byte")))
    text = prompt if mode in ("echo", "schema") else os.environ.get("FAKE_TEXT", DEFAULT_TEXT)
    schema = schema_answer().schema_in_prompt(prompt) if mode == "schema" else None
    if schema is not None:
        text = schema_answer().answer_text(schema, prompt)

    if mode == "not_logged_in":
        return run_not_logged_in()
    if mode.startswith("upstream_"):
        return run_upstream(g, prompt, int(mode.split("_", 1)[1]))
    if mode == "exit_nonzero":
        g.out.line(g.init_line())
        stderr("Error: fake crash while talking to the API")
        stderr("  request headers: x-goog-api-key: %s" % SECRET)
        stderr("  GEMINI_API_KEY=%s" % SECRET)
        stderr("    at fakeRequest (/fake/gemini/bundle/gemini.js:1:1)")
        return 3
    if mode == "hang":
        g.out.line(g.init_line())
        sleep_forever()
    if mode == "ignore_term":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        g.out.line(g.init_line())
        sleep_forever()
    if mode == "grandchild":
        spawn_grandchild()

    rc = run_success(g, mode, prompt, text)
    if mode == "slow_exit":
        time.sleep(env_float("FAKE_EXIT_DELAY", 5.0))
    return rc


if __name__ == "__main__":
    sys.exit(main())
