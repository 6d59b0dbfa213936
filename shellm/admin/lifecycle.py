"""
C{shellm start}, C{stop} and C{restart}: run C{twistd shellm} in the
foreground or as a daemon, and stop it by its PID file.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import re
import signal
import socket
import sys
import time
from collections.abc import Mapping

from shellm import __version__
from shellm.admin.common import (
    ELSEWHERE,
    KILLED,
    NOT_RUNNING,
    OK,
    CommandError,
    Listener,
    NoAnswer,
    Paths,
    answers_as_shellm,
    get_health,
    is_daemon,
    listener_for,
    port_taken,
    read_pid,
    remove_pid_file,
    running_pid,
    say,
    setting,
    subprocess_run,
    warn,
)
from shellm.config import SETTINGS, ConfigError, load_config


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
    # Trying the port is instant; asking what holds it is needed only when
    # it is held, and is bounded by PROBE_TIMEOUT rather than /health's wait.
    why = bind_error(listener)
    if why is None:
        return
    if port_taken(listener) and answers_as_shellm(listener):
        raise CommandError(
            f"SheLLM is already running on port {listener.port}, managed elsewhere "
            "(e.g. systemd: `systemctl status shellm`)"
        )
    raise CommandError(why)


def daemon_arguments(args: argparse.Namespace, listener: Listener) -> list[str]:
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


def check_settings(args: argparse.Namespace, environ: Mapping[str, str], listener: Listener) -> None:
    """
    Validate the settings as the daemon will, so a mistake is one clear
    line here rather than twistd's usage text.
    """
    given = {"listen": listener.listen} if args.port is not None else {}
    try:
        load_config(given, environ, args.env_file_path)
    except ConfigError as e:
        raise CommandError(f"the settings are not valid: {e}")


def cmd_start(args: argparse.Namespace, environ: Mapping[str, str], paths: Paths) -> int:
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


def start_daemon(args: argparse.Namespace, environ: Mapping[str, str], paths: Paths, listener: Listener) -> int:
    for directory in (paths.home, os.path.dirname(paths.log_file)):
        os.makedirs(directory, mode=0o700, exist_ok=True)
    argv = (
        twistd_command()
        + [
            "--pidfile",
            paths.pid_file,
            "--logger",
            "shellm.logs.daemon_file_observer",
            "shellm",
        ]
        + daemon_arguments(args, listener)
    )
    env = dict(environ, SHELLM_LOG_FILE=paths.log_file)
    logged_before = os.path.getsize(paths.log_file) if os.path.exists(paths.log_file) else 0
    try:
        # twistd's parent returns once the daemon has started listening (or failed).
        result = subprocess_run(argv, env, timeout=args.timeout)
    except TimeoutError:
        raise CommandError(f"twistd did not report start-up within {args.timeout:g}s; see {paths.log_file}")
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


def bind_error(listener: Listener) -> str | None:
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
                return (
                    f"port {listener.port} is already in use by another program; "
                    "stop it, or choose another port with --port or SHELLM_LISTEN"
                )
            if e.errno == errno.EACCES:
                return f"not allowed to listen on port {listener.port} (ports below 1024 need root)"
            if e.errno == errno.EADDRNOTAVAIL:
                return f"{listener.host} is not an address of this machine (SHELLM_LISTEN)"
    return None


def last_exception(path: str, offset: int, wait: float = 3.0) -> str | None:
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


def stop_timeout(args: argparse.Namespace, environ: Mapping[str, str]) -> float:
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


def stop_daemon(args: argparse.Namespace, environ: Mapping[str, str], paths: Paths) -> int:
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
        warn(
            f"SheLLM answers on port {listener.port} but was not started with "
            "`shellm start -d`; it is managed elsewhere (e.g. systemd: `sudo systemctl stop shellm`)"
        )
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


def cmd_stop(args: argparse.Namespace, environ: Mapping[str, str], paths: Paths) -> int:
    return stop_daemon(args, environ, paths)


def cmd_restart(args: argparse.Namespace, environ: Mapping[str, str], paths: Paths) -> int:
    code = stop_daemon(args, environ, paths)
    if code == ELSEWHERE:
        return ELSEWHERE
    if code not in (OK, NOT_RUNNING, KILLED):
        return code
    args.daemon = True
    args.timeout = args.start_timeout
    return cmd_start(args, environ, paths)
