"""
Codex CLI (C{codex exec}): prompt on stdin (C{-}), C{--json} events, a
read-only sandbox and the command tools switched off.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

from twisted.python.failure import Failure

from shellm.completion import CompletionRequest, ProviderResult, ProviderRun, Usage
from shellm.providers.base import Capabilities
from shellm.providers.cli import CliProvider, OutputParser, any_set, home_of, token_count
from shellm.providers.process import CliExit
from shellm.providers.usage_limits import codex_limit_error

if TYPE_CHECKING:
    from shellm.providers.codex_quota import CodexQuotaProbe


def output_schema_file(scratch: str) -> str:
    return os.path.join(scratch, "output-schema.json")


class CodexOutput(OutputParser):
    """
    C{--json} has no token deltas: each finished agent message is one delta.
    """

    def __init__(self, provider, sink):
        super().__init__(provider, sink)
        self.usage: Usage | None = None
        self.completed = False
        self.failure: str | None = None
        self._messages = 0

    def on_event(self, event: dict) -> None:
        kind = event.get("type")
        if kind == "item.completed":
            item = event.get("item") or {}
            if item.get("type") == "agent_message" and isinstance(item.get("text"), str):
                if self._messages:
                    self.emit("\n\n")
                self._messages += 1
                self.emit(item["text"])
        elif kind == "turn.completed":
            self.completed = True
            usage = event.get("usage") or {}
            tokens_in, tokens_out = token_count(usage.get("input_tokens")), token_count(usage.get("output_tokens"))
            if tokens_in is not None and tokens_out is not None:
                self.usage = Usage(tokens_in, tokens_out)
        elif kind == "turn.failed":
            error = event.get("error") or {}
            self.failure = str(error.get("message", ""))
        elif kind == "error" and self.failure is None:
            # Often not fatal ("Reconnecting..."); kept only to classify a failure.
            self.failure = str(event.get("message", ""))

    def limit_text(self, said: str):
        return codex_limit_error(said, self.now())

    def outcome(self, exit: CliExit) -> ProviderResult:
        if exit.exit_code != 0 or not self.completed:
            raise self.failed(exit, self.failure or "")
        return ProviderResult(usage=self.usage, model=self.model)


class CodexProvider(CliProvider):
    name = "codex"
    capabilities = Capabilities(system_prompt=True, max_tokens=False, streaming="message")
    login_hint = "run `codex login` as the service user, or set OPENAI_API_KEY in SHELLM_CODEX_ENV"
    #: Reads the subscription windows after runs (a
    #: L{shellm.providers.codex_quota.CodexQuotaProbe}), when configured.
    quota_probe: CodexQuotaProbe | None = None

    def start(self, request: CompletionRequest, upstream_model, sink) -> ProviderRun:
        run = super().start(request, upstream_model, sink)
        probe = self.quota_probe
        if probe is not None:

            def used(outcome):
                probe.poke(after_error=isinstance(outcome, Failure))
                return outcome

            run.result.addBoth(used)
        return run

    def arguments(self, request: CompletionRequest, upstream_model, scratch) -> list[str]:
        args = [
            "exec",
            "--json",
            "--color",
            "never",
            "--skip-git-repo-check",
            "--ephemeral",
            # Read-only sandbox, and no tool that runs commands, spawns agents
            # or searches the web: the model can only answer in text.
            "--sandbox",
            "read-only",
            "--disable",
            "shell_tool",
            "--disable",
            "unified_exec",
            "--disable",
            "multi_agent",
            "--disable",
            "goals",
            "--disable",
            "view_image",
            "--disable",
            "image_generation",
            "--disable",
            "plugins",
            "--disable",
            "remote_plugin",
            "--disable",
            "apps",
            # "Code mode" runs model-written JavaScript that can call tools.
            "--disable",
            "code_mode_host",
            "--disable",
            "sleep_tool",
            "-c",
            "web_search=disabled",
            "-c",
            "analytics.enabled=false",
        ]
        if upstream_model:
            args += ["-m", upstream_model]
        if request.output is not None:
            args += ["--output-schema", output_schema_file(scratch)]
        return args + ["-"]

    def prepare_scratch(self, request: CompletionRequest, scratch: str) -> None:
        if request.output is not None:
            # codex reads the schema from a file: the run's own, in its scratch folder.
            with open(output_schema_file(scratch), "w", encoding="utf-8") as f:
                f.write(request.output.schema_json)  # the prompt comes on stdin

    def make_parser(self, sink, request=None) -> CodexOutput:
        return CodexOutput(self.name, sink)

    def has_credentials(self, env: Mapping[str, str]) -> bool:
        if any_set(env, "OPENAI_API_KEY", "CODEX_API_KEY"):
            return True
        codex_home = env.get("CODEX_HOME") or os.path.join(home_of(env), ".codex")
        if os.path.isfile(os.path.join(codex_home, "auth.json")):
            return True
        # A custom provider in config.toml names the variable holding its key.
        # Imported here: only a Codex set up this way (no key, no login) needs it.
        import tomllib

        try:
            with open(os.path.join(codex_home, "config.toml"), "rb") as f:
                config = tomllib.load(f)
        except (OSError, tomllib.TOMLDecodeError):
            return False
        name = config.get("model_provider")
        provider = (config.get("model_providers") or {}).get(name)
        if not isinstance(provider, dict):
            return False
        key_variable = provider.get("env_key")
        return not key_variable or bool(env.get(key_variable))
