"""
C{shellm status}: whether the daemon runs, its queues and its providers,
from its C{/health}.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping

from shellm.admin.common import (
    ERROR,
    NOT_RUNNING,
    OK,
    NoAnswer,
    Paths,
    client_key,
    duration,
    get_health,
    listener_for,
    port_taken,
    running_pid,
    say,
    table,
    yes_no,
)


def queue_text(queue: Mapping) -> str:
    def one(name: str, q: Mapping) -> str:
        return (
            f"{name} {q.get('active', '?')} running, {q.get('pending', '?')} waiting "
            f"(at most {q.get('max_concurrent', '?')} running, "
            f"{q.get('max_queue_depth', '?')} waiting)"
        )

    parts = [one("cli", queue)]
    if isinstance(queue.get("http"), Mapping):
        parts.append(one("http", queue["http"]))
    return "; ".join(parts)


def providers_table(providers: Mapping) -> str:
    rows = [("provider", "installed", "logged in", "circuit", "version", "note")]
    for name, p in providers.items():
        circuit = p.get("circuit")
        state = circuit.get("state", "?") if isinstance(circuit, Mapping) else str(circuit or "?")
        rows.append(
            (
                name,
                yes_no(p.get("installed")),
                yes_no(p.get("authenticated")),
                state,
                p.get("version") or "-",
                p.get("error") or "",
            )
        )
    return table(rows)


def cmd_status(args: argparse.Namespace, environ: Mapping[str, str], paths: Paths) -> int:
    listener = listener_for(args, environ)
    pid, stale = running_pid(paths)
    report: dict = {
        "running": False,
        "managed": None,
        "pid": pid,
        "url": listener.url if listener.port else None,
        "pid_file": paths.pid_file,
        "log_file": paths.log_file,
        "health": None,
    }
    if stale is not None:
        report["stale_pid"] = stale
    try:
        health = get_health(listener, key=client_key(environ, args.env_file_path))
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
