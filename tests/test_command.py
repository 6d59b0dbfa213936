"""
The C{shellm} command as a user runs it: a subprocess, against a real
daemon (C{twistd shellm}, started by the command) with the fake CLIs.

Every subprocess call has a timeout, and the C{marker} fixture fails a test
that leaves any process it started running.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from shellm import __version__
from shellm.admin.common import PROBE_TIMEOUT, Listener, Paths
from shellm.admin.lifecycle import last_exception
from shellm.admin.logs import render_log_line
from tests.conftest import fake_cli, processes_with_marker
from tests.daemon import free_port, wait_until

pytestmark = pytest.mark.slow  # real processes and daemons (the second stage of .ci/run)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMANDS = ("start", "stop", "restart", "status", "logs", "check", "version", "env-example", "db", "keys")


class Shellm:
    """
    Runs C{python -m shellm.admin} in a private environment: its own
    SHELLM_HOME, HOME, port and (empty) settings file, the fake claude.
    """

    def __init__(self, tmp_path, marker: str, **env):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.cwd = str(tmp_path)
        self.home = tmp_path / "home"
        self.home.mkdir(exist_ok=True)
        self.env_file = tmp_path / "settings.env"
        self.env_file.write_text("")
        self.paths = Paths(
            str(tmp_path / "shellm-home"),
            str(tmp_path / "shellm-home" / "shellm.pid"),
            str(tmp_path / "shellm-home" / "logs" / "shellm.log"),
        )
        self.env = {
            "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
            "HOME": str(self.home),
            "SHELLM_HOME": self.paths.home,
            "SHELLM_TEST_MARKER": marker,
            "PYTHONPATH": os.pathsep.join(sys.path),
            "SHELLM_LISTEN": f"tcp:{self.port}:interface=127.0.0.1",
            "SHELLM_CLAUDE_BIN": fake_cli("claude"),
            "SHELLM_CLAUDE_ENV": json.dumps({"ANTHROPIC_API_KEY": "fake", "SHELLM_TEST_MARKER": marker}),
            "SHELLM_GEMINI_BIN": "/nonexistent/gemini",
            "SHELLM_CODEX_BIN": "/nonexistent/codex",
            "SHELLM_DRAIN_TIMEOUT": "3",
            "SHELLM_KILL_GRACE": "1",
            "SHELLM_DB": str(tmp_path / "shellm.db"),
            **env,
        }

    def argv(self, *args) -> list[str]:
        return [sys.executable, "-m", "shellm.admin", args[0], "--env-file", str(self.env_file), *args[1:]]

    def __call__(self, *args, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(
            self.argv(*args),
            env=self.env,
            cwd=self.cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def pid(self):
        try:
            with open(self.paths.pid_file) as f:
                return int(f.read())
        except FileNotFoundError:
            return None

    def get(self, path: str) -> int:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(self.url + path, timeout=20) as response:
                response.read()
                return response.status
        except urllib.error.HTTPError as e:
            return e.code

    def answers(self) -> bool:
        try:
            return self.get("/health") == 200
        except OSError:
            return False


def no_processes(marker: str) -> bool:
    return not processes_with_marker(marker)


@pytest.fixture
def shellm(tmp_path, marker):
    """
    The command in a private environment; a daemon it started is stopped
    at the end even when the test failed half-way.
    """
    command = Shellm(tmp_path, marker)
    yield command
    pid = command.pid()
    if pid and processes_with_marker(marker):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    wait_until(lambda: no_processes(marker), 10, "the daemon to go")


def provider_row(status_text: str, name: str) -> list[str]:
    for line in status_text.splitlines():
        cells = line.split()
        if cells and cells[0] == name:
            return cells
    raise AssertionError(f"no {name} row in:\n{status_text}")


# -- start, status, stop


def test_start_status_stop(shellm, marker):
    """
    C{start -d} detaches a daemon with a PID file and a JSON log file;
    C{status} reports it, with its providers read from /health; C{stop}
    ends it with exit 0, removes the PID file and leaves no process.
    """
    started = shellm("start", "-d")
    assert started.returncode == 0, started.stderr
    pid = shellm.pid()
    assert pid and f"pid {pid}" in started.stdout and shellm.url in started.stdout
    assert shellm.answers()

    status = shellm("status")
    assert status.returncode == 0, status.stderr
    assert f"running (pid {pid}" in status.stdout
    assert "uptime:" in status.stdout and "queue:" in status.stdout
    assert provider_row(status.stdout, "claude")[1:4] == ["yes", "yes", "closed"]
    assert provider_row(status.stdout, "gemini")[1:3] == ["no", "no"]
    assert provider_row(status.stdout, "cerebras")[1:3] == ["yes", "no"]

    report = json.loads(shellm("status", "--json").stdout)
    assert report["running"] is True and report["managed"] == "pid-file" and report["pid"] == pid
    assert report["health"]["providers"]["claude"]["authenticated"] is True
    assert report["health"]["queue"]["max_concurrent"] == 2

    with open(shellm.paths.log_file) as f:
        records = [json.loads(line) for line in f]
    assert records and all({"time", "level", "message"} <= set(r) for r in records)

    stopped = shellm("stop")
    assert stopped.returncode == 0, stopped.stderr
    assert not os.path.exists(shellm.paths.pid_file)
    wait_until(lambda: no_processes(marker), 5, "no process left")
    assert not shellm.answers()

    after = shellm("status")
    assert after.returncode == 3 and "not running" in after.stdout
    assert json.loads(shellm("status", "--json").stdout)["running"] is False


def test_status_sends_a_client_key_when_auth_is_on(shellm, marker):
    """
    With auth on, /health without a key is only the short form; C{status}
    sends a configured client's key and still shows every detail.
    """
    shellm.env_file.write_text("SHELLM_CLIENTS='{\"ops\": {\"key\": \"sk-ops-0123456789abcdef\"}}'\n")
    assert shellm("start", "-d").returncode == 0
    try:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(shellm.url + "/health", timeout=20) as response:
            assert "version" not in json.loads(response.read())
        report = json.loads(shellm("status", "--json").stdout)
        assert report["health"]["providers"]["claude"]["authenticated"] is True
        assert report["health"]["version"]
        status = shellm("status")
        assert provider_row(status.stdout, "claude")[1:4] == ["yes", "yes", "closed"]
    finally:
        assert shellm("stop").returncode == 0


@pytest.mark.parametrize("owner", ["dead", "unrelated"])
def test_stale_pid_file(shellm, owner):
    """
    A PID file naming a process that is gone, or that is now some other
    program (the pid was reused), means "not running", and C{start} works.
    """
    if owner == "dead":
        gone = subprocess.Popen([sys.executable, "-c", "pass"])
        gone.wait(timeout=30)
        pid = gone.pid
    else:
        pid = os.getpid()  # this pytest process: alive, but no twistd
    os.makedirs(shellm.paths.home, exist_ok=True)
    with open(shellm.paths.pid_file, "w") as f:
        f.write(str(pid))

    status = shellm("status")
    assert status.returncode == 3
    assert "not running" in status.stdout and f"stale PID file: pid {pid}" in status.stdout

    started = shellm("start", "-d")
    assert started.returncode == 0, started.stderr
    assert shellm.pid() not in (None, pid)
    assert shellm("status").returncode == 0
    assert shellm("stop").returncode == 0


@pytest.mark.parametrize("listening", [True, False], ids=["listening", "bound"])
def test_port_in_use(shellm, marker, listening):
    """
    When another program holds the port (listening without ever answering,
    or only bound), C{start} fails at once with a message that says so and
    a non-zero exit, and leaves no PID file or process.  "At once": at most
    PROBE_TIMEOUT (plus a margin for a busy machine) longer than the same
    command stopped by a bad setting just before the port is looked at; it
    used to wait 5 s for an answer and then for twistd to fail.
    """

    def timed(*args, **env):
        began = time.monotonic()
        result = subprocess.run(
            shellm.argv(*args),
            env={**shellm.env, **env},
            cwd=shellm.cwd,
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
        return result, time.monotonic() - began

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", shellm.port))
        if listening:
            taken.listen()
        for args in (("start", "-d"), ("start",)):
            refused, baseline = timed(*args, SHELLM_MAX_CONCURRENT="lots")
            assert refused.returncode == 1 and "SHELLM_MAX_CONCURRENT" in refused.stderr
            result, took = timed(*args)
            assert result.returncode == 1, (args, result.stdout, result.stderr)
            assert f"port {shellm.port} is already in use by another program" in result.stderr
            assert took - baseline < PROBE_TIMEOUT + 1.5, f"{args}: {took:.1f}s, {baseline:.1f}s without the port check"
            assert "Traceback" not in result.stderr
            assert shellm.pid() is None
    wait_until(lambda: no_processes(marker), 10, "no process left")
    if listening:
        status = shellm("status")
        assert status.returncode == 3
        assert "not running" in status.stdout


@pytest.mark.parametrize("daemon", [True, False], ids=["daemon", "foreground"])
def test_start_reports_bad_settings(shellm, daemon):
    """
    A setting the daemon would refuse stops C{start} with one line naming
    it (not twistd's usage text), before anything runs.
    """
    shellm.env["SHELLM_MAX_CONCURRENT"] = "lots"
    result = shellm(*(("start", "-d") if daemon else ("start",)))
    assert result.returncode == 1
    assert result.stderr.startswith("shellm start: the settings are not valid: SHELLM_MAX_CONCURRENT")
    assert len(result.stderr.splitlines()) == 1 and shellm.pid() is None


def test_last_exception_finds_the_cause_in_the_log(tmp_path):
    """
    After a failed background start, the cause is the traceback's last
    line in the log, not twistd's report cut to 100 bytes.
    """
    log = tmp_path / "shellm.log"
    old = json.dumps({"level": "error", "message": "ValueError: from an earlier run"}) + "\n"
    lines = [
        {"level": "info", "message": "twistd starting up."},
        {"level": "error", "message": "Traceback (most recent call last):"},
        {"level": "error", "message": "OSError: [Errno 13] Permission denied"},
        {"level": "error", "message": "  File \"x.py\", line 1, in f"},
        {"level": "error", "message": "twisted.internet.error.CannotListenError: Couldn't listen"},
    ]
    log.write_text(old + "".join(json.dumps(l) + "\n" for l in lines))
    found = last_exception(str(log), len(old), wait=0)
    assert found == "twisted.internet.error.CannotListenError: Couldn't listen"
    log.write_text(old)
    assert last_exception(str(log), len(old), wait=0) is None


def test_start_refuses_a_second_daemon(shellm):
    """
    C{start} while the daemon runs says so and exits 1; the first daemon
    is unaffected.
    """
    assert shellm("start", "-d").returncode == 0
    pid = shellm.pid()
    again = shellm("start", "-d")
    assert again.returncode == 1 and f"already running (pid {pid})" in again.stderr
    assert shellm.pid() == pid and shellm.answers()
    assert shellm("stop").returncode == 0


def test_stop_when_not_running(shellm):
    """
    C{stop} with nothing running exits 3, the code C{stop --help} documents.
    """
    result = shellm("stop")
    assert result.returncode == 3
    assert "not running" in result.stderr
    assert "3  not running" in shellm("stop", "--help").stdout


def test_stop_kills_a_daemon_that_does_not_stop(shellm, marker):
    """
    A daemon that does not exit within --timeout of SIGTERM is killed, and
    C{stop} says so with exit 4; the PID file is removed.
    """
    assert shellm("start", "-d").returncode == 0
    pid = shellm.pid()
    os.kill(pid, signal.SIGSTOP)  # a hung daemon: SIGTERM stays pending
    try:
        result = shellm("stop", "--timeout", "0.5")
    finally:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
    assert result.returncode == 4, result.stderr
    assert "killing it" in result.stderr
    assert not os.path.exists(shellm.paths.pid_file)
    wait_until(lambda: no_processes(marker), 5, "no process left")


def test_restart(shellm):
    """
    C{restart} starts a daemon when none runs, and replaces a running one.
    """
    first = shellm("restart")
    assert first.returncode == 0, first.stderr
    old = shellm.pid()
    second = shellm("restart")
    assert second.returncode == 0, second.stderr
    new = shellm.pid()
    assert new and new != old and shellm.answers()
    assert shellm("stop").returncode == 0


def test_port_option(shellm):
    """
    C{-p} moves the daemon to another port, and C{status -p} finds it there.
    """
    port = free_port()
    assert shellm("start", "-d", "-p", str(port)).returncode == 0
    status = shellm("status", "--json", "-p", str(port))
    assert json.loads(status.stdout)["url"] == f"http://127.0.0.1:{port}"
    assert json.loads(status.stdout)["health"] is not None
    assert shellm("stop").returncode == 0


def test_foreground_daemon_is_managed_elsewhere(shellm, marker):
    """
    C{start} without -d becomes C{twistd --nodaemon --pidfile= shellm}: it
    writes no PID file, so C{status} sees it through its port only
    ("managed elsewhere", as under systemd) and C{stop} leaves it alone
    (exit 5).  SIGTERM stops it.
    """
    foreground = subprocess.Popen(
        shellm.argv("start"),
        env=shellm.env,
        cwd=shellm.cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    try:
        wait_until(shellm.answers, 30, "the foreground daemon")
        assert shellm.pid() is None
        status = shellm("status")
        assert status.returncode == 0 and "managed elsewhere" in status.stdout
        assert json.loads(shellm("status", "--json").stdout)["managed"] == "elsewhere"
        stop = shellm("stop")
        assert stop.returncode == 5 and "managed elsewhere" in stop.stderr
        again = shellm("start", "-d")
        assert again.returncode == 1 and "already running on port" in again.stderr
        assert "managed elsewhere" in again.stderr
        assert shellm.answers()
    finally:
        foreground.send_signal(signal.SIGTERM)
        out, err = foreground.communicate(timeout=30)
    assert b"starting on " + shellm.url.encode() in err
    assert json.loads(out.splitlines()[0])["level"]  # JSON lines on stdout
    wait_until(lambda: no_processes(marker), 5, "no process left")


# -- logs


def read_line(stream, timeout: float = 15.0) -> str:
    ready, _, _ = select.select([stream], [], [], timeout)
    if not ready:
        raise AssertionError("no line in time")
    return stream.readline().decode()


def test_logs(shellm):
    """
    C{logs -n} prints the last lines of the daemon-mode log, readable or as
    the raw JSON; without a log file it points to the journal.
    """
    missing = shellm("logs")
    assert missing.returncode == 1 and "journalctl -u shellm" in missing.stderr
    assert shellm("start", "-d").returncode == 0
    try:
        assert shellm.get("/providers") == 200
        wait_until(lambda: "GET /providers" in open(shellm.paths.log_file).read(), 5, "the line")
        text = shellm("logs", "-n", "1")
        assert text.returncode == 0
        assert text.stdout.splitlines() == [l for l in text.stdout.splitlines() if "GET /providers" in l]
        raw = shellm("logs", "-n", "3", "--json")
        lines = raw.stdout.splitlines()
        assert len(lines) == 3 and json.loads(lines[-1])["path"] == "/providers"
    finally:
        assert shellm("stop").returncode == 0


def test_log_file_reopened_after_logrotate(shellm, tmp_path):
    """
    The daemon appends to its log and reopens it on SIGUSR1, so the
    project's logrotate file (rename, then signal; no copytruncate) starts
    a fresh file with nothing lost; C{logs -f} follows across the rename.
    """
    if shutil.which("logrotate") is None:
        pytest.skip("logrotate is not installed")
    assert shellm("start", "-d").returncode == 0
    follower = subprocess.Popen(
        shellm.argv("logs", "-f", "-n", "1"),
        env=shellm.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        bufsize=0,
    )
    try:
        read_line(follower.stdout)  # the last line so far: it has the file open
        assert shellm.get("/providers") == 200
        assert "GET /providers" in read_line(follower.stdout)

        config = tmp_path / "logrotate.conf"
        text = open(os.path.join(ROOT, "etc", "logrotate.conf")).read()
        user, group = current_user_and_group()
        text = text.replace("/home/shellm/.shellm", shellm.paths.home).replace("su shellm shellm", f"su {user} {group}")
        assert shellm.paths.home in text
        config.write_text(text)
        rotated = subprocess.run(
            ["logrotate", "-f", "-s", str(tmp_path / "state"), str(config)], capture_output=True, text=True, timeout=60
        )
        assert rotated.returncode == 0, rotated.stderr
        old = shellm.paths.log_file + ".1"
        assert os.path.exists(old)

        assert shellm.get("/nothing-here") == 404
        assert "GET /nothing-here" in read_line(follower.stdout)
        wait_until(lambda: os.path.exists(shellm.paths.log_file), 5, "a new log file")
        fresh = open(shellm.paths.log_file).read()
        assert "GET /nothing-here" in fresh and "GET /providers" not in fresh
        assert "GET /providers" in open(old).read()
        assert oct(os.stat(shellm.paths.log_file).st_mode & 0o777) == "0o600"
    finally:
        follower.terminate()
        follower.communicate(timeout=15)
        assert shellm("stop").returncode == 0


def test_log_file_honours_log_level(shellm):
    """
    LOG_LEVEL applies to the daemon-mode log file too: at debug, /health
    gets its access line.
    """
    shellm.env["LOG_LEVEL"] = "debug"
    assert shellm("start", "-d").returncode == 0
    try:
        assert shellm.get("/health") == 200

        def access_line_logged() -> bool:
            with open(shellm.paths.log_file) as f:
                return '"path": "/health"' in f.read()

        wait_until(access_line_logged, 10, "the /health access line")
    finally:
        assert shellm("stop").returncode == 0


def current_user_and_group() -> tuple[str, str]:
    import grp
    import pwd

    return pwd.getpwuid(os.getuid()).pw_name, grp.getgrgid(os.getgid()).gr_name


@pytest.mark.parametrize(
    "listen, url, moved",
    [
        ("tcp:6100:interface=127.0.0.1", "http://127.0.0.1:6100", "tcp:7000:interface=127.0.0.1"),
        ("tcp:6100:interface=0.0.0.0", "http://127.0.0.1:6100", "tcp:7000:interface=0.0.0.0"),
        ("tcp:6100", "http://127.0.0.1:6100", "tcp:7000"),
        ("tcp6:6100:interface=\\:\\:1", "http://[::1]:6100", "tcp6:7000:interface=\\:\\:1"),
    ],
)
def test_listener(listen, url, moved):
    """
    The command reaches a wildcard listener on loopback, and C{--port}
    keeps the configured interface.
    """
    listener = Listener.parse(listen)
    assert listener.url == url
    assert listener.on_port(7000).listen == moved


def test_render_log_line():
    """
    A JSON log line reads as time, level and message; anything else is
    printed as it is.
    """
    line = json.dumps({"time": "2026-01-01T00:00:00.000+00:00", "level": "warn", "message": "hi", "namespace": "x"})
    assert render_log_line(line, raw=False) == "2026-01-01T00:00:00.000+00:00 warn  hi"
    assert render_log_line(line, raw=True) == line
    assert render_log_line("not json", raw=False) == "not json"


# -- check


def write_script(path, text: str) -> str:
    path.write_text(text)
    path.chmod(0o755)
    return str(path)


@pytest.fixture
def fake_cerebras(marker):
    """
    The fake OpenAI-compatible server on a free port, as Cerebras.
    """
    server = subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "tests", "fakes", "fake_openai_server.py"), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        bufsize=0,
        env={**os.environ, "SHELLM_TEST_MARKER": marker, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    try:
        first = read_line(server.stdout, 30).split()
        assert first[0] == "PORT", first
        yield f"http://127.0.0.1:{first[1]}/v1"
    finally:
        server.kill()
        server.wait(timeout=15)


def test_check_all_logged_in(shellm, marker, fake_cerebras):
    """
    With every CLI found and logged in (by an API key in its SHELLM_*_ENV or
    by its login file in HOME) and a Cerebras key the API accepts, C{check}
    says every provider is ready, with each executable and version, and
    exits 0.
    """
    codex_home = shellm.home / ".codex"
    codex_home.mkdir()
    (codex_home / "auth.json").write_text("{}")
    shellm.env.update(
        SHELLM_GEMINI_BIN=fake_cli("gemini"),
        SHELLM_GEMINI_ENV=json.dumps({"GEMINI_API_KEY": "fake", "SHELLM_TEST_MARKER": marker}),
        SHELLM_CODEX_BIN=fake_cli("codex"),
        CEREBRAS_API_KEY="csk-fake",
        SHELLM_CEREBRAS_BASE_URL=fake_cerebras,
    )
    result = shellm("check", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] is True
    assert report["usable"] == ["claude", "gemini", "codex", "cerebras"]
    assert report["home"] == str(shellm.home)
    claude = report["providers"]["claude"]
    assert claude["executable"] == fake_cli("claude")
    assert claude["version"] == "2.1.332 (Claude Code)"
    assert claude["logged_in"] is True and claude["fix"] is None
    assert report["providers"]["codex"]["version"] == "codex-cli 0.169.0"
    assert report["providers"]["cerebras"]["key_set"] is True

    text = shellm("check")
    assert text.returncode == 0
    assert "4 of 4 providers can serve requests" in text.stdout
    assert provider_row(text.stdout, "gemini")[1:4] == ["ready", "yes", "0.61.0"]


def test_check_nothing_can_serve(shellm, tmp_path):
    """
    With an empty HOME and no keys: the installed CLIs are "not logged in"
    with the login to do as the fix, a missing CLI is "not installed" with
    its npm package, a CLI whose --version fails is "broken", Cerebras has
    "no key"; nothing can serve, so the exit is 1.
    """
    broken = write_script(tmp_path / "codex", "#!/bin/sh\necho 'segfault' >&2\nexit 3\n")
    shellm.env.update(
        SHELLM_CLAUDE_ENV="{}",
        SHELLM_GEMINI_BIN=fake_cli("gemini"),
        SHELLM_CODEX_BIN=broken,
    )
    shellm.env.pop("CEREBRAS_API_KEY", None)
    result = shellm("check", "--json")
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] is False and report["usable"] == []
    providers = report["providers"]
    assert providers["claude"]["state"] == "not logged in"
    assert providers["claude"]["installed"] is True and providers["claude"]["logged_in"] is False
    assert "run `claude` once as the service user and log in" in providers["claude"]["fix"]
    assert providers["gemini"]["state"] == "not logged in"
    assert "GEMINI_API_KEY" in providers["gemini"]["fix"]
    assert providers["codex"]["state"] == "broken"
    assert f"`{broken} --version` failed" in providers["codex"]["fix"]
    assert providers["cerebras"]["state"] == "no key"
    assert providers["cerebras"]["key_set"] is False
    assert "set CEREBRAS_API_KEY" in providers["cerebras"]["fix"]

    shellm.env["SHELLM_GEMINI_BIN"] = "/nonexistent/gemini"
    text = shellm("check")
    assert text.returncode == 1
    assert "No provider can serve requests." in text.stdout
    assert provider_row(text.stdout, "gemini")[1:4] == ["not", "installed", "no"]
    assert "npm install -g --prefix ~/.npm-global @google/gemini-cli" in text.stdout
    assert "claude: run `claude` once as the service user and log in" in text.stdout


def test_check_one_provider_is_enough(shellm, marker):
    """
    One usable provider is enough for exit 0; the others still get their fix.
    """
    result = shellm("check")
    assert result.returncode == 0, result.stderr
    assert "1 of 4 providers can serve requests: claude" in result.stdout
    assert "cerebras: set CEREBRAS_API_KEY" in result.stdout


def test_check_reports_bad_settings(shellm):
    """
    A setting the daemon would refuse stops C{check} with the setting's name.
    """
    shellm.env["SHELLM_MAX_CONCURRENT"] = "lots"
    result = shellm("check")
    assert result.returncode == 1 and "SHELLM_MAX_CONCURRENT" in result.stderr


# -- the rest


def test_every_command_has_help(shellm):
    """
    C{--help} works on every command, and the ones with outcomes list their
    exit codes.
    """
    for command in COMMANDS:
        result = shellm(command, "--help")
        assert result.returncode == 0, command
        assert f"usage: shellm {command}" in result.stdout
        assert "exit codes:" in result.stdout
    top = subprocess.run([sys.executable, "-m", "shellm.admin", "--help"], capture_output=True, text=True, timeout=60)
    assert all(command in top.stdout for command in COMMANDS)


def test_version_and_wrapper(shellm):
    """
    C{version}, C{--version} and the C{bin/shellm} wrapper print the version.
    """
    assert shellm("version").stdout == f"shellm {__version__}\n"
    wrapper = os.path.join(ROOT, "bin", "shellm")
    assert os.access(wrapper, os.X_OK)
    for args in (["version"], ["--version"]):
        result = subprocess.run(
            [sys.executable, wrapper, *args], capture_output=True, text=True, timeout=60, cwd=shellm.cwd, env=shellm.env
        )
        assert result.stdout == f"shellm {__version__}\n"


def test_unknown_command_is_a_usage_error(shellm):
    """
    An unknown command is argparse's usage error, exit 2.
    """
    result = subprocess.run(
        [sys.executable, "-m", "shellm.admin", "launch"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2 and "invalid choice" in result.stderr


def test_missing_env_file_is_an_error(shellm):
    """
    An --env-file that does not exist is reported, not silently ignored.
    """
    result = subprocess.run(
        [sys.executable, "-m", "shellm.admin", "status", "--env-file", "/nonexistent/shellm.env"],
        capture_output=True,
        text=True,
        timeout=60,
        env=shellm.env,
    )
    assert result.returncode == 1 and "no such file: /nonexistent/shellm.env" in result.stderr
