"""
What the three CLI providers share: a private scratch directory per run, an
explicit environment, the prompt on stdin, and outcome classification.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Mapping

from attrs import evolve
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from shellm.completion import (
    CompletionRequest,
    EventSink,
    ProviderHealth,
    ProviderResult,
    ProviderRun,
    QuotaWindow,
    TextDelta,
)
from shellm.errors import (
    NotLoggedIn,
    ProviderFailed,
    ProviderUnavailable,
    QuotaExhausted,
    RateLimited,
    ShellmError,
    Timeout,
    UpstreamRejected,
)
from shellm.providers.base import Capabilities
from shellm.providers.process import CliCommand, CliExit, CliRunner
from shellm.providers.scratch import make as scratch_dir
from shellm.providers.scratch import remove as remove_scratch

#: How long C{--version} may take in a health check.
VERSION_TIMEOUT = 10.0


# What the CLIs say when their login is missing or refused, or when the
# upstream rate-limits them.  Status codes only count next to a word that
# makes them one: a bare "401" may be part of an id or a port.
_LOGIN_REFUSED = re.compile(
    r"not logged in|/login\b|invalid api key|unauthori[sz]ed|please set an auth method"
    r"|missing environment variable|\b(?:status|code|http)\W{0,3}40[13]\b"
    r"|\b40[13] (?:unauthorized|forbidden)",
    re.IGNORECASE,
)
_RATE_LIMITED = re.compile(
    r"rate.?limit|too many requests|resource_exhausted|usage limit|quota exceeded"
    r"|\b(?:status|code|http)\W{0,3}429\b|\b429 too many|\(429\)",
    re.IGNORECASE,
)

# What the CLIs relay when the upstream refused the request itself (too
# long, malformed): the request's fault, not the provider's.
_REQUEST_REJECTED = re.compile(
    r"\b(?:status|code|http)\W{0,3}(?:400|413|422)\b|\b(?:400 bad request|413 payload too large)"
    r"|invalid_request_error|prompt is too long|maximum context length|context window",
    re.IGNORECASE,
)


def with_system_prompt(system: str | None, prompt: str) -> str:
    """
    For CLIs without a system-prompt option: the instructions first, clearly
    set apart from the request that follows.
    """
    if not system:
        return prompt
    return (
        "<system_instructions>\n" + system + "\n</system_instructions>\n\n"
        "<user_request>\n" + prompt + "\n</user_request>"
    )


def parse_json_line(line: str) -> dict | None:
    """
    A CLI's JSON event, or L{None} for anything else on stdout (banners,
    warnings, ANSI noise): those are skipped, not fatal.
    """
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        value = json.loads(line)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def token_count(value) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


class OutputParser:
    """
    Turns one run's stdout lines into events, and its end into a
    L{ProviderResult} or a classified error.  One per run.

    @ivar quota: the subscription windows the run reported, handed on with
        its result or its error.
    @ivar clock: gives the time that relative reset texts count from; the
        provider sets it to its reactor.
    @ivar upstream: the model string passed on (none: the CLI's default),
        which per-model quotas are about; set by the provider.
    """

    clock = None
    upstream: str | None = None

    def __init__(self, provider: str, sink: EventSink):
        self.provider = provider
        self._sink = sink
        self.emitted = 0
        self.model: str | None = None
        self.quota: list[QuotaWindow] = []

    def now(self) -> float:
        return self.clock.seconds() if self.clock is not None else time.time()

    def limit_text(self, said: str) -> QuotaWindow | None:
        """
        The spent window a CLI's limit-reached text (or error body) names,
        if C{said} is one.
        """
        return None

    def emit(self, text: str) -> None:
        if text:
            self.emitted += len(text)
            self._sink(TextDelta(text))

    def feed(self, line: str) -> None:
        event = parse_json_line(line)
        if event is not None:
            self.on_event(event)

    def on_event(self, event: dict) -> None:
        raise NotImplementedError

    def finish(self, exit: CliExit) -> ProviderResult:
        try:
            if exit.timed_out:
                raise Timeout(f"{self.provider} did not finish in time and was stopped")
            if exit.output_overflow:
                # The answer was too long for SheLLM's cap: not a sign of a sick provider.
                raise ProviderFailed(f"{self.provider} printed more output than allowed", blames_provider=False)
            result = self.outcome(exit)
        except ShellmError as error:
            error.quota = tuple(self.quota)
            raise
        return evolve(result, quota=tuple(self.quota))

    def outcome(self, exit: CliExit) -> ProviderResult:
        raise NotImplementedError

    def failed(self, exit: CliExit, what: str = "") -> ShellmError:
        """
        The error for a run that did not succeed, from what the CLI said
        (C{what}) and its stderr: never returned to the client, only matched.
        """
        said = what + "\n" + exit.stderr_tail
        if _LOGIN_REFUSED.search(said):
            return NotLoggedIn(f"{self.provider} is not logged in or its credentials were refused")
        spent = next((w for w in self.quota if w.status == "rejected" and w.resets_at), None)
        if spent is None:
            spent = self.limit_text(said)
            if spent is not None:
                self.quota.append(spent)
        if spent is not None:
            return quota_exhausted(self.provider, spent, self.now())
        if _RATE_LIMITED.search(said):
            return RateLimited(f"{self.provider}: the upstream rate limit was reached", retry_after=60)
        if _REQUEST_REJECTED.search(said):
            return UpstreamRejected(f"{self.provider}: the upstream refused this request (too long or malformed)")
        if exit.signal is not None:
            return ProviderFailed(f"{self.provider} was ended by signal {exit.signal}")
        if exit.exit_code:
            return ProviderFailed(f"{self.provider} failed (exit code {exit.exit_code})")
        return ProviderFailed(f"{self.provider} ended without an answer")


def quota_exhausted(provider: str, window: QuotaWindow, now: float) -> QuotaExhausted:
    """
    The error for a run refused because a subscription window is spent.
    """
    resets_at = window.resets_at or now
    error = QuotaExhausted(
        f"{provider}: its {window.kind.replace('_', '-')} usage limit is reached; it resets at "
        + time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(resets_at)),
        retry_after=max(1, int(resets_at - now + 0.999)),
    )
    error.quota = (window,)
    return error


class CliProvider:
    """
    A provider backed by a command-line tool.  Subclasses say how to invoke
    it, how to read its output, and where it keeps its login.
    """

    kind = "cli"
    name: str
    capabilities: Capabilities
    login_hint: str
    #: The CLI's switches for no telemetry, no self-update and no relaunch,
    #: for every run and health check.
    quiet_env: Mapping[str, str] = {}
    log = Logger()

    def __init__(
        self, reactor, runner: CliRunner, executable: str, base_env: Mapping[str, str], extra_env: Mapping[str, str]
    ):
        self._reactor = reactor
        self._runner = runner
        self._executable = executable
        self._base_env = dict(base_env)
        self._extra_env = dict(extra_env)
        # (path, mtime, size) of the executable -> its --version line: the
        # check runs again only when the CLI is replaced or updated.
        self._version_of: tuple | None = None

    # -- what subclasses provide

    def prepare_scratch(self, request: CompletionRequest, scratch: str) -> None:
        """
        Write the files a run needs into its private scratch folder, before
        its arguments and environment are made (which only name them).
        """

    def arguments(self, request: CompletionRequest, upstream_model: str | None, scratch: str) -> list[str]:
        raise NotImplementedError

    def stdin_text(self, request: CompletionRequest) -> str:
        return with_system_prompt(request.system, request.prompt)

    def vendor_env(self, request: CompletionRequest, scratch: str) -> dict[str, str]:
        return {}

    def make_parser(self, sink: EventSink, request: CompletionRequest | None = None) -> OutputParser:
        raise NotImplementedError

    def has_credentials(self, env: Mapping[str, str]) -> bool:
        raise NotImplementedError

    # -- shared

    def resolve_executable(self) -> str | None:
        found = shutil.which(self._executable, path=self._base_env.get("PATH"))
        return os.path.abspath(found) if found else None

    def environment(self, scratch: str | None, request=None) -> dict[str, str]:
        env = dict(self._base_env)
        env.update(NO_COLOR="1", TERM="dumb")
        env.update(self.quiet_env)
        if scratch is not None:
            env["TMPDIR"] = os.path.join(scratch, "tmp")
            env.update(self.vendor_env(request, scratch))
        env.update(self._extra_env)
        return env

    def start(self, request: CompletionRequest, upstream_model: str | None, sink: EventSink) -> ProviderRun:
        executable = self.resolve_executable()
        if executable is None:
            raise ProviderUnavailable(f"{self.name} is not installed")
        scratch = scratch_dir(self.name)
        try:
            os.mkdir(os.path.join(scratch, "work"), 0o700)
            os.mkdir(os.path.join(scratch, "tmp"), 0o700)
            self.prepare_scratch(request, scratch)
            argv = [self.name] + self.arguments(request, upstream_model, scratch)
            command = CliCommand(
                executable=executable,
                args=tuple(argv),
                env=self.environment(scratch, request),
                cwd=os.path.join(scratch, "work"),
                stdin=self.stdin_text(request).encode("utf-8"),
            )
            parser = self.make_parser(sink, request)
            parser.clock = self._reactor
            parser.upstream = upstream_model
            run = self._runner.run(command, parser.feed)
        except OSError:
            shutil.rmtree(scratch, ignore_errors=True)
            self.log.failure("could not start {provider}", provider=self.name)
            raise ProviderFailed(f"{self.name} could not be started")
        except BaseException:
            shutil.rmtree(scratch, ignore_errors=True)
            raise
        run.result.addCallback(parser.finish)
        # Whoever waits for the run's end (its queue slot) waits for this too.
        run.finished.addBoth(lambda _: remove_scratch(self._reactor, scratch))
        return ProviderRun(result=run.result, finished=run.finished)

    def check_health(self) -> Deferred:
        """
        Installed: the executable is found and C{--version} exits 0.
        Logged in: the credentials the CLI reads exist (a file or a key),
        checked without running a model.
        """
        executable = self.resolve_executable()
        if executable is None:
            missing = f"{self.name} executable not found on PATH (set SHELLM_{self.name.upper()}_BIN)"
            return succeed(ProviderHealth(False, False, missing))
        env = self.environment(None)
        try:
            info = os.stat(executable)
        except OSError:
            return succeed(ProviderHealth(False, False, f"{self.name} executable not found"))
        identity = (executable, info.st_mtime_ns, info.st_size)
        if self._version_of is not None and self._version_of[0] == identity:
            return succeed(self._judge_login(env, self._version_of[1]))
        lines: list[str] = []
        scratch = scratch_dir(f"{self.name}-check")
        env["TMPDIR"] = scratch
        try:
            run = self._runner.run(
                CliCommand(executable, (self.name, "--version"), env, scratch),
                lambda line: len(lines) < 5 and lines.append(line),
                timeout=VERSION_TIMEOUT,
            )
        except OSError:
            shutil.rmtree(scratch, ignore_errors=True)
            return succeed(ProviderHealth(False, False, f"{self.name} could not be started"))
        run.finished.addBoth(lambda _: shutil.rmtree(scratch, ignore_errors=True))

        def judged(exit: CliExit) -> ProviderHealth:
            if exit.exit_code != 0:
                why = "timed out" if exit.timed_out else f"exit code {exit.exit_code}"
                return ProviderHealth(True, False, f"{self.name} --version failed ({why})")
            version = next((l.strip() for l in lines if l.strip()), None)
            version = version[:80] if version and version.isprintable() else None
            self._version_of = (identity, version)
            return self._judge_login(env, version)

        return run.result.addCallback(judged)

    def _judge_login(self, env: Mapping[str, str], version: str | None) -> ProviderHealth:
        if not self.has_credentials(env):
            return ProviderHealth(True, False, f"not logged in: {self.login_hint}", version)
        return ProviderHealth(True, True, None, version)


def home_of(env: Mapping[str, str]) -> str:
    return env.get("HOME") or os.path.expanduser("~")


def any_set(env: Mapping[str, str], *names: str) -> bool:
    return any(env.get(n) for n in names)
