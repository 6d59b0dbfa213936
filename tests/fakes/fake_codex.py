#!/usr/bin/env python3
"""
Stand-in for the C{codex exec --json} CLI: codex's lines, on the shared
engine (C{engine.py}, which documents the C{FAKE_*} settings).

Invoked the way the gateway runs the real tool::

    codex exec --json ... [-m M] -   < prompt

FAKE_TEXT is split on "|" into one agent_message item per piece.
FAKE_MODE usage_limit: the subscription limit-reached error; schema: JSON for the
--output-schema file (schema_answer.py), an echo without one.

`codex [-c k=v ...] app-server` is a fake app-server: it answers JSON-RPC on
stdin (initialize, then account/rateLimits/read) one line at a time, until
stdin closes; FAKE_APP_SERVER_RECORD gets a line (argv, the messages seen,
cwd, env) when the read arrives:

FAKE_RATE_LIMITS    the rateLimits object, JSON (default: 12% of the 5-hour
                    window, 30% of the weekly one)
FAKE_APP_SERVER     ok (default), error (a JSON-RPC error), hang
"""

import json
import os
import sys
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the engine beside this script
import engine
import schema_answer

ERROR_401 = (
    "unexpected status 401 Unauthorized: Incorrect API key provided: "
    "fake., url: http://127.0.0.1/v1/responses, request id: x"
)
UPSTREAM = {
    401: ERROR_401,
    429: "exceeded retry limit, last status: 429 Too Many Requests",
    500: "We're currently experiencing high demand, which may cause temporary errors.",
}

USAGE_LIMIT = (
    "You've hit your usage limit. Upgrade to Pro (https://chatgpt.com/explore/pro), visit "
    "https://chatgpt.com/codex/settings/usage to purchase more credits or try again in 2 hours 5 minutes."
)


def default_rate_limits():
    """
    Headroom in both windows, so that a daemon test using the fake codex is
    not held back by its probe unless it asks for that.
    """
    return {
        "limitId": "codex",
        "primary": {"usedPercent": 12, "windowDurationMins": 300, "resetsAt": int(time.time()) + 3 * 3600},
        "secondary": {"usedPercent": 30, "windowDurationMins": 10080, "resetsAt": int(time.time()) + 3 * 86400},
        "credits": {"hasCredits": False, "unlimited": False, "balance": None},
        "planType": "plus",
    }


def run_app_server():
    """
    The app-server's JSON-RPC over stdio, as far as SheLLM's probe uses it.
    Like codex 0.169's, it answers the rate-limit read a moment later (the
    real one asks the backend) and exits as soon as stdin closes, dropping
    an answer still in progress.
    """
    import threading

    behaviour = os.environ.get("FAKE_APP_SERVER", "ok")
    lock = threading.Lock()
    seen = []

    def send(reply):
        with lock:
            sys.stdout.write(json.dumps(reply) + "\n")
            sys.stdout.flush()

    for line in sys.stdin:
        if not line.strip():
            continue
        message = json.loads(line)
        seen.append(message)
        method, ident = message.get("method"), message.get("id")
        if method == "initialize":
            send({"id": ident, "result": {"userAgent": "codex_app_server/0.169.0", "platformOs": "linux"}})
        elif method == "account/rateLimits/read":
            if os.environ.get("FAKE_APP_SERVER_RECORD"):
                with open(os.environ["FAKE_APP_SERVER_RECORD"], "a") as f:
                    f.write(json.dumps({"argv": sys.argv, "stdin": seen, "cwd": os.getcwd(), "env": dict(os.environ)}))
                    f.write("\n")
            if behaviour == "hang":
                continue
            if behaviour == "error":
                reply = {"id": ident, "error": {"code": -32600, "message": "codex account authentication required"}}
            else:
                limits = json.loads(os.environ.get("FAKE_RATE_LIMITS") or "null") or default_rate_limits()
                reply = {"id": ident, "result": {"rateLimits": limits, "rateLimitsByLimitId": None}}
            threading.Timer(0.2, send, (reply,)).start()
    os._exit(0)


class Codex(engine.Vendor):
    name = "codex"
    version = "codex-cli 0.169.0"
    own_modes = {"usage_limit": "usage_limit", "schema": "schema"}
    crash_lines = (
        "  request headers: authorization: Bearer %s" % engine.SECRET,
        "  OPENAI_API_KEY=%s" % engine.SECRET,
        "thread 'main' panicked at fake/src/main.rs:1:1",
    )

    def __init__(self, args, out):
        super().__init__(args, out)
        self.thread_id = str(uuid.uuid4())
        self.next_item = 0

    def item(self, item_type, text):
        item_id = "item_%d" % self.next_item
        self.next_item += 1
        return {"type": "item.completed", "item": {"id": item_id, "type": item_type, "text": text}}

    def opening(self):
        return [{"type": "thread.started", "thread_id": self.thread_id}, {"type": "turn.started"}]

    def fail(self, message):
        self.out.lines(self.opening())
        self.out.line({"type": "error", "message": message})
        self.out.line({"type": "turn.failed", "error": {"message": message}})
        return 1

    def not_logged_in(self, prompt):
        return self.fail(ERROR_401)

    def usage_limit(self, prompt):
        return self.fail(USAGE_LIMIT)

    def schema(self, prompt):
        text = prompt
        schema_file = engine.arg_value(self.args, "--output-schema")
        if schema_file:
            with open(schema_file) as f:
                text = schema_answer.answer_text(json.load(f), prompt)
        return engine.answer(self, "echo", prompt, text)

    def other_command(self):
        return run_app_server() if "app-server" in self.args else None

    def upstream_error(self, status, prompt):
        return self.fail(UPSTREAM[status])

    def pieces(self, text, echoed):
        return [text] if echoed or "|" not in text else text.split("|")

    def head(self, prompt, input_tokens, huge):
        lines = self.opening()
        if huge is not None:
            line = self.item("reasoning", "")
            line["item"]["text"] = "x" * max(0, huge - len(engine.encode(line)))
            lines.append(line)
        return lines

    def piece_line(self, text):
        return self.item("agent_message", text)

    def tail(self, text, input_tokens, output_tokens):
        usage = {
            "input_tokens": input_tokens,
            "cached_input_tokens": 0,
            "cache_write_input_tokens": 0,
            "output_tokens": output_tokens,
            "reasoning_output_tokens": 0,
        }
        return [{"type": "turn.completed", "usage": usage}]


if __name__ == "__main__":
    engine.main(Codex)
