#!/usr/bin/env python3
"""
Stand-in for the C{gemini} CLI in headless stream-json mode: gemini's
lines, on the shared engine (C{engine.py}, which documents the C{FAKE_*}
settings).

Invoked the way the gateway runs the real tool::

    gemini -o stream-json [-m M] ...   < prompt

FAKE_MODE daily_quota: the API's 429 RESOURCE_EXHAUSTED naming a per-day quota;
schema: JSON for the schema SheLLM's instruction names (schema_answer.py), an
echo without one.
"""

import json
import os
import sys
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the engine beside this script
import engine
import schema_answer

ROUTED_MODEL = "gemini-3.8-flash"
AUTH_ENV_VARS = "GEMINI_API_KEY, GOOGLE_GENAI_USE_VERTEXAI, GOOGLE_GENAI_USE_GCA"
UPSTREAM = {
    401: ("API key not valid. Please pass a valid API key.", "UNAUTHENTICATED"),
    429: ("Resource has been exhausted (e.g. check quota).", "RESOURCE_EXHAUSTED"),
    500: ("Internal error encountered.", "INTERNAL"),
}

#: A 429 for a spent daily quota, as the Gemini API sends it.
DAILY_QUOTA = {
    "error": {
        "code": 429,
        "message": "You exceeded your current quota, please check your plan and billing details. "
        "Quota exceeded for metric: generativelanguage.googleapis.com/generate_content_free_tier_requests, "
        "limit: 250, model: gemini-2.5-pro",
        "status": "RESOURCE_EXHAUSTED",
        "details": [
            {
                "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                "violations": [
                    {
                        "quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
                        "quotaId": "GenerateRequestsPerDayPerProjectPerModel-FreeTier",
                        "quotaDimensions": {"location": "global", "model": "gemini-2.5-pro"},
                        "quotaValue": "250",
                    }
                ],
            },
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "43s"},
        ],
    }
}


class Gemini(engine.Vendor):
    own_modes = {"daily_quota": "daily_quota", "schema": "schema"}
    name = "gemini"
    version = "0.61.0"
    crash_lines = (
        "  request headers: x-goog-api-key: %s" % engine.SECRET,
        "  GEMINI_API_KEY=%s" % engine.SECRET,
        "    at fakeRequest (/fake/gemini/bundle/gemini.js:1:1)",
    )

    def __init__(self, args, out):
        super().__init__(args, out)
        self.model = engine.arg_value(args, "-m", "--model")
        self.session_id = str(uuid.uuid4())
        self.started = time.monotonic()

    def init_line(self, padding=None):
        line = {
            "type": "init",
            "timestamp": engine.now_iso(),
            "session_id": self.session_id,
            "model": self.model or "auto",
        }
        if padding is not None:
            line["padding"] = padding
        return line

    def schema(self, prompt):
        schema = schema_answer.schema_in_prompt(prompt)
        text = prompt if schema is None else schema_answer.answer_text(schema, prompt)
        return engine.answer(self, "echo", prompt, text)

    def daily_quota(self, prompt):
        """
        What gemini 0.61 prints with -o stream-json when the API answers 429
        RESOURCE_EXHAUSTED with a QuotaFailure naming a per-day quota
        (DAILY_QUOTA): a failed result line, the error on stderr, exit 173.
        """
        self.out.lines([self.init_line(), self.user_line(prompt)])
        engine.stderr(
            "Error when talking to Gemini API Full report available at: /tmp/gemini-client-error.json "
            "TerminalQuotaError: You have exhausted your daily quota on this model."
        )
        engine.stderr("  cause: {\n    code: 429,\n    message: '%s',\n  }" % DAILY_QUOTA["error"]["message"])
        self.out.line(
            {
                "type": "result",
                "timestamp": engine.now_iso(),
                "status": "error",
                "error": {
                    "type": "unknown",
                    "message": "[API Error: You have exhausted your daily quota on this model.]\nPlease wait and "
                    "try again later. To increase your limits, request a quota increase through AI Studio, or "
                    "switch to another /auth method",
                },
                "stats": {"total_tokens": 0, "input_tokens": 0, "output_tokens": 0, "cached": 0, "input": 0},
            }
        )
        return 429 % 256

    def user_line(self, prompt):
        return {"type": "message", "timestamp": engine.now_iso(), "role": "user", "content": prompt}

    def opening(self):
        return [self.init_line()]

    def not_logged_in(self, prompt):
        home = os.environ.get("GEMINI_CLI_HOME") or os.environ.get("HOME") or "~"
        engine.stderr(
            "Please set an Auth method in your %s or specify one of the "
            "following environment variables before running: %s"
            % (os.path.join(home, ".gemini", "settings.json"), AUTH_ENV_VARS)
        )
        return 41

    def upstream_error(self, status, prompt):
        message, api_status = UPSTREAM[status]
        self.out.lines([self.init_line(), self.user_line(prompt)])
        inner = json.dumps({"error": {"code": status, "message": message, "status": api_status}})
        err = {"session_id": self.session_id, "error": {"type": "Error", "message": inner, "code": status}}
        sys.stderr.write(json.dumps(err, indent=2, ensure_ascii=False) + "\n")
        sys.stderr.flush()
        return status % 256

    def head(self, prompt, input_tokens, huge):
        first = self.init_line() if huge is None else engine.padded(self.init_line, huge)
        return [first, self.user_line(prompt)]

    def piece_line(self, text):
        return {"type": "message", "timestamp": engine.now_iso(), "role": "assistant", "content": text, "delta": True}

    def tail(self, text, input_tokens, output_tokens):
        total = input_tokens + output_tokens
        tokens = {
            "total_tokens": total,
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "cached": 0,
            "input": input_tokens,
        }
        stats = {
            **tokens,
            "duration_ms": int((time.monotonic() - self.started) * 1000),
            "tool_calls": 0,
            "models": {self.model or ROUTED_MODEL: dict(tokens)},
        }
        return [{"type": "result", "timestamp": engine.now_iso(), "status": "success", "stats": stats}]


if __name__ == "__main__":
    engine.main(Gemini)
