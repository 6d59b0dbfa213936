"""
The engine of the fake CLIs (C{fake_claude.py}, C{fake_gemini.py},
C{fake_codex.py}): everything but the vendor's format.

A fake CLI is a script that defines a L{Vendor} subclass (the lines its
vendor writes) and calls C{engine.main(ItsVendor)}.  The engine reads the
prompt from stdin, records the invocation, and behaves as the environment
says.  Standard library only: the fakes start as fast as they can.

FAKE_MODE           ok (default), echo, not_logged_in, upstream_401,
                    upstream_429, upstream_500, exit_nonzero, hang,
                    ignore_term, grandchild, byte_by_byte, huge_line,
                    invalid_utf8, garbage, slow_exit,
                    from_prompt (the prompt's first word, mode:<name>, picks one)
FAKE_TEXT           answer text (default "Hi! I am a fake model.")
FAKE_CHUNKS         number of text pieces (default 3; fake_codex splits on "|")
FAKE_INPUT_TOKENS   default 10
FAKE_OUTPUT_TOKENS  default 5
FAKE_DELAY          seconds to sleep between text pieces (default 0)
FAKE_GATE           file that must exist before anything after the first
                    text piece is written (polled every 10 ms, up to 30 s)
FAKE_RECORD         append a JSON line describing this invocation
FAKE_GRANDCHILD_PID file receiving the grandchild pid (mode grandchild)
FAKE_GRANDCHILDREN  how many grandchildren (mode grandchild, default 1); with
                    2 or more, the last one leaves the session (setsid)
FAKE_HUGE_BYTES     size of the huge line (mode huge_line, default 10000000)
FAKE_EXIT_DELAY     seconds to linger before exiting (mode slow_exit, default 5)
"""

from __future__ import annotations

import datetime
import json
import os
import signal
import subprocess
import sys
import time

DEFAULT_TEXT = "Hi! I am a fake model."
#: A secret the fakes print where a careless gateway would pass it on.
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
)
#: What mode "garbage" writes: before the second line, after the first
#: text piece, and before the last line.
GARBAGE_1 = "<<<not json>>>\n"
GARBAGE_2 = "\x1b[33mWarning:\x1b[0m fake terminal noise \x1b[2K\r\n"
GARBAGE_3 = '{"type": "truncated", "oops\n'


# -- helpers, also for the fake servers


