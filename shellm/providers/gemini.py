"""
Gemini CLI (C{gemini}): headless on stdin with C{-o stream-json}, and a
settings file in the run's private working folder that declares no tools.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping

from attrs import evolve

from shellm.completion import DEFAULT_MODEL, CompletionRequest, ProviderResult, Usage
from shellm.errors import NotLoggedIn, QuotaExhausted, RateLimited
from shellm.providers.base import Capabilities
from shellm.providers.cli import CliProvider, OutputParser, any_set, home_of, token_count
from shellm.providers.process import CliExit
from shellm.providers.usage_limits import gemini_limit_error

#: No tools (so no shell, file or web access whatever the prompt says), one
#: attempt (fail fast, let fallback act), no usage statistics.
RUN_SETTINGS = {
    "tools": {"core": []},
    "general": {"maxAttempts": 1},
    "privacy": {"usageStatisticsEnabled": False},
}

# In its JSON modes gemini exits with the upstream HTTP status modulo 256.
_EXIT_NOT_LOGGED_IN = {41, 401 % 256, 403 % 256}
_EXIT_RATE_LIMITED = 429 % 256
#: "Suggested retry after 43s." (gemini 0.61), "Please retry in 43.2s."
_SUGGESTED_WAIT = re.compile(r"retry (?:after|in) ([0-9]+(?:\.[0-9]+)?)s\b", re.IGNORECASE)


class GeminiOutput(OutputParser):
    def __init__(self, provider, sink):
        super().__init__(provider, sink)
        self.result: dict | None = None

    def on_event(self, event: dict) -> None:
        kind = event.get("type")
        if kind == "init" and isinstance(event.get("model"), str):
            self.model = event["model"]
        elif kind == "message" and event.get("role") == "assistant":
            if isinstance(event.get("content"), str):
                self.emit(event["content"])
        elif kind == "result":
            self.result = event

    def limit_text(self, said: str):
        # Gemini's daily quotas are per model: only this model is spent.
        window = gemini_limit_error(said, self.now())
        return evolve(window, model=self.upstream or DEFAULT_MODEL) if window is not None else None

    def outcome(self, exit: CliExit) -> ProviderResult:
        result = self.result
        if exit.exit_code in _EXIT_NOT_LOGGED_IN:
            raise NotLoggedIn("gemini is not logged in or its credentials were refused")
        error = (result or {}).get("error")
        said = json.dumps(error) if error else ""
        if exit.exit_code == _EXIT_RATE_LIMITED:
            # A spent daily quota, or an ordinary per-minute rate limit.
            failure = self.failed(exit, said)
            if isinstance(failure, QuotaExhausted):
                raise failure
            wait = _SUGGESTED_WAIT.search(said + "\n" + exit.stderr_tail)
            retry_after = min(3600, math.ceil(float(wait.group(1)))) if wait else 60
            raise RateLimited("gemini: the upstream rate limit was reached", retry_after=max(1, retry_after))
        if result is None or exit.exit_code != 0 or result.get("status") != "success":
            raise self.failed(exit, said)
        stats = result.get("stats") or {}
        tokens_in = token_count(stats.get("input_tokens", stats.get("input")))
        tokens_out = token_count(stats.get("output_tokens"))
        models = stats.get("models")
        if isinstance(models, dict) and models:
            self.model = list(models)[-1]
        return ProviderResult(
            usage=Usage(tokens_in, tokens_out) if tokens_in is not None and tokens_out is not None else None,
            model=self.model if self.model != "auto" else None,
        )


class GeminiProvider(CliProvider):
    name = "gemini"
    capabilities = Capabilities(system_prompt=True, max_tokens=False, streaming="token")
    quiet_env = {
        # The run's own empty folder is the only workspace it sees.
        "GEMINI_CLI_TRUST_WORKSPACE": "true",
        "GEMINI_CLI_NO_RELAUNCH": "true",
    }
    login_hint = "run `gemini` once as the service user and log in, or set GEMINI_API_KEY in SHELLM_GEMINI_ENV"

    def arguments(self, request: CompletionRequest, upstream_model, scratch) -> list[str]:
        # No -p: with stdin not a terminal, gemini reads the prompt from it.
        args = ["-o", "stream-json"]
        if upstream_model:
            args += ["-m", upstream_model]
        return args

    def prepare_scratch(self, request, scratch: str) -> None:
        # Workspace settings in the run's own working folder outrank the
        # user's.  (A system settings file would be ignored: gemini only
        # trusts one whose every parent folder is root's.)
        folder = os.path.join(scratch, "work", ".gemini")
        os.makedirs(folder, mode=0o700, exist_ok=True)
        with open(os.path.join(folder, "settings.json"), "w", encoding="utf-8") as f:
            json.dump(RUN_SETTINGS, f)

    def make_parser(self, sink, request=None) -> GeminiOutput:
        return GeminiOutput(self.name, sink)

    def has_credentials(self, env: Mapping[str, str]) -> bool:
        if any_set(
            env,
            "GEMINI_API_KEY",
            "GOOGLE_API_KEY",
            "GOOGLE_GENAI_USE_VERTEXAI",
            "GOOGLE_GENAI_USE_GCA",
            "GOOGLE_APPLICATION_CREDENTIALS",
        ):
            return True
        home = env.get("GEMINI_CLI_HOME") or home_of(env)
        return os.path.isfile(os.path.join(home, ".gemini", "oauth_creds.json"))
