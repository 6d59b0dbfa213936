"""
What every C{shellm} sub-command shares: exit codes, where the daemon's
files are, where it listens, its PID, its C{/health}, and how to print.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, TypeVar

from attrs import frozen

from shellm.config import SETTINGS, ConfigError, read_env_file
from shellm.routing.auth import parse_clients

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred
    from twisted.python.failure import Failure

_T = TypeVar("_T")

# Exit codes.  2 is argparse's usage error.
OK = 0
ERROR = 1
NOT_RUNNING = 3
KILLED = 4
ELSEWHERE = 5

#: Where the settings come from when --env-file is not given: the daemon's
#: own default (.env in the working directory), else the systemd setup's file.
ENV_FILES = (".env", "/etc/shellm/shellm.env")
HEALTH_TIMEOUT = 20.0  # the first /health waits for every provider's check


#: How long C{start} waits for whatever holds its port to answer as SheLLM:
#: C{/openapi.json} needs no provider check, so a daemon answers at once and
#: a program that holds the port silently costs only this.
PROBE_TIMEOUT = 1.0


class CommandError(Exception):
    """
    Ends the command with a message on stderr and C{code}.
    """

    def __init__(self, message: str, code: int = ERROR):
        super().__init__(message)
        self.code = code


@frozen
class Paths:
    home: str
    pid_file: str
    log_file: str

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Paths:
        home = environ.get("SHELLM_HOME") or os.path.join(environ.get("HOME") or os.path.expanduser("~"), ".shellm")
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
    port: int | None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @classmethod
    def parse(cls, listen: str) -> Listener:
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

    def on_port(self, port: int) -> Listener:
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


def env_file_for(given: str | None) -> str | None:
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


def setting(name: str, environ: Mapping[str, str], env_file: str | None) -> str:
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


def listener_for(args: argparse.Namespace, environ: Mapping[str, str]) -> Listener:
    listener = Listener.parse(setting("listen", environ, args.env_file_path).strip())
    if getattr(args, "port", None) is not None:
        listener = listener.on_port(args.port)
    return listener


def read_pid(path: str) -> int | None:
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


def running_pid(paths: Paths) -> tuple[int | None, int | None]:
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


def client_key(environ: Mapping[str, str], env_file: str | None) -> str | None:
    """
    A configured client's key, so that a command sees the whole C{/health};
    L{None} when auth is off or C{SHELLM_CLIENTS} cannot be read.
    """
    try:
        clients = parse_clients(setting("clients", environ, env_file))
    except (CommandError, ValueError, TypeError, RecursionError):
        return None
    return clients[0].key if clients else None


def get_health(listener: Listener, timeout: float = HEALTH_TIMEOUT, key: str | None = None) -> dict:
    """
    C{GET /health} from the daemon, without any proxy.

    @param key: a client key; without one, a daemon with auth on shows only
        the short form (status, and whether each provider is usable).
    @raise NoAnswer: with the reason.
    """
    if listener.port is None:
        raise NoAnswer(f"{listener.listen} is not a TCP port; this command only talks TCP")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(listener.url + "/health")
    if key is not None:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with opener.open(request, timeout=timeout) as response:
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


def answers_as_shellm(listener: Listener, timeout: float = PROBE_TIMEOUT) -> bool:
    """
    Whether SheLLM answers on the daemon's port, asked with its
    C{/openapi.json} (unlike C{/health}, it does not wait for the providers).
    """
    if listener.port is None:
        return False
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(listener.url + "/openapi.json", timeout=timeout) as response:
            document = json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError):
        return False
    info = document.get("info") if isinstance(document, dict) else None
    return isinstance(info, dict) and info.get("title") == "SheLLM"


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
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows)


def yes_no(value: object) -> str:
    return "?" if value is None else ("yes" if value else "no")


@frozen
class Finished:
    returncode: int
    stdout: str
    stderr: str


def subprocess_run(argv: list[str], env: Mapping[str, str], timeout: float) -> Finished:
    import subprocess

    try:
        done = subprocess.run(
            argv, env=dict(env), capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired:
        raise TimeoutError()
    return Finished(done.returncode, done.stdout, done.stderr)


def run_on_reactor(work: Callable[[], Deferred[_T]]) -> _T | Failure:
    """
    Run C{work()} on a reactor started just for it (the sub-commands are
    synchronous programs) and return what its Deferred fired with: the
    result, or the L{Failure} for the caller to explain.

    @raise CommandError: if the reactor stopped before C{work} finished.
    """
    from twisted.internet import reactor

    outcome: list[_T | Failure] = []

    def start() -> None:
        d = work()
        d.addBoth(outcome.append)
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(start)
    reactor.run()
    if not outcome:
        raise CommandError("interrupted")
    return outcome[0]
