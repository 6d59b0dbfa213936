"""
C{shellm logs}: the daemon-mode log file, rendered or raw, and followed.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Mapping
from typing import BinaryIO

from shellm.admin.common import OK, CommandError, Paths, say


def render_log_line(line: str, raw: bool) -> str:
    if raw:
        return line
    try:
        record = json.loads(line)
        return f"{record['time']} {record['level']:<5} {record['message']}"
    except (ValueError, KeyError, TypeError):
        return line


def last_lines(f: BinaryIO, end: int, count: int) -> list[str]:
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


def cmd_logs(args: argparse.Namespace, environ: Mapping[str, str], paths: Paths) -> int:
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


def follow(f: BinaryIO, path: str, raw: bool) -> int:
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
