"""
Codex's subscription windows, read from C{codex app-server}: a short child
that answers C{initialize} and then C{account/rateLimits/read}, which starts
no model turn.  It runs through the same runner, and in the same kind of
private scratch folder and environment, as a codex run; at most once per
interval, and only after codex has just been used.

SheLLM itself never calls a vendor's usage endpoint: codex does, with its
own login, as it does for its C{/status}.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from shellm import __version__
from shellm.completion import QuotaWindow
from shellm.providers.cli import parse_json_line
from shellm.providers.process import CliCommand, CliExit
from shellm.providers.usage_limits import codex_rate_limits

if TYPE_CHECKING:
    from shellm.providers.codex import CodexProvider

#: How long one probe may take before it is stopped.
PROBE_TIMEOUT = 20.0
#: After a failed codex run, the windows are read again sooner than the
#: interval, but never more often than this.
AFTER_ERROR_INTERVAL = 60.0

_INITIALIZE, _READ = 1, 2

#: C{codex app-server}, without analytics and without the plugin and app
#: syncs (which would call the vendor's backend for nothing).
PROBE_ARGS = (
    "codex",
    "-c",
    "analytics.enabled=false",
    "-c",
    "features.plugins=false",
    "-c",
    "features.remote_plugin=false",
    "-c",
    "features.apps=false",
    "app-server",
)


def probe_requests() -> bytes:
    """
    The JSON-RPC lines written to the app-server's stdin (the app-server's
    wire format leaves out the C{jsonrpc} member).
    """
    messages = [
        {
            "id": _INITIALIZE,
            "method": "initialize",
            "params": {"clientInfo": {"name": "shellm", "title": "SheLLM", "version": __version__}},
        },
        {"method": "initialized"},
        {"id": _READ, "method": "account/rateLimits/read"},
    ]
    return b"".join(json.dumps(m).encode() + b"\n" for m in messages)


class CodexQuotaProbe:
    """
    Reads codex's windows now and then, and hands them to C{report}.
    """

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        provider: CodexProvider,
        report: Callable[[Sequence[QuotaWindow]], None],
        interval: float,
        timeout: float = PROBE_TIMEOUT,
    ):
        """
        @param provider: the L{shellm.providers.codex.CodexProvider} whose
            executable, runner and environment the probe uses.
        @param interval: the least time between two probes, in seconds.
        """
        self._clock = clock
        self._provider = provider
        self._report = report
        self.interval = interval
        self._timeout = timeout
        self._last: float | None = None
        self._running: Deferred | None = None

    def poke(self, after_error: bool = False) -> Deferred:
        """
        Codex was just used: probe if the last probe is old enough.  Fires
        (never fails) with the windows read, or an empty list.
        """
        if self._running is not None:
            return succeed([])
        now = self._clock.seconds()
        wait = min(self.interval, AFTER_ERROR_INTERVAL) if after_error else self.interval
        if self._last is not None and now - self._last < wait:
            return succeed([])
        self._last = now
        self._running = self.probe()
        self._running.addBoth(self._done)
        return self._running

    def _done(self, windows: list[QuotaWindow]) -> list[QuotaWindow]:
        self._running = None
        return windows

    def probe(self) -> Deferred:
        """
        Run the app-server once; fires with the windows it reported (also
        reported to C{report}), or an empty list when it could not tell.
        """
        provider = self._provider
        executable = provider.resolve_executable()
        if executable is None:
            return succeed([])
        scratch = tempfile.mkdtemp(prefix="shellm-codex-quota-")
        windows: list[QuotaWindow] = []
        errors: list[str] = []
        runs: list = []

        def stop() -> None:
            if runs and not runs[0].result.called:
                runs[0].result.cancel()

        def on_line(line: str) -> None:
            message = parse_json_line(line)
            if message is None:
                return
            now = self._clock.seconds()
            if message.get("id") == _READ:
                if isinstance(message.get("result"), dict):
                    windows[:] = codex_rate_limits(message["result"], now)
                else:
                    error = message.get("error")
                    errors.append(str(error.get("message", "")) if isinstance(error, dict) else "no result")
                # Answered: the app-server would wait for more requests.
                self._clock.callLater(0, stop)
            elif message.get("method") == "account/rateLimits/updated" and isinstance(message.get("params"), dict):
                windows[:] = codex_rate_limits(message["params"], now) or windows

        try:
            os.mkdir(os.path.join(scratch, "work"), 0o700)
            os.mkdir(os.path.join(scratch, "tmp"), 0o700)
            run = provider._runner.run(
                CliCommand(
                    executable=executable,
                    args=PROBE_ARGS,
                    env=provider.environment(scratch),
                    cwd=os.path.join(scratch, "work"),
                    stdin=probe_requests(),
                    # codex 0.169's app-server exits at end of input
                    # without answering a request still in progress.
                    keep_stdin_open=True,
                ),
                on_line,
                timeout=self._timeout,
            )
        except OSError:
            shutil.rmtree(scratch, ignore_errors=True)
            self.log.failure("could not start the codex app-server")
            return succeed([])
        runs.append(run)
        run.finished.addBoth(lambda _: shutil.rmtree(scratch, ignore_errors=True))

        def ended(outcome: object) -> list[QuotaWindow]:
            if windows:
                self._report(list(windows))
            elif isinstance(outcome, Failure) and not outcome.check(CancelledError):
                self.log.failure("codex rate-limit probe failed", outcome)
            else:
                why = errors[0][:200] if errors else "no answer"
                if isinstance(outcome, CliExit):
                    why += f"; exit code {outcome.exit_code}, timed out {outcome.timed_out}"
                self.log.info("codex app-server told no rate limits ({why})", why=why)
            return list(windows)

        # Fires once the child is reaped, so no probe outlives its Deferred.
        return run.result.addBoth(lambda outcome: run.finished.addCallback(lambda _: ended(outcome)))
