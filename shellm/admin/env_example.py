"""
C{shellm env-example} and C{shellm version}: every setting with its
default, as C{etc/shellm.env.example} holds it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping

from shellm import __version__
from shellm.admin.common import OK, Paths, say
from shellm.config import SETTINGS

#: Example values for settings whose default says little about the format.
ENV_EXAMPLES = {
    "SHELLM_CLIENTS": '\'{"myapp": {"key": "replace-with-a-long-random-string", "rpm": 10}}\'',
    "SHELLM_CLAUDE_ENV": '\'{"ANTHROPIC_API_KEY": "sk-ant-..."}\'',
    "SHELLM_MODELS": '\'{"fast": {"provider": "cerebras", "model": "llama3.1-8b"}}\'',
    "CEREBRAS_API_KEY": "csk-...",
}


def cmd_version(args: argparse.Namespace, environ: Mapping[str, str], paths: Paths) -> int:
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
        "# Generated from shellm/config.py: python -m shellm.admin env-example",
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


def cmd_env_example(args: argparse.Namespace, environ: Mapping[str, str], paths: Paths) -> int:
    sys.stdout.write(render_env_example())
    return OK
