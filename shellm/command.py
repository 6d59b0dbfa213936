"""
The C{shellm} command: start, stop and inspect the daemon, and check that
the CLIs behind it are installed and logged in.

This is an ordinary synchronous program, not the daemon.  It starts
C{twistd shellm}, reads the PID file that C{twistd} writes in daemon mode,
and talks to the running daemon over HTTP (C{GET /health}) on the port the
configuration names.  Only C{check} runs the reactor, briefly, to reuse the
providers' own health checks.

Files live under C{~/.shellm/} (C{$SHELLM_HOME} overrides it): the PID file
C{shellm.pid} and the daemon-mode log C{logs/shellm.log}.
"""

from __future__ import annotations

import argparse
import errno
import getpass
import json
import os
import re
import signal
import socket
import sys
import textwrap
import time
import urllib.error
import urllib.request
from typing import Mapping, Optional, Sequence

from attrs import frozen

from shellm import __version__
from shellm.config import SETTINGS, ConfigError, load_config, read_env_file

# Exit codes.  2 is argparse's usage error.
OK = 0
ERROR = 1
NOT_RUNNING = 3
KILLED = 4
ELSEWHERE = 5

DEFAULT_PORT = 6100
#: Where the settings come from when --env-file is not given: the daemon's
#: own default (.env in the working directory), else the systemd setup's file.
ENV_FILES = (".env", "/etc/shellm/shellm.env")
HEALTH_TIMEOUT = 20.0  # the first /health waits for every provider's check
#: The npm package of each CLI, for the fix when it is not installed.
NPM_PACKAGES = {
    "claude": "@anthropic-ai/claude-code",
    "gemini": "@google/gemini-cli",
    "codex": "@openai/codex",
}
#: Example values for settings whose default says little about the format.
ENV_EXAMPLES = {
    "SHELLM_CLIENTS": '\'{"myapp": {"key": "replace-with-a-long-random-string", "rpm": 10}}\'',
    "SHELLM_CLAUDE_ENV": '\'{"ANTHROPIC_API_KEY": "sk-ant-..."}\'',
    "SHELLM_MODELS": '\'{"fast": {"provider": "cerebras", "model": "llama3.1-8b"}}\'',
    "CEREBRAS_API_KEY": "csk-...",
}


class CommandError(Exception):
    """
    Ends the command with a message on stderr and C{code}.
    """

    def __init__(self, message: str, code: int = ERROR):
        super().__init__(message)
        self.code = code


# -- where things are


@frozen
class Paths:
    home: str
    pid_file: str
    log_file: str

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> "Paths":
        home = environ.get("SHELLM_HOME") or os.path.join(
            environ.get("HOME") or os.path.expanduser("~"), ".shellm"
        )
        home = os.path.abspath(os.path.expanduser(home))
        return cls(home, os.path.join(home, "shellm.pid"), os.path.join(home, "logs", "shellm.log"))


@frozen
class Listener:
    """
    Where the daemon listens (C{listen}, a strports description, and its
    C{interface}) and where this command reaches it (C{host}, C{port}; no
    port for a UNIX socket).
    """

    listen: str
    interface: str
    host: str
    port: Optional[int]

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @classmethod
    def parse(cls, listen: str) -> "Listener":
        from twisted.internet import endpoints

        try:
            endpoint = endpoints.serverFromString(None, listen)
        except (ValueError, KeyError, TypeError) as e:
            raise CommandError(f"SHELLM_LISTEN: not a valid endpoint: {listen} ({e})")
        if not isinstance(endpoint, (endpoints.TCP4ServerEndpoint, endpoints.TCP6ServerEndpoint)):
            return cls(listen, "", "", None)
        interface = getattr(endpoint, "_interface", "") or ""
        # A wildcard listener is reached on loopback.
        host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(interface, interface)
        return cls(listen, interface, host, endpoint._port)

    def on_port(self, port: int) -> "Listener":
        """
        The same interface, another port (C{--port}).
        """
        interface = self.interface if self.port is not None else "127.0.0.1"
        kind = "tcp6" if ":" in interface else "tcp"
        escaped = interface.replace(":", "\\:")
        return Listener.parse(f"{kind}:{port}:interface={escaped}" if interface else f"{kind}:{port}")


def port_number(text: str) -> int:
    port = int(text)
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"not a TCP port: {text}")
    return port


