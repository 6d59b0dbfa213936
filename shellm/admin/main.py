"""
The C{shellm} command line: the parser, and dispatch to one module per
sub-command.
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
from collections.abc import Callable, Mapping, Sequence

from shellm import __version__
from shellm.admin.check import cmd_check
from shellm.admin.common import ENV_FILES, ERROR, CommandError, Paths, env_file_for, port_number, warn
from shellm.admin.db import cmd_db
from shellm.admin.env_example import cmd_env_example, cmd_version
from shellm.admin.keys import add_parser as add_keys_parser
from shellm.admin.keys import cmd_keys
from shellm.admin.lifecycle import cmd_restart, cmd_start, cmd_stop
from shellm.admin.logs import cmd_logs
from shellm.admin.status import cmd_status

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
  db        the state store: status, migrate, backup PATH
  keys      stored client keys: create, list, show, rotate, revoke

Files: $SHELLM_HOME (default ~/.shellm)/shellm.pid and logs/shellm.log.
Settings (port, CLIs, keys) are read like the daemon reads them: the
environment, then --env-file (default: the first of {', '.join(ENV_FILES)}).
`shellm COMMAND --help` describes each command and its exit codes.
"""


def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--env-file",
        metavar="PATH",
        default=None,
        help=f"settings file (default: the first of {', '.join(ENV_FILES)} that exists)",
    )
    port = argparse.ArgumentParser(add_help=False)
    port.add_argument(
        "-p",
        "--port",
        type=port_number,
        metavar="PORT",
        help="the daemon's TCP port (default: from SHELLM_LISTEN, 6100)",
    )

    top = argparse.ArgumentParser(
        prog="shellm",
        description="Run and inspect the SheLLM daemon.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    top.add_argument("--version", action="version", version=f"shellm {__version__}")
    commands = top.add_subparsers(dest="command", metavar="COMMAND", help="one of the commands below")

    def command(
        name: str,
        func: Callable[[argparse.Namespace, Mapping[str, str], Paths], int],
        description: str,
        codes: str,
        parents: Sequence[argparse.ArgumentParser] = (common,),
    ) -> argparse.ArgumentParser:
        sub = commands.add_parser(
            name,
            parents=list(parents),
            description=textwrap.fill(description, 78),
            epilog="exit codes:\n" + codes,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        sub.set_defaults(func=func)
        return sub

    start = command(
        "start",
        cmd_start,
        "Start SheLLM: in the foreground (`twistd --nodaemon --pidfile= shellm`, JSON logs "
        "on stdout) or, with -d, in the background with a PID file and a log file under "
        "$SHELLM_HOME.  Refuses when it already runs or the port is taken.",
        "  0  started (with -d; in the foreground, twistd's own status when it ends)\n"
        "  1  not started: already running, port in use, bad settings (the message says which)\n",
        (common, port),
    )
    start.add_argument("-d", "--daemon", action="store_true", help="run in the background")
    start.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="how long to wait for a background start (default: 60)",
    )

    stop = command(
        "stop",
        cmd_stop,
        "Stop the daemon started with `start -d`: SIGTERM (it stops accepting, lets "
        "in-flight requests finish), then SIGKILL after --timeout.",
        "  0  stopped\n"
        "  1  error (e.g. not allowed to signal it)\n"
        "  3  not running\n"
        "  4  did not stop in time and was killed\n"
        "  5  running, but managed elsewhere (e.g. systemd): not stopped\n",
        (common, port),
    )
    stop.add_argument(
        "--timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="wait this long after SIGTERM before SIGKILL (default: SHELLM_DRAIN_TIMEOUT + SHELLM_KILL_GRACE + 5)",
    )

    restart = command(
        "restart",
        cmd_restart,
        "Stop the daemon (as `stop`) if it runs, then start it in the background.",
        "  0  started\n"
        "  1  error, or not started\n"
        "  5  managed elsewhere (e.g. systemd: use `systemctl restart shellm`)\n",
        (common, port),
    )
    restart.add_argument(
        "--timeout", type=float, default=None, metavar="SECONDS", help="wait this long after SIGTERM before SIGKILL"
    )
    restart.add_argument(
        "--start-timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="how long to wait for the start (default: 60)",
    )

    status = command(
        "status",
        cmd_status,
        "Whether SheLLM runs (from the PID file, or managed elsewhere when only the port "
        "answers), with its uptime, queue and providers from GET /health.",
        "  0  running\n  1  the PID file's process runs but /health does not answer\n  3  not running\n",
        (common, port),
    )
    status.add_argument("--json", action="store_true", help="print JSON")

    logs = command(
        "logs",
        cmd_logs,
        "Print the daemon-mode log file (`start -d`); under systemd use journalctl -u shellm.",
        "  0  printed\n  1  no log file\n",
    )
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    logs.add_argument(
        "-n", "--lines", type=int, default=50, metavar="N", help="how many lines from the end (default: 50)"
    )
    logs.add_argument("--json", action="store_true", help="print the raw JSON lines")

    check = command(
        "check",
        cmd_check,
        "For each CLI: the executable found, its --version, whether it is logged in, and "
        "the fix when it is not; for Cerebras, whether CEREBRAS_API_KEY is set and accepted. "
        "Spends no tokens.  Run it as the service user, with the service's settings.",
        "  0  at least one provider can serve requests\n  1  none can (or the settings are not valid)\n",
    )
    check.add_argument("--json", action="store_true", help="print JSON")

    command("version", cmd_version, "Print the SheLLM version.", "  0  always\n")
    command(
        "env-example",
        cmd_env_example,
        "Print an example settings file: every setting with its default.",
        "  0  always\n",
    )
    db = command(
        "db",
        cmd_db,
        "The state store named by SHELLM_DB (a SQLite file, or a PostgreSQL database shared by "
        "several nodes): `status` shows the engine, schema version, rows and size; `migrate` "
        "applies the schema now (the daemon also does at start); `backup PATH` copies a SQLite "
        "store while the daemon runs (for PostgreSQL, use pg_dump).",
        "  0  done\n  1  the database cannot be reached, is from a newer SheLLM, or the command failed\n",
    )
    actions = db.add_subparsers(dest="action", metavar="ACTION", required=True)
    db_status = actions.add_parser("status", help="engine, schema version, rows per table, size")
    db_status.add_argument("--json", action="store_true", help="print JSON")
    actions.add_parser("migrate", help="apply the missing schema migrations")
    db_backup = actions.add_parser("backup", help="copy a SQLite store to PATH (online)")
    db_backup.add_argument("path", metavar="PATH", help="the new file (must not exist)")
    keys = command(
        "keys",
        cmd_keys,
        "Client keys in the state store (SHELLM_DB), as the /admin/keys API makes them: create "
        "(the key is printed once), list, show, rotate (--grace SECONDS keeps the old key working), "
        "revoke. A running daemon applies a change within 2 s.",
        "  0  done\n  1  bad input, no such key, or the database cannot be used\n",
    )
    add_keys_parser(keys)
    return top


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
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
