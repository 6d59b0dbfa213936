#!/usr/bin/env python3
"""
Stand-in for the C{codex exec --json} CLI: codex's lines, on the shared
engine (C{engine.py}, which documents the C{FAKE_*} settings).

Invoked the way the gateway runs the real tool::

    codex exec --json ... [-m M] -   < prompt

FAKE_TEXT is split on "|" into one agent_message item per piece.
"""

import os
import sys
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the engine beside this script
import engine

ERROR_401 = (
    "unexpected status 401 Unauthorized: Incorrect API key provided: "
    "fake., url: http://127.0.0.1/v1/responses, request id: x"
)
UPSTREAM = {
    401: ERROR_401,
    429: "exceeded retry limit, last status: 429 Too Many Requests",
    500: "We're currently experiencing high demand, which may cause temporary errors.",
}


class Codex(engine.Vendor):
    name = "codex"
    version = "codex-cli 0.169.0"
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