def env_file_for(given: Optional[str]) -> Optional[str]:
    """
    The settings file: the one given (which must exist), else the first of
    L{ENV_FILES} that exists, else none.
    """
    if given is not None:
        if given and not os.path.exists(given):
            raise CommandError(f"--env-file: no such file: {given}")
        return os.path.abspath(given) if given else None
    for candidate in ENV_FILES:
        if os.path.isfile(candidate) and os.access(candidate, os.R_OK):
            return os.path.abspath(candidate)
    return None


def setting(name: str, environ: Mapping[str, str], env_file: Optional[str]) -> str:
    """
    One setting's raw text with the daemon's precedence (environment, then
    the file, then the default), without validating the others.
    """
    spec = next(s for s in SETTINGS if s.name == name)
    if spec.env in environ:
        return environ[spec.env]
    try:
        from_file = read_env_file(env_file) if env_file else {}
    except ConfigError as e:
        raise CommandError(str(e))
    return from_file.get(spec.env, spec.default)


def listener_for(args, environ: Mapping[str, str]) -> Listener:
    listener = Listener.parse(setting("listen", environ, args.env_file_path).strip())
    if getattr(args, "port", None) is not None:
        listener = listener.on_port(args.port)
    return listener


# -- the running daemon


def read_pid(path: str) -> Optional[int]:
    """
    The pid in the PID file, or L{None} without a (sensible) one.
    """
    try:
        with open(path, encoding="ascii") as f:
            text = f.read().strip()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as e:
        raise CommandError(f"cannot read the PID file {path}: {e}")
    return int(text) if text.isdigit() and int(text) > 0 else None