def split_text(text, n):
    """
    C{text} in C{n} pieces of about equal size (never an empty piece unless
    the text is empty).
    """
    if not text:
        return [""]
    n = max(1, min(int(n), len(text)))
    size = len(text)
    return [text[i * size // n : (i + 1) * size // n] for i in range(n)]


def json_bytes(obj):
    """
    Compact JSON, UTF-8 as is (as the vendors write it).
    """
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def encode(obj):
    """
    One JSON line.
    """
    return json_bytes(obj) + b"\n"


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
    """
    Value of the last C{NAME VALUE} / C{NAME=VALUE} option among C{args}.
    """
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


def now_iso():
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def padded(make_line, size):
    """
    C{make_line(padding)} with as many "x" as make its JSON line C{size} bytes.
    """
    base = len(encode(make_line("")))
    return make_line("x" * max(0, size - base))


def stderr(text):
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


class Out:
    """
    Writes raw bytes to stdout, flushing every write; byte by byte, every
    single byte is written and flushed on its own.
    """

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

    def lines(self, objs):
        for obj in objs:
            self.line(obj)

    def text(self, s):
        self.write(s.encode("utf-8"))


class Vendor:
    """
    What a fake CLI supplies: its vendor's lines.  The engine decides what
    happens when (modes, pauses, gates, garbage, exits).

    @cvar name: the CLI's name, for messages.
    @cvar version: the line C{--version} prints.
    @cvar crash_lines: stderr lines after a crash (mode exit_nonzero),
        holding L{SECRET} where the vendor would.
    """

    name = "fake"
    version = "0.0.0"
    crash_lines = ()
    #: Modes of this vendor's own: each names the method that runs it
    #: (called with the prompt, returning the exit code), or L{None} for an
    #: ordinary answer that the vendor's lines change (see C{mode}).
    own_modes: dict = {}

    #: The mode this run is in (the engine sets it).
    mode = "ok"

    def __init__(self, args, out):
        self.args = args
        self.out = out

    def other_command(self):
        """
        Run a sub-command other than a completion (e.g. codex's
        app-server) if C{args} names one, returning its exit code; L{None}
        when it is a completion.
        """
        return None

    def opening(self):
        """
        The lines written before a hang or a crash.
        """
        raise NotImplementedError

    def not_logged_in(self, prompt):
        """
        Say so as the vendor does; return the exit code.
        """
        raise NotImplementedError

    def upstream_error(self, status, prompt):
        """
        Report the API's HTTP C{status} as the vendor does; return the exit code.
        """
        raise NotImplementedError

    def pieces(self, text, echoed):
        """
        C{text} in the pieces the answer streams (C{echoed}: it is the prompt).
        """
        return split_text(text, env_int("FAKE_CHUNKS", 3))

    def head(self, prompt, input_tokens, huge):
        """
        The lines before the first piece; with C{huge} (bytes), one of them
        is that long.
        """
        raise NotImplementedError

    def piece_line(self, text):
        raise NotImplementedError

    def tail(self, text, input_tokens, output_tokens):
        """
        The lines after the last piece; the last one ends the answer.
        """
        raise NotImplementedError


# -- what the engine does


def read_prompt():
    return sys.stdin.buffer.read().decode("utf-8", errors="replace")


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


def spawn_grandchild():
    count = max(1, env_int("FAKE_GRANDCHILDREN", 1))
    children = [
        subprocess.Popen(
            [sys.executable, "-c", "import time; time.sleep(600)"],
            stdout=sys.stdout,
            stderr=sys.stderr,
            start_new_session=count > 1 and i == count - 1,
        )
        for i in range(count)
    ]
    path = os.environ.get("FAKE_GRANDCHILD_PID")
    if path:
        with open(path, "w") as f:
            f.write("".join("%d\n" % child.pid for child in children))
    return children[0]


def answer(cli, mode, prompt, text):
    """
    A whole answer: the head, the pieces (paced, gated, possibly with
    invalid UTF-8 or garbage between them), the tail.
    """
    out = cli.out
    input_tokens = env_int("FAKE_INPUT_TOKENS", 10)
    output_tokens = env_int("FAKE_OUTPUT_TOKENS", 5)
    delay = env_float("FAKE_DELAY", 0.0)
    huge = env_int("FAKE_HUGE_BYTES", 10_000_000) if mode == "huge_line" else None

    first, *rest = cli.head(prompt, input_tokens, huge)
    out.line(first)
    if mode == "garbage":
        out.text(GARBAGE_1)
    out.lines(rest)
    for i, piece in enumerate(cli.pieces(text, echoed=mode == "echo")):
        if i > 0 and delay > 0:
            time.sleep(delay)
        if mode == "invalid_utf8" and i == 0:
            data = encode(cli.piece_line(piece + INVALID_MARK)).replace(INVALID_MARK.encode("ascii"), b"\xff\xfe", 1)
        else:
            data = encode(cli.piece_line(piece))
        out.write(data)
        if i == 0:
            wait_gate()
            if mode == "garbage":
                out.text(GARBAGE_2)
    *body, last = cli.tail(text, input_tokens, output_tokens)
    out.lines(body)
    if mode == "garbage":
        out.text(GARBAGE_3)
    out.line(last)
    return 0


def run(vendor):
    """
    Behave as C{vendor}'s CLI would in the mode the environment asks for;
    return the exit code.
    """
    if sys.argv[1:] == ["--version"]:
        sys.stdout.write(vendor.version + "\n")
        return 0
    other = vendor(sys.argv[1:], Out(byte_by_byte=False)).other_command()
    if other is not None:
        return other
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    mode = os.environ.get("FAKE_MODE", "ok") or "ok"
    prompt = read_prompt()
    record(prompt)
    if mode == "from_prompt":
        # "mode:<name> ..." in the prompt picks the behaviour per request.
        words = prompt.split()
        mode = words[0][len("mode:") :] if words and words[0].startswith("mode:") else "ok"
    if mode not in MODES and mode not in vendor.own_modes:
        stderr("fake_%s: unknown FAKE_MODE %r" % (vendor.name, mode))
        return 2

    cli = vendor(sys.argv[1:], Out(byte_by_byte=(mode == "byte_by_byte")))
    cli.mode = mode
    if vendor.own_modes.get(mode):
        return getattr(cli, vendor.own_modes[mode])(prompt)
    text = prompt if mode == "echo" else os.environ.get("FAKE_TEXT", DEFAULT_TEXT)
    if mode == "not_logged_in":
        return cli.not_logged_in(prompt)
    if mode.startswith("upstream_"):
        return cli.upstream_error(int(mode.split("_", 1)[1]), prompt)
    if mode == "exit_nonzero":
        cli.out.lines(cli.opening())
        stderr("Error: fake crash while talking to the API")
        for line in cli.crash_lines:
            stderr(line)
        return 3
    if mode == "ignore_term":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if mode in ("hang", "ignore_term"):
        cli.out.lines(cli.opening())
        sleep_forever()
    if mode == "grandchild":
        spawn_grandchild()

    code = answer(cli, mode, prompt, text)
    if mode == "slow_exit":
        time.sleep(env_float("FAKE_EXIT_DELAY", 5.0))
    return code


def main(vendor):
    sys.exit(run(vendor))
