#!/usr/bin/env python3
"""
Stand-in for the C{claude} CLI in headless stream-json mode: claude's
lines, on the shared engine (C{engine.py}, which documents the C{FAKE_*}
settings).

Invoked the way the gateway runs the real tool::

    claude -p --output-format stream-json --verbose --include-partial-messages \\
        ... [--model M] [--system-prompt-file F]   < prompt

FAKE_COST           total_cost_usd (default 0.00014)
FAKE_MODE           also schema (with --json-schema, the answer as the
                    StructuredOutput tool's input, see schema_answer.py; an
                    echo without it), quota_allowed, quota_warning (an answer
                    with a rate_limit_event), quota_rejected (the event, then
                    the limit-reached refusal)
FAKE_RESETS_AT      resetsAt of the rate_limit_event (default: an hour from now)
FAKE_UTILIZATION    its utilization, as JSON (default per mode; 1 when rejected)
FAKE_LIMIT_TYPE     its rateLimitType (default five_hour)
"""

import json
import os
import sys
import time
import urllib.parse
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the engine beside this script
import engine
import schema_answer

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


class Claude(engine.Vendor):
    name = "claude"
    version = "2.1.332 (Claude Code)"
    own_modes = {
        "quota_allowed": None,
        "quota_warning": None,
        "quota_rejected": "quota_rejected",
        "schema": "schema",
    }
    crash_lines = (
        "  request headers: x-api-key: %s" % engine.SECRET,
        "  ANTHROPIC_API_KEY=%s" % engine.SECRET,
        "    at fakeRequest (/fake/claude/cli.js:1:1)",
    )

    def __init__(self, args, out):
        super().__init__(args, out)
        self.model = engine.arg_value(args, "--model") or DEFAULT_MODEL
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
            "timestamp": engine.now_iso(),
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

    def rate_limit_line(self, status):
        """
        A rate_limit_event as claude 2.1.332 prints it in stream-json for a
        subscription login: the ruling window at the top level (whose status
        stays "allowed" on a warning), each window's share, reset and status
        under unifiedWindows; utilization is the integer 1 when rejected.
        """
        utilization = {"allowed": 0.42, "allowed_warning": 0.81, "rejected": 1}[status]
        if os.environ.get("FAKE_UTILIZATION"):
            utilization = json.loads(os.environ["FAKE_UTILIZATION"])
        resets_at = int(os.environ.get("FAKE_RESETS_AT") or int(time.time()) + 3600)
        kind = os.environ.get("FAKE_LIMIT_TYPE", "five_hour")
        other = "seven_day" if kind != "seven_day" else "five_hour"
        return {
            "type": "rate_limit_event",
            "rate_limit_info": {
                "status": "rejected" if status == "rejected" else "allowed",
                "resetsAt": resets_at,
                "rateLimitType": kind,
                "overageStatus": "rejected",
                "overageDisabledReason": "org_level_disabled",
                "isUsingOverage": False,
                "unifiedWindows": {
                    kind: {"utilization": utilization, "resetsAt": resets_at, "status": status},
                    other: {"utilization": 0.4, "resetsAt": resets_at + 2 * 86400, "status": "allowed"},
                },
            },
            "uuid": self._uuid(),
            "session_id": self.session_id,
        }

    def quota_rejected(self, prompt):
        text = "You've hit your 5-hour limit \u00b7 resets 11:58pm (UTC)"
        zero = self.usage(0, 0)
        self.out.line(self.init_line())
        self.out.line(self.status_line())
        self.out.line(self.rate_limit_line("rejected"))
        self.out.line(
            self.assistant_line(text, zero, model="<synthetic>", error="rate_limit", is_api_error_message=True)
        )
        self.out.line(self.result_line(text, True, zero, 0, api_error_status=429, terminal_reason="api_error"))
        return 1

    def schema(self, prompt):
        """
        --json-schema: the answer arrives as the StructuredOutput tool's
        input, reported whole in the result line's structured_output.
        """
        schema = engine.arg_value(self.args, "--json-schema")
        if not schema:
            return engine.answer(self, "echo", prompt, prompt)
        value = json.loads(schema_answer.answer_text(json.loads(schema), prompt))
        usage = self.usage(engine.env_int("FAKE_INPUT_TOKENS", 10), engine.env_int("FAKE_OUTPUT_TOKENS", 5))
        self.out.line(self.init_line())
        line = self.assistant_line("", usage)
        line["message"]["content"] = [
            {"type": "tool_use", "id": "toolu_fake000001", "name": "StructuredOutput", "input": value}
        ]
        self.out.line(line)
        result = self.result_line("", False, usage, engine.env_float("FAKE_COST", 0.00014))
        result["structured_output"] = value
        self.out.line(result)
        return 0

    # -- what the engine asks for

    def opening(self):
        return [self.init_line()]

    def not_logged_in(self, prompt):
        zero = self.usage(0, 0)
        self.out.line(self.init_line(api_key_source="none"))
        self.out.line(
            self.assistant_line(
                NOT_LOGGED_IN, zero, model="<synthetic>", error="authentication_failed", is_api_error_message=True
            )
        )
        self.out.line(
            self.result_line(NOT_LOGGED_IN, True, zero, 0, api_error_status=None, terminal_reason="api_error")
        )
        return 1

    def upstream_error(self, status, prompt):
        text, kind = upstream_error(status)
        zero = self.usage(0, 0)
        self.out.line(self.init_line())
        self.out.line(self.status_line())
        self.out.line(self.assistant_line(text, zero, model="<synthetic>", error=kind, is_api_error_message=True))
        self.out.line(self.result_line(text, True, zero, 0, api_error_status=status, terminal_reason="api_error"))
        return 1

    def head(self, prompt, input_tokens, huge):
        message = {
            "id": "msg_fake000001",
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": self.usage(input_tokens, 1),
        }
        return [
            self.init_line(),
            *([] if huge is None else [engine.padded(lambda padding: self.status_line(padding=padding), huge)]),
            self.status_line(),
            *(
                [self.rate_limit_line("allowed" if self.mode == "quota_allowed" else "allowed_warning")]
                if self.mode in ("quota_allowed", "quota_warning")
                else []
            ),
            self.stream_event({"type": "message_start", "message": message}, api_message_id="msg_fake000001"),
            self.stream_event(
                {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
            ),
        ]

    def piece_line(self, text):
        return self.stream_event(
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}}
        )

    def tail(self, text, input_tokens, output_tokens):
        usage = self.usage(input_tokens, output_tokens)
        cost = engine.env_float("FAKE_COST", 0.00014)
        return [
            self.assistant_line(text, usage),
            self.stream_event({"type": "content_block_stop", "index": 0}),
            self.stream_event(
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                    "usage": {"output_tokens": output_tokens},
                }
            ),
            self.stream_event({"type": "message_stop"}),
            self.result_line(text, False, usage, cost),
        ]


if __name__ == "__main__":
    engine.main(Claude)