def is_daemon(pid: int) -> bool:
    """
    Whether C{pid} is a live (not zombie) twistd: a pid from a stale file
    may since have been given to an unrelated process.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, another user's
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            if f.read().rsplit(b")", 1)[1].split()[0] == b"Z":
                return False
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"twistd" in f.read()
    except FileNotFoundError:
        return False
    except OSError:
        return True  # no /proc to ask: trust the signal


def running_pid(paths: Paths) -> tuple[Optional[int], Optional[int]]:
    """
    C{(live pid, stale pid)} from the PID file; at most one is set.
    """
    pid = read_pid(paths.pid_file)
    if pid is None:
        return None, None
    return (pid, None) if is_daemon(pid) else (None, pid)


def remove_pid_file(paths: Paths, pid: int) -> None:
    """
    Remove the PID file if it still names C{pid} (a new daemon may own it).
    """
    try:
        if read_pid(paths.pid_file) == pid:
            os.remove(paths.pid_file)
    except (OSError, CommandError):
        pass


class NoAnswer(Exception):
    """
    Nothing answered HTTP on the port, or what did was not SheLLM.
    """


def get_health(listener: Listener, timeout: float = HEALTH_TIMEOUT) -> dict:
    """
    C{GET /health} from the daemon, without any proxy.

    @raise NoAnswer: with the reason.
    """
    if listener.port is None:
        raise NoAnswer(f"{listener.listen} is not a TCP port; this command only talks TCP")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(listener.url + "/health", timeout=timeout) as response:
            body = response.read()
    except urllib.error.HTTPError as e:
        body = e.read()
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise NoAnswer(str(reason))
    try:
        health = json.loads(body)
    except ValueError:
        raise NoAnswer("the answer is not SheLLM's /health")
    if not isinstance(health, dict) or "providers" not in health:
        raise NoAnswer("the answer is not SheLLM's /health")
    return health


def port_taken(listener: Listener) -> bool:
    """
    Whether something accepts connections on the daemon's port.
    """
    if listener.port is None:
        return False
    try:
        with socket.create_connection((listener.host, listener.port), timeout=2):
            return True
    except OSError:
        return False


# -- output


def say(text: str = "") -> None:
    print(text, flush=True)


def warn(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def duration(seconds: float) -> str:
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h {minutes}m"
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m {secs}s"
    return f"{secs}s"


def table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip()
        for row in rows
    )


def yes_no(value) -> str:
    return "?" if value is None else ("yes" if value else "no")


def queue_text(queue: Mapping) -> str:
    def one(name, q):
        return (f"{name} {q.get('active', '?')} running, {q.get('pending', '?')} waiting "
                f"(at most {q.get('max_concurrent', '?')} running, "
                f"{q.get('max_queue_depth', '?')} waiting)")

    parts = [one("cli", queue)]
    if isinstance(queue.get("http"), Mapping):
        parts.append(one("http", queue["http"]))
    return "; ".join(parts)


def providers_table(providers: Mapping) -> str:
    rows = [("provider", "installed", "logged in", "circuit", "version", "note")]
    for name, p in providers.items():
        circuit = p.get("circuit")
        state = circuit.get("state", "?") if isinstance(circuit, Mapping) else str(circuit or "?")
        rows.append((name, yes_no(p.get("installed")), yes_no(p.get("authenticated")),
                     state, p.get("version") or "-", p.get("error") or ""))
    return table(rows)


# -- start


def twistd_command() -> list[str]:
    """
    The twistd of this Python environment.
    """
    script = os.path.join(os.path.dirname(sys.executable), "twistd")
    if os.access(script, os.X_OK):
        return [script]
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def refuse_if_running(paths: Paths, listener: Listener) -> None:
    """
    @raise CommandError: when a daemon already runs, or the port is taken.
    """
    pid, stale = running_pid(paths)
    if pid is not None:
        raise CommandError(f"SheLLM is already running (pid {pid}); `shellm stop` first")
    if stale is not None:
        remove_pid_file(paths, stale)
    try:
        get_health(listener, timeout=5)
    except NoAnswer:
        pass
    else:
        raise CommandError(
            f"SheLLM is already running on port {listener.port}, managed elsewhere "
            "(e.g. systemd: `systemctl status shellm`)"
        )
    if port_taken(listener):
        raise CommandError(
            f"port {listener.port} is already in use by another program; "
            "stop it, or choose another port with --port or SHELLM_LISTEN"
        )


def daemon_arguments(args, listener: Listener) -> list[str]:
    """
    The C{shellm} plugin's own options: the listener when --port changed
    it, and the settings file this command read.
    """
    extra = []
    if args.port is not None:
        extra += ["--listen", listener.listen]
    if args.env_file_path:
        extra += ["--env-file", args.env_file_path]
    return extra


def check_settings(args, environ, listener: Listener) -> None:
    """
    Validate the settings as the daemon will, so a mistake is one clear
    line here rather than twistd's usage text.
    """
    given = {"listen": listener.listen} if args.port is not None else {}
    try:
        load_config(given, environ, args.env_file_path)
    except ConfigError as e:
        raise CommandError(f"the settings are not valid: {e}")


def cmd_start(args, environ, paths: Paths) -> int:
    listener = listener_for(args, environ)
    check_settings(args, environ, listener)
    refuse_if_running(paths, listener)
    if not args.daemon:
        argv = twistd_command() + ["--nodaemon", "--pidfile=", "shellm"]
        argv += daemon_arguments(args, listener)
        where = listener.url if listener.port else listener.listen
        warn(f"SheLLM {__version__} starting on {where} (Ctrl+C to stop); logs follow as JSON")
        os.execve(argv[0], argv, dict(environ))
    return start_daemon(args, environ, paths, listener)


def start_daemon(args, environ, paths: Paths, listener: Listener) -> int:
    for directory in (paths.home, os.path.dirname(paths.log_file)):
        os.makedirs(directory, mode=0o700, exist_ok=True)
    argv = twistd_command() + [
        "--pidfile", paths.pid_file,
        "--logger", "shellm.logs.daemon_file_observer",
        "shellm",
    ] + daemon_arguments(args, listener)
    env = dict(environ, SHELLM_LOG_FILE=paths.log_file)
    logged_before = os.path.getsize(paths.log_file) if os.path.exists(paths.log_file) else 0
    try:
        # twistd's parent returns once the daemon has started listening (or failed).
        result = subprocess_run(argv, env, timeout=args.timeout)
    except TimeoutError:
        raise CommandError(f"twistd did not report start-up within {args.timeout:g}s; "
                           f"see {paths.log_file}")
    if result.returncode != 0:
        why = bind_error(listener)
        if why is not None:
            raise CommandError(why)
        # twistd's own report is cut to 100 bytes; the log has the whole
        # exception, written by the daemon just after it told twistd.
        said = (result.stderr + result.stdout).strip()
        if said and "An error has occurred" not in said:
            cause = said.splitlines()[-1]  # twistd's usage error, after its usage text
        else:
            cause = last_exception(paths.log_file, logged_before) or said or "(no message)"
        raise CommandError(f"SheLLM did not start: {cause}\nSee {paths.log_file}")
    pid = read_pid(paths.pid_file)
    where = listener.url if listener.port else listener.listen
    say(f"SheLLM {__version__} started (pid {pid}) on {where}")
    say(f"log: {paths.log_file}")
    return OK


def bind_error(listener: Listener) -> Optional[str]:
    """
    Why the daemon's port cannot be listened on, found by trying (with
    SO_REUSEADDR, as twistd does), or L{None} if it can.
    """
    if listener.port is None:
        return None
    family = socket.AF_INET6 if ":" in listener.host else socket.AF_INET
    interface = listener.interface or ("::" if family == socket.AF_INET6 else "0.0.0.0")
    with socket.socket(family) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((interface, listener.port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                return (f"port {listener.port} is already in use; "
                        "choose another with --port or SHELLM_LISTEN")
            if e.errno == errno.EACCES:
                return f"not allowed to listen on port {listener.port} (ports below 1024 need root)"
            if e.errno == errno.EADDRNOTAVAIL:
                return f"{listener.host} is not an address of this machine (SHELLM_LISTEN)"
    return None


def last_exception(path: str, offset: int, wait: float = 3.0) -> Optional[str]:
    """
    The last line of the traceback logged after C{offset}, waiting up to
    C{wait} seconds for the daemon to finish writing it.
    """
    deadline = time.monotonic() + wait
    while True:
        found = None
        try:
            with open(path, "rb") as f:
                f.seek(offset)
                lines = f.read().decode("utf-8", "replace").splitlines()
        except OSError:
            lines = []
        for line in lines:
            try:
                message = str(json.loads(line).get("message", ""))
            except (ValueError, AttributeError):
                continue
            if re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Exit)\b.*:", message):
                found = message.strip()
        if found or time.monotonic() >= deadline:
            return found
        time.sleep(0.1)


@frozen
class Finished:
    returncode: int
    stdout: str
    stderr: str


def subprocess_run(argv: list[str], env: Mapping[str, str], timeout: float) -> Finished:
    import subprocess

    try:
        done = subprocess.run(argv, env=dict(env), capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise TimeoutError()
    return Finished(done.returncode, done.stdout, done.stderr)


# -- stop


def stop_timeout(args, environ) -> float:
    """
    How long to wait after TERM: the daemon's drain limit plus its CLI kill
    grace, plus a margin.
    """
    if args.timeout is not None:
        return args.timeout
    total = 5.0
    for name in ("drain_timeout", "kill_grace"):
        try:
            total += float(setting(name, environ, args.env_file_path))
        except (ValueError, CommandError):
            total += float(next(s for s in SETTINGS if s.name == name).default)
    return total


def wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not is_daemon(pid):
            return True
        time.sleep(0.1)
    return not is_daemon(pid)


def stop_daemon(args, environ, paths: Paths) -> int:
    pid, stale = running_pid(paths)
    if pid is None:
        if stale is not None:
            remove_pid_file(paths, stale)
        listener = listener_for(args, environ)
        try:
            get_health(listener, timeout=5)
        except (NoAnswer, CommandError):
            note = f" (removed a stale PID file naming pid {stale})" if stale else ""
            warn(f"SheLLM is not running{note}")
            return NOT_RUNNING
        warn(f"SheLLM answers on port {listener.port} but was not started with "
             "`shellm start -d`; it is managed elsewhere (e.g. systemd: `sudo systemctl stop shellm`)")
        return ELSEWHERE
    try:
        os.kill(pid, signal.SIGTERM)
    except PermissionError:
        raise CommandError(f"not allowed to signal pid {pid}; run this as the user that started it")
    except ProcessLookupError:
        remove_pid_file(paths, pid)
        warn("SheLLM is not running")
        return NOT_RUNNING
    timeout = stop_timeout(args, environ)
    say(f"stopping SheLLM (pid {pid}); in-flight requests may finish for up to {timeout:g}s")
    if wait_gone(pid, timeout):
        remove_pid_file(paths, pid)
        say("stopped")
        return OK
    warn(f"SheLLM did not stop within {timeout:g}s: killing it")
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    if not wait_gone(pid, 5):
        raise CommandError(f"pid {pid} is still running after SIGKILL")
    remove_pid_file(paths, pid)
    warn("killed")
    return KILLED


def cmd_stop(args, environ, paths: Paths) -> int:
    return stop_daemon(args, environ, paths)


def cmd_restart(args, environ, paths: Paths) -> int:
    code = stop_daemon(args, environ, paths)
    if code == ELSEWHERE:
        return ELSEWHERE
    if code not in (OK, NOT_RUNNING, KILLED):
        return code
    args.daemon = True
    args.timeout = args.start_timeout
    return cmd_start(args, environ, paths)


# -- status


def cmd_status(args, environ, paths: Paths) -> int:
    listener = listener_for(args, environ)
    pid, stale = running_pid(paths)
    report: dict = {
        "running": False, "managed": None, "pid": pid, "url": listener.url if listener.port else None,
        "pid_file": paths.pid_file, "log_file": paths.log_file, "health": None,
    }
    if stale is not None:
        report["stale_pid"] = stale
    try:
        health = get_health(listener)
        why = None
    except NoAnswer as e:
        health, why = None, str(e)
    if pid is not None:
        report.update(running=True, managed="pid-file", health=health)
        code = OK if health is not None else ERROR
    elif health is not None:
        report.update(running=True, managed="elsewhere", health=health)
        code = OK
    else:
        code = NOT_RUNNING
    if why is not None:
        report["error"] = why

    if args.json:
        say(json.dumps(report, indent=2))
        return code
    if not report["running"]:
        note = f" (stale PID file: pid {stale} is gone)" if stale is not None else ""
        say(f"SheLLM is not running{note}")
        if listener.port is not None and port_taken(listener):
            say(f"port {listener.port} is in use by another program")
        return code
    if pid is not None:
        say(f"SheLLM is running (pid {pid}, started with `shellm start -d`)")
    else:
        say("SheLLM is running, managed elsewhere (e.g. systemd: `systemctl status shellm`)")
    if health is None:
        say(f"but {listener.url}/health does not answer: {why}")
        return code
    say(f"  url:      {listener.url}")
    say(f"  status:   {health.get('status', '?')}")
    say(f"  version:  {health.get('version', '?')}")
    if isinstance(health.get("uptime_seconds"), (int, float)):
        say(f"  uptime:   {duration(health['uptime_seconds'])}")
    if isinstance(health.get("queue"), Mapping):
        say(f"  queue:    {queue_text(health['queue'])}")
    if pid is not None:
        say(f"  log:      {paths.log_file}")
    providers = health.get("providers")
    if isinstance(providers, Mapping) and providers:
        say()
        say(providers_table(providers))
    return code


# -- logs


def render_log_line(line: str, raw: bool) -> str:
    if raw:
        return line
    try:
        record = json.loads(line)
        return f"{record['time']} {record['level']:<5} {record['message']}"
    except (ValueError, KeyError, TypeError):
        return line


def last_lines(f, end: int, count: int) -> list[str]:
    """
    The last C{count} lines before offset C{end} of the binary file C{f},
    reading only its tail.
    """
    if count <= 0:
        return []
    size = 65536
    while True:
        start = max(0, end - size)
        f.seek(start)
        data = f.read(end - start)
        if start == 0 or data.count(b"\n") > count:
            break
        size *= 2
    lines = data.decode("utf-8", "replace").splitlines()
    if start > 0:
        lines = lines[1:]  # the first one is probably cut
    return lines[-count:]


def cmd_logs(args, environ, paths: Paths) -> int:
    path = paths.log_file
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise CommandError(
            f"no log file at {path}: SheLLM writes one only when started with `shellm start -d`.\n"
            "Under systemd its logs are in the journal: journalctl -u shellm -f"
        )
    with f:
        # Everything after this offset is printed by follow: no line is lost
        # or printed twice between the two.
        end = f.seek(0, os.SEEK_END)
        for line in last_lines(f, end, args.lines):
            say(render_log_line(line, args.json))
        f.seek(end)
        if not args.follow:
            return OK
        return follow(f, path, args.json)


def follow(f, path: str, raw: bool) -> int:
    """
    Print lines as they are appended to C{f}, and to a new file at C{path}
    once logrotate has renamed it, until interrupted.
    """
    pending = b""
    try:
        while True:
            chunk = f.read()
            if chunk:
                pending += chunk
                *whole, pending = pending.split(b"\n")
                for line in whole:
                    say(render_log_line(line.decode("utf-8", "replace"), raw))
                continue
            try:
                rotated = os.stat(path).st_ino != os.fstat(f.fileno()).st_ino
            except FileNotFoundError:
                rotated = False  # not yet recreated: keep reading the old one
            if rotated:
                f.close()
                f = open(path, "rb")
                continue
            time.sleep(0.25)
    except KeyboardInterrupt:
        return OK
    finally:
        f.close()


# -- check


def build_providers(reactor, config) -> dict:
    """
    The providers as the daemon builds them, for their health checks.
    """
    from shellm.http_client import upstream_client
    from shellm.process import CliRunner, SessionSpawner, find_launcher
    from shellm.providers.cerebras import CerebrasProvider
    from shellm.providers.claude import ClaudeProvider
    from shellm.providers.codex import CodexProvider
    from shellm.providers.gemini import GeminiProvider

    runner = CliRunner(reactor, SessionSpawner(reactor, find_launcher()), config.timeout,
                       config.kill_grace)
    http, _ = upstream_client(reactor, persistent=False)

    def cli(cls, executable, extra_env):
        return cls(reactor, runner, executable, config.base_env, extra_env)

    return {
        "claude": cli(ClaudeProvider, config.claude_bin, config.claude_env),
        "gemini": cli(GeminiProvider, config.gemini_bin, config.gemini_env),
        "codex": cli(CodexProvider, config.codex_bin, config.codex_env),
        "cerebras": CerebrasProvider(reactor, http, config.cerebras_api_key,
                                     config.cerebras_base_url, config.timeout),
    }


def run_health_checks(config) -> tuple[dict, dict]:
    """
    Every provider's own C{check_health} (no tokens spent), on a reactor
    run just for this.  Returns the providers and their L{ProviderHealth}.
    """
    from twisted.internet import reactor
    from twisted.internet.defer import gatherResults
    from twisted.python.failure import Failure

    providers = build_providers(reactor, config)
    outcome: list = []

    def go():
        names = list(providers)
        d = gatherResults([providers[n].check_health() for n in names], consumeErrors=True)
        d.addCallback(lambda results: dict(zip(names, results)))
        d.addBoth(outcome.append)
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(go)
    reactor.run()
    if not outcome:
        raise CommandError("interrupted")
    if isinstance(outcome[0], Failure):
        raise CommandError(f"the checks failed: {outcome[0].getErrorMessage()}")
    return providers, outcome[0]


def judge_cli(name: str, provider, health, config) -> dict:
    env = provider.environment(None)
    executable = provider.resolve_executable()
    logged_in = provider.has_credentials(env)
    setting_name = f"SHELLM_{name.upper()}_BIN"
    if executable is None or not health.installed:
        state = "not installed"
        fix = (f"install it as the service user (`npm install -g --prefix ~/.npm-global "
               f"{NPM_PACKAGES[name]}`) with that bin directory on PATH, "
               f"or set {setting_name} to its full path")
    elif not health.usable and health.error and not health.error.startswith("not logged in"):
        state = "broken"
        fix = (f"`{executable} --version` failed ({health.error}); run it by hand as the "
               "service user to see why, or reinstall it")
    elif not logged_in:
        state = "not logged in"
        fix = provider.login_hint
    else:
        state = "ready"
        fix = None
    return {
        "kind": "cli",
        "state": state,
        "usable": state == "ready",
        "configured": getattr(config, f"{name}_bin"),
        "executable": executable,
        "installed": state != "not installed",
        "version": health.version,
        "logged_in": logged_in,
        "error": health.error,
        "fix": fix,
    }


def judge_http(name: str, health, config, env_file: Optional[str]) -> dict:
    key_set = bool(config.cerebras_api_key)
    where = env_file or "the service's environment file (/etc/shellm/shellm.env)"
    if not key_set:
        state, fix = "no key", f"set CEREBRAS_API_KEY in {where}"
    elif health.usable:
        state, fix = "ready", None
    elif "refused" in (health.error or ""):
        state, fix = "key refused", f"CEREBRAS_API_KEY was refused: put a valid key in {where}"
    else:
        state, fix = "unreachable", (f"{config.cerebras_base_url} could not be reached from "
                                      "this machine: check its network and SHELLM_CEREBRAS_BASE_URL")
    return {
        "kind": "http",
        "state": state,
        "usable": state == "ready",
        "base_url": config.cerebras_base_url,
        "key_set": key_set,
        "error": health.error,
        "fix": fix,
    }


def cmd_check(args, environ, paths: Paths) -> int:
    try:
        config = load_config({}, environ, args.env_file_path)
    except ConfigError as e:
        raise CommandError(f"the configuration is not valid: {e}")
    providers, healths = run_health_checks(config)
    results = {}
    for name, provider in providers.items():
        if getattr(provider, "kind", None) == "cli":
            results[name] = judge_cli(name, provider, healths[name], config)
        else:
            results[name] = judge_http(name, healths[name], config, args.env_file_path)
    usable = [name for name, r in results.items() if r["usable"]]
    code = OK if usable else ERROR
    user = getpass.getuser()
    home = config.base_env.get("HOME", "")
    if args.json:
        say(json.dumps({"ok": bool(usable), "usable": usable, "user": user, "home": home,
                        "env_file": args.env_file_path, "providers": results}, indent=2))
        return code
    source = args.env_file_path or "the environment only (no settings file found)"
    say(f"Checked as user {user} (HOME={home}); settings from {source}")
    say()
    rows = [("provider", "state", "logged in", "version", "executable or API")]
    for name, r in results.items():
        if r["kind"] == "cli":
            where = r["executable"] or f"{r['configured']} (not found on PATH)"
            rows.append((name, r["state"], yes_no(r["logged_in"]), r["version"] or "-", where))
        else:
            key = "key set" if r["key_set"] else "CEREBRAS_API_KEY not set"
            rows.append((name, r["state"], yes_no(r["key_set"]), "-", f"{r['base_url']} ({key})"))
    say(table(rows))
    fixes = [(name, r["fix"]) for name, r in results.items() if r["fix"]]
    if fixes:
        say()
        for name, fix in fixes:
            say(f"{name}: {fix}")
    say()
    if usable:
        say(f"{len(usable)} of {len(results)} providers can serve requests: {', '.join(usable)}")
    else:
        say("No provider can serve requests.")
    return code


# -- version, env-example


def cmd_version(args, environ, paths: Paths) -> int:
    say(f"shellm {__version__}")
    return OK


def render_env_example() -> str:
    """
    C{etc/shellm.env.example}: every setting, its default and what it does.
    """
    lines = [
        "# SheLLM settings: KEY=value lines, read by systemd (EnvironmentFile=) and by",
        "# `twistd shellm --env-file`.  Every setting is listed with its default,",
        "# commented out; uncomment a line to change it.  Put JSON values in single",
        "# quotes.  This file holds secrets: keep it mode 0640, owner root, group shellm.",
        "#",
        "# Generated from shellm/config.py: python -m shellm.command env-example",
    ]
    for s in SETTINGS:
        lines += ["", f"# {s.help}"]
        if s.env in ENV_EXAMPLES:
            lines.append(f"# e.g. {s.env}={ENV_EXAMPLES[s.env]}")
        lines.append(f"#{s.env}={s.default}")
    lines += [
        "",
        "# Not a daemon setting: the `shellm` command keeps its PID file and",
        "# daemon-mode log under this directory.",
        "#SHELLM_HOME=~/.shellm",
    ]
    return "\n".join(lines) + "\n"


def cmd_env_example(args, environ, paths: Paths) -> int:
    sys.stdout.write(render_env_example())
    return OK


# -- the parser


EPILOG = f"""\
commands:
  start     run the daemon (foreground, or -d in the background)
  stop      stop a daemon started with `start -d`
  restart   stop, then start in the background
  status    whether it runs, its queue and its providers
  logs      the daemon-mode log file
  check     whether each CLI is installed and logged in, and how to fix it
  version   print the version
  env-example  print every setting with its default (etc/shellm.env.example)

