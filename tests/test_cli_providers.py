"""
Integration tests of the CLI providers with real child processes (the fake
CLIs in C{tests/fakes}) on the real reactor, and of the Cerebras provider
against a real local HTTP server speaking the OpenAI streaming format.

Every spawned process carries a per-test marker in its environment; each
test ends by proving that none of them is still running.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import stat
import sys

import pytest
import pytest_twisted
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred
from twisted.logger import formatEvent, globalLogPublisher

from shellm.completion import CompletionRequest, ProviderResult, TextDelta, Usage
from shellm.errors import NotLoggedIn, ProviderFailed, ProviderUnavailable, RateLimited, ShellmError, Timeout
from shellm.models import ModelEntry
from shellm.providers.cerebras import CerebrasProvider
from shellm.providers.claude import ClaudeProvider
from shellm.providers.codex import CodexProvider
from shellm.providers.gemini import GeminiProvider
from shellm.providers.http_client import ReusedEndpoints, upstream_client
from shellm.providers.process import CliRunner
from shellm.providers.spawner import SessionSpawner, find_launcher

from .conftest import alive, fake_cli, wait_for_no_processes
from .daemon import eventually
from .fakes.engine import split_text  # the pieces the fakes send for FAKE_CHUNKS=n
from .fakes.fake_openai_server import FakeOpenAI, start_fake_openai

pytestmark = pytest.mark.slow  # real processes and daemons (the second stage of .ci/run)

#: No single test may take longer than this on the real reactor.
GUARD_SECONDS = 20.0
#: What the fakes print in their errors, stderr and upstream bodies.
SECRET = "SECRET"

CLI_PROVIDERS = {
    "claude": ClaudeProvider,
    "gemini": GeminiProvider,
    "codex": CodexProvider,
}
ALL_CLIS = pytest.mark.parametrize("cli", sorted(CLI_PROVIDERS))
#: The CLIs that stream pieces of text (codex sends whole messages).
TOKEN_CLIS = ("claude", "gemini")


def _reactor_state(reactor):
    calls = {c for c in reactor.getDelayedCalls() if c.active()}
    return calls, set(reactor.getReaders()), set(reactor.getWriters())


async def _reactor_left_clean(reactor, before, within: float = 3.0) -> None:
    """
    Wait (briefly) until every timer, pipe and socket the test created is
    gone, then insist on it.
    """

    def extra():
        calls, readers, writers = _reactor_state(reactor)
        return calls - before[0], readers - before[1], writers - before[2]

    await eventually(lambda: not any(extra()), within)
    left = extra()
    assert not left[0], f"timers left pending: {left[0]}"
    assert not left[1] and not left[2], f"connections left open: {left[1:]}"


def real_reactor_test(f):
    """
    Run an async test on the real reactor: fail it if it takes longer than
    GUARD_SECONDS (cancelling whatever it awaits), and check afterwards that
    it left no timer, pipe or connection behind.
    """

    @functools.wraps(f)
    async def guarded(*args, **kwargs):
        from twisted.internet import reactor

        before = _reactor_state(reactor)
        d = ensureDeferred(f(*args, **kwargs))
        await d.addTimeout(GUARD_SECONDS, reactor)
        await _reactor_left_clean(reactor, before)

    return pytest_twisted.ensureDeferred(guarded)


def request(
    cli: str, prompt: str = "say hi", system: str | None = None, upstream: str | None = None
) -> CompletionRequest:
    return CompletionRequest(
        model=cli,
        entry=ModelEntry(cli, cli, upstream),
        prompt=prompt,
        system=system,
        request_id="t",
    )


class Events:
    """
    A sink that keeps every event, and can run a hook on the first delta.
    """

    def __init__(self, on_first=None):
        self.events: list = []
        self._on_first = on_first

    def __call__(self, event) -> None:
        self.events.append(event)
        if self._on_first is not None and len(self.events) == 1:
            hook, self._on_first = self._on_first, None
            hook()

    @property
    def deltas(self) -> list[str]:
        assert all(isinstance(e, TextDelta) for e in self.events)
        return [e.text for e in self.events]

    @property
    def text(self) -> str:
        return "".join(self.deltas)


@pytest.fixture(params=["posix_spawn", "fork"])
def spawner(request):
    """
    Both ways a CLI is started: posix_spawn through setpriv and env (the
    daemon's way where they exist) and fork (elsewhere).
    """
    from twisted.internet import reactor

    if request.param == "fork":
        return SessionSpawner(reactor)
    launcher = find_launcher()
    if launcher is None:
        pytest.skip("setpriv or env -C is missing here")
    spawner = SessionSpawner(reactor, launcher)
    assert spawner.spawns
    return spawner


@pytest.fixture
def make_provider(marker, python_path_env, spawner):
    """
    Build a CLI provider around its fake, with the test marker (and any
    FAKE_* settings) in its extra environment.
    """
    from twisted.internet import reactor

    def make(cli, *, timeout=15.0, kill_grace=2.0, env=None, executable=None, base_env=None):
        runner = CliRunner(reactor, spawner, timeout, kill_grace)
        extra = {"SHELLM_TEST_MARKER": marker}
        extra.update(env or {})
        provider = CLI_PROVIDERS[cli](
            reactor,
            runner,
            executable or fake_cli(cli),
            base_env=python_path_env if base_env is None else base_env,
            extra_env=extra,
        )
        return provider

    return make


async def run_to_end(provider, req, upstream=None, sink=None):
    """
    Start a run and wait for both its result and its release; returns
    (result or the ShellmError raised, the sink).
    """
    sink = sink if sink is not None else Events()
    run = provider.start(req, upstream, sink)
    try:
        result = await run.result
    except ShellmError as e:
        result = e
    await run.finished
    return result, sink


@pytest.fixture
def logged():
    """
    Everything logged during the test, formatted as an operator would read it.
    """
    events: list[dict] = []
    observer = events.append
    globalLogPublisher.addObserver(observer)
    yield lambda: "\n".join(
        (formatEvent(e) or "") + " " + repr(sorted((k, v) for k, v in e.items() if not k.startswith("log_")))
        for e in events
    )
    globalLogPublisher.removeObserver(observer)


def read_records(path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


# -- success


@ALL_CLIS
@real_reactor_test
async def test_success_deltas_and_usage(cli, make_provider, marker):
    """
    A successful run streams the answer as deltas, in order, that together
    are exactly the CLI's text, and reports the exact token usage (and, for
    claude, the cost).
    """
    text = "Hello there, wörld — this is the answer."
    provider = make_provider(
        cli,
        env={
            "FAKE_TEXT": text,
            "FAKE_CHUNKS": "4",
            "FAKE_INPUT_TOKENS": "123",
            "FAKE_OUTPUT_TOKENS": "45",
            "FAKE_COST": "0.0123",
        },
    )
    result, sink = await run_to_end(provider, request(cli))
    assert isinstance(result, ProviderResult), result
    if cli in TOKEN_CLIS:
        assert sink.deltas == split_text(text, 4)
    else:
        assert sink.deltas == [text]
    assert result.usage == Usage(123, 45)
    if cli == "claude":
        assert result.cost_usd == pytest.approx(0.0123)
    assert await wait_for_no_processes(marker) == []


@pytest.mark.parametrize("spawner", ["posix_spawn"], indirect=True)
@real_reactor_test
async def test_posix_spawn_never_forks(make_provider, marker, monkeypatch):
    """
    Where setpriv and env are found, a CLI is started without forking the
    daemon (a fork costs more the bigger the daemon is).
    """

    def no_fork():
        raise AssertionError("forked")

    monkeypatch.setattr(os, "fork", no_fork)
    result, sink = await run_to_end(make_provider("claude"), request("claude"))
    assert isinstance(result, ProviderResult), result
    assert sink.text
    assert await wait_for_no_processes(marker) == []


@real_reactor_test
async def test_codex_messages_are_separate_deltas(make_provider, marker):
    """
    codex reports whole agent messages; several become one answer, in order,
    separated by a blank line.
    """
    provider = make_provider("codex", env={"FAKE_TEXT": "first part|second part"})
    result, sink = await run_to_end(provider, request("codex"))
    assert isinstance(result, ProviderResult), result
    assert sink.text == "first part\n\nsecond part"
    assert await wait_for_no_processes(marker) == []


@ALL_CLIS
@pytest.mark.parametrize("prompt", ["--help", "-y", "line one\n--version\n  ünïcode ✓"])
@real_reactor_test
async def test_prompt_only_on_stdin(cli, prompt, make_provider, marker, tmp_path):
    """
    The prompt reaches the CLI verbatim on stdin and never appears in argv,
    even when it looks like an option: a prompt cannot become a flag.
    """
    record = tmp_path / "record.jsonl"
    provider = make_provider(cli, env={"FAKE_RECORD": str(record)})
    result, _ = await run_to_end(provider, request(cli, prompt=prompt))
    assert isinstance(result, ProviderResult), result
    [rec] = read_records(record)
    assert rec["stdin"] == prompt
    assert prompt not in rec["argv"]
    assert not any(prompt in arg for arg in rec["argv"][1:])
    assert await wait_for_no_processes(marker) == []


@ALL_CLIS
@real_reactor_test
async def test_argv_disables_tools(cli, make_provider, marker, tmp_path):
    """
    The CLI is started with its tools switched off: claude with no tools
    and dontAsk (never skipping permissions), codex read-only without its
    shell tool, code mode and reading stdin, gemini without yolo and with
    workspace settings (in its private working folder) declaring no tools.
    """
    record = tmp_path / "record.jsonl"
    gate = tmp_path / "gate"
    seen = {}

    def during_run():
        # The scratch directory only exists while the run does.
        [rec] = read_records(record)
        path = os.path.join(rec["cwd"], ".gemini", "settings.json")
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                seen["settings"] = json.load(f)
        gate.touch()

    provider = make_provider(cli, env={"FAKE_RECORD": str(record), "FAKE_GATE": str(gate)})
    result, _ = await run_to_end(provider, request(cli), sink=Events(on_first=during_run))
    assert isinstance(result, ProviderResult), result
    [rec] = read_records(record)
    argv = rec["argv"]
    if cli == "claude":
        assert argv[argv.index("--tools") + 1] == ""
        assert argv[argv.index("--permission-mode") + 1] == "dontAsk"
        denied = json.loads(argv[argv.index("--settings") + 1])["permissions"]["deny"]
        assert {"Read", "Bash", "Write", "Edit"} <= set(denied)
        assert "--dangerously-skip-permissions" not in argv
        assert "--allowedTools" not in argv and "--allowed-tools" not in argv
    elif cli == "codex":
        assert argv[argv.index("--sandbox") + 1] == "read-only"
        pairs = list(zip(argv, argv[1:]))
        assert ("--disable", "shell_tool") in pairs
        assert ("--disable", "code_mode_host") in pairs
        assert argv[-1] == "-"
        assert "--dangerously-bypass-approvals-and-sandbox" not in argv
        assert "--full-auto" not in argv
    else:
        assert "-y" not in argv and "--yolo" not in argv
        assert not any("yolo" in arg for arg in argv)
        assert seen["settings"]["tools"]["core"] == []
        assert seen["settings"]["privacy"]["usageStatisticsEnabled"] is False
    assert await wait_for_no_processes(marker) == []


@ALL_CLIS
@real_reactor_test
async def test_system_prompt_and_model(cli, make_provider, marker, tmp_path):
    """
    The upstream model string is passed with --model/-m.  claude gets the
    system prompt through --system-prompt-file and only the prompt on
    stdin; gemini and codex get it on stdin before the prompt.  Neither the
    system prompt nor the prompt appears in argv.
    """
    record = tmp_path / "record.jsonl"
    system = "You are terse. Never use tools."
    prompt = "what is 2+2?"
    provider = make_provider(cli, env={"FAKE_RECORD": str(record)})
    result, _ = await run_to_end(
        provider,
        request(cli, prompt=prompt, system=system, upstream="fake-model-7"),
        upstream="fake-model-7",
    )
    assert isinstance(result, ProviderResult), result
    [rec] = read_records(record)
    argv = rec["argv"]
    flag = "--model" if cli == "claude" else "-m"
    assert argv[argv.index(flag) + 1] == "fake-model-7"
    assert not any(system in arg or prompt in arg for arg in argv)
    if cli == "claude":
        assert rec["system_prompt_file_content"] == system
        assert rec["stdin"] == prompt
        assert result.model == "fake-model-7"
    else:
        stdin = rec["stdin"]
        assert system in stdin and prompt in stdin
        assert stdin.index(system) < stdin.index(prompt)
    assert await wait_for_no_processes(marker) == []


@ALL_CLIS
@real_reactor_test
async def test_no_model_means_no_model_flag(cli, make_provider, marker, tmp_path):
    """
    Without an upstream model the CLI picks its own default: no --model/-m.
    """
    record = tmp_path / "record.jsonl"
    provider = make_provider(cli, env={"FAKE_RECORD": str(record)})
    result, _ = await run_to_end(provider, request(cli), upstream=None)
    assert isinstance(result, ProviderResult), result
    [rec] = read_records(record)
    assert "--model" not in rec["argv"] and "-m" not in rec["argv"]
    assert await wait_for_no_processes(marker) == []


@ALL_CLIS
@real_reactor_test
async def test_isolation_session_cwd_env(cli, make_provider, marker, tmp_path, python_path_env, monkeypatch):
    """
    The child leads its own session, dies with the daemon (SIGKILL as its
    parent-death signal), runs in an empty private directory that is removed
    once the run is finished, and sees only the configured environment:
    nothing of the daemon's own environment leaks in.
    """
    monkeypatch.setenv("SHELLM_UNRELATED_LEAK", "should-not-leak")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-from-daemon-env")
    record = tmp_path / "record.jsonl"
    gate = tmp_path / "gate"
    seen = {}

    def during_run():
        [rec] = read_records(record)
        seen["listing"] = sorted(os.listdir(rec["cwd"]))
        seen["mode"] = stat.S_IMODE(os.stat(rec["cwd"]).st_mode)
        gate.touch()

    extra = {"FAKE_RECORD": str(record), "FAKE_GATE": str(gate), "MY_SETTING": "42"}
    provider = make_provider(cli, env=extra)
    result, _ = await run_to_end(provider, request(cli), sink=Events(on_first=during_run))
    assert isinstance(result, ProviderResult), result
    [rec] = read_records(record)
    assert rec["sid"] == rec["pid"]
    assert rec["pgid"] == rec["pid"]
    assert rec["pdeathsig"] == signal.SIGKILL
    # Empty but for gemini's own settings, which SheLLM puts there.
    assert seen["listing"] == ([".gemini"] if cli == "gemini" else [])
    assert seen["mode"] & 0o077 == 0
    # The scratch directory (the parent of the working directory) is gone.
    assert not os.path.exists(rec["cwd"])
    assert not os.path.exists(os.path.dirname(rec["cwd"]))

    env = rec["env"]
    assert "SHELLM_UNRELATED_LEAK" not in env
    assert "ANTHROPIC_API_KEY" not in env
    for key, value in python_path_env.items():
        assert env[key] == value
    assert env["SHELLM_TEST_MARKER"] == marker
    assert env["MY_SETTING"] == "42"
    vendor = {
        "claude": ("CLAUDE_CODE_", "DISABLE_"),
        "gemini": ("GEMINI_CLI_",),
        "codex": (),
    }[cli]
    others = set(env) - set(python_path_env) - {"SHELLM_TEST_MARKER"} - set(extra)
    others -= {"NO_COLOR", "TERM", "TMPDIR"}
    # The fake is Python, which sets LC_CTYPE itself under a C locale (PEP 538).
    others.discard("LC_CTYPE")
    assert {k for k in others if not k.startswith(vendor)} == set()
    assert await wait_for_no_processes(marker) == []


# -- failures


@ALL_CLIS
@pytest.mark.parametrize(
    "mode, error, status",
    [
        ("not_logged_in", NotLoggedIn, 503),
        ("upstream_401", ProviderUnavailable, 503),
        ("upstream_429", RateLimited, 429),
        ("upstream_500", ProviderFailed, 502),
        ("exit_nonzero", ProviderFailed, 502),
    ],
)
@real_reactor_test
async def test_failures_are_classified(cli, mode, error, status, make_provider, marker, logged):
    """
    What went wrong reaches the client as the right error and status:
    missing login and refused credentials are 503 (so another provider may
    answer), upstream rate limits 429, upstream and CLI failures 502; the
    message never carries the CLI's raw output (which holds a secret).
    """
    provider = make_provider(cli, env={"FAKE_MODE": mode})
    sink = Events()
    result, _ = await run_to_end(provider, request(cli), sink=sink)
    assert isinstance(result, error), result
    assert result.status == status
    if error is NotLoggedIn:
        assert isinstance(result, ProviderUnavailable)
    if error is RateLimited:
        assert result.retry_after and result.retry_after > 0
    assert SECRET not in result.message
    assert SECRET not in json.dumps(result.to_json())
    assert SECRET not in str(result)
    assert SECRET not in logged()
    assert sink.events == []
    assert await wait_for_no_processes(marker) == []


@real_reactor_test
async def test_gemini_500_with_digits_in_stderr_is_not_a_login_error(marker, tmp_path, python_path_env):
    """
    An upstream 500 from gemini is a 502 whatever ids or numbers its stderr
    happens to contain: a session id with "401" or "429" in it must not
    turn it into "not logged in" or "rate limited".
    """
    from twisted.internet import reactor

    # gemini's real upstream-error report (as fake_gemini prints it), with a
    # session id that happens to contain those digits, as random ids do.
    script = tmp_path / "gemini"
    report = {
        "session_id": "5e1f4401-a429-4c3b-9d2e-0b1c2d3e4f50",
        "error": {
            "type": "Error",
            "code": 500,
            "message": json.dumps(
                {"error": {"code": 500, "message": "Internal error encountered.", "status": "INTERNAL"}}
            ),
        },
    }
    script.write_text(
        f"#!{sys.executable}\n"
        "import sys\n"
        "sys.stdin.read()\n"
        "print('{\"type\":\"init\",\"model\":\"auto\"}', flush=True)\n"
        f"sys.stderr.write({json.dumps(json.dumps(report, indent=2))} + '\\n')\n"
        "sys.exit(500 % 256)\n"
    )
    script.chmod(0o755)
    runner = CliRunner(reactor, SessionSpawner(reactor), 15.0, 2.0)
    provider = GeminiProvider(
        reactor, runner, str(script), base_env=python_path_env, extra_env={"SHELLM_TEST_MARKER": marker}
    )
    result, _ = await run_to_end(provider, request("gemini"))
    assert isinstance(result, ProviderFailed), result
    assert result.status == 502
    assert await wait_for_no_processes(marker) == []


@ALL_CLIS
@real_reactor_test
async def test_hang_times_out(cli, make_provider, marker):
    """
    A CLI that never finishes is stopped at the timeout: the client gets
    Timeout (504) and the whole process group is gone.
    """
    from twisted.internet import reactor

    provider = make_provider(cli, timeout=1.0, kill_grace=2.0, env={"FAKE_MODE": "hang"})
    started = reactor.seconds()
    result, _ = await run_to_end(provider, request(cli))
    assert isinstance(result, Timeout), result
    assert result.status == 504
    assert 0.9 <= reactor.seconds() - started < 5.0
    assert await wait_for_no_processes(marker) == []


@ALL_CLIS
@real_reactor_test
async def test_ignoring_term_is_killed(cli, make_provider, marker):
    """
    A CLI that ignores TERM is killed after the grace period: Timeout, and
    nothing left running.
    """
    from twisted.internet import reactor

    provider = make_provider(cli, timeout=0.5, kill_grace=0.5, env={"FAKE_MODE": "ignore_term"})
    started = reactor.seconds()
    result, _ = await run_to_end(provider, request(cli))
    assert isinstance(result, Timeout), result
    # TERM at 0.5 s did nothing; only KILL at 1.0 s ended it.
    assert 0.9 <= reactor.seconds() - started < 5.0
    assert await wait_for_no_processes(marker) == []


@ALL_CLIS
@real_reactor_test
async def test_grandchild_does_not_hold_the_run(cli, make_provider, marker, tmp_path):
    """
    A grandchild that keeps the CLI's stdout open neither delays the answer
    nor survives the run: the result arrives promptly and the grandchild is
    dead.
    """
    from twisted.internet import reactor

    pid_file = tmp_path / "grandchild.pid"
    text = "answer despite a grandchild"
    # A long grace: if only the pipe timer ended the run, it would be slow.
    provider = make_provider(
        cli,
        kill_grace=8.0,
        env={
            "FAKE_MODE": "grandchild",
            "FAKE_GRANDCHILD_PID": str(pid_file),
            "FAKE_TEXT": text,
        },
    )
    started = reactor.seconds()
    result, sink = await run_to_end(provider, request(cli))
    elapsed = reactor.seconds() - started
    assert isinstance(result, ProviderResult), result
    assert sink.text == text
    assert elapsed < 6.0  # well under the 8 s the pipe timer would take
    grandchild = int(pid_file.read_text())
    assert await wait_for_no_processes(marker) == []
    assert not alive(grandchild)


@ALL_CLIS
@real_reactor_test
async def test_cancel_mid_run(cli, make_provider, marker, tmp_path):
    """
    Cancelling the result (a client that went away) stops the CLI and
    everything it started; C{finished} fires once it is reaped, and the
    scratch directory is removed.
    """
    record = tmp_path / "record.jsonl"
    provider = make_provider(cli, env={"FAKE_MODE": "hang", "FAKE_RECORD": str(record)})
    run = provider.start(request(cli), None, Events())
    assert await eventually(lambda: record.exists() and record.stat().st_size)
    [rec] = read_records(record)
    assert alive(rec["pid"])
    run.result.cancel()
    with pytest.raises(CancelledError):
        await run.result
    await run.finished
    assert await wait_for_no_processes(marker) == []
    assert not os.path.exists(os.path.dirname(rec["cwd"]))


# -- awkward output


MULTIBYTE = "Grüße, 世界! 🎉 — ça va? Ωμέγα"


@ALL_CLIS
@real_reactor_test
async def test_byte_by_byte_multibyte(cli, make_provider, marker):
    """
    Output written one byte at a time, multibyte characters included, still
    yields exactly the answer.
    """
    provider = make_provider(cli, env={"FAKE_MODE": "byte_by_byte", "FAKE_TEXT": MULTIBYTE})
    result, sink = await run_to_end(provider, request(cli))
    assert isinstance(result, ProviderResult), result
    assert sink.text == MULTIBYTE
    assert "\ufffd" not in sink.text
    assert await wait_for_no_processes(marker) == []


@ALL_CLIS
@real_reactor_test
async def test_huge_line_is_skipped(cli, make_provider, marker):
    """
    A stdout line larger than the line limit (10 MB of status) is skipped
    and the answer after it is still right.
    """
    text = "still the right answer"
    provider = make_provider(cli, env={"FAKE_MODE": "huge_line", "FAKE_TEXT": text})
    result, sink = await run_to_end(provider, request(cli))
    assert isinstance(result, ProviderResult), result
    assert sink.text == text
    assert await wait_for_no_processes(marker) == []


@ALL_CLIS
@real_reactor_test
async def test_invalid_utf8_is_replaced(cli, make_provider, marker):
    """
    Bytes that are not UTF-8 inside the answer become U+FFFD; the run still
    succeeds with the rest of the text intact.
    """
    text = "abcdefghi"
    provider = make_provider(cli, env={"FAKE_MODE": "invalid_utf8", "FAKE_TEXT": text, "FAKE_CHUNKS": "3"})
    result, sink = await run_to_end(provider, request(cli))
    assert isinstance(result, ProviderResult), result
    if cli in TOKEN_CLIS:
        assert sink.text == "abc\ufffd\ufffddefghi"
    else:
        assert sink.text == "abcdefghi\ufffd\ufffd"
    assert await wait_for_no_processes(marker) == []


@ALL_CLIS
@real_reactor_test
async def test_garbage_lines_are_ignored(cli, make_provider, marker):
    """
    Non-JSON noise, ANSI escapes and a truncated JSON line on stdout are
    skipped; the answer is unaffected.
    """
    text = "clean answer"
    provider = make_provider(
        cli, env={"FAKE_MODE": "garbage", "FAKE_TEXT": text, "FAKE_INPUT_TOKENS": "7", "FAKE_OUTPUT_TOKENS": "2"}
    )
    result, sink = await run_to_end(provider, request(cli))
    assert isinstance(result, ProviderResult), result
    assert sink.text == text
    assert result.usage == Usage(7, 2)
    assert await wait_for_no_processes(marker) == []


@ALL_CLIS
@real_reactor_test
async def test_missing_executable(cli, make_provider, marker, tmp_path):
    """
    A CLI that is not installed makes start() raise ProviderUnavailable
    (so another provider may answer) without starting anything.
    """
    provider = make_provider(cli, executable=str(tmp_path / "no-such-cli"))
    with pytest.raises(ProviderUnavailable) as caught:
        provider.start(request(cli), None, Events())
    assert caught.value.status == 503
    assert await wait_for_no_processes(marker) == []


# -- health


KEYS = {"claude": "ANTHROPIC_API_KEY", "gemini": "GEMINI_API_KEY", "codex": "OPENAI_API_KEY"}
VERSIONS = {"claude": "2.1.332 (Claude Code)", "gemini": "0.61.0", "codex": "codex-cli 0.169.0"}


@pytest.fixture
def empty_home(tmp_path, python_path_env):
    home = tmp_path / "home"
    home.mkdir()
    return dict(python_path_env, HOME=str(home))


@ALL_CLIS
@real_reactor_test
async def test_health_with_key(cli, make_provider, marker, empty_home):
    """
    With an API key configured the CLI is installed and authenticated, and
    its version is reported.
    """
    provider = make_provider(cli, base_env=empty_home, env={KEYS[cli]: "key-for-health"})
    health = await provider.check_health()
    assert health.installed is True
    assert health.authenticated is True
    assert health.usable
    assert health.version == VERSIONS[cli]
    assert await wait_for_no_processes(marker) == []


@ALL_CLIS
@real_reactor_test
async def test_health_without_credentials(cli, make_provider, marker, empty_home):
    """
    With no key and no login files in HOME, the CLI is installed but not
    authenticated, and the explanation says how to log in.
    """
    provider = make_provider(cli, base_env=empty_home)
    health = await provider.check_health()
    assert health.installed is True
    assert health.authenticated is False
    assert not health.usable
    assert health.error and "log" in health.error.lower()
    assert await wait_for_no_processes(marker) == []


@ALL_CLIS
@real_reactor_test
async def test_health_not_installed(cli, make_provider, marker, tmp_path):
    """
    A missing executable is reported as not installed (and so not usable).
    """
    provider = make_provider(cli, executable=str(tmp_path / "missing"), env={KEYS[cli]: "key-for-health"})
    health = await provider.check_health()
    assert health.installed is False
    assert not health.usable
    assert health.error
    assert await wait_for_no_processes(marker) == []


@real_reactor_test
async def test_health_runs_version_again_only_when_the_cli_changes(make_provider, marker, tmp_path, python_path_env):
    """
    Repeated health checks re-read the credentials every time but run
    C{--version} only when the executable was replaced or updated.
    """
    script = tmp_path / "claude"
    counter = tmp_path / "runs"
    body = f"#!/usr/bin/env python3\nimport sys\nopen({str(counter)!r}, 'a').write('x')\nprint('{{version}}')\n"
    script.write_text(body.format(version="1.0"))
    script.chmod(0o755)
    provider = make_provider("claude", executable=str(script), env={"ANTHROPIC_API_KEY": "k"})
    first = await provider.check_health()
    second = await provider.check_health()
    assert first.version == second.version == "1.0"
    assert counter.read_text() == "x"
    script.write_text(body.format(version="2.0 (updated)"))
    third = await provider.check_health()
    assert third.version == "2.0 (updated)"
    assert counter.read_text() == "xx"
    assert await wait_for_no_processes(marker) == []


# -- cerebras, over HTTP


@pytest_twisted.async_yield_fixture
async def cerebras():
    """
    A fake OpenAI-compatible server and a factory for providers talking to
    it through their own connection pool.  Tests call C{close()} before the
    reactor-clean check; teardown closes again in case a test failed first.
    """
    from twisted.internet import reactor

    fake, _port = start_fake_openai(reactor)
    pools = []

    def make(api_key="csk-test-key", timeout=10.0):
        http, pool = upstream_client(reactor)
        pools.append(pool)
        return CerebrasProvider(reactor, http, api_key, fake.base_url, timeout)

    async def close():
        while pools:
            await pools.pop().closeCachedConnections()
        if fake.port is not None:
            port, fake.port = fake.port, None
            fake.abort_all()
            await port.stopListening()

    fake.make = make
    fake.close = close
    yield fake
    await close()


async def upstream_connection_closed(fake, within: float = 2.0) -> bool:
    """
    Whether the server saw every streaming request's connection go away
    (before the test shuts the server down, which would close them anyway).
    """
    return await eventually(lambda: not fake._open, within)


async def cerebras_run(provider, req, upstream="gpt-oss-120b"):
    sink = Events()
    run = provider.start(req, upstream, sink)
    try:
        result = await run.result
    except ShellmError as e:
        result = e
    await run.finished
    return result, sink


@real_reactor_test
async def test_cerebras_success(cerebras):
    """
    Cerebras streams the answer as deltas with exact usage; the system
    prompt, the prompt, the model and the key reach the upstream.
    """
    text = "Fast answer — with ünïcode."
    cerebras.text, cerebras.chunks = text, 4
    cerebras.input_tokens, cerebras.output_tokens = 21, 8
    provider = cerebras.make()
    req = CompletionRequest(
        model="cerebras",
        entry=ModelEntry("cerebras", "cerebras", "gpt-oss-120b"),
        prompt="what is 2+2?",
        system="be brief",
        request_id="t",
    )
    result, sink = await cerebras_run(provider, req)
    await cerebras.close()
    assert isinstance(result, ProviderResult), result
    assert sink.deltas == split_text(text, 4)
    assert result.usage == Usage(21, 8)
    [sent] = cerebras.requests
    assert sent["body"]["model"] == "gpt-oss-120b"
    assert sent["body"]["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "what is 2+2?"},
    ]
    assert sent["body"]["stream"] is True
    assert sent["headers"]["authorization"] == "Bearer csk-test-key"
    assert sent["headers"]["content-type"] == "application/json"


@real_reactor_test
async def test_cerebras_keeps_no_upstream_cookies(cerebras):
    """
    A cookie the upstream sets is not sent back: one client's upstream
    session must not follow another client's requests.
    """
    provider = cerebras.make()
    for _ in range(2):
        result, _ = await cerebras_run(provider, request("cerebras"))
        assert isinstance(result, ProviderResult), result
    await cerebras.close()
    assert [r["headers"].get("cookie") for r in cerebras.requests] == [None, None]


@pytest.mark.parametrize(
    "status, error, client_status, upstream_said",
    [
        (401, ProviderUnavailable, 503, "Incorrect API key provided"),
        (429, RateLimited, 429, "Rate limit reached for requests"),
        (500, ProviderFailed, 502, "The server had an error"),
    ],
)
@real_reactor_test
async def test_cerebras_upstream_errors(cerebras, status, error, client_status, upstream_said, logged):
    """
    Upstream errors map to what the client should see: a refused key is 503,
    a rate limit 429 with a retry_after, a server error 502; the upstream's
    body (which echoes the key) never reaches the message, and is logged
    redacted, even though it does not end in a newline.
    """
    cerebras.fail_status = status
    provider = cerebras.make()
    result, sink = await cerebras_run(provider, request("cerebras"))
    await cerebras.close()
    assert isinstance(result, error), result
    assert result.status == client_status
    if status == 429:
        assert isinstance(result.retry_after, int) and result.retry_after > 0
    assert SECRET not in result.message
    assert SECRET not in json.dumps(result.to_json())
    assert SECRET not in logged()
    assert upstream_said in logged()
    assert sink.events == []


@real_reactor_test
async def test_cerebras_does_not_follow_redirects(cerebras):
    """
    A redirect is an upstream error (502), not followed: following it would
    send the API key to whatever URL the redirect names.
    """
    cerebras.redirect_to = cerebras.base_url + "/elsewhere"
    provider = cerebras.make()
    result, _ = await cerebras_run(provider, request("cerebras"))
    await cerebras.close()
    assert isinstance(result, ProviderFailed), result
    assert result.status == 502
    assert [r["path"] for r in cerebras.requests] == ["/v1/chat/completions"]


@pytest.mark.filterwarnings("ignore:Passing pyOpenSSL:DeprecationWarning")
@real_reactor_test
async def test_cerebras_refuses_an_untrusted_certificate():
    """
    Over HTTPS the upstream's certificate is verified: a self-signed one
    means the provider cannot be reached (503), and no request is sent.
    """
    import twisted.test
    from twisted.internet import reactor, ssl

    fake = FakeOpenAI(reactor)
    with open(os.path.join(os.path.dirname(twisted.test.__file__), "server.pem"), "rb") as f:
        certificate = ssl.PrivateCertificate.loadPEM(f.read())
    port = reactor.listenSSL(0, fake.site(), certificate.options(), interface="127.0.0.1")
    http, pool = upstream_client(reactor)
    provider = CerebrasProvider(reactor, http, "csk-test-key", f"https://127.0.0.1:{port.getHost().port}/v1", 10.0)
    try:
        result, _ = await cerebras_run(provider, request("cerebras"))
    finally:
        await pool.closeCachedConnections()
        await port.stopListening()
    assert isinstance(result, ProviderUnavailable), result
    assert result.status == 503
    assert fake.requests == []


def test_upstream_endpoints_are_built_once_per_host():
    """
    The endpoint for a scheme, host and port is built once and reused;
    HTTPS endpoints wrap TLS; any other scheme is refused.
    """
    from twisted.internet import reactor
    from twisted.web.client import URI
    from twisted.web.error import SchemeNotSupported

    endpoints = ReusedEndpoints(reactor)
    first = endpoints.endpointForURI(URI.fromBytes(b"https://api.example.com/v1/chat/completions"))
    again = endpoints.endpointForURI(URI.fromBytes(b"https://api.example.com/v1/models"))
    other = endpoints.endpointForURI(URI.fromBytes(b"https://api.example.com:8443/v1/models"))
    plain = endpoints.endpointForURI(URI.fromBytes(b"http://api.example.com/v1/models"))
    assert first is again
    assert other is not first and plain is not first
    assert type(first) is not type(plain)  # TLS-wrapped
    with pytest.raises(SchemeNotSupported):
        endpoints.endpointForURI(URI.fromBytes(b"ftp://api.example.com/x"))


@real_reactor_test
async def test_cerebras_cut_stream(cerebras):
    """
    A stream cut off before its end is a failure (502), not a short answer.
    """
    cerebras.cut_after = 2
    provider = cerebras.make()
    result, _ = await cerebras_run(provider, request("cerebras"))
    await cerebras.close()
    assert isinstance(result, ProviderFailed), result
    assert result.status == 502


@real_reactor_test
async def test_cerebras_stall_times_out(cerebras):
    """
    An upstream that stops sending mid-stream is abandoned at the timeout:
    Timeout (504), and the connection is closed.
    """
    from twisted.internet import reactor

    cerebras.stall = True
    provider = cerebras.make(timeout=0.5)
    started = reactor.seconds()
    result, _ = await cerebras_run(provider, request("cerebras"))
    elapsed = reactor.seconds() - started
    closed = await upstream_connection_closed(cerebras)
    await cerebras.close()
    assert isinstance(result, Timeout), result
    assert closed
    assert result.status == 504
    assert 0.4 <= elapsed < 5.0


@real_reactor_test
async def test_cerebras_silent_upstream_times_out(cerebras):
    """
    An upstream that never sends its headers is a timeout (504) too, not
    "could not be reached": the request was cancelled by SheLLM's timer.
    """
    cerebras.delay = 30.0
    provider = cerebras.make(timeout=0.3)
    result, _ = await cerebras_run(provider, request("cerebras"))
    await cerebras.close()
    assert isinstance(result, Timeout), result
    assert result.status == 504


@real_reactor_test
async def test_cerebras_cancel_mid_stream(cerebras):
    """
    Cancelling a cerebras call mid-stream (a client that went away) fails
    it with CancelledError, fires C{finished}, and closes the connection.
    """
    cerebras.stall = True
    cerebras.text, cerebras.chunks = "one two", 2
    provider = cerebras.make(timeout=15.0)
    first = Deferred()
    sink = Events(on_first=lambda: first.callback(None))
    run = provider.start(request("cerebras"), "gpt-oss-120b", sink)
    await first
    run.result.cancel()
    with pytest.raises(CancelledError):
        await run.result
    await run.finished
    assert await upstream_connection_closed(cerebras)
    await cerebras.close()
    assert sink.deltas == ["one"]


@real_reactor_test
async def test_cerebras_without_key(cerebras):
    """
    Without an API key, start() raises ProviderUnavailable and nothing is
    sent upstream.
    """
    provider = cerebras.make(api_key=None)
    with pytest.raises(ProviderUnavailable):
        provider.start(request("cerebras"), "gpt-oss-120b", Events())
    await cerebras.close()
    assert cerebras.requests == []


@real_reactor_test
async def test_cerebras_health(cerebras):
    """
    With a key that the API accepts, cerebras is healthy; without a key it
    is not authenticated (and the check sends nothing).
    """
    healthy = await cerebras.make().check_health()
    unconfigured = await cerebras.make(api_key=None).check_health()
    await cerebras.close()
    assert healthy.usable
    assert unconfigured.authenticated is False
    assert not unconfigured.usable
    assert [r["path"] for r in cerebras.requests] == ["/v1/models"]
