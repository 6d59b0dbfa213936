"""
Claude Code (C{claude}): C{-p} with C{stream-json} partial messages, no tools.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

from shellm.completion import CompletionRequest, ProviderResult, Usage
from shellm.errors import ProviderFailed
from shellm.providers.base import Capabilities
from shellm.providers.cli import CliProvider, OutputParser, any_set, home_of, token_count
from shellm.providers.process import CliExit
from shellm.providers.usage_limits import claude_limit_text, claude_rate_limit_event

#: Denied outright, whatever else is configured: `-p` mode expands `@path`
#: mentions in a prompt through the Read tool even when no tool is offered.
NO_TOOL_SETTINGS = json.dumps(
    {
        "permissions": {
            "deny": [
                "Read",
                "Edit",
                "Write",
                "Bash",
                "WebFetch",
                "WebSearch",
                "Glob",
                "Grep",
                "NotebookEdit",
            ]
        }
    }
)


#: The tool C{--json-schema} offers the model; it only carries the answer.
STRUCTURED = "StructuredOutput"


def system_prompt_file(scratch: str) -> str:
    return os.path.join(scratch, "system-prompt.txt")


class ClaudeOutput(OutputParser):
    """
    Text deltas from C{stream_event} C{text_delta}s; usage and cost from the
    final C{result} line; subscription windows from C{rate_limit_event}s.
    """

    def __init__(self, provider, sink, structured: bool = False):
        super().__init__(provider, sink)
        self.result: dict | None = None
        self._message_text = 0
        #: With C{--json-schema} the answer is the C{StructuredOutput} tool's
        #: input, reported whole at the end; the model's text is not it.
        self._structured = structured
        self._tool_input: dict | None = None

    def on_event(self, event: dict) -> None:
        kind = event.get("type")
        if kind == "system" and event.get("subtype") == "init":
            self.model = event.get("model") if isinstance(event.get("model"), str) else None
        elif kind == "stream_event" and self._structured:
            return
        elif kind == "stream_event":
            inner = event.get("event") or {}
            if inner.get("type") == "message_start":
                self._message_text = 0
            elif inner.get("type") == "content_block_delta":
                delta = inner.get("delta") or {}
                if delta.get("type") == "text_delta" and isinstance(delta.get("text"), str):
                    self._message_text += len(delta["text"])
                    self.emit(delta["text"])
        elif kind == "assistant":
            message = event.get("message") or {}
            if event.get("error") or message.get("model") == "<synthetic>":
                return  # the CLI's own error notice, reported by the result line
            if self._structured:
                for block in message.get("content") or []:
                    if isinstance(block, dict) and block.get("type") == "tool_use" and block.get("name") == STRUCTURED:
                        self._tool_input = block.get("input")
                return
            if self._message_text == 0:
                # No partial messages arrived for this message: send it whole.
                for block in message.get("content") or []:
                    if isinstance(block, dict) and block.get("type") == "text":
                        self.emit(block.get("text") or "")
            self._message_text = 0
        elif kind == "rate_limit_event":
            self.quota.extend(claude_rate_limit_event(event, self.now()))
        elif kind == "result":
            self.result = event

    def limit_text(self, said: str):
        return claude_limit_text(said, self.now())

    def outcome(self, exit: CliExit) -> ProviderResult:
        result = self.result
        if result is None:
            raise self.failed(exit)
        if result.get("is_error") or exit.exit_code != 0:
            status = result.get("api_error_status")
            said = str(result.get("result", ""))
            if isinstance(status, int):
                said += f" (status {status})"
            if isinstance(status, int) and status >= 500:
                raise ProviderFailed(f"claude: the upstream API failed (HTTP {status})")
            raise self.failed(exit, said)
        if self._structured:
            value = result.get("structured_output", self._tool_input)
            if value is not None:
                self.emit(json.dumps(value, ensure_ascii=False))
            elif isinstance(result.get("result"), str):
                self.emit(result["result"])  # validated (and repaired) by SheLLM
        elif self.emitted == 0 and isinstance(result.get("result"), str):
            self.emit(result["result"])
        usage = result.get("usage") or {}
        tokens_in, tokens_out = token_count(usage.get("input_tokens")), token_count(usage.get("output_tokens"))
        cost = result.get("total_cost_usd")
        return ProviderResult(
            usage=Usage(tokens_in, tokens_out) if tokens_in is not None and tokens_out is not None else None,
            cost_usd=float(cost) if isinstance(cost, (int, float)) and not isinstance(cost, bool) else None,
            model=self.model,
            finish_reason="length" if result.get("stop_reason") == "max_tokens" else "stop",
        )


class ClaudeProvider(CliProvider):
    name = "claude"
    capabilities = Capabilities(system_prompt=True, max_tokens=True, streaming="token")
    quiet_env = {
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_TELEMETRY": "1",
        "DISABLE_AUTOUPDATER": "1",
        "DISABLE_ERROR_REPORTING": "1",
        # One quick retry; a provider that keeps failing is a fallback's job,
        # not minutes of backoff inside one request.
        "CLAUDE_CODE_MAX_RETRIES": "1",
    }
    login_hint = "run `claude` once as the service user and log in, or set ANTHROPIC_API_KEY in SHELLM_CLAUDE_ENV"

    def arguments(self, request: CompletionRequest, upstream_model, scratch) -> list[str]:
        args = [
            "-p",
            "--output-format",
            "stream-json",
            "--verbose",
            "--include-partial-messages",
            # No tools at all, no MCP servers, no settings files that could add
            # them back, and no slash commands: the prompt is only ever text.
            "--tools",
            "",
            "--strict-mcp-config",
            "--permission-mode",
            "dontAsk",
            "--setting-sources",
            "",
            "--disable-slash-commands",
            "--no-session-persistence",
            "--settings",
            NO_TOOL_SETTINGS,
        ]
        if upstream_model:
            args += ["--model", upstream_model]
        if request.system:
            args += ["--system-prompt-file", system_prompt_file(scratch)]
        if request.output is not None:
            # The schema is JSON passed as one argument, never through a
            # shell; claude offers it as a StructuredOutput tool, the only
            # tool there is (every other one stays off and denied).
            args += ["--json-schema", request.output.schema_json]
        return args

    def prepare_scratch(self, request: CompletionRequest, scratch: str) -> None:
        if request.system:
            # A file, so the system prompt never appears in argv.
            with open(system_prompt_file(scratch), "w", encoding="utf-8") as f:
                f.write(request.system)

    def stdin_text(self, request: CompletionRequest) -> str:
        return request.prompt

    def vendor_env(self, request: CompletionRequest, scratch: str) -> dict[str, str]:
        env = {"CLAUDE_CODE_TMPDIR": os.path.join(scratch, "tmp")}
        if request is not None and request.max_tokens:
            env["CLAUDE_CODE_MAX_OUTPUT_TOKENS"] = str(request.max_tokens)
        return env

    def make_parser(self, sink, request: CompletionRequest | None = None) -> ClaudeOutput:
        return ClaudeOutput(self.name, sink, structured=request is not None and request.output is not None)

    def has_credentials(self, env: Mapping[str, str]) -> bool:
        if any_set(env, "ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "CLAUDE_CODE_OAUTH_TOKEN"):
            return True
        config_dir = env.get("CLAUDE_CONFIG_DIR") or os.path.join(home_of(env), ".claude")
        return os.path.isfile(os.path.join(config_dir, ".credentials.json"))