Files: $SHELLM_HOME (default ~/.shellm)/shellm.pid and logs/shellm.log.
Settings (port, CLIs, keys) are read like the daemon reads them: the
environment, then --env-file (default: the first of {', '.join(ENV_FILES)}).
`shellm COMMAND --help` describes each command and its exit codes.
"""


def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--env-file", metavar="PATH", default=None,
                        help="settings file (default: the first of "
                             f"{', '.join(ENV_FILES)} that exists)")
    port = argparse.ArgumentParser(add_help=False)
    port.add_argument("-p", "--port", type=port_number, metavar="PORT",
                      help="the daemon's TCP port (default: from SHELLM_LISTEN, 6100)")

    top = argparse.ArgumentParser(
        prog="shellm", description="Run and inspect the SheLLM daemon.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    top.add_argument("--version", action="version", version=f"shellm {__version__}")
    commands = top.add_subparsers(dest="command", metavar="COMMAND", help="one of the commands below")

    def command(name, func, description, codes, parents=(common,)):
        sub = commands.add_parser(
            name, parents=list(parents), description=textwrap.fill(description, 78),
            epilog="exit codes:\n" + codes, formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        sub.set_defaults(func=func)
        return sub

    start = command(
        "start", cmd_start,
        "Start SheLLM: in the foreground (`twistd --nodaemon --pidfile= shellm`, JSON logs "
        "on stdout) or, with -d, in the background with a PID file and a log file under "
        "$SHELLM_HOME.  Refuses when it already runs or the port is taken.",
        "  0  started (with -d; in the foreground, twistd's own status when it ends)\n"
        "  1  not started: already running, port in use, bad settings (the message says which)\n",
        (common, port),
    )
    start.add_argument("-d", "--daemon", action="store_true", help="run in the background")
    start.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS",
                       help="how long to wait for a background start (default: 60)")

    stop = command(
        "stop", cmd_stop,
        "Stop the daemon started with `start -d`: SIGTERM (it stops accepting, lets "
        "in-flight requests finish), then SIGKILL after --timeout.",
        "  0  stopped\n"
        "  1  error (e.g. not allowed to signal it)\n"
        "  3  not running\n"
        "  4  did not stop in time and was killed\n"
        "  5  running, but managed elsewhere (e.g. systemd): not stopped\n",
        (common, port),
    )
    stop.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                      help="wait this long after SIGTERM before SIGKILL "
                           "(default: SHELLM_DRAIN_TIMEOUT + SHELLM_KILL_GRACE + 5)")

    restart = command(
        "restart", cmd_restart,
        "Stop the daemon (as `stop`) if it runs, then start it in the background.",
        "  0  started\n"
        "  1  error, or not started\n"
        "  5  managed elsewhere (e.g. systemd: use `systemctl restart shellm`)\n",
        (common, port),
    )
    restart.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                         help="wait this long after SIGTERM before SIGKILL")
    restart.add_argument("--start-timeout", type=float, default=60.0, metavar="SECONDS",
                         help="how long to wait for the start (default: 60)")

    status = command(
        "status", cmd_status,
        "Whether SheLLM runs (from the PID file, or managed elsewhere when only the port "
        "answers), with its uptime, queue and providers from GET /health.",
        "  0  running\n"
        "  1  the PID file's process runs but /health does not answer\n"
        "  3  not running\n",
        (common, port),
    )
    status.add_argument("--json", action="store_true", help="print JSON")

    logs = command(
        "logs", cmd_logs,
        "Print the daemon-mode log file (`start -d`); under systemd use journalctl -u shellm.",
        "  0  printed\n"
        "  1  no log file\n",
    )
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    logs.add_argument("-n", "--lines", type=int, default=50, metavar="N",
                      help="how many lines from the end (default: 50)")
    logs.add_argument("--json", action="store_true", help="print the raw JSON lines")

    check = command(
        "check", cmd_check,
        "For each CLI: the executable found, its --version, whether it is logged in, and "
        "the fix when it is not; for Cerebras, whether CEREBRAS_API_KEY is set and accepted. "
        "Spends no tokens.  Run it as the service user, with the service's settings.",
        "  0  at least one provider can serve requests\n"
        "  1  none can (or the settings are not valid)\n",
    )
    check.add_argument("--json", action="store_true", help="print JSON")

    command("version", cmd_version, "Print the SheLLM version.", "  0  always\n")
    command("env-example", cmd_env_example,
            "Print an example settings file: every setting with its default.", "  0  always\n")
    return top


def main(argv: Optional[Sequence[str]] = None, environ: Optional[Mapping[str, str]] = None) -> int:
    top = parser()
    args = top.parse_args(argv)
    if not getattr(args, "func", None):
        top.print_help()
        return ERROR
    environ = os.environ if environ is None else environ
    paths = Paths.from_environ(environ)
    try:
        args.env_file_path = env_file_for(getattr(args, "env_file", None))
        return args.func(args, environ, paths)
    except CommandError as e:
        warn(f"shellm {args.command}: {e}")
        return e.code
    except KeyboardInterrupt:
        return ERROR


if __name__ == "__main__":
    sys.exit(main())
