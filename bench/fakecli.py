"""
An instant fake ``claude`` CLI for the bench: reads the prompt from stdin
and prints Claude Code's ``stream-json`` lines (init, two text deltas, the
result).  Compiled from C when a C compiler exists, so a bare spawn costs
only the kernel's fork and exec; otherwise a ``/bin/sh`` script (the fake may
use a shell; SheLLM never does).

A prompt ``bench:ts:<events>:<gap_ms>`` (C version only) makes it print that
many deltas, ``gap_ms`` apart, each one's text ``@<CLOCK_MONOTONIC ns>;``
taken just before the write.
"""

from __future__ import annotations

import os
import shutil
import subprocess

VERSION_LINE = "1.0.0 (bench fake)"
_INIT = '{"type":"system","subtype":"init","model":"bench-model","session_id":"bench"}'
_DELTA = (
    '{"type":"stream_event","event":{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"%s"}}}'
)
_RESULT = (
    '{"type":"result","subtype":"success","is_error":false,"result":"Hi! I am fast.",'
    '"stop_reason":"end_turn","usage":{"input_tokens":10,"output_tokens":5},'
    '"total_cost_usd":0.0001}'
)
OUTPUT = "\n".join([_INIT, _DELTA % "Hi! ", _DELTA % "I am fast.", _RESULT]) + "\n"


def _c_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


C_SOURCE = r"""
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static const char VERSION[] = %(version)s;
static const char OUTPUT[] = %(output)s;
static const char INIT[] = %(init)s;
static const char RESULT[] = %(result)s;

static void put(const char *s, size_t n) {
    while (n > 0) {
        ssize_t w = write(1, s, n);
        if (w <= 0) _exit(1);
        s += w; n -= (size_t)w;
    }
}

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--version") == 0) {
            put(VERSION, sizeof VERSION - 1);
            return 0;
        }
    }
    char head[256], rest[65536];
    size_t have = 0;
    ssize_t r;
    while ((r = read(0, have < sizeof head - 1 ? head + have : rest,
                     have < sizeof head - 1 ? sizeof head - 1 - have : sizeof rest)) > 0) {
        if (have < sizeof head - 1) have += (size_t)r;
    }
    head[have] = 0;
    int events = 0, gap_ms = 0;
    if (sscanf(head, "bench:ts:%%d:%%d", &events, &gap_ms) == 2 && events > 0 && events <= 10000) {
        char line[512];
        put(INIT, sizeof INIT - 1);
        for (int i = 0; i < events; i++) {
            struct timespec now;
            clock_gettime(CLOCK_MONOTONIC, &now);
            long long ns = (long long)now.tv_sec * 1000000000LL + now.tv_nsec;
            int n = snprintf(line, sizeof line, %(delta)s, ns);
            put(line, (size_t)n);
            if (i + 1 < events) usleep((useconds_t)gap_ms * 1000);
        }
        put(RESULT, sizeof RESULT - 1);
        return 0;
    }
    put(OUTPUT, sizeof OUTPUT - 1);
    return 0;
}
"""

SH_SOURCE = """#!/bin/sh
for a in "$@"; do
    if [ "$a" = --version ]; then echo '%(version)s'; exit 0; fi
done
while IFS= read -r _ || [ -n "$_" ]; do :; done
printf '%%s' '%(output)s'
"""


def build(directory: str) -> tuple[str, str]:
    """
    Write the fake CLI into C{directory}; return its path and its kind
    (C{"c"} or C{"sh"}).
    """
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler:
        source = os.path.join(directory, "fake_cli.c")
        binary = os.path.join(directory, "fake-claude")
        with open(source, "w") as f:
            f.write(
                C_SOURCE
                % {
                    "version": _c_string(VERSION_LINE + "\n"),
                    "output": _c_string(OUTPUT),
                    "init": _c_string(_INIT + "\n"),
                    "result": _c_string(_RESULT + "\n"),
                    "delta": _c_string(_DELTA % "@%lld;" + "\n"),
                }
            )
        done = subprocess.run([compiler, "-O2", "-o", binary, source], capture_output=True, timeout=60)
        if done.returncode == 0:
            return binary, "c"
    script = os.path.join(directory, "fake-claude.sh")
    with open(script, "w") as f:
        f.write(SH_SOURCE % {"version": VERSION_LINE, "output": OUTPUT.replace("'", "'\\''")})
    os.chmod(script, 0o755)
    return script, "sh"
